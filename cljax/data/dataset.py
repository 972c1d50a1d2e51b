"""The :class:`Dataset` container and the on-disk layout of each supported dataset."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A labelled image dataset held as numpy arrays; images stay uint8 (N, H, W, C), labels int32 (N,)."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int


class Layout(NamedTuple):
    """Where a dataset lives inside a data root, and how Debian-style system folders spell it."""

    folder: str
    num_classes: int
    system_names: tuple[str, ...]


DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100")

LAYOUTS: dict[str, Layout] = {
    "mnist": Layout("mnist", 10, ("mnist",)),
    "fashion_mnist": Layout("fashion_mnist", 10, ("fashion_mnist", "fashion-mnist")),
    "cifar10": Layout("cifar-10-batches-bin", 10, ("cifar10", "cifar-10", "cifar-10-batches-bin")),
    "cifar100": Layout("cifar-100-binary", 100, ("cifar100", "cifar-100", "cifar-100-binary")),
}


def check_name(name: str) -> str:
    """Return the canonical dataset name, or raise ValueError listing the valid names."""
    canonical = str(name).strip().lower().replace("-", "_")
    if canonical not in LAYOUTS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return canonical
