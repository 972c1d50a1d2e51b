"""Image grids as PNG files, written with the standard library alone (replayed samples, for people)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np


def grid(images: np.ndarray, columns: int = 10, pad: int = 1) -> np.ndarray:
    """Tile float (N, H, W, C) images in [0, 1] into one uint8 (rows*H, columns*W, C) picture."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top : top + h, left : left + w] = images[i]
    return (canvas * 255).round().astype(np.uint8)


def write_png(path: str | os.PathLike, picture: np.ndarray) -> Path:
    """Write a uint8 (H, W) or (H, W, 1|3) array as an 8-bit greyscale or RGB PNG."""
    picture = np.asarray(picture, np.uint8)
    if picture.ndim == 2:
        picture = picture[:, :, None]
    height, width, channels = picture.shape
    if channels not in (1, 3):
        raise ValueError(f"write_png takes 1 or 3 channels, got {channels}")
    color_type = 0 if channels == 1 else 2
    raw = b"".join(b"\x00" + row.tobytes() for row in picture.reshape(height, width * channels))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    payload = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(payload)
    return path
