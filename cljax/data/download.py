"""Download the official dataset files into a data root, with checksums and atomic writes.

``MIRRORS`` (base URLs, tried in order) and ``CHECKSUMS`` (md5 or sha256 hex, chosen by length)
are plain module-level mappings so they can be overridden, e.g. to point at a local mirror.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .dataset import LAYOUTS
from .errors import CorruptDataError

log = logging.getLogger(__name__)

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/",),
}

CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
    "cifar100": {"cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"},
}

# Datasets distributed as one tarball whose files sit under LAYOUTS[name].folder.
ARCHIVES: frozenset[str] = frozenset({"cifar10", "cifar100"})
TIMEOUT_S: float = 60.0
CHUNK = 1 << 20
PROGRESS: bool = True


class DownloadError(OSError):
    """Every mirror failed for a file (network errors); the message lists each URL and reason."""


def _hasher(expected: str) -> Any:
    algorithm = {32: "md5", 64: "sha256"}.get(len(expected))
    if algorithm is None:
        raise ValueError(f"checksum {expected!r} is neither an md5 (32 hex) nor a sha256 (64 hex) digest")
    return hashlib.new(algorithm, usedforsecurity=False)


def file_digest(path: Path, expected: str) -> str:
    """Hex digest of ``path`` with the algorithm implied by ``expected`` (md5 or sha256)."""
    digest = _hasher(expected)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: str | None, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not PROGRESS:
        return contextlib.nullcontext(None)
    size = int(total) if total and total.isdigit() else None
    return tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=None, leave=False)


def _copy_stream(src: IO[bytes], out: IO[bytes], digest: Any, total: str | None, desc: str) -> int:
    done = 0
    with _progress(total, desc) as bar:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            digest.update(chunk)
            out.write(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return done


def download_file(url: str, target: Path, expected: str) -> Path:
    """Fetch ``url`` to ``target`` via ``target.*.part`` + ``os.replace``; a checksum mismatch is deleted.

    Raises CorruptDataError on a checksum mismatch, OSError / HTTPException on network failure.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.{os.getpid()}.part")
    digest = _hasher(expected)
    log.info("downloading %s", url)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "cljax-data"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp, open(part, "wb") as out:
            total = resp.headers.get("Content-Length")
            got = _copy_stream(resp, out, digest, total, target.name)
        if total and total.isdigit() and got != int(total):
            raise OSError(f"incomplete download: expected {total} bytes, got {got}")
        if digest.hexdigest() != expected.lower():
            raise CorruptDataError(
                f"{url}: checksum mismatch for {target.name}: expected {digest.name} {expected}, "
                f"got {digest.hexdigest()}; the download was deleted"
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


def fetch(name: str, filename: str, dest_dir: Path) -> Path:
    """Make ``dest_dir/filename`` a verified copy, trying each mirror of ``name`` in order."""
    target = Path(dest_dir) / filename
    expected = CHECKSUMS[name][filename]
    if target.is_file() and file_digest(target, expected) == expected.lower():
        return target
    failures: list[str] = []
    mismatches: list[str] = []
    for base in MIRRORS[name]:
        url = base if base.endswith("/") else base + "/"
        url += filename
        try:
            return download_file(url, target, expected)
        except CorruptDataError as err:
            mismatches.append(str(err))
            failures.append(str(err))
        except (OSError, http.client.HTTPException) as err:
            failures.append(f"{url}: {type(err).__name__}: {err}")
    if mismatches:
        raise CorruptDataError("; ".join(failures))
    raise DownloadError("; ".join(failures) or f"no mirror configured for {name}")


def _member_name(member: tarfile.TarInfo, folder: str) -> str | None:
    """The file name to extract ``member`` as, or None when it is not a plain file directly in ``folder``."""
    parts = PurePosixPath(member.name).parts
    if not member.isfile() or len(parts) != 2 or parts[0] != folder or parts[1] in (".", ".."):
        return None
    return parts[1]


def extract_tar(archive: Path, root: Path, folder: str) -> Path:
    """Extract the regular files found directly under ``folder/`` in ``archive`` into ``root/folder``.

    Anything else (links, devices, absolute or ``..`` paths, other folders) is skipped, so no
    path can escape ``root/folder``. Each file is written to a ``.part`` file then renamed.
    """
    dest = Path(root) / folder
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = _member_name(member, folder)
                src = tar.extractfile(member) if name else None
                if name is None or src is None:
                    continue
                part = dest / f"{name}.{os.getpid()}.part"
                try:
                    with src, open(part, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                    os.replace(part, dest / name)
                finally:
                    part.unlink(missing_ok=True)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CorruptDataError(f"{archive}: bad tar archive ({type(err).__name__}: {err})") from err
    return dest


def download_dataset(name: str, root: Path) -> Path:
    """Download ``name`` into the data root ``root`` (official layout) and return its folder."""
    root = Path(root)
    folder = LAYOUTS[name].folder
    created = [p for p in (root / folder, root) if not p.exists()]
    try:
        if name not in ARCHIVES:
            for filename in CHECKSUMS[name]:
                fetch(name, filename, root / folder)
            return root / folder
        (filename,) = CHECKSUMS[name]
        archive = fetch(name, filename, root)
        dest = extract_tar(archive, root, folder)
        archive.unlink()
        return dest
    except BaseException:
        for path in created:  # leave no empty folders behind a failed download
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
