"""iCaRL (Rebuffi et al., CVPR 2017), as the reference implementation runs it on split MNIST.

Exemplars chosen by herding on L2-normalised features join the training set; the loss is binary
cross-entropy over the classes seen so far, whose targets for the classes of earlier contexts are the
previous model's sigmoid(z / T) (binary distillation, T = 2); classification is by the nearest mean of
exemplars. Protocol (shared/PROTOCOL.md; 3S-2019, GMvandeVen/continual-learning): a total budget of 2000
shared by the classes seen so far (split MNIST Class-IL: 94.57 +- 0.11). Class-IL only.

Hyperparameters (inputs of the compiled programs, :mod:`cljax.hyper`): ``temperature``. Static: the budget
(``total_budget`` / ``budget``: the memory's shape).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax.batching import gather
from cljax.memory import BufferState, herding, l2_normalize, truncate
from cljax.memory import sample as buffer_sample
from cljax.strategies.base import Setup, Strategy, StrategySpec, apply_gradients, init_classifier
from cljax.strategies.memory_replay import (
    BUDGET_OPTIONS,
    ReplayState,
    budget_resolver,
    check_features,
    context_candidates,
    draw_current,
    features,
    features_of,
    float_option,
    n_groups,
    resolve_budget,
)
from cljax.strategies.stream_replay import TASK_FREE_BUDGET, stream_icarl

TOTAL_BUDGET = 2000  # 3S-2019
TEMPERATURE = 2.0  # 3S-2019 / NMI-2022 distillation temperature
NO_EXEMPLARS = -1e8  # score of a class without exemplars: below every negative squared distance (>= -4)


class ICaRLState(ReplayState):
    """iCaRL's state: the classifier, its exemplars, the previous model and the exemplar means."""

    previous: Any  # params after the previous context: the teacher for binary distillation
    means: jax.Array  # float32 (classes, F): normalised mean of each class's normalised exemplar features
    has_mean: jax.Array  # bool (classes,)


def icarl(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """iCaRL. Options: ``total_budget`` (default 2000, 3S-2019) or ``budget`` per class; ``temperature``."""
    options = options or {}
    info = setup.info
    check_features(setup, "icarl")
    budget = resolve_budget(info, options, default_total=TOTAL_BUDGET)
    if setup.task_free:
        return stream_icarl(setup, budget)
    temperature = float_option("temperature", options.get("temperature", TEMPERATURE), strict=True)
    buffer = herding(n_groups(info), budget.per_group(info))
    cpc, n_out = info.classes_per_context, info.n_out
    units = jnp.arange(n_out)

    def init(key, images, stream):
        del images, stream
        classifier = init_classifier(setup, key)
        dummy = jnp.zeros((1, *info.input_shape), jnp.float32)
        width = jax.eval_shape(lambda p: features(setup, p, dummy), classifier.params).shape[-1]
        return ICaRLState(
            params=classifier.params,
            opt_state=classifier.opt_state,
            buffer=buffer.init(),
            previous=classifier.params,
            means=jnp.zeros((n_out, width), jnp.float32),
            has_mean=jnp.zeros((n_out,), bool),
        )

    def step(state: ICaRLState, images, stream, context, key):
        k_cur, k_mem, k_mix = jax.random.split(key, 3)
        n = setup.batch_size
        # A uniform batch from the union of the context's samples and the exemplars.
        ctx, slot = draw_current(stream, context, k_cur, n)
        stored = buffer_sample(state.buffer, k_mem, n)
        n_current, n_stored = stream.train_n[context], state.buffer.size
        from_memory = jax.random.uniform(k_mix, (n,)) * (n_current + n_stored) >= n_current
        batch = gather(
            info,
            images,
            stream,
            jnp.where(from_memory, stored.context, ctx),
            jnp.where(from_memory, stored.slot, slot),
        )
        seen = units < (context + 1) * cpc
        earlier = units < context * cpc
        teacher = jax.nn.sigmoid(setup.model.apply(state.previous, batch.x) / temperature)
        targets = jnp.where(earlier, teacher, jax.nn.one_hot(batch.y, n_out))

        def loss_fn(params):
            logits = setup.model.apply(params, batch.x)
            bce = optax.sigmoid_binary_cross_entropy(logits, targets)
            return jnp.sum(jnp.where(seen, bce, 0.0), axis=-1).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_gradients(setup, state, grads), {"loss": loss}

    def exemplar_means(params: Any, stored: BufferState, images, stream) -> tuple[jax.Array, jax.Array]:
        groups, per_group = stored.slot.shape
        feats = features_of(setup, params, images, stream, stored.context.ravel(), stored.slot.ravel())
        feats = feats.reshape(groups, per_group, -1)
        filled = (jnp.arange(per_group)[None, :] < stored.count[:, None])[..., None]
        total = jnp.sum(jnp.where(filled, feats, 0.0), axis=1)
        return l2_normalize(total / jnp.maximum(stored.count, 1)[:, None]), stored.count > 0

    def end_context(state: ICaRLState, images, stream, context, key):
        quota = budget.quota(info, context)
        candidates = context_candidates(info, images, stream, context)
        feats = features_of(
            setup, state.params, images, stream, jnp.full_like(candidates.slot, context), candidates.slot
        )
        stored = buffer.add(truncate(state.buffer, quota), candidates._replace(features=feats), key, quota)
        means, has_mean = exemplar_means(state.params, stored, images, stream)
        return state.replace(buffer=stored, previous=state.params, means=means, has_mean=has_mean)

    def predict(state: ICaRLState, x):
        f = features(setup, state.params, x)
        sq_dist = (
            jnp.sum(f * f, axis=1, keepdims=True)
            - 2.0 * f @ state.means.T
            + jnp.sum(state.means * state.means, axis=1)[None, :]
        )
        return jnp.where(state.has_mean[None, :], -sq_dist, NO_EXEMPLARS)

    return Strategy(init=init, step=step, end_context=end_context, predict=predict)


SPECS = (
    StrategySpec(
        "icarl",
        icarl,
        "iCaRL: herding exemplars (total budget 2000), binary distillation T=2, nearest mean (3S-2019)",
        scenarios=("class",),
        defaults=lambda scenario: {**BUDGET_OPTIONS, "temperature": TEMPERATURE},
        resolve=budget_resolver(TOTAL_BUDGET),
        hyperparameters=("temperature",),
        task_free=True,
        update_every=1,  # the reference's --replay-update (compare_task_free.py)
        stream_defaults=lambda scenario: dict(TASK_FREE_BUDGET),
    ),
)
