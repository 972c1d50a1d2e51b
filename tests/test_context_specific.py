"""Separate networks per context and XdG (Task-IL), context by context and on task-free streams."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax
from cljax import engine
from cljax.batching import gather
from cljax.config import ConfigError

TINY = dict(benchmark="split-mnist", scenario="task", iters=8, batch_size=16, seeds=2, quiet=True)


def test_a_sample_trains_only_its_contexts_network(tiny_data):
    config = {k: v for k, v in TINY.items() if k != "quiet"} | {"seeds": 1}
    exp = engine.prepare(cljax.RunConfig(strategy="separate-networks", **config), tiny_data)
    strategy, stream = exp.strategy, jax.tree.map(lambda a: a[0], exp.streams)
    state = strategy.init(jax.random.key(0), exp.images, stream)
    batch = gather(exp.info, exp.images, stream, jnp.full((8,), 3, jnp.int32), jnp.arange(8))
    new, _ = jax.jit(strategy.learn)(state, exp.images, stream, batch, jax.random.key(1))
    changed = [
        c for c in range(5)
        if not all(np.array_equal(a[c], b[c]) for a, b in
                   zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True))
    ]  # fmt: skip
    assert changed == [3]  # its network and its Adam state only
    assert state.params["params"]["layers_0"]["weight"].shape == (5, 100, 784)  # 2 x 100 units per context


def test_xdg_without_gating_is_fine_tuning_and_gates_90_percent_by_default(tiny_data):
    none = cljax.run(strategy="none", dataset=tiny_data, **TINY)
    ungated = cljax.run(strategy="xdg", dataset=tiny_data, options={"gating_prop": 0.0}, **TINY)
    np.testing.assert_array_equal(ungated.acc_matrix, none.acc_matrix)
    config = {k: v for k, v in TINY.items() if k != "quiet"}
    exp = engine.prepare(cljax.RunConfig(strategy="xdg", **config), tiny_data)
    assert exp.config.options["gating_prop"] == 0.9
    gates = exp.strategy.init(jax.random.key(0), exp.images, jax.tree.map(lambda a: a[0], exp.streams)).gates
    assert all((np.asarray(g).sum(axis=-1) == 400 - 360).all() for g in gates)  # per layer (contexts, 400)
    assert not np.array_equal(np.asarray(gates[0])[0], np.asarray(gates[0])[1])  # a mask per context


@pytest.mark.parametrize("strategy", ["separate-networks", "xdg"])
def test_both_learn_from_a_task_free_stream_in_one_program(strategy, tiny_data):
    before = engine.programs_compiled()
    result = cljax.run(strategy=strategy, dataset=tiny_data, stream="fuzzy-boundaries", fuzziness=2, **TINY)
    assert engine.programs_compiled() - before == 3
    assert np.mean(result.final_avg_acc) > 80  # each context keeps its own units' component
    with pytest.raises(ConfigError, match="task"):
        cljax.run(strategy=strategy, dataset=tiny_data, **{**TINY, "scenario": "class"})
