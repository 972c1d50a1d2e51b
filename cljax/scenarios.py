"""Streams of contexts in Task-, Domain- and Class-incremental learning.

A stream never copies images: it holds, per context, indices into the dataset's uint8 arrays, the
label map that turns a dataset class into the network's target, the output units that are active,
and (permuted MNIST) a pixel permutation. Every context has the same array shapes (indices are padded
and a count says how many are real), so a context index can be a traced value and one compiled
program serves every context and every seed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cljax.presets import SCENARIOS, Benchmark

CLASS_IL_ACTIVE = ("all", "seen")


class Images(NamedTuple):
    """The dataset on the device, shared by every seed: uint8 images (N, H, W, C), int32 labels.

    On a benchmark whose inputs are frozen conv features (:mod:`cljax.features`), ``train_x`` and ``test_x``
    hold every seed's features, and ``pixels``, for a strategy that asks for them (``StrategySpec.pixels``),
    the training images those features came from (:func:`cljax.features.batch_pixels`); else None.
    """

    train_x: jnp.ndarray
    train_y: jnp.ndarray
    test_x: jnp.ndarray
    test_y: jnp.ndarray
    pixels: jnp.ndarray | None = None  # uint8 (N, H, W, C): the training images behind the features


class Stream(NamedTuple):
    """One seed's sequence of contexts; leading axis of every array field is the context.

    ``conv``: on a benchmark whose inputs are frozen conv features, for a strategy that asks for the images
    too (``StrategySpec.pixels``), the seed's frozen pre-trained conv layers (``{"params", "batch_stats"}``
    of :class:`cljax.models.conv_layers.ConvLayers`), so that each run turns images into its own features;
    else None.
    """

    train_idx: jnp.ndarray  # int32 (C, N_max) indices into Images.train_*, padded
    train_n: jnp.ndarray  # int32 (C,) how many train indices are real
    test_idx: jnp.ndarray  # int32 (C, M_max)
    test_n: jnp.ndarray  # int32 (C,)
    label_map: jnp.ndarray  # int32 (C, n_dataset_classes): dataset class -> network target
    active: jnp.ndarray  # bool (C, n_out): output units trained (and, Task-IL, evaluated) in a context
    pixel_perm: jnp.ndarray  # int32 (C, H*W): pixel permutation (identity for split benchmarks)
    conv: Any = None  # the seed's frozen conv layers (features benchmarks, StrategySpec.pixels), else None


class ScenarioInfo(NamedTuple):
    """Static facts about a stream that shape the compiled program (hashable)."""

    benchmark: str
    scenario: str
    n_contexts: int
    classes_per_context: int
    n_out: int
    input_shape: tuple[int, ...]  # (H, W, C) after padding
    permuted: bool
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None
    features: str | None = None  # inputs are frozen pre-trained conv features (cljax.features), not pixels
    # features: the (H, W, C) and the normalisation of the images the frozen conv layers take
    pixel_shape: tuple[int, ...] | None = None
    pixel_normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def task_il(self) -> bool:
        return self.scenario == "task"


def output_units(bench: Benchmark, scenario: str) -> int:
    """Task-IL and Class-IL: one unit per class of the stream; Domain-IL: classes_per_context units."""
    return bench.classes_per_context if scenario == "domain" else bench.classes_per_context * bench.n_contexts


def class_order(n_classes: int, seed: int) -> np.ndarray:
    """The reference's rule: seed 0 keeps the natural order, other seeds shuffle it."""
    if seed == 0:
        return np.arange(n_classes)
    return np.random.RandomState(seed).permutation(n_classes)


def pixel_permutations(n_contexts: int, n_pixels: int, seed: int) -> np.ndarray:
    """One permutation per context; seed 0 leaves the first context unpermuted."""
    rng = np.random.RandomState(seed)
    perms = [rng.permutation(n_pixels) for _ in range(n_contexts)]
    if seed == 0:
        perms[0] = np.arange(n_pixels)
    return np.stack(perms).astype(np.int32)


def _padded_index_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], np.int32)


def active_units(bench: Benchmark, scenario: str, class_il_active: str = "all") -> np.ndarray:
    """Which output units are trained in each context (C, n_out).

    Task-IL: the context's own units. Domain-IL: all. Class-IL: all from the first context
    (NMI-2022, ``"all"``) or the classes seen so far (3S-2019, ``"seen"``).
    """
    n_out, cpc, n_ctx = output_units(bench, scenario), bench.classes_per_context, bench.n_contexts
    unit = np.arange(n_out)[None, :]
    ctx = np.arange(n_ctx)[:, None]
    if scenario == "task":
        return (unit // cpc) == ctx
    if scenario == "class" and class_il_active == "seen":
        return unit < (ctx + 1) * cpc
    return np.ones((n_ctx, n_out), bool)


def network_labels(bench: Benchmark, seed: int, n_dataset_classes: int | None = None) -> np.ndarray:
    """(n_dataset_classes,) the position of each dataset class in the stream's class order.

    With an explicit ``class_order`` that order for every seed (classes it leaves out map to 0 and never
    occur in the stream); otherwise :func:`class_order`'s rule.
    """
    width = max(n_dataset_classes or 0, bench.n_classes)
    if bench.class_order is None:
        return np.pad(class_order(bench.n_classes, seed), (0, width - bench.n_classes)).astype(np.int32)
    labels = np.zeros(max(width, max(bench.used_classes) + 1), np.int32)
    labels[list(bench.used_classes)] = np.arange(len(bench.used_classes))
    return labels


def label_maps(
    bench: Benchmark, scenario: str, seed: int, n_dataset_classes: int | None = None
) -> np.ndarray:
    """(C, n_dataset_classes) maps from dataset class to network target for every context."""
    cpc, n_ctx = bench.classes_per_context, bench.n_contexts
    if bench.permuted:
        ctx = np.arange(n_ctx)[:, None]
        base = np.arange(cpc)[None, :]
        return np.broadcast_to(base if scenario == "domain" else base + cpc * ctx, (n_ctx, cpc)).astype(
            np.int32
        )
    new_label = network_labels(bench, seed, n_dataset_classes)
    if scenario == "domain":
        new_label = new_label % cpc
    return np.broadcast_to(new_label, (n_ctx, len(new_label))).astype(np.int32)


def context_classes(bench: Benchmark, seed: int) -> list[np.ndarray]:
    """The dataset classes of each context (split benchmarks) under the seed's class order."""
    if bench.class_order is not None:
        return [np.asarray(c, np.int64) for c in bench.class_order]
    order = class_order(bench.n_classes, seed)
    inverse = np.argsort(order)  # network label -> dataset class
    cpc = bench.classes_per_context
    return [inverse[c * cpc : (c + 1) * cpc] for c in range(bench.n_contexts)]


def unit_classes(bench: Benchmark, scenario: str, seed: int) -> np.ndarray:
    """(C, n_out) the dataset class each output unit stands for in each context (prediction's inverse map).

    Task- and Class-IL: a unit is one class of the stream. Domain-IL: unit k is the k-th class of the
    context. Permuted benchmarks: every context holds the dataset's classes in their natural order.
    """
    cpc, n_ctx, n_out = bench.classes_per_context, bench.n_contexts, output_units(bench, scenario)
    if bench.permuted:
        return np.broadcast_to(np.arange(n_out) % cpc, (n_ctx, n_out)).astype(np.int32)
    classes = np.stack(context_classes(bench, seed)).astype(np.int32)  # (C, cpc)
    if scenario == "domain":
        return classes
    return np.broadcast_to(classes.reshape(-1), (n_ctx, n_out)).astype(np.int32)


def make_stream(
    bench: Benchmark,
    scenario: str,
    train_y: np.ndarray,
    test_y: np.ndarray,
    seed: int,
    class_il_active: str = "all",
    n_dataset_classes: int | None = None,
) -> Stream:
    """Build one seed's stream from the dataset labels (host-side, once per run).

    ``n_dataset_classes``: the dataset's class count, when it holds more classes than the stream uses.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    if class_il_active not in CLASS_IL_ACTIVE:
        raise ValueError(f"class_il_active must be one of {CLASS_IL_ACTIVE}, got {class_il_active!r}")
    n_pixels = (bench.pad_to or 0) ** 2
    if bench.permuted:
        train_rows = [np.arange(len(train_y))] * bench.n_contexts
        test_rows = [np.arange(len(test_y))] * bench.n_contexts
        perms = pixel_permutations(bench.n_contexts, n_pixels, seed)
    else:
        classes = context_classes(bench, seed)
        train_rows = [np.flatnonzero(np.isin(train_y, cls)) for cls in classes]
        test_rows = [np.flatnonzero(np.isin(test_y, cls)) for cls in classes]
        perms = np.zeros((bench.n_contexts, 0), np.int32)
    train_idx, train_n = _padded_index_rows(train_rows)
    test_idx, test_n = _padded_index_rows(test_rows)
    return Stream(
        train_idx=jnp.asarray(train_idx),
        train_n=jnp.asarray(train_n),
        test_idx=jnp.asarray(test_idx),
        test_n=jnp.asarray(test_n),
        label_map=jnp.asarray(label_maps(bench, scenario, seed, n_dataset_classes)),
        active=jnp.asarray(active_units(bench, scenario, class_il_active)),
        pixel_perm=jnp.asarray(perms),
    )


def scenario_info(bench: Benchmark, scenario: str, image_shape: tuple[int, ...]) -> ScenarioInfo:
    h, w, ch = image_shape
    if bench.pad_to is not None:
        h = w = bench.pad_to
    return ScenarioInfo(
        benchmark=bench.name,
        scenario=scenario,
        n_contexts=bench.n_contexts,
        classes_per_context=bench.classes_per_context,
        n_out=output_units(bench, scenario),
        input_shape=(h, w, ch),
        permuted=bench.permuted,
        normalize=bench.normalize,
    )


def stack_streams(streams: list[Stream]) -> Stream:
    """Stack per-seed streams along a new leading axis, padding index tables to a common width."""

    def pad(table: jnp.ndarray, width: int) -> jnp.ndarray:
        return jnp.pad(table, ((0, 0), (0, width - table.shape[1])))

    train_w = max(s.train_idx.shape[1] for s in streams)
    test_w = max(s.test_idx.shape[1] for s in streams)
    streams = [
        s._replace(train_idx=pad(s.train_idx, train_w), test_idx=pad(s.test_idx, test_w)) for s in streams
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *streams)
