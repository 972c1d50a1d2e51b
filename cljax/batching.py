"""Drawing training batches inside the compiled step: gather uint8 rows, convert, permute, mask."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cljax.scenarios import Images, ScenarioInfo, Stream


class Batch(NamedTuple):
    """A batch ready for the network: float inputs, integer targets and per-sample active units."""

    x: jnp.ndarray  # float32 (B, H, W, C)
    y: jnp.ndarray  # int32 (B,)
    mask: jnp.ndarray  # bool (B, n_out)
    context: jnp.ndarray  # int32 (B,)
    slot: jnp.ndarray | None = None  # int32 (B,): position in stream.train_idx[context] (training data)


def to_float(info: ScenarioInfo, images: jnp.ndarray, perm: jnp.ndarray) -> jnp.ndarray:
    """Stored images (B, h, w, c) -> float32 (B, H, W, C) in the benchmark's units, padded and permuted.

    uint8 images are scaled to [0, 1]; float images are taken to be in [0, 1] already (a user's data,
    checked by :func:`cljax.data.check_dataset`). ``perm`` is (B, H*W), one pixel permutation per sample;
    ignored unless the benchmark is permuted.
    """
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    h, w, _ = info.input_shape
    if x.shape[1] != h:
        before = (h - x.shape[1]) // 2
        after = h - x.shape[1] - before
        x = jnp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
    if info.permuted:
        flat = x.reshape(x.shape[0], -1)
        x = jnp.take_along_axis(flat, perm, axis=1).reshape(x.shape)
    if info.normalize is not None:
        mean, std = (jnp.asarray(v, jnp.float32) for v in info.normalize)
        x = (x - mean) / std
    return x


def gather(
    info: ScenarioInfo,
    images: Images,
    stream: Stream,
    context: jnp.ndarray,
    slots: jnp.ndarray,
    train: bool = True,
) -> Batch:
    """The samples at positions ``slots`` of each sample's ``context`` (both (B,) int arrays)."""
    idx_table, xs, ys = (
        (stream.train_idx, images.train_x, images.train_y)
        if train
        else (stream.test_idx, images.test_x, images.test_y)
    )
    rows = idx_table[context, slots]
    perm = stream.pixel_perm[context] if info.permuted else stream.pixel_perm
    x = to_float(info, xs[rows], perm)
    y = stream.label_map[context, ys[rows]]
    return Batch(x=x, y=y, mask=stream.active[context], context=context, slot=slots)


def sample_context(
    info: ScenarioInfo, images: Images, stream: Stream, context: jnp.ndarray, key: jax.Array, batch_size: int
) -> Batch:
    """A uniform batch (with replacement) from one context's training data."""
    ctx = jnp.full((batch_size,), context, jnp.int32)
    slots = jax.random.randint(key, (batch_size,), 0, stream.train_n[ctx])
    return gather(info, images, stream, ctx, slots)


def sample_contexts_upto(
    info: ScenarioInfo,
    images: Images,
    stream: Stream,
    last: jnp.ndarray,
    key: jax.Array,
    batch_size: int,
) -> Batch:
    """A uniform batch over the union of contexts 0..last (joint training, 'cumulative' baselines).

    Task-IL keeps each sample on its own context's units; otherwise the classes of all these contexts have
    been seen, so each sample competes over the units active after context ``last`` (for Class-IL over
    the classes seen so far, a sample of context 0 is not limited to context 0's two classes).
    """
    counts = jnp.where(jnp.arange(info.n_contexts) <= last, stream.train_n, 0)
    ends = jnp.cumsum(counts)
    flat = jax.random.randint(key, (batch_size,), 0, ends[-1])
    ctx = jnp.searchsorted(ends, flat, side="right").astype(jnp.int32)
    slots = flat - (ends[ctx] - counts[ctx])
    batch = gather(info, images, stream, ctx, slots)
    if info.task_il:
        return batch
    return batch._replace(mask=jnp.broadcast_to(stream.active[last], batch.mask.shape))
