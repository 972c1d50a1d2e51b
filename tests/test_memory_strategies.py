"""ER, A-GEM, iCaRL and DER++: one compilation for every context, memories that hold what they should."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax
from cljax.memory import Candidates, class_balanced
from cljax.strategies.agem import agem_project
from cljax.strategies.memory_replay import replay_draw

TINY = dict(seeds=2, iters=3, batch_size=8)


def counting(fn, counter, name):
    def wrapped(*args):
        counter[name] = counter.get(name, 0) + 1
        return fn(*args)

    return wrapped


def train_all_contexts(exp):
    """The engine's own vmapped programs, jitted once, run over every context; returns states and traces."""
    traces: dict[str, int] = {}
    s = exp.strategy
    exp.strategy = s._replace(
        step=counting(s.step, traces, "step"), end_context=counting(s.end_context, traces, "end_context")
    )
    programs = exp.programs()
    keys = jax.random.split(jax.random.key(0), len(exp.seeds))
    states = programs["init"](keys, exp.images, exp.streams, exp.hparams)  # op by op: cheaper than compiling
    train = jax.jit(programs["train"])
    for c in range(exp.info.n_contexts):
        ctx_keys = jax.vmap(lambda k, c=c: jax.random.fold_in(k, c + 1))(keys)
        states, metrics = train(states, exp.images, exp.streams, jnp.int32(c), ctx_keys, exp.hparams)
        assert np.isfinite(np.asarray(metrics["loss"])).all()
    return states, traces


def stored_labels(exp, states, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each stored sample's context and network label, (groups, per_group)."""
    stream = jax.tree.map(lambda a: np.asarray(a[seed]), exp.streams)
    ctx = np.asarray(states.buffer.context[seed])
    slot = np.asarray(states.buffer.slot[seed])
    assert np.all(slot < stream.train_n[ctx])  # never a padded position
    labels = stream.label_map[ctx, np.asarray(exp.images.train_y)[stream.train_idx[ctx, slot]]]
    return ctx, labels


def accuracy(exp, states, seed: int) -> float:
    """Accuracy of one seed's final state on the whole test set (all classes, Class-IL)."""
    one = jax.tree.map(lambda a: a[seed], states)
    x = exp.images.test_x.astype(jnp.float32) / 255.0
    logits = jax.jit(exp.strategy.predict)(one, x)
    labels = np.asarray(exp.streams.label_map[seed, 0])[np.asarray(exp.images.test_y)]
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == labels))


@pytest.mark.parametrize(
    "strategy, scenario, options",
    [("er", "class", {"budget": 5}), ("agem", "task", {"total_budget": 30})],
)
def test_class_balanced_memory_compiles_once_and_keeps_its_budget(tiny_data, strategy, scenario, options):
    iters = dict(TINY, iters=40, batch_size=32, lr=0.003) if strategy == "er" else TINY
    config = cljax.RunConfig(strategy=strategy, scenario=scenario, options=options, **iters)
    exp = cljax.prepare(config, dataset=tiny_data)
    states, traces = train_all_contexts(exp)
    assert traces == {"step": 1, "end_context": 1}
    quota = options.get("budget") or options["total_budget"] // 10  # 10 classes seen at the end
    np.testing.assert_array_equal(states.buffer.count, np.full((2, 10), quota))
    for seed in range(2):
        ctx, labels = stored_labels(exp, states, seed)
        group = np.arange(10)[:, None]
        filled = np.broadcast_to(np.arange(ctx.shape[1])[None, :] < quota, ctx.shape)
        assert np.all((ctx == group // 2)[filled])
        assert np.all((labels % 2 == group % 2)[filled])
        if strategy == "er":  # fine-tuning keeps only the last context: 20 % in Class-IL
            assert accuracy(exp, states, seed) > 0.6


def test_icarl_compiles_once_herds_a_shrinking_budget_and_classifies_by_means(tiny_data):
    config = cljax.RunConfig(strategy="icarl", scenario="class", options={"total_budget": 20}, **TINY)
    exp = cljax.prepare(config, dataset=tiny_data)
    states, traces = train_all_contexts(exp)
    assert traces == {"step": 1, "end_context": 1}
    assert states.buffer.slot.shape == (2, 10, 10)  # 20 / 2 classes of the first context
    np.testing.assert_array_equal(states.buffer.count, np.full((2, 10), 2))  # 20 / 10 classes at the end
    for seed in range(2):
        _, labels = stored_labels(exp, states, seed)
        np.testing.assert_array_equal(labels[:, :2], np.repeat(np.arange(10)[:, None], 2, axis=1))
    assert bool(states.has_mean.all())
    np.testing.assert_allclose(np.linalg.norm(states.means, axis=-1), 1.0, rtol=1e-5)
    one = jax.tree.map(lambda a: a[0], states)
    scores = exp.strategy.predict(one, jnp.zeros((3, 28, 28, 1)))
    assert scores.shape == (3, 10) and bool((scores <= 0).all())


def test_derpp_reservoir_fills_inside_the_step(tiny_data):
    config = cljax.RunConfig(strategy="derpp", scenario="class", options={"total_budget": 100}, **TINY)
    exp = cljax.prepare(config, dataset=tiny_data)
    states, traces = train_all_contexts(exp)
    assert traces == {"step": 1, "end_context": 1}
    offered = 5 * TINY["iters"] * TINY["batch_size"]
    np.testing.assert_array_equal(states.buffer.seen, [offered, offered])
    np.testing.assert_array_equal(states.buffer.count, [[min(offered, 100)]] * 2)
    assert states.buffer.logits.shape == (2, 1, 100, 10)
    assert np.abs(np.asarray(states.buffer.logits[:, :, : min(offered, 100)])).sum(-1).min() > 0


# ---------------------------------------------------------------- pieces


def test_agem_projection_on_hand_made_gradients():
    g = {"w": jnp.array([1.0, 0.0]), "b": jnp.array([0.0])}
    ref = {"w": jnp.array([-1.0, 1.0]), "b": jnp.array([0.0])}
    projected = agem_project(g, ref, eps=0.0)
    np.testing.assert_allclose(projected["w"], [0.5, 0.5])  # g - (-1 / 2) ref
    dot = sum(float(jnp.vdot(projected[k], ref[k])) for k in g)
    assert abs(dot) < 1e-7  # no longer increases the reference loss
    aligned = {"w": jnp.array([-1.0, 3.0]), "b": jnp.array([2.0])}
    kept = agem_project(aligned, ref)
    jax.tree.map(np.testing.assert_array_equal, kept, aligned)  # g . g_ref >= 0: unchanged
    zero = jax.tree.map(jnp.zeros_like, ref)  # empty memory: nothing to protect
    jax.tree.map(np.testing.assert_array_equal, agem_project(g, zero), g)


def test_task_il_replay_weights_every_earlier_context_equally():
    buffer = class_balanced(groups=10, per_group=4)
    state = buffer.init()
    for c in range(3):
        groups = jnp.repeat(jnp.arange(2 * c, 2 * c + 2), 4)
        cand = Candidates(
            jnp.int32(c), jnp.arange(8), groups, jnp.ones(8, bool), jnp.arange(2 * c, 2 * c + 2)
        )
        state = jax.jit(buffer.add)(state, cand, jax.random.key(c))

    class Info:
        classes_per_context = 2

    draw, weights = jax.jit(replay_draw, static_argnums=(0, 4, 5))(
        Info, state, jnp.int32(3), jax.random.key(5), 128, True
    )
    ctx = np.asarray(draw.context)
    np.testing.assert_array_equal(ctx, np.arange(128) % 3)
    for c in range(3):
        np.testing.assert_allclose(np.asarray(weights)[ctx == c].sum(), 1 / 3, rtol=1e-6)
    assert np.all(np.asarray(draw.group) // 2 == ctx)
    _, uniform = replay_draw(Info, state, jnp.int32(3), jax.random.key(5), 128, per_context=False)
    np.testing.assert_allclose(uniform, 1 / 128)


@pytest.mark.parametrize(
    "strategy, scenario, options, message",
    [
        ("er", "class", {"budget": 0}, "budget"),
        ("agem", "task", {"budget": 100, "total_budget": 2000}, "not both"),
        ("er", "domain", {"total_budget": 9}, "total_budget"),
        ("derpp", "class", {"alpha": -1.0}, "alpha"),
        ("derpp", "class", {"beta": "x"}, "beta"),
        ("icarl", "class", {"temperature": 0.0}, "temperature"),
        ("icarl", "domain", {}, "class"),
        ("er", "class", {"lambda": 1.0}, "lambda"),
    ],
)
def test_bad_options_are_rejected_before_compiling(tiny_data, strategy, scenario, options, message):
    config = cljax.RunConfig(strategy=strategy, scenario=scenario, options=options)
    with pytest.raises(ValueError, match=message):
        cljax.prepare(config, dataset=tiny_data)


def test_icarl_takes_the_last_dense_layers_input_when_a_network_has_no_features_method(tiny_data):
    from cljax.models import TutorialCNN, penultimate

    assert not hasattr(TutorialCNN, "features")
    exp = cljax.prepare(cljax.RunConfig(strategy="icarl", scenario="class", model="cnn"), dataset=tiny_data)
    params = exp.setup.model.init(jax.random.key(0), jnp.zeros((3, 28, 28, 1)))
    assert penultimate(exp.setup.model, params, jnp.zeros((3, 28, 28, 1))).shape == (3, 50)  # fc 320-50-out


def test_resolved_config_records_the_budget():
    from cljax import RunConfig

    assert RunConfig(strategy="er").resolved().options["budget"] == 100
    perm = RunConfig(benchmark="perm-mnist", strategy="agem", scenario="domain")
    assert perm.resolved().options["budget"] == 10
    assert RunConfig(strategy="icarl").resolved().options["total_budget"] == 2000
    assert RunConfig(strategy="er", options={"total_budget": 500}).resolved().options["budget"] is None
