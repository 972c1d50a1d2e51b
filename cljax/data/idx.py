"""Readers for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or raw)."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .errors import CorruptDataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_SIZE = (28, 28)


def read_bytes(path: Path) -> bytes:
    """Return the (decompressed, for ``.gz``) content of ``path``; gzip damage raises CorruptDataError."""
    path = Path(path)
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise CorruptDataError(f"{path}: bad gzip data ({type(err).__name__}: {err})") from err


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file with the given magic number and rank into a uint8 array."""
    data = read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{path}: truncated: expected at least {header} header bytes, got {len(data)}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise CorruptDataError(f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + math.prod(dims)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes"
        raise CorruptDataError(
            f"{path}: {what}: expected {expected} bytes for dimensions {dims}, got {len(data)}"
            + (" (after gunzip)" if Path(path).suffix == ".gz" else "")
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_images(path: Path) -> np.ndarray:
    """Read an IDX image file as uint8 (N, H, W, 1)."""
    return read_idx(path, IMAGES_MAGIC, 3)[..., None].copy()


def read_labels(path: Path) -> np.ndarray:
    """Read an IDX label file as int32 (N,)."""
    return read_idx(path, LABELS_MAGIC, 1).astype(np.int32)


def find_idx(folder: Path, base: str) -> Path | None:
    """Return ``folder/base.gz`` or ``folder/base``, whichever exists (gz first), else None."""
    for candidate in (Path(folder) / f"{base}.gz", Path(folder) / base):
        if candidate.is_file():
            return candidate
    return None


def missing_idx_files(folder: Path) -> list[str]:
    """Names of the four IDX files absent from ``folder`` (each may be raw or ``.gz``)."""
    return [f"{base}[.gz]" for base in IDX_FILES if find_idx(folder, base) is None]


def read_idx_split(folder: Path, prefix: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read ``{prefix}-images`` / ``{prefix}-labels`` from ``folder`` and check they agree."""
    images_path = find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise FileNotFoundError(f"{folder}: missing {prefix} IDX files")
    x, y = read_images(images_path), read_labels(labels_path)
    if x.shape[1:3] != IMAGE_SIZE:
        raise CorruptDataError(f"{images_path}: images are {x.shape[1:3]}, expected {IMAGE_SIZE}")
    if len(x) != len(y):
        raise CorruptDataError(f"{images_path} holds {len(x)} images but {labels_path} holds {len(y)} labels")
    if len(y) and int(y.max()) >= num_classes:
        raise CorruptDataError(f"{labels_path}: label {int(y.max())} out of range 0..{num_classes - 1}")
    return x, y


def load_idx_folder(folder: Path, name: str, num_classes: int = 10) -> Dataset:
    """Load an MNIST-style folder holding the four IDX files."""
    train_x, train_y = read_idx_split(folder, "train", num_classes)
    test_x, test_y = read_idx_split(folder, "t10k", num_classes)
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes)
