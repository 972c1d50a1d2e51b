"""Episodic memory on the device: a fixed-capacity buffer of training samples, pure functions only.

In the spirit of flashbax, a factory validates its arguments in Python and returns a :class:`Buffer` of
pure functions over a :class:`BufferState` whose shapes never change, so the buffer lives in the scan
carry and every operation compiles once. A stored sample is a reference into the device-resident
dataset: its context and its position in ``stream.train_idx[context]`` (labels, pixel permutations and
active units follow from the stream), optionally with the logits a network gave it (DER++).

Slots are grouped: one group per class for class-balanced and herding selection, a single group for
reservoir sampling. A group's filled slots are a prefix of its row and ``count`` says how long it is, so
nothing unfilled is ever sampled. Selection policies:

- :func:`reservoir`: online, inside the training step; every sample offered so far is kept with equal
  probability (Vitter's algorithm R, batched).
- :func:`class_balanced`: at the end of a context, a uniformly random subset of each new class
  (the reference implementation's ``sample_selection='random'``, 100 per class in NMI-2022).
- :func:`herding`: at the end of a context, the samples whose running mean of L2-normalised features
  stays closest to the class mean, in order (iCaRL, Rebuffi et al. 2017), so keeping the first ``m`` of a
  group is herding with budget ``m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp


class BufferState(flax.struct.PyTreeNode):
    """The stored samples, grouped; shapes are fixed when the buffer is made."""

    context: jax.Array  # int32 (groups, per_group)
    slot: jax.Array  # int32 (groups, per_group): position in stream.train_idx[context]
    logits: jax.Array  # float32 (groups, per_group, n_logits); n_logits = 0 when none are stored
    count: jax.Array  # int32 (groups,): filled slots of each group (a prefix of its row)
    seen: jax.Array  # int32 (): samples offered to a reservoir so far

    @property
    def size(self) -> jax.Array:
        """How many samples are stored."""
        return self.count.sum()


class Draw(NamedTuple):
    """Samples drawn from a buffer. ``valid`` is False only where nothing could be drawn (empty)."""

    context: jax.Array  # int32 (n,)
    slot: jax.Array  # int32 (n,)
    logits: jax.Array  # float32 (n, n_logits)
    valid: jax.Array  # bool (n,)
    group: jax.Array  # int32 (n,): where the sample is stored
    position: jax.Array  # int32 (n,)


class Items(NamedTuple):
    """Samples offered to a reservoir in one step."""

    context: jax.Array  # int32 (B,)
    slot: jax.Array  # int32 (B,)
    logits: jax.Array  # float32 (B, n_logits)


class Candidates(NamedTuple):
    """One context's training samples, offered to a selection policy at the end of the context."""

    context: jax.Array  # int32 (): the context they come from
    slot: jax.Array  # int32 (N,)
    group: jax.Array  # int32 (N,): the group (class) of each sample
    valid: jax.Array  # bool (N,): False for padding
    groups: jax.Array  # int32 (k,): the groups to fill (the context's classes)
    features: jax.Array | None = None  # float32 (N, F): herding only


class Buffer(NamedTuple):
    """A buffer's pure functions and its static shape.

    init() -> state
    add(state, items_or_candidates, key, quota=None) -> state
        reservoir: ``Items`` offered in a training step; class_balanced / herding: ``Candidates`` of a
        finished context, keeping ``quota`` (a traced int, at most ``per_group``) per group
    sample(state, key, n, allowed=None) -> Draw
        uniform over the stored samples; ``allowed`` (n, groups) bool restricts each draw to some groups
    """

    init: Callable[[], BufferState]
    add: Callable[..., BufferState]
    sample: Callable[..., Draw]
    groups: int
    per_group: int
    n_logits: int


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def _init(groups: int, per_group: int, n_logits: int) -> Callable[[], BufferState]:
    def init() -> BufferState:
        return BufferState(
            context=jnp.zeros((groups, per_group), jnp.int32),
            slot=jnp.zeros((groups, per_group), jnp.int32),
            logits=jnp.zeros((groups, per_group, n_logits), jnp.float32),
            count=jnp.zeros((groups,), jnp.int32),
            seen=jnp.zeros((), jnp.int32),
        )

    return init


def sample(state: BufferState, key: jax.Array, n: int, allowed: jax.Array | None = None) -> Draw:
    """``n`` draws, uniform with replacement over the stored samples (of the ``allowed`` groups)."""
    counts = state.count[None, :] if allowed is None else jnp.where(allowed, state.count[None, :], 0)
    ends = jnp.cumsum(counts, axis=-1)  # (1 or n, groups)
    total = ends[:, -1]
    flat = jax.random.randint(key, (n,), 0, jnp.maximum(total, 1))
    group = jnp.sum(ends <= flat[:, None], axis=-1)
    group = jnp.minimum(group, state.count.shape[0] - 1)
    starts = jnp.take_along_axis(jnp.broadcast_to(ends - counts, (n, counts.shape[1])), group[:, None], 1)
    position = jnp.clip(flat - starts[:, 0], 0, state.slot.shape[1] - 1)
    return Draw(
        context=state.context[group, position],
        slot=state.slot[group, position],
        logits=state.logits[group, position],
        valid=jnp.broadcast_to(total > 0, (n,)),
        group=group,
        position=position,
    )


def truncate(state: BufferState, quota: jax.Array) -> BufferState:
    """Keep at most the first ``quota`` samples of every group (iCaRL's reduction of exemplar sets)."""
    return state.replace(count=jnp.minimum(state.count, quota))


def reservoir(capacity: int, n_logits: int = 0) -> Buffer:
    """A buffer filled online by reservoir sampling (Vitter 1985, algorithm R), one group of ``capacity``.

    The n-th sample offered (0-based) takes slot n while the buffer has room, afterwards a uniform
    j in [0, n] and is kept when j < capacity; every sample offered so far is then stored with
    probability capacity / seen. A batch is offered at once: where two of its samples pick the same
    slot, the later one wins, exactly as if they were offered one by one.
    """
    capacity = _positive_int("capacity", capacity)
    if isinstance(n_logits, bool) or not isinstance(n_logits, int) or n_logits < 0:
        raise ValueError(f"n_logits: must be an integer >= 0, got {n_logits!r}")

    def add(state: BufferState, items: Items, key: jax.Array, quota: jax.Array | None = None) -> BufferState:
        del quota
        b = items.slot.shape[0]
        order = jnp.arange(b)
        index = state.seen + order
        target = jnp.where(index < capacity, index, jax.random.randint(key, (b,), 0, index + 1))
        kept = target < capacity
        overwritten = (target[None, :] == target[:, None]) & (order[None, :] > order[:, None]) & kept[None, :]
        position = jnp.where(kept & ~overwritten.any(axis=1), target, capacity)  # capacity: dropped

        def put(table, values):
            return table.at[0, position].set(values, mode="drop")

        return state.replace(
            context=put(state.context, items.context.astype(jnp.int32)),
            slot=put(state.slot, items.slot.astype(jnp.int32)),
            logits=put(state.logits, items.logits.astype(jnp.float32)),
            count=jnp.minimum(state.count + b, capacity),
            seen=state.seen + b,
        )

    return Buffer(_init(1, capacity, n_logits), add, sample, groups=1, per_group=capacity, n_logits=n_logits)


def _member(candidates: Candidates) -> jax.Array:
    """(k, N): which candidates belong to each group to fill."""
    return candidates.valid[None, :] & (candidates.group[None, :] == candidates.groups[:, None])


def _write_groups(state: BufferState, candidates: Candidates, picks: jax.Array, counts: jax.Array):
    g = candidates.groups
    return state.replace(
        context=state.context.at[g].set(jnp.broadcast_to(candidates.context, picks.shape).astype(jnp.int32)),
        slot=state.slot.at[g].set(candidates.slot[picks]),
        count=state.count.at[g].set(counts.astype(jnp.int32)),
    )


def _quota(quota: jax.Array | int | None, per_group: int) -> jax.Array:
    return jnp.asarray(per_group if quota is None else jnp.minimum(quota, per_group), jnp.int32)


def class_balanced(groups: int, per_group: int) -> Buffer:
    """A buffer of ``per_group`` samples per class, each chosen uniformly at random without replacement.

    ``add`` fills the groups of a finished context: ``quota`` of each class's samples (all of them if the
    class has fewer), as the reference's ``np.random.choice(n, size=min(quota, n), replace=False)``.
    """
    groups = _positive_int("groups", groups)
    per_group = _positive_int("per_group", per_group)

    def add(state: BufferState, candidates: Candidates, key: jax.Array, quota=None) -> BufferState:
        member = _member(candidates)
        priority = jnp.where(member, jax.random.uniform(key, member.shape), -1.0)
        k = min(per_group, priority.shape[1])
        _, picks = jax.lax.top_k(priority, k)  # members first, in random order
        picks = jnp.pad(picks, ((0, 0), (0, per_group - k)))
        counts = jnp.minimum(member.sum(axis=1), _quota(quota, per_group))
        return _write_groups(state, candidates, picks, counts)

    return Buffer(_init(groups, per_group, 0), add, sample, groups=groups, per_group=per_group, n_logits=0)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """x / max(|x|, eps), as torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def herding_order(features: jax.Array, member: jax.Array, n_picks: jax.Array, max_picks: int) -> jax.Array:
    """iCaRL's herding: indices (max_picks,) of the members picked one by one, first ``n_picks`` valid.

    ``features`` (N, F) are L2-normalised; the class mean is the normalised mean of the members'
    features. Pick k+1 is the unpicked member that brings the mean of the picks closest to the class
    mean (Rebuffi et al. 2017, Algorithm 4; the reference's ``construct_memory_set``).
    """
    n_members = member.sum()
    mu = l2_normalize(jnp.sum(jnp.where(member[:, None], features, 0.0), axis=0) / jnp.maximum(n_members, 1))
    sq_norm = jnp.sum(features * features, axis=1)

    def pick(k, carry):
        picks, free, total = carry
        # |(total + f_i)/(k+1) - mu|^2 up to terms that do not depend on i
        kk = (k + 1).astype(features.dtype)
        score = sq_norm / kk**2 + 2.0 * features @ (total / kk**2 - mu / kk)
        i = jnp.argmin(jnp.where(free, score, jnp.inf))
        return picks.at[k].set(i), free.at[i].set(False), total + features[i]

    init = (jnp.zeros((max_picks,), jnp.int32), member, jnp.zeros(features.shape[1], features.dtype))
    picks, _, _ = jax.lax.fori_loop(0, jnp.minimum(n_picks, n_members), pick, init)
    return picks


def herding(groups: int, per_group: int) -> Buffer:
    """A buffer of up to ``per_group`` exemplars per class chosen by herding (iCaRL).

    ``add`` needs ``candidates.features``: the L2-normalised features of the context's samples.
    """
    groups = _positive_int("groups", groups)
    per_group = _positive_int("per_group", per_group)

    def add(state: BufferState, candidates: Candidates, key: jax.Array, quota=None) -> BufferState:
        del key
        if candidates.features is None:
            raise ValueError("herding: candidates.features is required (the samples' normalised features)")
        member = _member(candidates)
        quota = _quota(quota, per_group)
        picks = jax.vmap(lambda m: herding_order(candidates.features, m, quota, per_group))(member)
        counts = jnp.minimum(member.sum(axis=1), quota)
        return _write_groups(state, candidates, picks, counts)

    return Buffer(_init(groups, per_group, 0), add, sample, groups=groups, per_group=per_group, n_logits=0)
