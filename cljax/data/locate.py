"""Find a dataset on disk (or download it) and load it: see :func:`load_dataset` for the search order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from . import download as _download
from . import tfds_source
from .cifar import load_cifar10_folder, load_cifar100_folder, missing_cifar10_files, missing_cifar100_files
from .dataset import LAYOUTS, Dataset, check_name
from .errors import CorruptDataError, DataNotFoundError
from .idx import load_idx_folder, missing_idx_files

SYSTEM_DATASETS_DIR = Path("/usr/share/datasets")
PREPARE_HINT = "python shared/data/prepare.py DIR"

Reader = Callable[[Path], Dataset]
MissingFn = Callable[[Path], list[str]]

READERS: dict[str, tuple[MissingFn, Reader]] = {
    "mnist": (missing_idx_files, lambda folder: load_idx_folder(folder, "mnist")),
    "fashion_mnist": (missing_idx_files, lambda folder: load_idx_folder(folder, "fashion_mnist")),
    "cifar10": (missing_cifar10_files, load_cifar10_folder),
    "cifar100": (missing_cifar100_files, load_cifar100_folder),
}


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """``$CLJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/cljax``, else ``~/.cache/cljax``."""
    explicit = _env_path("CLJAX_CACHE_DIR")
    if explicit is not None:
        return explicit
    xdg = _env_path("XDG_CACHE_HOME")
    return (xdg if xdg is not None else Path.home() / ".cache") / "cljax"


def candidate_folders(name: str, data_dir: str | os.PathLike | None = None) -> Iterator[tuple[str, Path]]:
    """Yield ``(label, folder)`` for each place a complete copy of ``name`` may sit, in search order."""
    sub = LAYOUTS[name].folder
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        yield "data_dir", root / sub
        yield "data_dir (as the dataset folder)", root
    env = _env_path("CLJAX_DATA_DIR")
    if env is not None:
        yield "$CLJAX_DATA_DIR", env / sub
    yield "cache_dir()", cache_dir() / sub
    for spelling in LAYOUTS[name].system_names:
        yield "system", SYSTEM_DATASETS_DIR / spelling


def _why_missing(name: str, folder: Path) -> str | None:
    """None when ``folder`` holds a complete copy of ``name``, else the reason it does not."""
    if not folder.is_dir():
        return "no such folder"
    missing = READERS[name][0](folder)
    return f"incomplete, missing {', '.join(missing)}" if missing else None


def read_folder(name: str, folder: Path) -> Dataset:
    """Load ``name`` from a dataset folder in the official layout (errors: CorruptDataError)."""
    return READERS[name][1](Path(folder))


def _download_and_read(name: str) -> Dataset:
    folder = _download.download_dataset(name, cache_dir())
    why = _why_missing(name, folder)
    if why is not None:
        raise CorruptDataError(f"{folder}: downloaded copy of {name} is {why}")
    return read_folder(name, folder)


def _try_tfds(name: str, download: bool) -> tuple[Dataset | None, str]:
    if not tfds_source.is_available():
        return None, "tensorflow_datasets: not installed"
    try:
        return tfds_source.load_tfds(name, download=download), ""
    except Exception as err:  # tfds raises many unrelated types; each is only recorded
        return None, f"tensorflow_datasets: {type(err).__name__}: {err}"


def _not_found_message(name: str, attempts: list[str]) -> str:
    sub = LAYOUTS[name].folder
    tried = "\n".join(f"  - {a}" for a in attempts)
    return (
        f"could not find dataset {name!r}. Tried, in order:\n{tried}\n"
        f"To fix, do one of:\n"
        f"  - pass --data-dir DIR (or data_dir=DIR to load_dataset) with the files in DIR/{sub}/\n"
        f"  - set CLJAX_DATA_DIR=DIR\n"
        f"  - write offline copies with `{PREPARE_HINT}` (then use DIR as above)\n"
        f"  - for Fashion-MNIST on Debian/Ubuntu: `apt-get install dataset-fashion-mnist`\n"
        f"  - allow downloads (download=True, network access) into {cache_dir()}\n"
        f"  - `pip install cljax[tfds]` to fall back to tensorflow-datasets"
    )


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load ``name`` (one of ``DATASETS``) as numpy arrays, looking in this order:

    1. ``data_dir`` (a root holding ``<dataset folder>/``, or the dataset folder itself),
    2. ``$CLJAX_DATA_DIR`` (a root), 3. :func:`cache_dir` (a root),
    4. ``/usr/share/datasets/<name>`` spellings (dataset folders),
    5. a checksummed download into :func:`cache_dir` when ``download`` is true,
    6. tensorflow-datasets, when installed.

    The first complete copy is read; a corrupt copy raises CorruptDataError at once. When nothing
    works, DataNotFoundError lists every place tried and why it failed.
    """
    name = check_name(name)
    attempts: list[str] = []
    if data_dir is None:
        attempts.append("data_dir: not given")
    env_unset = _env_path("CLJAX_DATA_DIR") is None
    for label, folder in candidate_folders(name, data_dir):
        if env_unset and not label.startswith("data_dir"):
            attempts.append("$CLJAX_DATA_DIR: not set")  # listed where it is searched
            env_unset = False
        why = _why_missing(name, folder)
        if why is None:
            return read_folder(name, folder)
        attempts.append(f"{label}: {folder}: {why}")
    if download:
        try:
            return _download_and_read(name)
        except _download.DownloadError as err:
            attempts.append(f"download into {cache_dir()}: failed: {err}")
        except OSError as err:
            attempts.append(f"download into {cache_dir()}: failed: {type(err).__name__}: {err}")
    else:
        attempts.append("download: skipped (download=False)")
    dataset, failure = _try_tfds(name, download)
    if dataset is not None:
        return dataset
    attempts.append(failure)
    raise DataNotFoundError(_not_found_message(name, attempts), attempts)
