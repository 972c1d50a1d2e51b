"""Averaged gradient episodic memory (A-GEM; Chaudhry et al., ICLR 2019).

The gradient on the current batch is projected whenever it would increase the loss on a batch of stored
samples: if g . g_ref < 0, g <- g - (g . g_ref) / (|g_ref|^2 + 1e-7) g_ref. Protocol (shared/PROTOCOL.md;
NMI-2022 and GMvandeVen/continual-learning): 100 random samples per class, a reference batch of 128
(Task-IL: every earlier context equally, losses averaged), the current loss unweighted. Published
split-MNIST accuracy (NMI-2022): 98.54 (Task-IL), 87.67 (Domain-IL), 65.10 (Class-IL).

No continuous options (``StrategySpec.hyperparameters`` is empty): the budget sets the memory's shape and
the projection's eps is the reference's constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cljax.strategies.base import Setup, Strategy, StrategySpec, apply_gradients
from cljax.strategies.memory_replay import (
    BUDGET_OPTIONS,
    ReplayState,
    budget_resolver,
    class_memory_strategy,
    current_and_replay,
    per_sample_cross_entropy,
    resolve_budget,
)
from cljax.strategies.stream_replay import TASK_FREE_BUDGET, stream_agem

EPS_AGEM = 1e-7  # the reference's eps_agem


def tree_vdot(a: Any, b: Any) -> jax.Array:
    """The dot product of two pytrees of arrays, as if each were flattened into one vector."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def agem_project(grads: Any, ref_grads: Any, eps: float = EPS_AGEM) -> Any:
    """A-GEM's projection: g - (g . g_ref) / (|g_ref|^2 + eps) g_ref if g . g_ref < 0, else g."""
    angle = tree_vdot(grads, ref_grads)
    scale = jnp.where(angle < 0, angle / (tree_vdot(ref_grads, ref_grads) + eps), 0.0)
    return jax.tree.map(lambda g, r: g - scale * r, grads, ref_grads)


def agem(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """A-GEM with a class-balanced memory (options ``budget`` or ``total_budget``, as for ``er``)."""
    budget = resolve_budget(setup.info, options or {})
    if setup.task_free:
        return stream_agem(setup, budget, agem_project)

    def step(state: ReplayState, images, stream, context, key):
        current, replay, w_replay = current_and_replay(setup, state.buffer, images, stream, context, key)
        n = setup.batch_size
        batches = jax.tree.map(lambda a, b: jnp.stack([a, b]), current, replay)
        weights = jnp.stack([jnp.full((n,), 1.0 / n), w_replay])

        def loss_fn(params, batch, w):
            logits = setup.model.apply(params, batch.x)
            return jnp.sum(w * per_sample_cross_entropy(logits, batch.y, batch.mask))

        # The current and the reference gradient side by side: one batched forward and backward pass.
        losses, both = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0, 0))(
            state.params, batches, weights
        )
        grads = agem_project(jax.tree.map(lambda g: g[0], both), jax.tree.map(lambda g: g[1], both))
        return apply_gradients(setup, state, grads), {"loss": losses[0]}

    return class_memory_strategy(setup, budget, step)


SPECS = (
    StrategySpec(
        "agem",
        agem,
        "A-GEM: project the gradient onto the stored samples' half-space, 100 per class (NMI-2022)",
        defaults=lambda scenario: dict(BUDGET_OPTIONS),
        resolve=budget_resolver(),
        task_free=True,
        update_every=1,  # the reference's --replay-update (compare_task_free.py)
        stream_defaults=lambda scenario: dict(TASK_FREE_BUDGET),
    ),
)
