"""What the episodic-memory strategies (ER, A-GEM, iCaRL, DER++) share.

Budgets and their validation, the classes a buffer groups samples by, filling a buffer at the end of a
context, drawing replay batches from it inside the step, and losses with per-sample weights. The
strategies compose these; none of it runs outside the compiled programs except the validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cljax.batching import Batch, gather
from cljax.hyper import is_traced, number
from cljax.losses import mask_logits
from cljax.memory import BufferState, Candidates, Draw, class_balanced, l2_normalize, truncate
from cljax.memory import sample as buffer_sample
from cljax.models.registry import penultimate, penultimate_width
from cljax.scenarios import Images, ScenarioInfo, Stream
from cljax.strategies.base import ClassifierState, Setup, Strategy, init_classifier

# Stored samples per class where a benchmark's protocol says so (PROTOCOL.md; NMI-2022): 100 on split
# MNIST and split CIFAR-100, 10 on permuted MNIST.
PUBLISHED_BUDGET = {"perm-mnist": 10}
DEFAULT_BUDGET = 100

BUDGET_OPTIONS = {"budget": None, "total_budget": None}


class ReplayState(ClassifierState):
    """A classifier with an episodic memory."""

    buffer: BufferState


def _int_option(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def float_option(name: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float | jax.Array:
    """A finite float option >= ``minimum`` (> when ``strict``), or a ValueError naming it.

    A traced value (a hyperparameter inside a compiled program) passes unchanged: its concrete value was
    checked when the strategy was first built.
    """
    value = number(value)
    if is_traced(value):
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        bound = f"{'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name}: must be a finite number {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Budget:
    """How many samples a memory keeps: ``per_class`` (NMI-2022) or ``total`` (3S-2019), never both.

    With a total budget every class seen so far gets ``total // classes_so_far`` (iCaRL's rule, and the
    reference's ``--use-full-capacity``), so older classes give up samples as new ones arrive.
    """

    per_class: int | None
    total: int | None

    def per_group(self, info: ScenarioInfo) -> int:
        """Slots per class: the largest quota, reached after the first context."""
        return self.per_class if self.per_class is not None else self.total // info.classes_per_context

    def quota(self, info: ScenarioInfo, context: jax.Array) -> jax.Array | int:
        """Samples per class to keep after training on contexts 0..context."""
        if self.per_class is not None:
            return self.per_class
        return self.total // ((context + 1) * info.classes_per_context)

    def capacity(self, info: ScenarioInfo) -> int:
        """All slots: the reservoir's size at an equal budget (per class x all classes of the stream)."""
        return self.per_class * n_groups(info) if self.per_class is not None else self.total


def resolve_budget(
    info: ScenarioInfo, options: Mapping[str, Any], default_total: int | None = None
) -> Budget:
    """The budget from the ``budget`` / ``total_budget`` options, or the published one when neither is set.

    Without options: ``default_total`` if given (iCaRL: 2000, 3S-2019), else the benchmark's published
    per-class budget (:data:`PUBLISHED_BUDGET`, otherwise 100).
    """
    per_class = _int_option("budget", options.get("budget"))
    total = _int_option("total_budget", options.get("total_budget"))
    if per_class is not None and total is not None:
        raise ValueError(
            f"budget and total_budget: give one of them, not both (got budget={per_class}, "
            f"total_budget={total}); budget counts samples per class, total_budget in all"
        )
    if per_class is None and total is None:
        per_class, total = default_budget(info.benchmark, default_total)
    if total is not None and total < n_groups(info):
        raise ValueError(
            f"total_budget: must be at least the number of classes in the stream ({n_groups(info)}) so every "
            f"class keeps a sample, got {total}"
        )
    return Budget(per_class, total)


def default_budget(benchmark: str, default_total: int | None = None) -> tuple[int | None, int | None]:
    """(per class, total) when no budget option is set: ``default_total`` if given, else the benchmark's
    published per-class budget."""
    if default_total is not None:
        return None, default_total
    return PUBLISHED_BUDGET.get(benchmark, DEFAULT_BUDGET), None


def budget_resolver(default_total: int | None = None) -> Callable[[dict[str, Any], str, str], dict[str, Any]]:
    """A ``StrategySpec.resolve``: with no budget option set, the one :func:`resolve_budget` would use."""

    def resolve(options: dict[str, Any], benchmark: str, scenario: str) -> dict[str, Any]:
        del scenario
        if options.get("budget") is not None or options.get("total_budget") is not None:
            return options
        per_class, total = default_budget(benchmark, default_total)
        return {**options, "budget": per_class, "total_budget": total}

    return resolve


def n_groups(info: ScenarioInfo) -> int:
    """Classes of the whole stream, counted per context (Domain-IL and permuted MNIST reuse labels)."""
    return info.n_contexts * info.classes_per_context


def context_candidates(info: ScenarioInfo, images: Images, stream: Stream, context: jax.Array) -> Candidates:
    """All training samples of ``context``, grouped by class: group = context x classes + class."""
    slot = jnp.arange(stream.train_idx.shape[1], dtype=jnp.int32)
    labels = stream.label_map[context, images.train_y[stream.train_idx[context]]]
    cpc = info.classes_per_context
    return Candidates(
        context=jnp.asarray(context, jnp.int32),
        slot=slot,
        group=(context * cpc + labels % cpc).astype(jnp.int32),
        valid=slot < stream.train_n[context],
        groups=(context * cpc + jnp.arange(cpc)).astype(jnp.int32),
    )


def draw_current(stream: Stream, context: jax.Array, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Contexts and slots of a uniform batch (with replacement) from the current context."""
    ctx = jnp.full((n,), context, jnp.int32)
    return ctx, jax.random.randint(key, (n,), 0, stream.train_n[ctx])


def replay_draw(
    info: ScenarioInfo,
    buffer: BufferState,
    context: jax.Array,
    key: jax.Array,
    n: int,
    per_context: bool,
) -> tuple[Draw, jax.Array]:
    """``n`` stored samples and weights that sum to 1 over the valid ones (0 when the buffer is empty).

    ``per_context`` (Task-IL with class groups): draw i comes from earlier context i mod t (t = contexts
    so far) and is weighted 1 / (t x draws of its context), so the weighted sum is the mean over contexts
    of each context's mean loss, as the reference's ceil(128 / t) per context, losses averaged.
    """
    if not per_context:
        draw = buffer_sample(buffer, key, n)
        return draw, jnp.where(draw.valid, 1.0 / n, 0.0)
    t = jnp.maximum(context, 1)
    assigned = jnp.arange(n) % t
    group_context = jnp.arange(buffer.count.shape[0]) // info.classes_per_context
    draw = buffer_sample(buffer, key, n, group_context[None, :] == assigned[:, None])
    draws_of_context = n // t + (assigned < n % t)
    return draw, jnp.where(draw.valid, 1.0 / (t * draws_of_context), 0.0)


def replay_batch(
    info: ScenarioInfo,
    images: Images,
    stream: Stream,
    draw: Draw,
    context: jax.Array,
) -> Batch:
    """The drawn samples as a batch. Task-IL: each on its own context's units; else on the current ones.

    Domain-/Class-IL replay is trained on the units active now, as the reference does (this matters only
    for Class-IL with the classes seen so far active).
    """
    batch = gather(info, images, stream, draw.context, draw.slot)
    if info.task_il:
        return batch
    return batch._replace(mask=jnp.broadcast_to(stream.active[context], batch.mask.shape))


def concat(*batches: Batch) -> Batch:
    """One batch of several, so they share a single forward pass."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *batches)


def per_sample_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax cross-entropy of each sample (B,) over its active units."""
    return optax.softmax_cross_entropy_with_integer_labels(mask_logits(logits, mask), labels)


def current_and_replay(
    setup: Setup, buffer: BufferState, images: Images, stream: Stream, context: jax.Array, key: jax.Array
) -> tuple[Batch, Batch, jax.Array]:
    """A current batch, a replay batch of the same size and the replay samples' weights.

    The weights sum to 1 over the replay batch (to 0 while the buffer is empty); Task-IL replays every
    earlier context equally (see :func:`replay_draw`).
    """
    info, n = setup.info, setup.batch_size
    k_cur, k_rep = jax.random.split(key)
    ctx, slot = draw_current(stream, context, k_cur, n)
    draw, w_replay = replay_draw(info, buffer, context, k_rep, n, per_context=info.task_il)
    current = gather(info, images, stream, ctx, slot)
    return current, replay_batch(info, images, stream, draw, context), w_replay


def class_memory_strategy(setup: Setup, budget: Budget, step) -> Strategy:
    """A strategy whose memory holds randomly chosen samples of every class (ER, A-GEM), given its step.

    The buffer is filled at the end of each context with ``budget.quota`` random samples per new class,
    after cutting the earlier classes down to the same quota (only a total budget changes it).
    """
    info = setup.info
    buffer = class_balanced(n_groups(info), budget.per_group(info))

    def init(key, images, stream):
        del images, stream
        classifier = init_classifier(setup, key)
        return ReplayState(params=classifier.params, opt_state=classifier.opt_state, buffer=buffer.init())

    def end_context(state: ReplayState, images, stream, context, key):
        quota = budget.quota(info, context)
        stored = truncate(state.buffer, quota)
        stored = buffer.add(stored, context_candidates(info, images, stream, context), key, quota)
        return state.replace(buffer=stored)

    def predict(state: ReplayState, x):
        return setup.model.apply(state.params, x)

    return Strategy(init=init, step=step, end_context=end_context, predict=predict)


def features(setup: Setup, params: Any, x: jax.Array) -> jax.Array:
    """The classifier's last hidden layer, L2-normalised (herding and nearest-mean-of-exemplars).

    Its ``features`` method, else the input of its last dense layer (:func:`cljax.models.penultimate`).
    """
    return l2_normalize(penultimate(setup.model, params, x))


def features_of(
    setup: Setup,
    params: Any,
    images: Images,
    stream: Stream,
    context: jax.Array,
    slot: jax.Array,
    chunk: int = 1024,
) -> jax.Array:
    """Normalised features (N, F) of stored or candidate samples, computed ``chunk`` at a time."""

    def one(cs):
        c, s = cs
        batch = gather(setup.info, images, stream, c[None], s[None])
        return features(setup, params, batch.x)[0]

    return jax.lax.map(one, (context, slot), batch_size=min(chunk, slot.shape[0]))


def check_features(setup: Setup, strategy: str) -> None:
    """Raise a ValueError unless :func:`features` finds the classifier's last hidden layer (shapes only)."""
    try:
        penultimate_width(setup.model, setup.info.input_shape)
    except ValueError as err:
        raise ValueError(f"{strategy}: needs the classifier's last hidden layer, but {err}") from None
