"""Baselines: fine-tuning on each context in turn (``none``) and training on all contexts (``joint``).

Neither has options; the only continuous setting, the classifier's learning rate, is the engine's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from cljax.batching import Batch, sample_context, sample_contexts_upto
from cljax.losses import cross_entropy
from cljax.strategies.base import (
    ClassifierState,
    Setup,
    Strategy,
    StrategySpec,
    apply_gradients,
    init_classifier,
    keep_state,
)


def classification_loss(setup: Setup, params: Any, batch: Batch) -> jax.Array:
    """Cross-entropy of the classifier on a batch, over each sample's active units."""
    return cross_entropy(setup.model.apply(params, batch.x), batch.y, batch.mask)


def _trainer(setup: Setup, sample, on_streams: bool) -> Strategy:
    def init(key, images, stream):
        del images, stream
        return init_classifier(setup, key)

    def learn(state: ClassifierState, images, stream, batch: Batch, key):
        del images, stream, key
        loss, grads = jax.value_and_grad(lambda p: classification_loss(setup, p, batch))(state.params)
        return apply_gradients(setup, state, grads), {"loss": loss}

    def step(state: ClassifierState, images, stream, context, key):
        batch = sample(setup.info, images, stream, context, key, setup.batch_size)
        return learn(state, images, stream, batch, key)

    def predict(state: ClassifierState, x):
        return setup.model.apply(state.params, x)

    return Strategy(
        init=init,
        step=step,
        end_context=keep_state,
        predict=predict,
        learn=learn if on_streams else None,
        consolidate=(lambda state, images, stream, key: state) if on_streams else None,
    )


def finetune(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Plain training on the current context: the lower bound every method must beat."""
    return _trainer(setup, sample_context, on_streams=True)


def joint(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Training on the union of all contexts' data (the upper bound).

    The engine still calls it once per context (n_contexts x iters steps in all), which equals one run of
    n_contexts x iters steps on all data and yields an accuracy matrix on the same grid as the others.
    On a task-free stream the upper bound is ``none`` on the ``random`` stream, as the reference runs it.
    """

    def sample_all(info, images, stream, context, key, batch_size):
        return sample_contexts_upto(info, images, stream, info.n_contexts - 1, key, batch_size)

    return _trainer(setup, sample_all, on_streams=False)


SPECS = (
    StrategySpec("none", finetune, "fine-tuning on each context in turn (lower bound)", task_free=True),
    StrategySpec("joint", joint, "training on all contexts' data at once (upper bound)"),
)
