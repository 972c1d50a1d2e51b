"""Experience replay (ER): train on the current batch and on a batch of stored samples.

Protocol (shared/PROTOCOL.md; NMI-2022 and GMvandeVen/continual-learning): 100 randomly chosen samples per
class are stored at the end of each context; every iteration adds a replay batch of 128 from the memory
and the loss is (1/t) L_current + (1 - 1/t) L_replay for the t-th context; Task-IL replays every earlier
context equally (ceil(128/(t-1)) each, losses averaged). Published split-MNIST accuracy (NMI-2022):
93.75 (Domain-IL), 88.79 (Class-IL). On a task-free stream, the reference's stream ER instead
(:mod:`cljax.strategies.stream_replay`: a reservoir of 100 samples in all).

No continuous options (``StrategySpec.hyperparameters`` is empty): the budget sets the memory's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cljax.losses import replay_weight
from cljax.strategies.base import Setup, Strategy, StrategySpec, apply_gradients
from cljax.strategies.memory_replay import (
    BUDGET_OPTIONS,
    ReplayState,
    budget_resolver,
    class_memory_strategy,
    concat,
    current_and_replay,
    per_sample_cross_entropy,
    resolve_budget,
)
from cljax.strategies.stream_replay import TASK_FREE_BUDGET, stream_er


def er(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Experience replay from a class-balanced memory.

    Options: ``budget`` (samples per class; default the benchmark's published one, 100 on split MNIST) or
    ``total_budget`` (samples in all, shared by the classes seen so far); not both.
    """
    budget = resolve_budget(setup.info, options or {})
    if setup.task_free:
        return stream_er(setup, budget)

    def step(state: ReplayState, images, stream, context, key):
        current, replay, w_replay = current_and_replay(setup, state.buffer, images, stream, context, key)
        batch = concat(current, replay)  # one forward pass for both
        rnt = replay_weight(context)
        n = setup.batch_size
        weights = jnp.concatenate([jnp.full((n,), rnt / n), (1.0 - rnt) * w_replay])

        def loss_fn(params):
            logits = setup.model.apply(params, batch.x)
            return jnp.sum(weights * per_sample_cross_entropy(logits, batch.y, batch.mask))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_gradients(setup, state, grads), {"loss": loss}

    return class_memory_strategy(setup, budget, step)


SPECS = (
    StrategySpec(
        "er",
        er,
        "experience replay, 100 random samples per class, loss (1/t) L_cur + (1-1/t) L_replay (NMI-2022)",
        defaults=lambda scenario: dict(BUDGET_OPTIONS),
        resolve=budget_resolver(),
        task_free=True,
        update_every=1,  # the reference's --replay-update (compare_task_free.py)
        stream_defaults=lambda scenario: dict(TASK_FREE_BUDGET),
    ),
)
