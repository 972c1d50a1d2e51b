"""Replay on a task-free stream: a reservoir memory filled as the stream passes (ER and A-GEM).

The reference (GMvandeVen/continual-learning, ``train/train_stream.py``,
``models/cl/memory_buffer_stream.py``, ``models/classifier_stream.py``) keeps one memory of
``--budget`` samples in all (100 on split MNIST) and offers it every sample of every batch by reservoir
sampling, after the batch has been trained on. Replay comes from the model as it was at the last
consolidation (``previous_model``, a copy made every ``--replay-update`` iterations, 1 in
``compare_task_free.py``), so nothing is replayed before the first one; a replayed batch is
``min(batch, stored)`` samples drawn without replacement from that copy's memory, with their stored
labels (and, Task-IL, their contexts). ER trains on ``0.5 L_current + 0.5 L_replay``; A-GEM on
``L_current`` alone, its gradient projected whenever it points against the replayed samples'. iCaRL
(Class-IL; ``--bce --prototypes`` in ``compare_task_free.py``) trains as ER with binary cross-entropy
over all classes and classifies by the nearest mean of the memory's samples of each class, in the
normalised features of the classifier's last hidden layer (``classify_with_prototypes``).

Its ``step`` and ``end_context`` (every Strategy has them) run the same learner on announced contexts,
consolidating at each boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax.batching import Batch, gather
from cljax.memory import BufferState, Items, l2_normalize, reservoir
from cljax.models.registry import penultimate_width
from cljax.strategies.base import (
    ClassifierState,
    Setup,
    Strategy,
    apply_gradients,
    context_steps,
    init_classifier,
)
from cljax.strategies.memory_replay import Budget, features, per_sample_cross_entropy

# The reference's rnt, the weight of the current batch when a replayed one is added (train_stream.py).
CURRENT_WEIGHT = 0.5
NO_EXEMPLARS = -1e8  # score of a class without samples in the memory (below any -squared distance >= -4)
# Its default --budget on a task-free stream: samples in all (params/options.py, params/param_values.py).
TASK_FREE_BUDGET = {"budget": None, "total_budget": 100}


class StreamReplayState(ClassifierState):
    """Classifier, the memory the stream fills, and the memory as it was at the last consolidation."""

    memory: BufferState
    replay: BufferState
    consolidated: jax.Array  # bool (): whether there has been a consolidation, and so anything to replay


def draw_without_replacement(memory: BufferState, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Positions of ``min(n, stored)`` samples of a one-group memory, drawn without replacement, and which
    of the ``min(n, capacity)`` returned positions are real draws (the rest stand in for empty slots)."""
    capacity = memory.slot.shape[1]
    stored = jnp.arange(capacity) < memory.count[0]
    order = jnp.argsort(jnp.where(stored, jax.random.uniform(key, (capacity,)), 2.0))
    take = min(n, capacity)
    return order[:take], jnp.arange(take) < memory.count[0]


def replayed(setup: Setup, images, stream, replay: BufferState, key: jax.Array) -> tuple[Batch, jax.Array]:
    """The replayed batch (each sample on its stored context's units in Task-IL, on all units otherwise)
    and its per-sample weights: 1 / stored over the real draws."""
    position, valid = draw_without_replacement(replay, key, setup.batch_size)
    batch = gather(setup.info, images, stream, replay.context[0, position], replay.slot[0, position])
    weights = jnp.where(valid, 1.0 / jnp.maximum(valid.sum(), 1), 0.0)
    return batch, weights


class StreamMeansState(StreamReplayState):
    """As :class:`StreamReplayState`, with each class's mean feature over the memory (iCaRL)."""

    means: jax.Array  # float32 (n_out, F), L2-normalised
    has_mean: jax.Array  # bool (n_out,): the class has samples in the memory


def stream_replay_strategy(
    setup: Setup,
    budget: Budget,
    update: Callable[..., tuple[ClassifierState, dict[str, jax.Array]]],
    nearest_mean: bool = False,
) -> Strategy:
    """A stream learner with a reservoir memory; ``update(state, current, replay, weights, has_replay)``
    trains the classifier on one batch and returns (classifier state, metrics). ``nearest_mean``: every
    consolidation also takes each class's mean feature over the memory, and ``predict`` classifies by
    the nearest one."""
    info = setup.info
    memory = reservoir(budget.capacity(info))  # a per-class budget counts every class of the stream

    def init(key, images, stream):
        del images, stream
        classifier = init_classifier(setup, key)
        empty = memory.init()
        parts = (classifier.params, classifier.opt_state, empty, empty, jnp.asarray(False))
        if not nearest_mean:
            return StreamReplayState(*parts)
        width = penultimate_width(setup.model, info.input_shape)
        no_means = jnp.zeros((info.n_out, width), jnp.float32)
        return StreamMeansState(*parts, no_means, jnp.zeros((info.n_out,), bool))

    def learn(state: StreamReplayState, images, stream, batch: Batch, key):
        k_replay, k_memory = jax.random.split(jax.random.fold_in(key, 2))
        replay, weights = replayed(setup, images, stream, state.replay, k_replay)
        classifier, metrics = update(state, batch, replay, weights, state.consolidated)
        offered = Items(batch.context, batch.slot, jnp.zeros((batch.context.shape[0], 0), jnp.float32))
        stored = memory.add(state.memory, offered, k_memory)
        return state.replace(params=classifier.params, opt_state=classifier.opt_state, memory=stored), metrics

    def consolidate(state: StreamReplayState, images, stream, key):
        del key
        state = state.replace(replay=state.memory, consolidated=jnp.asarray(True))
        if not nearest_mean:
            return state
        means, has_mean = class_means(setup, state.params, state.memory, images, stream)
        return state.replace(means=means, has_mean=has_mean)

    step, end_context = context_steps(setup, learn, consolidate)

    def predict(state: StreamReplayState, x):
        if not nearest_mean:
            return setup.model.apply(state.params, x)
        f = features(setup, state.params, x)
        sq_dist = jnp.sum(jnp.square(f[:, None, :] - state.means[None, :, :]), axis=-1)
        return jnp.where(state.has_mean[None, :], -sq_dist, NO_EXEMPLARS)

    return Strategy(init, step, end_context, predict, learn=learn, consolidate=consolidate)


def class_means(
    setup: Setup, params: Any, memory: BufferState, images, stream
) -> tuple[jax.Array, jax.Array]:
    """Each class's mean normalised feature over the memory's samples (renormalised), and which classes
    have samples there."""
    batch = gather(setup.info, images, stream, memory.context[0], memory.slot[0])
    stored = jnp.arange(memory.slot.shape[1]) < memory.count[0]
    member = (batch.y[None, :] == jnp.arange(setup.info.n_out)[:, None]) & stored[None, :]  # (n_out, M)
    f = features(setup, params, batch.x)
    counts = member.sum(axis=1)
    means = l2_normalize((member.astype(f.dtype) @ f) / jnp.maximum(counts, 1)[:, None])
    return means, counts > 0


def replay_loss(setup: Setup, params: Any, batch: Batch, weights: jax.Array) -> jax.Array:
    """Weighted cross-entropy of the replayed samples, each over its active units."""
    logits = setup.model.apply(params, batch.x)
    return jnp.sum(weights * per_sample_cross_entropy(logits, batch.y, batch.mask))


def current_loss(setup: Setup, params: Any, batch: Batch) -> jax.Array:
    logits = setup.model.apply(params, batch.x)
    return jnp.mean(per_sample_cross_entropy(logits, batch.y, batch.mask))


def stream_er(setup: Setup, budget: Budget) -> Strategy:
    """ER on a stream: ``0.5 L_current + 0.5 L_replay`` once there is something to replay."""

    def update(state, current, replay, weights, has_replay):
        def loss_fn(params):
            cur = current_loss(setup, params, current)
            rep = replay_loss(setup, params, replay, weights)
            total = jnp.where(has_replay, CURRENT_WEIGHT * cur + (1.0 - CURRENT_WEIGHT) * rep, cur)
            return total, (cur, rep)

        (loss, (cur, rep)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(setup, state, grads), {"loss": loss, "loss_current": cur, "loss_replay": rep}

    return stream_replay_strategy(setup, budget, update)


def stream_icarl(setup: Setup, budget: Budget) -> Strategy:
    """iCaRL on a stream: ``0.5 BCE_current + 0.5 BCE_replay`` over all classes (each summed over the
    classes, averaged over the batch), nearest mean of the memory's samples to classify."""

    def bce(params, batch, weights):
        logits = setup.model.apply(params, batch.x)
        targets = jax.nn.one_hot(batch.y, logits.shape[-1])
        return jnp.sum(weights * optax.sigmoid_binary_cross_entropy(logits, targets).sum(axis=-1))

    def update(state, current, replay, weights, has_replay):
        n = current.y.shape[0]

        def loss_fn(params):
            cur = bce(params, current, jnp.full((n,), 1.0 / n))
            rep = bce(params, replay, weights)
            total = jnp.where(has_replay, CURRENT_WEIGHT * cur + (1.0 - CURRENT_WEIGHT) * rep, cur)
            return total, (cur, rep)

        (loss, (cur, rep)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(setup, state, grads), {"loss": loss, "loss_current": cur, "loss_replay": rep}

    return stream_replay_strategy(setup, budget, update, nearest_mean=True)


def stream_agem(setup: Setup, budget: Budget, project: Callable[[Any, Any], Any]) -> Strategy:
    """A-GEM on a stream: the current batch's gradient, projected against the replayed samples'."""

    def update(state, current, replay, weights, has_replay):
        cur, grads = jax.value_and_grad(lambda p: current_loss(setup, p, current))(state.params)
        rep, ref = jax.value_and_grad(lambda p: replay_loss(setup, p, replay, weights))(state.params)
        projected = project(grads, ref)
        grads = jax.tree.map(lambda g, q: jnp.where(has_replay, q, g), grads, projected)
        return apply_gradients(setup, state, grads), {"loss": cur, "loss_replay": rep}

    return stream_replay_strategy(setup, budget, update)
