"""The training loop: one compilation for every context and seed, scan == loop, vmap == one by one."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import cljax
from cljax.compilation import compile_lowered, compiler_options, enable_compilation_cache
from cljax.engine import NonFiniteLossError, train_context
from cljax.strategies import get_strategy

TINY = dict(benchmark="split-mnist", iters=100, batch_size=32, lr=0.003, quiet=True)


def counting(fn, counter, key):
    """Wrap ``fn`` so that every Python trace of it is counted."""

    def wrapped(*args):
        counter[key] = counter.get(key, 0) + 1
        return fn(*args)

    return wrapped


def test_one_trace_for_all_contexts_and_seeds(tiny_data):
    exp = cljax.prepare(
        cljax.RunConfig(strategy="none", scenario="class", seeds=3, iters=5, batch_size=8), dataset=tiny_data
    )
    traces: dict[str, int] = {}
    s = exp.strategy
    exp.strategy = s._replace(
        step=counting(s.step, traces, "step"),
        end_context=counting(s.end_context, traces, "end_context"),
        predict=counting(s.predict, traces, "predict"),
    )
    result = cljax.execute(exp, quiet=True)
    assert np.asarray(result.acc_matrix).shape == (3, 5, 5)
    assert traces == {"step": 1, "end_context": 1, "predict": 1}


def test_a_repeated_run_loads_its_programs_from_the_disk_cache(tiny_data, disk_cache):
    folder, hits = disk_cache
    assert enable_compilation_cache() == folder
    config = cljax.RunConfig(strategy="none", scenario="class", seeds=2, iters=5, batch_size=8)
    first = cljax.execute(cljax.prepare(config, dataset=tiny_data), quiet=True)
    stored = {p.name for p in folder.iterdir()}
    assert stored and not hits
    cljax.engine.clear_program_cache()  # as a new process would: nothing compiled in memory
    second = cljax.execute(cljax.prepare(config, dataset=tiny_data), quiet=True)
    assert len(hits) >= 3  # init, train and evaluate: loaded, not compiled
    assert {p.name for p in folder.iterdir()} == stored
    assert second.acc_matrix == first.acc_matrix and second.environment["compilation_cache"]


@pytest.mark.parametrize("strategy", ["none", "dgr"])
def test_the_quickly_compiled_initialisation_gives_the_same_state(tiny_data, strategy):
    """init runs once, so it compiles with fewer optimisations; the networks it draws must not change."""
    assert compiler_options(runs_once=True) != compiler_options()
    config = cljax.RunConfig(strategy=strategy, scenario="class", seeds=2, iters=5, batch_size=8)
    exp = cljax.prepare(config, dataset=tiny_data)
    keys = jax.vmap(jax.random.key)(jax.numpy.asarray(exp.seeds, dtype=jax.numpy.uint32))
    args = (keys, exp.images, exp.streams, exp.hparams)
    lowered = jax.jit(exp.programs()["init"]).lower(*args)
    quick, optimised = (compile_lowered(lowered, runs_once)(*args) for runs_once in (True, False))
    assert jax.tree.structure(quick) == jax.tree.structure(optimised)
    for a, b in zip(jax.tree.leaves(quick), jax.tree.leaves(optimised), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("active", ["all", "seen"])
def test_fine_tuning_forgets_and_joint_does_not(tiny_data, active):
    none = cljax.run(strategy="none", scenario="class", class_il_active=active, dataset=tiny_data, **TINY)
    joint = cljax.run(strategy="joint", scenario="class", class_il_active=active, dataset=tiny_data, **TINY)
    acc_none, acc_joint = np.asarray(none.acc_matrix[0]), np.asarray(joint.acc_matrix[0])
    assert np.diag(acc_none).min() > 90  # each context is learned...
    assert acc_none[-1, :-1].max() < 10  # ...and forgotten in Class-IL
    assert acc_joint[-1].min() > 90
    assert none.forgetting[0] > 80 and joint.forgetting[0] < 10


def test_task_il_masks_make_fine_tuning_forget_less(tiny_data):
    task = cljax.run(strategy="none", scenario="task", dataset=tiny_data, **TINY)
    klass = cljax.run(strategy="none", scenario="class", dataset=tiny_data, **TINY)
    assert task.mean > klass.mean + 20


def test_vmapped_seeds_equal_separate_runs(tiny_data):
    both = cljax.run(strategy="none", scenario="domain", seeds=2, first_seed=4, dataset=tiny_data, **TINY)
    for i, seed in enumerate((4, 5)):
        alone = cljax.run(
            strategy="none", scenario="domain", seeds=1, first_seed=seed, dataset=tiny_data, **TINY
        )
        np.testing.assert_allclose(both.context_loss[i], alone.context_loss[0], rtol=1e-4)
        np.testing.assert_allclose(both.acc_matrix[i], alone.acc_matrix[0], atol=3.0)


def test_scan_equals_stepping_in_a_python_loop(tiny_data):
    exp = cljax.prepare(cljax.RunConfig(strategy="none", iters=6, batch_size=8), dataset=tiny_data)
    stream = jax.tree.map(lambda a: a[0], exp.streams)
    strategy, context, key = exp.strategy, jax.numpy.int32(1), jax.random.key(3)
    state0 = strategy.init(jax.random.key(0), exp.images, stream)
    scanned, _ = jax.jit(lambda s: train_context(strategy, 6, s, exp.images, stream, context, key))(state0)
    step_key, _ = jax.random.split(key)
    state = state0
    for k in jax.random.split(step_key, 6):
        state, _ = strategy.step(state, exp.images, stream, context, k)
    # Compiled and eager dots round differently, and Adam turns a rounding difference in a near-zero
    # gradient into a weight change of up to ~1e-6; a wrong key or step order moves weights by ~lr = 1e-3.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), scanned.params, state.params
    )


def test_nan_loss_names_context_and_iteration(tiny_data):
    exp = cljax.prepare(cljax.RunConfig(strategy="none", iters=5, batch_size=8), dataset=tiny_data)
    step = exp.strategy.step

    def poisoned(state, images, stream, context, key):
        state, metrics = step(state, images, stream, context, key)
        bad = (context == 1) & (state.opt_state[0].count == 5 + 3)  # 3rd iteration of the 2nd context
        return state, {"loss": jax.numpy.where(bad, jax.numpy.nan, metrics["loss"])}

    exp.strategy = exp.strategy._replace(step=poisoned)
    with pytest.raises(NonFiniteLossError, match="context 2, iteration 3"):
        cljax.execute(exp, quiet=True)


def test_result_has_the_documented_keys(tiny_data):
    result = cljax.run(strategy="none", scenario="task", seeds=2, dataset=tiny_data, **TINY).to_dict()
    for key in (
        "benchmark",
        "scenario",
        "strategy",
        "seeds",
        "acc_matrix",
        "final_avg_acc",
        "mean",
        "sem",
        "train_seconds",
        "compile_seconds",
        "config",
    ):
        assert key in result
    assert result["seeds"] == [0, 1]
    assert len(result["final_avg_acc"]) == 2
    assert result["mean"] == pytest.approx(np.mean(result["final_avg_acc"]))
    assert result["config"]["iters"] == 100


def test_config_errors_come_before_loading_data():
    with pytest.raises(
        cljax.ConfigError, match="strategy: unknown value 'fine-tune'; choose one of: none, joint"
    ):
        cljax.run(strategy="fine-tune", data_dir="/nonexistent")
    with pytest.raises(cljax.ConfigError, match="iters"):
        cljax.run(iters=0, data_dir="/nonexistent")
    with pytest.raises(cljax.ConfigError, match="lr"):
        cljax.run(lr=float("nan"), data_dir="/nonexistent")


def test_defaults_are_the_published_protocol():
    config = cljax.RunConfig(benchmark="perm-mnist").resolved()
    assert (config.iters, config.batch_size, config.lr, config.model) == (5000, 128, 1e-4, "mlp-1000")
    config = cljax.RunConfig().resolved()
    assert (config.iters, config.batch_size, config.lr, config.model) == (2000, 128, 1e-3, "mlp")
    assert get_strategy("none").scenarios == ("task", "domain", "class")
