"""Generative replay: generators, DGR, DGR+distill, BI-R and the tutorial strategy (tiny, fast runs)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax.config import RunConfig
from cljax.engine import Experiment, execute
from cljax.losses import cross_entropy
from cljax.models import MLP, CondVAE, make_generator
from cljax.presets import Benchmark
from cljax.scenarios import Images, make_stream, scenario_info
from cljax.strategies import Setup, get_strategy
from cljax.strategies.dgr import hard_target_loss, heads_loss, replay_heads, replay_labels, soft_target_loss

key0 = jax.random.key(0)
OPTIMIZED = {"test_vae_loss_falls_on_mnist"}
TINY_OPTIONS = {
    "dgr": {"gen_units": 32, "z_dim": 8, "replay_batch": 16},
    "dgr-distill": {"gen_units": 32, "z_dim": 8, "replay_batch": 16},
    "bir": {"units": (32, 32), "z_dim": 8, "replay_batch": 16},
    "tutorial": {"gen_units": 32, "z_dim": 8, "replay_ratio": 0.5},
}
TINY = Benchmark(
    name="tiny",
    dataset="synthetic",
    n_contexts=3,
    classes_per_context=2,
    permuted=False,
    pad_to=None,
    model="mlp",
    iters=4,
    lr=1e-3,
    batch_size=16,
    normalize=None,
    source="test stream: 3 contexts x 2 classes of 8x8 images",
)


def synthetic_images(n_per_class: int = 20, n_classes: int = 6, side: int = 8, seed: int = 0) -> Images:
    """Blobs at a class-specific place: learnable, in [0, 255] like MNIST."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = rng.integers(0, 60, (len(y), side, side, 1))
    for c in range(n_classes):
        r, col = divmod(c, 3)
        x[y == c, 2 * r : 2 * r + 4, 2 * col : 2 * col + 3] += 180
    x = np.clip(x, 0, 255).astype(np.uint8)
    return Images(jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.asarray(x), jnp.asarray(y, jnp.int32))


def tiny_experiment(
    name: str, scenario: str = "class", seeds: int = 2, iters: int = 4, **extra
) -> Experiment:
    """A 3-context stream of synthetic 8x8 images, a small MLP, ``seeds`` seeds side by side."""
    images = synthetic_images()
    info = scenario_info(TINY, scenario, tuple(images.train_x.shape[1:]))
    seed_list = list(range(seeds))
    ys = np.asarray(images.train_y)
    active = extra.pop("class_il_active", "all")
    streams = [make_stream(TINY, scenario, ys, ys, s, active) for s in seed_list]
    streams = jax.tree.map(lambda *xs: jnp.stack(xs), *streams)
    setup = Setup(info, MLP(info.n_out, (32,)), optax.adam(1e-3), TINY.batch_size, iters)
    options = {**TINY_OPTIONS[name], **extra}
    config = RunConfig(
        strategy=name, scenario=scenario, seeds=seeds, iters=iters, batch_size=16, options=options
    )
    strategy = get_strategy(name).build(setup, options)
    return Experiment(config, info, setup, strategy, images, streams, seed_list)


@pytest.fixture(autouse=True)
def fast_compiles(request):
    """The tiny programs here run for milliseconds; compiling them without most of XLA's optimisations
    halves this file's time (same results). The full-size VAE keeps them: it runs long enough to matter."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", request.function.__name__ not in OPTIMIZED)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def one_seed(tree):
    return jax.tree.map(lambda a: a[0], tree)


def trees_equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


class Runner:
    """One seed's strategy functions, jitted once each (the context is a traced argument)."""

    def __init__(self, exp: Experiment, n_steps: int):
        strategy, images, stream = exp.strategy, exp.images, one_seed(exp.streams)
        self.stream = stream

        def steps(state, context, key):
            def body(s, k):
                return strategy.step(s, images, stream, context, k)

            return jax.lax.scan(body, state, jax.random.split(key, n_steps))

        self.exp = exp
        self.init = jax.jit(lambda key: strategy.init(key, images, stream))
        self.steps = jax.jit(steps)
        self.end = jax.jit(lambda state, context: strategy.end_context(state, images, stream, context, key0))


def ctx(c: int) -> jax.Array:
    return jnp.int32(c)


@functools.cache
def runner(name: str, scenario: str = "class", active: str = "all", n_steps: int = 60) -> Runner:
    """Shared between tests, so each program compiles once per session."""
    return Runner(tiny_experiment(name, scenario=scenario, seeds=1, class_il_active=active), n_steps)


def trained_to_context(run: Runner, context: int):
    """State after training contexts 0..context-1 (with end_context) and part of ``context``."""
    state = run.init(key0)
    for c in range(context):
        state, _ = run.steps(state, ctx(c), jax.random.key(c + 1))
        state = run.end(state, ctx(c))
    # Let the current nets drift away from the frozen ones, so using the wrong ones would show.
    state, _ = run.steps(state, ctx(context), jax.random.key(100))
    return state


# ------------------------------------------------------------------------------------------- generators


def test_vae_loss_falls_on_mnist(mnist):
    x = jnp.asarray(mnist.train_x[:2048], jnp.float32) / 255.0
    gen = make_generator("vae", (28, 28, 1))
    weights = jnp.full((64,), 1 / 64)

    @jax.jit
    def train(state, key):
        def body(s, k):
            k_idx, k_eps = jax.random.split(k)
            batch = x[jax.random.randint(k_idx, (64,), 0, x.shape[0])]
            loss, grads = gen.loss_and_grads(s.params, batch, weights, k_eps)
            return gen.apply_gradients(s, grads), loss

        return jax.lax.scan(body, state, jax.random.split(key, 300))

    _, losses = train(jax.jit(gen.init)(key0), jax.random.key(1))
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    # Pixel-averaged BCE starts near log 2 = 0.69; a VAE that has learned MNIST's strokes is near 0.15.
    assert losses[-20:].mean() < 0.5 * losses[:5].mean()
    assert losses[-20:].mean() < 0.25


def test_gan_trains_without_nan():
    images = synthetic_images()
    x = jnp.asarray(images.train_x, jnp.float32) / 255.0
    gen = make_generator("gan", (8, 8, 1), hidden=(32, 32), z_dim=8)
    weights = jnp.full((x.shape[0],), 1 / x.shape[0])

    @jax.jit
    def train(state, key):
        def body(s, k):
            loss, grads = gen.loss_and_grads(s.params, x, weights, k)
            return gen.apply_gradients(s, grads), loss

        return jax.lax.scan(body, state, jax.random.split(key, 200))

    state0 = jax.jit(gen.init)(key0)
    state, losses = train(state0, jax.random.key(1))
    assert np.all(np.isfinite(np.asarray(losses)))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))
    assert not trees_equal(state.params, state0.params)
    samples = np.asarray(jax.jit(gen.sample, static_argnums=2)(state.params, jax.random.key(2), 5))
    assert samples.shape == (5, 8, 8, 1) and samples.min() >= 0 and samples.max() <= 1


def test_bad_options_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"generator: unknown value 'diffusion'.*vae, gan"):
        tiny_experiment("dgr", generator="diffusion")
    with pytest.raises(ValueError, match="replay_batch"):
        tiny_experiment("dgr-distill", replay_batch=0)
    with pytest.raises(ValueError, match="dg_prop"):
        tiny_experiment("bir", dg_prop=1.5)
    with pytest.raises(ValueError, match="lam"):
        tiny_experiment("tutorial", lam=-1)
    exp = tiny_experiment("bir", seeds=1)
    with pytest.raises(ValueError, match="model: bir"):
        get_strategy("bir").build(exp.setup._replace(model=object()), {})


def test_cond_vae_gates():
    gated = CondVAE((8, 8, 1), n_classes=6, hidden=(32, 32), z_dim=4, gate_size=6, gate_prop=0.1)
    shapes = jax.eval_shape(gated.init, key0, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 4)), jnp.zeros((1, 6)))
    assert [m.shape for m in jax.tree.leaves(shapes["gates"])] == [(6, 32), (6, 32)]
    ungated = CondVAE((8, 8, 1), n_classes=6, hidden=(32, 32), z_dim=4)
    assert "gates" not in jax.eval_shape(ungated.init, key0, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 4)))
    # BI-R's Class-IL default: one mask row per class, 10 % of the units gated off, fixed for good.
    run = runner("bir")
    state = trained_to_context(run, 1)
    masks = np.stack([np.asarray(m) for m in jax.tree.leaves(state.gates)])
    assert masks.shape == (2, 6, 32) and set(np.unique(masks)) == {0.0, 1.0}
    assert abs(masks.mean() - 0.9) < 0.06
    assert trees_equal(state.gates, run.init(key0).gates)


# ------------------------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("name", ["bir", "tutorial"])
def test_compiles_once_for_all_contexts_and_seeds(name, tmp_path):
    # tutorial with the GAN also covers the GAN inside a strategy; dgr's step is the same code as tutorial's.
    exp = tiny_experiment(name, seeds=2, **({"generator": "gan"} if name == "tutorial" else {}))
    traces = []
    step = exp.strategy.step

    def counting_step(*args):
        traces.append(1)
        return step(*args)

    exp.strategy = exp.strategy._replace(step=counting_step)
    result = execute(exp, quiet=True, save_samples=tmp_path)
    assert len(traces) == 1
    assert np.asarray(result.acc_matrix).shape == (2, 3, 3)
    assert np.all(np.isfinite(result.final_avg_acc))
    assert len(list(tmp_path.glob("*.png"))) == 2 * 3


@pytest.mark.parametrize("name", ["dgr", "bir"])
def test_frozen_trees_do_not_change_during_a_context(name):
    run = runner(name, active="seen") if name == "dgr" else runner(name)
    state = trained_to_context(run, 1)
    after, metrics = run.steps(state, ctx(1), jax.random.key(7))
    assert np.all(np.asarray(metrics["replay_loss"]) > 0)  # replay was on
    if name == "dgr":
        frozen = (state.prev_classifier, state.prev_generator)
        assert trees_equal(frozen, (after.prev_classifier, after.prev_generator))
        assert not trees_equal(state.classifier.params, after.classifier.params)
        assert not trees_equal(state.generator.params, after.generator.params)
        ended = run.end(after, ctx(1))
        current = (after.classifier.params, after.generator.params)
        assert trees_equal((ended.prev_classifier, ended.prev_generator), current)
    else:
        assert trees_equal(state.prev_params, after.prev_params)
        assert trees_equal(state.gates, after.gates)
        assert not trees_equal(state.model.params, after.model.params)
        assert trees_equal(run.end(after, ctx(1)).prev_params, after.model.params)


def test_replay_labels_are_the_frozen_classifiers_predictions():
    # Class-IL with the classes seen so far active (3S-2019): labels come from the frozen classifier's arg-max
    # over the 4 classes of contexts 1-2, and the current classifier learns them over all 6 active units.
    run = runner("dgr", active="seen")
    context, key = 2, jax.random.key(11)
    state = trained_to_context(run, context)
    # Frozen nets that replay varied samples and label them sharply, unlike the current ones, so a wrong
    # source of samples or labels shows.
    init = run.exp.setup.model.init(jax.random.key(42), jnp.zeros((1, 8, 8, 1)))
    sharp = jax.tree.map(lambda p: 30 * p, init)
    # ... whose favourite is unit 4, a class of the current context, outside the teacher's units.
    head = sharp["params"]["head"]
    sharp["params"]["head"] = {**head, "bias": head["bias"].at[4].add(1e4)}
    gen = make_generator("vae", (8, 8, 1), hidden=(32, 32), z_dim=8)
    varied = jax.tree.map(lambda p: 3 * p, gen.init(jax.random.key(43)).params)
    state = state.replace(prev_classifier=sharp, prev_generator=varied)
    # What the first step of the scan replays, recomputed from its key with the frozen nets.
    _, k_replay, _ = jax.random.split(jax.random.split(key, 60)[0], 3)
    x_r = jax.jit(gen.sample, static_argnums=2)(state.prev_generator, k_replay, 16)
    apply = jax.jit(run.exp.setup.model.apply)
    frozen, current = np.asarray(apply(state.prev_classifier, x_r)), apply(state.classifier.params, x_r)
    expected = frozen[:, :4].argmax(1)
    assert len(np.unique(expected)) > 1
    _, metrics = run.steps(state, ctx(context), key)
    loss = cross_entropy(current, expected, run.stream.active[context])
    np.testing.assert_allclose(metrics["replay_loss"][0], loss, rtol=1e-5)
    heads = replay_heads(run.exp.info, run.stream, ctx(context))
    np.testing.assert_array_equal(replay_labels(jnp.asarray(frozen), heads[0])[0], expected)


def test_task_il_replay_is_judged_by_every_earlier_context():
    exp = tiny_experiment("dgr", scenario="task", seeds=1)
    stream = one_seed(exp.streams)
    teacher_masks, student_masks, weights = replay_heads(exp.info, stream, ctx(2))
    np.testing.assert_allclose(weights, [0.5, 0.5, 0.0])
    np.testing.assert_array_equal(teacher_masks, student_masks)
    logits = jax.random.normal(key0, (16, 6))
    labels = np.asarray(replay_labels(logits, teacher_masks))
    for k in range(2):
        np.testing.assert_array_equal(labels[k], np.asarray(logits)[:, 2 * k : 2 * k + 2].argmax(1) + 2 * k)
    student = jax.random.normal(jax.random.key(1), (16, 6))
    loss = heads_loss(hard_target_loss, student, logits, (teacher_masks, student_masks, weights))
    per_context = [cross_entropy(student, labels[k], stream.active[k]) for k in range(2)]
    np.testing.assert_allclose(loss, np.mean(per_context), rtol=1e-6)


def test_distillation_temperature_squared():
    student, teacher = jax.random.normal(key0, (2, 8, 6))
    t_mask, s_mask = jnp.arange(6) < 4, jnp.ones(6, bool)
    plain = soft_target_loss(2.0, False)(student, teacher, t_mask, s_mask)
    squared = soft_target_loss(2.0, True)(student, teacher, t_mask, s_mask)
    np.testing.assert_allclose(squared, 4 * plain, rtol=1e-6)
    # Units outside the teacher's mask get target probability 0: their teacher logits do not matter.
    moved = teacher.at[:, 4:].add(5.0)
    np.testing.assert_allclose(soft_target_loss(2.0, False)(student, moved, t_mask, s_mask), plain, rtol=1e-6)
    assert get_strategy("dgr-distill").defaults("class")["t_squared"] is True


def test_published_defaults():
    assert get_strategy("dgr").defaults("class")["replay_batch"] == 128
    assert get_strategy("dgr").defaults("class")["z_dim"] == 100
    assert get_strategy("dgr-distill").defaults("class")["temperature"] == 2.0
    assert [get_strategy("bir").defaults(s)["dg_prop"] for s in ("task", "domain", "class")] == [
        0.0,
        0.1,
        0.1,
    ]


# ------------------------------------------------------------------ the convolutional VAE (split CIFAR-100)


def torch_conv_transpose(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """torch.nn.functional.conv_transpose2d by its definition, NHWC: input (i, j) adds x[i, j] @ w[a, b] to
    output (i stride - padding + a, j stride - padding + b)."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    size = (h - 1) * stride - 2 * padding + k
    out = np.zeros((n, size, size, w.shape[-1]))
    for i, j, a, b in np.ndindex(h, wd, k, k):
        r, c = i * stride - padding + a, j * stride - padding + b
        if 0 <= r < size and 0 <= c < size:
            out[:, r, c] += x[:, i, j] @ w[a, b]
    return out


def textbook_conv_transpose(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    """The transposed convolution as lax writes it: the input dilated by the stride, the kernel flipped."""
    pad = w.shape[0] - 1 - padding
    return jax.lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), [(pad, pad)] * 2, (stride, stride),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip


def projected_grads(f, x, w, r):
    return jax.grad(lambda x, w: jnp.sum(f(x, w) * r), (0, 1))(x, w)


def test_transposed_conv_is_torchs_and_so_are_its_gradients():
    from cljax.models.conv_layers import transposed_conv

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    for k, stride in ((4, 2), (3, 1)):  # the reference's deconv_layer: upsampling, and the output layer
        w = rng.normal(size=(k, k, 4, 5)).astype(np.float32)
        ours = functools.partial(transposed_conv, stride=stride, padding=1)
        np.testing.assert_allclose(ours(x, w), torch_conv_transpose(x, w, stride, 1), atol=1e-5)
        r = rng.normal(size=(2, 3 * stride, 3 * stride, 5)).astype(np.float32)
        theirs = functools.partial(textbook_conv_transpose, stride=stride, padding=1)
        for a, b in zip(projected_grads(ours, x, w, r), projected_grads(theirs, x, w, r), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_part_batch_norm_is_batch_norm_on_each_part_in_turn():
    from flax import linen as nn

    from cljax.models.conv_layers import PartBatchNorm

    x = jax.random.normal(key0, (8, 3, 3, 4)) * 2 + 1
    ours = PartBatchNorm()
    variables = ours.init(key0, x)
    out, upd = ours.apply(variables, x, True, (5, 3), mutable=["batch_stats"])
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    stats = variables["batch_stats"]
    expected = []
    for part in (x[:5], x[5:]):  # separate passes, one after the other
        y, new = flax_bn.apply(
            {"params": variables["params"], "batch_stats": stats}, part, mutable=["batch_stats"]
        )
        expected.append(y)
        stats = new["batch_stats"]
    np.testing.assert_allclose(out, jnp.concatenate(expected), atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(upd["batch_stats"][name], stats[name], rtol=1e-5, atol=1e-6)
    evaluated = nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply({**variables, **upd}, x)
    np.testing.assert_allclose(ours.apply({**variables, **upd}, x), evaluated, atol=1e-5)


def test_the_conv_vae_decodes_images_and_samples_on_its_running_averages():
    from cljax.models.generators import ConvVAE

    model = ConvVAE((32, 32, 3), (2, 2, 256), hidden=(8,), z_dim=4)
    variables = jax.jit(model.init)(key0, jnp.zeros((1, 2, 2, 256)), jnp.zeros((1, 4)))
    assert set(variables) == {"params", "batch_stats"}

    @functools.partial(jax.jit, static_argnums=(2, 3))
    def decode(variables, z, train=False, parts=None):
        return model.apply(variables, z, train, parts, method=ConvVAE.decode, mutable=["batch_stats"])[0]

    z = jax.random.normal(jax.random.key(1), (6, 4))
    images = decode(variables, z)
    assert images.shape == (6, 32, 32, 3)
    np.testing.assert_allclose(decode(variables, z[:3]), images[:3], atol=1e-5)  # samples don't interact
    trained = decode(variables, z, True, (3, 3))  # training: each part on its own batch statistics
    assert not np.allclose(trained[:3], images[:3], atol=1e-3)
    np.testing.assert_allclose(trained[:3], decode(variables, z[:3], True, (3,)), atol=1e-5)
