"""Optional fallback: load a dataset through tensorflow-datasets (``pip install cljax[tfds]``)."""

from __future__ import annotations

import importlib.util

import numpy as np

from .dataset import LAYOUTS, Dataset

# tfds builder names; for cifar100, ``as_supervised`` yields the fine label.
TFDS_NAMES: dict[str, str] = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
}


def is_available() -> bool:
    """True when ``tensorflow_datasets`` can be imported (it is not imported here)."""
    try:
        return importlib.util.find_spec("tensorflow_datasets") is not None
    except (ImportError, ValueError):
        return False


def load_tfds(name: str, download: bool = True) -> Dataset:
    """Load ``name`` with ``tfds.load(..., batch_size=-1, as_supervised=True)`` as a :class:`Dataset`."""
    import tensorflow_datasets as tfds

    def split(which: str) -> tuple[np.ndarray, np.ndarray]:
        data = tfds.load(TFDS_NAMES[name], split=which, batch_size=-1, as_supervised=True, download=download)
        x, y = tfds.as_numpy(data)
        return np.asarray(x, np.uint8), np.asarray(y, np.int32)

    train_x, train_y = split("train")
    test_x, test_y = split("test")
    return Dataset(name, train_x, train_y, test_x, test_y, LAYOUTS[name].num_classes)
