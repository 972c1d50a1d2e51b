"""Checking a dataset against a benchmark's protocol before anything is compiled.

A user's arrays reach the compiled programs only through :func:`check_dataset`, which returns them in the
layout the programs expect (images (N, H, W, C), uint8 or float32 in [0, 1]; labels int32) or raises a
:class:`DatasetError` that says, in one line, what is wrong and how to fix it. Without it a 6-class dataset
under a 10-class protocol trains and reports an accuracy of ``nan``, and float images already in [0, 1]
are divided by 255 again and train at chance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cljax.data.dataset import Dataset
from cljax.presets import Benchmark


class DatasetError(ValueError):
    """A dataset does not fit the benchmark it is run under; the message says what to change."""


def _images(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]  # (N, H, W) grayscale
    if x.ndim != 4 or x.shape[0] == 0:
        raise DatasetError(f"{name}: expected images of shape (N, H, W, C) or (N, H, W), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise DatasetError(f"{name}: holds NaN or infinite values; clean the images first")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise DatasetError(
                f"{name}: float images must lie in [0, 1], found values in [{low:g}, {high:g}]; "
                "pass uint8 images (0-255) or divide by 255"
            )
        return x.astype(np.float32)
    raise DatasetError(
        f"{name}: images must be uint8 (0-255) or float in [0, 1], got dtype {x.dtype}; "
        "convert with x.astype(np.uint8) or x / 255"
    )


def _labels(name: str, y: Any, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"{name}: expected one label per image, shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{name}: labels must be integers 0..num_classes-1, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DatasetError(
            f"{name}: labels must lie in 0..{num_classes - 1} (num_classes={num_classes}), found "
            f"{int(y.min())}..{int(y.max())}; relabel the data or set num_classes"
        )
    return y.astype(np.int32)


def check_dataset(dataset: Dataset, bench: Benchmark) -> Dataset:
    """``dataset`` in the programs' layout, after checking it fits ``bench``; else a :class:`DatasetError`.

    Checked: shapes, dtypes (uint8, or float already in [0, 1]), train/test consistency, label range and
    count, that the benchmark's classes exist in the data and that each has training and test samples.
    """
    if not isinstance(dataset, Dataset):
        raise DatasetError(
            f"dataset: expected cljax.Dataset(name, train_x, train_y, test_x, test_y, num_classes), "
            f"got {type(dataset).__name__}"
        )
    num_classes = dataset.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DatasetError(f"dataset num_classes: must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    train_x, test_x = _images("train_x", dataset.train_x), _images("test_x", dataset.test_x)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(
            f"test_x: images of shape {test_x.shape[1:]} differ from train_x's {train_x.shape[1:]}; "
            "both splits need the same (H, W, C)"
        )
    if train_x.dtype != test_x.dtype:
        raise DatasetError(
            f"test_x: dtype {test_x.dtype} differs from train_x's {train_x.dtype}; store both as uint8 or "
            "both as float in [0, 1]"
        )
    train_y = _labels("train_y", dataset.train_y, len(train_x), num_classes)
    test_y = _labels("test_y", dataset.test_y, len(test_x), num_classes)
    _check_protocol(bench, num_classes, train_x.shape[1:], train_y, test_y)
    return Dataset(dataset.name, train_x, train_y, test_x, test_y, num_classes)


def _check_protocol(
    bench: Benchmark, num_classes: int, image_shape: tuple[int, ...], train_y: np.ndarray, test_y: np.ndarray
) -> None:
    protocol = f"{bench.name}'s protocol ({bench.n_contexts} contexts x {bench.classes_per_context} classes)"
    if bench.permuted:
        if num_classes != bench.classes_per_context:
            raise DatasetError(
                f"dataset: has {num_classes} classes but {protocol} puts all {bench.classes_per_context} in "
                "every context; choose classes_per_context to match"
            )
        h, w, _ = image_shape
        if bench.pad_to < max(h, w) or h != w:
            raise DatasetError(
                f"dataset: images of {h}x{w} do not fit {bench.name}'s square padding to {bench.pad_to}"
            )
    elif bench.class_order is not None:
        if max(bench.used_classes) >= num_classes:
            raise DatasetError(
                f"dataset: class_order names class {max(bench.used_classes)} but the dataset has "
                f"{num_classes} classes (0..{num_classes - 1})"
            )
    elif num_classes != bench.n_classes:
        raise DatasetError(
            f"dataset: has {num_classes} classes but {protocol} uses {bench.n_classes}; choose "
            f"n_contexts and classes_per_context that multiply to {num_classes}, or a class_order naming "
            "the classes to use"
        )
    for split, labels in (("train", train_y), ("test", test_y)):
        present = np.bincount(labels, minlength=num_classes)
        missing = [c for c in bench.used_classes if present[c] == 0]
        if missing:
            raise DatasetError(
                f"dataset: class{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing[:10]))} "
                f"of {protocol} {'have' if len(missing) > 1 else 'has'} no {split} samples; "
                "give every class samples in both splits, or a class_order without them"
            )
