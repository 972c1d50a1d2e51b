"""Hyperparameters are program inputs: every strategy built with traced values runs as with constants.

For each registered strategy that declares ``hyperparameters``, the same tiny run (init, a few steps on two
contexts with ``end_context`` after each, then ``predict``) is compiled once with the values as constants
and once with them as float32 arguments, vmapped over a leading run axis as the engine's programs are (the
strategy built inside the trace). Two runs with the constants' values must both equal the constant run;
changing one value must change its run only, without a new trace; a run must not depend on its neighbour.
Two programs per strategy keep the file compile-bound but short; BI-R, whose masks are drawn from a
traced proportion, is also compared with an unbatched traced program, one value at a time.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax
from cljax import hyper, optim
from cljax.batching import gather
from cljax.models import MLP
from cljax.strategies import REGISTRY, Strategy, StrategySpec
from cljax.strategies.bir import resolve_gates

ITERS = 3  # steps per context
# Adam turns rounding in a near-zero gradient into a step of up to lr (1e-3): params agree to a bit of it.
ATOL = 1e-5
CONTEXTS = 2  # the second one replays, distils or pays a penalty: every hyperparameter matters by then

# Small options where a strategy has them, and another value for each hyperparameter (lr: the engine's).
TINY: dict[str, dict[str, Any]] = {
    "icarl": {"total_budget": 20},
    "derpp": {"budget": 4},
    "dgr": {"gen_units": (16,), "z_dim": 4, "replay_batch": 8},
    "dgr-distill": {"gen_units": (16,), "z_dim": 4, "replay_batch": 8},
    "bir": {"units": (16,), "z_dim": 4, "replay_batch": 8},
    "tutorial": {"gen_units": (16,), "z_dim": 4, "replay_ratio": 0.5},
    "ewc": {"lambda": 100.0},
    "online-ewc": {"lambda": 100.0},
    "si": {"c": 1e4},  # large enough that three steps' importance shows
}
OTHER = {"gamma": 0.5, "dg_prop": 0.4}  # else twice the value

NAMES = [name for name, spec in REGISTRY.items() if spec.hyperparameters]
# XLA:CPU's older fusion code generator compiles these tiny programs in about half the time (same results).
jit = functools.partial(jax.jit, compiler_options={"xla_cpu_use_fusion_emitters": False})
ONE_BY_ONE = {"bir"}  # also run unbatched: the vmapped runs equal the runs one value at a time


@pytest.fixture(autouse=True)
def fast_compiles():
    """Tiny programs: compiling them without most of XLA's optimisations saves most of this file's time."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def prepared(name: str, tiny_data) -> cljax.Experiment:
    spec = REGISTRY[name]
    scenario = "class" if "class" in spec.scenarios else spec.scenarios[0]
    config = cljax.RunConfig(
        strategy=name,
        scenario=scenario,
        iters=ITERS,
        batch_size=8,
        lr=1e-3,
        model=MLP(10, (16,)),
        options=TINY.get(name, {}),
    )
    return cljax.prepare(config, dataset=tiny_data)


def run(strategy: Strategy, exp: cljax.Experiment, key: jax.Array) -> Any:
    """init, ITERS steps and end_context on each of the first CONTEXTS contexts, then predict."""
    images, stream = exp.images, jax.tree.map(lambda a: a[0], exp.streams)
    k_init, k_run = jax.random.split(key)

    def one_context(state, ck):
        context, k = ck
        k_steps, k_end = jax.random.split(k)
        keys = jax.random.split(k_steps, ITERS)
        state, metrics = jax.lax.scan(lambda s, k: strategy.step(s, images, stream, context, k), state, keys)
        return strategy.end_context(state, images, stream, context, k_end), metrics

    contexts = jnp.arange(CONTEXTS, dtype=jnp.int32)
    state = strategy.init(k_init, images, stream)
    state, metrics = jax.lax.scan(one_context, state, (contexts, jax.random.split(k_run, CONTEXTS)))
    batch = gather(exp.info, images, stream, jnp.zeros(16, jnp.int32), jnp.arange(16))
    return {"state": state, "metrics": metrics, "logits": strategy.predict(state, batch.x)}


def traced_build(spec: StrategySpec, exp: cljax.Experiment, h: dict[str, jax.Array]) -> Strategy:
    """What the engine does inside a program: the options with ``h`` in place, Adam at the traced lr."""
    setup = exp.setup._replace(optimizer=optim.adam(h["lr"]))
    return spec.build(setup, {**exp.config.options, **{k: v for k, v in h.items() if k != "lr"}})


def floats(tree: Any) -> list[np.ndarray]:
    return [np.asarray(a, np.float64) for a in jax.tree.leaves(tree)]


def assert_close(a: Any, b: Any) -> None:
    for x, y in zip(floats(a), floats(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=ATOL)


def differs(a: Any, b: Any) -> bool:
    pairs = zip(floats(a), floats(b), strict=True)
    return any(not np.allclose(x, y, rtol=1e-4, atol=10 * ATOL) for x, y in pairs)


def other(name: str, value: jax.Array) -> jax.Array:
    return jnp.float32(OTHER[name]) if name in OTHER else 2 * value


# trained by optimizers of their own (their learning rate is an option), not the run's: lr changes nothing
OWN_OPTIMIZERS = ("gen-classifier",)


@pytest.mark.parametrize("name", NAMES)
def test_traced_hyperparameters_are_inputs(name, tiny_data):
    spec = REGISTRY[name]
    exp = prepared(name, tiny_data)
    key = jax.random.key(0)
    names = ("lr", *spec.hyperparameters)
    h = hyper.values({**exp.config.options, "lr": exp.config.lr}, names)
    constant = jit(lambda k: run(exp.strategy, exp, k))(key)
    traces = []

    @jit
    def runs(hs, k):  # as the engine's programs: a leading run axis over the hyperparameters
        traces.append(1)
        return jax.vmap(lambda h: run(traced_build(spec, exp, h), exp, k))(hs)

    def pair(a: dict, b: dict) -> dict:
        return {k: jnp.stack([a[k], b[k]]) for k in names}

    same = runs(pair(h, h), key)
    for i in (0, 1):
        assert_close(run_of(same, i), constant)
    for hp in names:  # each value reaches the program: changing it changes that run, and only that one
        if hp == "lr" and name in OWN_OPTIMIZERS:
            continue
        changed = {**h, hp: other(hp, h[hp])}
        out = runs(pair(h, changed), key)
        assert_close(run_of(out, 0), constant)
        assert differs(run_of(out, 1), constant), f"{name}: {hp} did not change the run"
        if hp == names[-1]:  # a run's result does not depend on its place or its neighbour
            assert_close(run_of(runs(pair(changed, changed), key), 0), run_of(out, 1))
    assert len(traces) == 1
    if name in ONE_BY_ONE:
        single = jit(lambda h, k: run(traced_build(spec, exp, h), exp, k))
        assert_close(single(h, key), constant)
        assert_close(single(changed, key), run_of(out, 1))


def run_of(out: Any, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], out)


def test_every_builtin_declares_its_continuous_options():
    declared = {name: spec.hyperparameters for name, spec in REGISTRY.items() if spec.hyperparameters}
    assert declared == {
        "bir": ("temperature", "dg_prop"),
        "derpp": ("alpha", "beta"),
        "dgr": ("gen_lr",),
        "dgr-distill": ("gen_lr", "temperature"),
        "ewc": ("lambda",),
        "gen-classifier": ("gen_lr",),
        "icarl": ("temperature",),
        "lwf": ("temperature",),
        "online-ewc": ("lambda", "gamma"),
        "si": ("c", "damping"),
        "tutorial": ("lam", "tau", "gen_lr"),
    }


def test_options_that_could_be_none_resolve_to_numbers():
    gan = cljax.RunConfig(strategy="dgr", options={"generator": "gan"}).resolved().options
    assert gan["gen_lr"] == pytest.approx(2e-4)
    assert cljax.RunConfig(strategy="tutorial").resolved().options["gen_lr"] == pytest.approx(1e-3)
    assert cljax.RunConfig(strategy="dgr", options={"gen_lr": 0.01}).resolved().options["gen_lr"] == 0.01
    for scenario, gated in (("task", False), ("domain", True), ("class", True)):
        assert cljax.RunConfig(strategy="bir", scenario=scenario).resolved().options["gates"] is gated
    assert resolve_gates({"dg_prop": 0.0, "gates": True}, "split-mnist", "task")["gates"] is True
    with pytest.raises(ValueError, match="gen_lr"):
        hyper.values({"gen_lr": None}, ("gen_lr",))


def test_bir_gates_are_static_and_checked(tiny_data):
    # gates=True with nothing gated off: all-ones masks, so a grid over dg_prop may include 0
    exp = prepared("bir", tiny_data)
    setup = exp.setup
    strategy = REGISTRY["bir"].build(setup, {**exp.config.options, "dg_prop": 0.0, "gates": True})
    state = jit(strategy.init)(jax.random.key(0), exp.images, jax.tree.map(lambda a: a[0], exp.streams))
    assert all(bool(jnp.all(m == 1)) for m in jax.tree.leaves(state.gates))
    with pytest.raises(ValueError, match="gates"):
        REGISTRY["bir"].build(setup, {**exp.config.options, "dg_prop": 0.2, "gates": False})
    with pytest.raises(ValueError, match="dg_prop"):
        REGISTRY["bir"].build(setup, {**exp.config.options, "dg_prop": 1.0})


def test_validators_check_concrete_values_and_pass_tracers():
    from cljax.regularizers import check_range
    from cljax.strategies.dgr import positive_float
    from cljax.strategies.memory_replay import float_option

    assert positive_float("t", np.float32(2.0)) == 2.0  # NumPy scalars are numbers too
    assert check_range("c", jnp.float32(0.5), 0.0) == 0.5
    with pytest.raises(ValueError, match="t"):
        positive_float("t", -1.0)
    with pytest.raises(ValueError, match="alpha"):
        float_option("alpha", float("nan"))

    @jax.jit
    def through(x):
        return positive_float("t", x) + check_range("c", x, 0.0) + float_option("a", x)

    assert float(through(jnp.float32(-1.0))) == -3.0  # a tracer is not checked again
