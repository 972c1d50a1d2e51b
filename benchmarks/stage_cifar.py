"""Split the offline CIFAR copies into parts small enough to travel to a lent GPU machine, one part a call.

    python benchmarks/stage_cifar.py [--shared ../shared/data] [--out .devdata] [--max-mib 56]

The device tool sends the working tree and the paths named in ``carry`` (64 MiB a call, ``../shared`` not
included), and keeps ignored paths between calls while the machine stays warm. CIFAR-10 and CIFAR-100 are
about 100 MB each even as the lossless WebP mosaics of ``shared/data``, so they go in parts: each part is a
folder ``<out>/part-<k>`` holding whole files (and ``prepare.py`` in the first), carried by its own call,
``carry: [".devdata/part-<k>"]`` with ``true`` as the command. ``benchmarks/gpu_split_cifar100.sh`` then
puts the parts together on the machine and writes the official binary layouts with ``prepare.py``. Prints
one line per part. ``.devdata/`` is git-ignored.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DATASETS = ("cifar10", "cifar100")


def plan_parts(files: list[tuple[Path, str]], max_bytes: int) -> list[list[tuple[Path, str]]]:
    """Files (source, relative destination) in order, grouped greedily into parts of at most max_bytes."""
    parts: list[list[tuple[Path, str]]] = [[]]
    size = 0
    for src, rel in files:
        n = src.stat().st_size
        if n > max_bytes:
            raise ValueError(f"{src} ({n} bytes) is larger than one part ({max_bytes} bytes)")
        if size + n > max_bytes and parts[-1]:
            parts.append([])
            size = 0
        parts[-1].append((src, rel))
        size += n
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared/data", help="the offline datasets folder")
    parser.add_argument("--out", default=".devdata", help="where the parts go (git-ignored)")
    parser.add_argument("--max-mib", type=float, default=56.0, help="largest part in MiB")
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    files = [(shared / "prepare.py", "prepare.py")]
    for name in DATASETS:
        files += [(f, f"{name}/{f.name}") for f in sorted((shared / name).iterdir()) if f.is_file()]
    parts = plan_parts(files, int(args.max_mib * 2**20))
    shutil.rmtree(out, ignore_errors=True)
    for k, part in enumerate(parts, 1):
        folder = out / f"part-{k}"
        for src, rel in part:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / rel)
        mib = sum(src.stat().st_size for src, _ in part) / 2**20
        print(f"{folder}: {len(part)} files, {mib:.1f} MiB")


if __name__ == "__main__":
    main()
