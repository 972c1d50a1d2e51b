"""Readers for the binary versions of CIFAR-10 and CIFAR-100."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .errors import CorruptDataError

PIXELS = 3 * 32 * 32
CIFAR10_TRAIN: tuple[str, ...] = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
CIFAR100_TRAIN = "train.bin"
CIFAR100_TEST = "test.bin"


def read_cifar_file(path: Path, label_limits: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Read records of ``len(label_limits)`` label bytes + 3072 pixel bytes (R, G, B planes).

    Returns x uint8 (N, 32, 32, 3) and y int32 (N,) taken from the last label byte
    (CIFAR-100: the fine label). Each label byte must be below its limit.
    """
    path = Path(path)
    record = len(label_limits) + PIXELS
    data = path.read_bytes()
    if not data or len(data) % record:
        raise CorruptDataError(
            f"{path}: truncated or not a CIFAR binary file: expected a positive multiple of the "
            f"{record}-byte record size, got {len(data)} bytes ({len(data) // record} records + "
            f"{len(data) % record} bytes)"
        )
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    for column, limit in enumerate(label_limits):
        top = int(rows[:, column].max())
        if top >= limit:
            raise CorruptDataError(f"{path}: label byte {column} has value {top}, expected 0..{limit - 1}")
    x = rows[:, len(label_limits) :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), rows[:, len(label_limits) - 1].astype(np.int32)


def read_cifar_files(paths: Sequence[Path], label_limits: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate several CIFAR binary batch files."""
    parts = [read_cifar_file(p, label_limits) for p in paths]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def missing_cifar10_files(folder: Path) -> list[str]:
    """Names of the CIFAR-10 batch files absent from ``folder``."""
    return [n for n in (*CIFAR10_TRAIN, CIFAR10_TEST) if not (Path(folder) / n).is_file()]


def missing_cifar100_files(folder: Path) -> list[str]:
    """Names of the CIFAR-100 files absent from ``folder``."""
    return [n for n in (CIFAR100_TRAIN, CIFAR100_TEST) if not (Path(folder) / n).is_file()]


def load_cifar10_folder(folder: Path) -> Dataset:
    """Load ``cifar-10-batches-bin``: data_batch_1..5.bin and test_batch.bin."""
    folder = Path(folder)
    train_x, train_y = read_cifar_files([folder / n for n in CIFAR10_TRAIN], (10,))
    test_x, test_y = read_cifar_file(folder / CIFAR10_TEST, (10,))
    return Dataset("cifar10", train_x, train_y, test_x, test_y, 10)


def load_cifar100_folder(folder: Path) -> Dataset:
    """Load ``cifar-100-binary``: train.bin, test.bin (coarse byte, fine byte, pixels); keeps fine labels."""
    folder = Path(folder)
    train_x, train_y = read_cifar_file(folder / CIFAR100_TRAIN, (20, 100))
    test_x, test_y = read_cifar_file(folder / CIFAR100_TEST, (20, 100))
    return Dataset("cifar100", train_x, train_y, test_x, test_y, 100)
