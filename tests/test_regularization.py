"""LwF, EWC, online EWC and SI: closed forms, hand-computed path integrals, weightings and tiny runs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cljax
from cljax.fisher import context_fisher, diagonal_fisher, seen_fisher
from cljax.models import MLP, Linear
from cljax.regularizers import merge_quadratic_penalties, quadratic_penalty, stacked_quadratic_penalty
from cljax.scenarios import Images, ScenarioInfo, Stream
from cljax.strategies import Setup, get_strategy
from cljax.strategies.lwf import soft_target_loss


class SoftmaxRegression(nn.Module):
    """One Linear layer: its Fisher has a closed form."""

    n_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return Linear(self.n_out)(x.reshape(x.shape[0], -1))


def tiny_problem(scenario: str = "task", n_real=(1, 1, 1), n_max: int = 4, seed: int = 0, seen: bool = False):
    """A 3-context stream of 2x2 images, 2 classes per context; context c holds ``n_real[c]`` samples.

    ``seen``: Class-IL trains the units of the classes seen so far (3S-2019) instead of all of them.
    """
    rng = np.random.default_rng(seed)
    n_ctx, cpc = len(n_real), 2
    n_out = cpc if scenario == "domain" else cpc * n_ctx
    n_images = n_ctx * n_max
    # context c holds images c*n_max .. c*n_max + n_real[c] - 1, labelled with its own two classes
    train_y = np.concatenate([cpc * c + np.arange(n_max) % cpc for c in range(n_ctx)]).astype(np.int32)
    images = Images(
        train_x=jnp.asarray(rng.integers(0, 256, (n_images, 2, 2, 1)), jnp.uint8),
        train_y=jnp.asarray(train_y),
        test_x=jnp.zeros((2, 2, 2, 1), jnp.uint8),
        test_y=jnp.zeros((2,), jnp.int32),
    )
    label_map = np.tile(np.arange(cpc * n_ctx) % n_out, (n_ctx, 1))
    unit = np.arange(n_out)
    active = np.stack(
        [(unit // cpc == c) if scenario == "task" else np.ones(n_out, bool) for c in range(n_ctx)]
    )
    stream = Stream(
        train_idx=jnp.asarray(np.arange(n_images).reshape(n_ctx, n_max), jnp.int32),
        train_n=jnp.asarray(n_real, jnp.int32),
        test_idx=jnp.zeros((n_ctx, 2), jnp.int32),
        test_n=jnp.full((n_ctx,), 2, jnp.int32),
        label_map=jnp.asarray(label_map, jnp.int32),
        active=jnp.asarray(active),
        pixel_perm=jnp.zeros((n_ctx, 0), jnp.int32),
    )
    info = ScenarioInfo("tiny", scenario, n_ctx, cpc, n_out, (2, 2, 1), False, None)
    return info, images, stream


def make_setup(info: ScenarioInfo, lr: float = 0.1, optimizer=optax.sgd) -> Setup:
    return Setup(info, MLP(info.n_out, (3,)), optimizer(lr), batch_size=4, iters=1)


def build(name: str, setup: Setup, options: dict | None = None):
    """The strategy with jitted functions (the tests call them one by one)."""
    s = get_strategy(name).build(setup, options or {})
    return s._replace(step=jax.jit(s.step), end_context=jax.jit(s.end_context))


def inputs(images: Images, stream: Stream, context: int) -> jax.Array:
    rows = stream.train_idx[context, : int(stream.train_n[context])]
    return images.train_x[rows].astype(jnp.float32) / 255.0


# ------------------------------------------------------------------ Fisher


def test_fisher_of_softmax_regression_equals_closed_form():
    # One linear layer z = x W + b: d(-log p_y)/dz_j = p_j - [j = y], so
    #   all labels:  F_W[i, j] = mean_n x_ni^2 sum_y p_y (p_j - [j = y])^2 = mean_n x_ni^2 p_nj (1 - p_nj)
    #   true labels: F_W[i, j] = mean_n x_ni^2 (p_nj - [j = y_n])^2;  F_b the same without x^2.
    n, d, k = 24, 5, 4
    x = jax.random.normal(jax.random.key(0), (n, d))
    y = jax.random.randint(jax.random.key(1), (n,), 0, 3)
    mask = jnp.array([True, True, True, False])
    valid = (jnp.arange(n) < 21).astype(jnp.float32)  # the last three are padding
    model = SoftmaxRegression(k)
    params = model.init(jax.random.key(2), x[:1])
    cases = (("all", True), ("all", False), ("true", True), ("true", False))

    def load(i):
        return tuple(jax.lax.dynamic_slice_in_dim(a, i * 8, 8) for a in (x, y, valid))

    fishers = jax.jit(
        lambda p: [diagonal_fisher(model, p, load, 3, mask, lab, factor_dense=f) for lab, f in cases]
    )(params)

    w, b = (np.asarray(params["params"]["Linear_0"][name], np.float64) for name in ("weight", "bias"))
    xs, ys = np.asarray(x, np.float64)[:21], np.asarray(y)[:21]
    z = np.where(np.asarray(mask), xs @ w.T + b, -np.inf)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for (labels, _), fisher in zip(cases, fishers, strict=True):
        per_unit = p * (1 - p) if labels == "all" else (p - np.eye(k)[ys]) ** 2
        got = fisher["params"]["Linear_0"]
        np.testing.assert_allclose(got["bias"], per_unit.mean(0), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got["weight"], per_unit.T @ xs**2 / 21, rtol=1e-4, atol=1e-7)
        assert np.all(np.asarray(got["weight"])[3] == 0)  # the inactive unit


def test_fisher_factored_and_per_sample_routes_agree_on_an_mlp():
    model = MLP(5, (7, 6))
    x = jax.random.normal(jax.random.key(0), (16, 3, 3, 1))
    params = model.init(jax.random.key(1), x[:1])
    mask = jnp.array([True, False, True, True, True])

    def load(i):
        return jax.lax.dynamic_slice_in_dim(x, i * 8, 8), jnp.zeros(8, jnp.int32), jnp.ones(8)

    fast, slow = (
        jax.jit(lambda p, f=f: diagonal_fisher(model, p, load, 2, mask, "all", factor_dense=f))(params)
        for f in (True, False)
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8), fast, slow)
    assert all(float(jnp.max(leaf)) > 0 for leaf in jax.tree.leaves(fast))


def test_context_fisher_skips_padding_and_subsamples_without_replacement():
    info, images, stream = tiny_problem("class", n_real=(3, 4, 2), n_max=4)
    model = SoftmaxRegression(info.n_out)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))
    ctx = jnp.int32(0)

    @jax.jit
    def fishers(key):
        def fisher(n, k=key):
            return context_fisher(info, model, params, images, stream, ctx, k, "all", n, chunk_size=2)

        ones = jax.vmap(lambda k: fisher(1, k))(jax.random.split(key, 12))
        return fisher(None), fisher(3), fisher(7), ones

    everything, three, seven, ones = fishers(jax.random.key(5))
    x = np.asarray(inputs(images, stream, 0)).reshape(3, -1)
    w, b = (np.asarray(params["params"]["Linear_0"][k]) for k in ("weight", "bias"))
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(everything["params"]["Linear_0"]["bias"], (p * (1 - p)).mean(0), rtol=1e-4)
    # n = all real samples, in any order, gives the same mean; n larger than the context clips to it
    for subsampled in (three, seven):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), subsampled, everything)
    singles = {tuple(np.round(v, 5)) for v in np.asarray(ones["params"]["Linear_0"]["bias"])}
    per_sample = {tuple(np.round(v, 5)) for v in p * (1 - p)}
    assert 1 < len(singles) and singles <= per_sample  # one real sample at a time, not always the same


def test_the_fisher_of_the_seen_samples_is_their_contexts_fisher():
    info, images, stream = tiny_problem("task", n_real=(3, 4, 2), n_max=4)
    model = SoftmaxRegression(info.n_out)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))
    key = jax.random.key(3)

    @jax.jit
    def seen(mask):
        return seen_fisher(info, model, params, images, stream, mask, key, "all", chunk_size=2)

    def by_context(c):
        return context_fisher(info, model, params, images, stream, jnp.int32(c), key, "all", chunk_size=2)

    whole = np.zeros((3, 4), bool)
    whole[1] = True  # every sample of context 1 (its padding slot included: never drawn, never counted)
    jax.tree.map(np.testing.assert_array_equal, seen(whole), by_context(1))
    # samples of two contexts: each on its own context's units, the mean over all five
    part = np.zeros((3, 4), bool)
    part[0, :3] = part[2, :2] = True
    expected = jax.tree.map(lambda a, b: (3 * a + 2 * b) / 5, by_context(0), by_context(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), seen(part), expected)
    assert not np.any(np.asarray(seen(np.zeros((3, 4), bool))["params"]["Linear_0"]["bias"]))


# ------------------------------------------------------------------ distillation


def test_kd_is_zero_or_minimal_when_teacher_and_student_agree():
    logits = jax.random.normal(jax.random.key(0), (6, 4))
    mask = jnp.array([True, True, True, False])
    kl = soft_target_loss(logits, logits, mask, mask, 2.0, "kl")
    assert abs(float(kl)) < 1e-6
    ce = lambda s: soft_target_loss(s, logits, mask, mask, 2.0, "ce")  # noqa: E731
    grad = jax.grad(ce)(logits)
    assert float(jnp.max(jnp.abs(grad))) < 1e-6  # a minimum: the soft targets' entropy
    other = logits + jax.random.normal(jax.random.key(1), logits.shape)
    assert float(ce(other)) > float(ce(logits)) + 1e-4
    assert float(soft_target_loss(other, logits, mask, mask, 2.0, "kl")) > 1e-4


def test_kd_gradient_pulls_the_student_towards_the_teacher():
    teacher = jnp.array([[3.0, 0.0, 0.0]])
    student = jnp.array([[0.0, 0.0, 3.0]])
    mask = jnp.ones(3, bool)
    for kd in ("ce", "kl"):
        grad = jax.grad(lambda s, kd=kd: soft_target_loss(s, teacher, mask, mask, 2.0, kd))(student)[0]
        assert grad[0] < 0 < grad[2]  # descent raises the teacher's favourite, lowers the student's


def test_kd_pads_the_teachers_missing_units_with_zeros_and_scales_by_t_squared():
    student = jnp.array([[0.5, -1.0, 2.0, 0.3]])
    teacher = jnp.array([[1.0, 2.0, 9.0, 9.0]])
    old, now = jnp.array([True, True, False, False]), jnp.ones(4, bool)
    t = 2.0
    target = np.zeros(4)
    target[:2] = np.exp(np.array([1.0, 2.0]) / t) / np.exp(np.array([1.0, 2.0]) / t).sum()
    log_student = np.asarray(jax.nn.log_softmax(student[0] / t))
    expected = -(target * log_student).sum()
    assert float(soft_target_loss(student, teacher, now, old, t)) == pytest.approx(expected, rel=1e-5)
    assert float(soft_target_loss(student, teacher, now, old, t, t_squared=True)) == pytest.approx(
        t * t * expected, rel=1e-5
    )


@pytest.mark.parametrize(
    "scenario, protocol",
    [
        ("task", "nmi2022"),
        ("domain", "nmi2022"),
        ("class", "nmi2022"),
        ("task", "3s2019"),
        ("class", "3s2019"),
    ],
)
def test_lwf_weighs_distillation_as_the_reference(scenario, protocol):
    seen = protocol == "3s2019"  # 3S-2019's Class-IL trains the classes seen so far
    info, images, stream = tiny_problem(scenario, seen=seen)
    setup = make_setup(info)
    strategy = build("lwf", setup, {"protocol": protocol})
    state = strategy.init(jax.random.key(0), images, stream)
    _, first = strategy.step(state, images, stream, jnp.int32(0), jax.random.key(1))
    assert float(first["distill"]) == 0.0  # no teacher yet
    for c in (0, 1):
        state = strategy.end_context(state, images, stream, jnp.int32(c), jax.random.key(2))
    _, m = strategy.step(state, images, stream, jnp.int32(2), jax.random.key(3))

    # student == teacher at the first step of context 3; KD = -sum_{u in teacher units} q_u log s_u
    t = 2.0
    z = np.asarray(setup.model.apply(state.teacher, inputs(images, stream, 2)), np.float64)[0] / t
    active = np.asarray(stream.active)

    def kd(teacher_units, student_units):
        q = np.exp(z[teacher_units] - z[teacher_units].max())
        log_s = z - z[student_units].max() - np.log(np.exp(z[student_units] - z[student_units].max()).sum())
        return -(q / q.sum() * log_s[teacher_units]).sum()

    if scenario == "task":
        terms = [kd(active[j], active[j]) for j in (0, 1)]  # one per earlier context, on its own units
    else:
        terms = [kd(active[1], active[2])]  # teacher: units of the previous context; student: current
    scale = t * t if protocol == "3s2019" else 1.0
    weight = {"task": 1.0, "domain": 2.0, "class": 1.0}[scenario]  # NMI-2022: sum / (t-1) x / x
    expected = weight * sum(terms) if protocol == "nmi2022" else scale * np.mean(terms)
    assert float(m["distill"]) == pytest.approx(expected, rel=1e-4)
    current = float(m["loss_current"])
    total = current + expected if protocol == "nmi2022" else current / 3 + 2 * expected / 3
    assert float(m["loss"]) == pytest.approx(total, rel=1e-4)


# ------------------------------------------------------------------ EWC


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it():
    info, images, stream = tiny_problem("task", n_real=(4, 4, 4))
    strategy = build("ewc", make_setup(info), {"lambda": 1e8})
    state = strategy.init(jax.random.key(0), images, stream)
    for i in range(3):
        state, m = strategy.step(state, images, stream, jnp.int32(0), jax.random.key(i))
        assert float(m["penalty"]) == 0.0
    state = strategy.end_context(state, images, stream, jnp.int32(0), jax.random.key(9))
    assert int(state.count) == 1
    jax.tree.map(
        np.testing.assert_array_equal, jax.tree.map(lambda a: a[0], state.anchor), state.classifier.params
    )
    assert all(float(jnp.max(f[1:])) == 0 < float(jnp.max(f[0])) for f in jax.tree.leaves(state.fisher))
    state, at_anchor = strategy.step(state, images, stream, jnp.int32(1), jax.random.key(10))
    _, moved = strategy.step(state, images, stream, jnp.int32(1), jax.random.key(11))
    assert float(at_anchor["penalty"]) == 0.0
    assert float(moved["penalty"]) > 0.0
    assert float(moved["loss"] - moved["loss_current"]) == pytest.approx(
        0.5e8 * float(moved["penalty"]), rel=1e-3
    )


def test_stacked_penalty_sums_the_filled_slots_only():
    params = {"w": jnp.array([1.0, 2.0])}
    anchors = {"w": jnp.array([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])}
    fishers = {"w": jnp.array([[7.0, 7.0], [1.0, 2.0], [100.0, 100.0]])}
    assert float(stacked_quadratic_penalty(params, anchors, fishers, jnp.int32(1))) == 0.0  # at the anchor
    assert float(stacked_quadratic_penalty(params, anchors, fishers, jnp.int32(2))) == pytest.approx(1 + 8)


def test_merged_penalty_equals_the_sum_of_the_per_context_penalties():
    keys = jax.random.split(jax.random.key(0), 4)
    params = {"w": jax.random.normal(keys[0], (3, 5)), "b": jax.random.normal(keys[1], (5,))}
    anchors = jax.tree.map(lambda p: p + jax.random.normal(keys[2], (4, *p.shape)), params)
    fishers = jax.tree.map(lambda p: jnp.exp(jax.random.normal(keys[3], (4, *p.shape))), params)
    fishers["b"] = fishers["b"].at[:, 0].set(0.0)  # a parameter no context cares about

    @jax.jit
    def both(params, count):
        precision, mean, offset = merge_quadratic_penalties(anchors, fishers, count)
        merged = lambda p: quadratic_penalty(p, mean, precision) + offset  # noqa: E731
        stacked = lambda p: stacked_quadratic_penalty(p, anchors, fishers, count)  # noqa: E731
        return jax.value_and_grad(merged)(params), jax.value_and_grad(stacked)(params)

    for count in (0, 1, 3):
        merged, stacked = both(params, jnp.int32(count))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), merged, stacked)


def test_online_ewc_keeps_a_decayed_running_fisher_and_the_latest_anchor():
    info, images, stream = tiny_problem("class", n_real=(4, 4, 4))
    setup = make_setup(info)
    strategy = build("online-ewc", setup, {"gamma": 0.5, "fisher_labels": "all"})
    state = strategy.init(jax.random.key(0), images, stream)
    fisher = jax.jit(lambda p, c, k: context_fisher(info, setup.model, p, images, stream, c, k))
    fishers = []
    for c in (0, 1):
        state, _ = strategy.step(state, images, stream, jnp.int32(c), jax.random.key(c))
        key = jax.random.key(20 + c)
        fishers.append(fisher(state.classifier.params, jnp.int32(c), key))
        state = strategy.end_context(state, images, stream, jnp.int32(c), key)
    expected = jax.tree.map(lambda a, b: 0.5 * a + b, *fishers)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), state.fisher, expected)
    jax.tree.map(np.testing.assert_array_equal, state.anchor, state.classifier.params)


# ------------------------------------------------------------------ SI


@pytest.mark.parametrize("path_gradient", ["total", "current"])
def test_si_importance_is_the_hand_computed_path_integral(path_gradient):
    # One sample per context, so every batch is that sample and plain SGD steps can be replayed by hand.
    info, images, stream = tiny_problem("class")
    lr, c, damping = 0.5, 3.0, 0.1
    setup = make_setup(info, lr=lr)
    strategy = build("si", setup, {"c": c, "path_gradient": path_gradient})
    state = strategy.init(jax.random.key(0), images, stream)
    theta = [state.classifier.params]
    for i in range(2):
        state, _ = strategy.step(state, images, stream, jnp.int32(0), jax.random.key(i))
        theta.append(state.classifier.params)
    state = strategy.end_context(state, images, stream, jnp.int32(0), jax.random.key(5))

    def grad_at(params, context):
        x = inputs(images, stream, context)
        y = stream.label_map[context, images.train_y[stream.train_idx[context, 0]]]
        return jax.grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(setup.model.apply(p, x), y[None])[0]
        )(params)

    leaves = lambda t: [np.asarray(v, np.float64) for v in jax.tree.leaves(t)]  # noqa: E731
    t0, t1, t2 = (leaves(t) for t in theta)
    g0, g1 = leaves(grad_at(theta[0], 0)), leaves(grad_at(theta[1], 0))
    for a, b, c_, ga, gb in zip(t0, t1, t2, g0, g1, strict=True):
        np.testing.assert_allclose(b, a - lr * ga, rtol=1e-5, atol=1e-7)  # plain SGD, no penalty yet
        np.testing.assert_allclose(c_, b - lr * gb, rtol=1e-5, atol=1e-7)
    w = [-ga * (b - a) - gb * (c_ - b) for a, b, c_, ga, gb in zip(t0, t1, t2, g0, g1, strict=True)]
    omega = [wi / ((c_ - a) ** 2 + damping) for wi, a, c_ in zip(w, t0, t2, strict=True)]
    for got, want in zip(leaves(state.importance), omega, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
    for got, want in zip(leaves(state.anchor), t2, strict=True):
        np.testing.assert_allclose(got, want)
    assert all(np.all(v == 0) for v in leaves(state.path_integral))

    # Context 2: two steps; the second one's gradient includes the penalty 2 c Omega (theta - theta*)
    s1, _ = strategy.step(state, images, stream, jnp.int32(1), jax.random.key(7))
    s2, _ = strategy.step(s1, images, stream, jnp.int32(1), jax.random.key(8))
    p0, p1, p2 = (leaves(s.classifier.params) for s in (state, s1, s2))
    h0, h1 = leaves(grad_at(state.classifier.params, 1)), leaves(grad_at(s1.classifier.params, 1))
    pen1 = [2 * c * o * (b - a) for o, a, b in zip(omega, t2, p1, strict=True)]
    use_pen = path_gradient == "total"
    w2 = [
        -ha * (b - a) - (hb + (pb if use_pen else 0)) * (c_ - b)
        for a, b, c_, ha, hb, pb in zip(p0, p1, p2, h0, h1, pen1, strict=True)
    ]
    for got, want in zip(leaves(s2.path_integral), w2, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-8)


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "strategy, options, message",
    [
        ("ewc", {"lambda": -1.0}, "'lambda'"),
        ("online-ewc", {"gamma": 0.0}, "'gamma'"),
        ("online-ewc", {"gamma": 1.5}, "'gamma'"),
        ("si", {"c": -2}, "'c'"),
        ("si", {"damping": 0}, "'damping'"),
        ("lwf", {"temperature": 0}, "'temperature'"),
        ("lwf", {"kd": "mse"}, "'kd'"),
        ("ewc", {"fisher_labels": "max"}, "'fisher_labels'"),
        ("ewc", {"fisher_n": 0}, "'fisher_n'"),
        ("ewc", {"protocol": "2017"}, "protocol"),
    ],
)
def test_bad_options_name_the_option_and_its_range(strategy, options, message):
    info, _, _ = tiny_problem("class")
    with pytest.raises(ValueError, match=message):
        get_strategy(strategy).build(make_setup(info), options)


def test_defaults_are_the_published_values_and_protocol_swaps_only_unset_ones():
    assert [get_strategy("ewc").defaults(s)["lambda"] for s in ("task", "domain", "class")] == [
        1e5,
        1e10,
        1e9,
    ]
    assert [get_strategy("si").defaults(s)["c"] for s in ("task", "domain", "class")] == [10, 5e4, 5e3]
    online = get_strategy("online-ewc").defaults("domain")
    assert (online["lambda"], online["gamma"]) == (1e8, 0.7)
    from cljax.regularizers import resolve_protocol
    from cljax.strategies.ewc import EWC_PUBLISHED

    defaults = get_strategy("ewc").defaults("task")
    swapped = resolve_protocol({**defaults, "protocol": "3s2019"}, EWC_PUBLISHED, "task")
    assert (swapped["lambda"], swapped["fisher_labels"]) == (1e7, "pred")
    explicit = resolve_protocol({**defaults, "protocol": "3s2019", "lambda": 1e5}, EWC_PUBLISHED, "task")
    assert explicit["lambda"] == 1e5  # set by the user, even though it equals the NMI-2022 default


def test_permuted_mnist_gets_its_own_published_settings():
    from cljax.config import RunConfig

    def resolved(strategy, scenario, **options):
        config = RunConfig(benchmark="perm-mnist", strategy=strategy, scenario=scenario, options=options)
        return config.resolved().options

    for scenario in ("task", "domain", "class"):
        ewc = resolved("ewc", scenario)
        assert (ewc["lambda"], ewc["fisher_n"], ewc["fisher_labels"]) == (100.0, 1000, "all")
    assert [resolved("si", s)["c"] for s in ("task", "domain", "class")] == [10.0, 10.0, 5.0]
    assert resolved("ewc", "class", **{"lambda": 7.0})["lambda"] == 7.0  # the user's value stays
    split = RunConfig(benchmark="split-mnist", strategy="si", scenario="domain").resolved().options
    assert split["c"] == 5e4


def test_split_cifar100_gets_the_references_settings():
    from cljax.config import RunConfig

    def resolved(strategy, scenario):
        config = RunConfig(benchmark="split-cifar100", strategy=strategy, scenario=scenario)
        return config.resolved().options

    assert [resolved("ewc", s)["lambda"] for s in ("task", "domain", "class")] == [1e3, 1e3, 100.0]
    assert [resolved("si", s)["c"] for s in ("task", "domain", "class")] == [100.0, 500.0, 5.0]


# ------------------------------------------------------------------ tiny runs


def test_every_strategy_runs_compiles_once_and_learns(tiny_data):
    for name, scenario in (("lwf", "task"), ("ewc", "domain"), ("online-ewc", "class"), ("si", "class")):
        config = cljax.RunConfig(strategy=name, scenario=scenario, seeds=2, iters=25, batch_size=16, lr=0.003)
        exp = cljax.prepare(config, dataset=tiny_data)
        traces = {"step": 0, "end_context": 0}

        def counted(fn, kind, traces=traces):
            def wrapped(*args):
                traces[kind] += 1
                return fn(*args)

            return wrapped

        exp.strategy = exp.strategy._replace(
            step=counted(exp.strategy.step, "step"),
            end_context=counted(exp.strategy.end_context, "end_context"),
        )
        result = cljax.execute(exp, quiet=True)
        acc = np.asarray(result.acc_matrix)
        assert traces == {"step": 1, "end_context": 1}, name  # one program for every context and seed
        assert acc.shape == (2, 5, 5)
        assert np.all(np.isfinite(result.context_loss))
        assert acc[:, 0, 0].min() > 90, name  # the first context is learned


def test_penalty_is_the_only_difference_from_fine_tuning_and_holds_parameters():
    info, images, stream = tiny_problem("class", n_real=(4, 4, 4))
    setup = make_setup(info, lr=0.01, optimizer=optax.adam)

    def train(name, options=None):
        strategy = build(name, setup, options)
        state = strategy.init(jax.random.key(0), images, stream)
        for c in (0, 1):
            for i in range(15):
                state, _ = strategy.step(state, images, stream, jnp.int32(c), jax.random.key(100 * c + i))
            if c == 0:
                after_first = state
            state = strategy.end_context(state, images, stream, jnp.int32(c), jax.random.key(7))
        params = lambda s: s.params if hasattr(s, "params") else s.classifier.params  # noqa: E731
        return params(after_first), params(state)

    def drift(pair):
        return sum(
            float(jnp.sum(jnp.square(a - b))) for a, b in zip(*map(jax.tree.leaves, pair), strict=True)
        )

    none = train("none")
    for name, strength in (("ewc", "lambda"), ("si", "c")):
        unregularised = train(name, {strength: 0.0})
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), none, unregularised)
    for name, options in (("ewc", {"lambda": 1e4}), ("si", {"c": 1e3})):
        assert drift(train(name, options)) < 0.2 * drift(none), name


@pytest.mark.parametrize("strategy", ["ewc", "si", "lwf"])
@pytest.mark.parametrize("protocol", ["nmi2022", "3s2019"])
def test_resolved_config_records_the_protocols_values(strategy, protocol):
    from cljax.strategies.ewc import EWC_PUBLISHED
    from cljax.strategies.lwf import LWF_PUBLISHED
    from cljax.strategies.si import SI_PUBLISHED

    table = {"ewc": EWC_PUBLISHED, "si": SI_PUBLISHED, "lwf": LWF_PUBLISHED}[strategy]
    config = cljax.RunConfig(strategy=strategy, scenario="domain", options={"protocol": protocol})
    options = config.resolved().options
    for name, value in table[protocol]["domain"].items():
        assert options[name] == value and type(options[name]) in (float, int, str, bool)
