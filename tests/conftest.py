"""Shared fixtures: the real MNIST when ../shared/data has it, and a tiny synthetic dataset otherwise."""

from __future__ import annotations

import os

# The suite runs in several processes (pytest-xdist): on a GPU each must not take 75 % of its memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from pathlib import Path

import jax
import numpy as np
import pytest

from cljax.compilation import enable_compilation_cache
from cljax.data import Dataset, load_dataset

# The command line keeps compiled programs in the user's cache folder; the tests must not write there.
os.environ["CLJAX_COMPILE_CACHE"] = "off"
# The tests run on one CPU device, whatever the command line they call would ask for (cljax.devices);
# spreading seeds over several is tested in a process of its own.
jax.devices()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic_dataset(
    n_classes: int = 10, per_class: int = 60, test_per_class: int = 20, seed: int = 0
) -> Dataset:
    """Linearly separable 28x28 'digits': each class lights its own block of pixels, plus noise."""
    rng = np.random.default_rng(seed)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(n_classes), count)
        x = rng.integers(0, 60, size=(len(y), 28, 28, 1))
        for c in range(n_classes):
            row, col = divmod(c, 5)
            x[y == c, 2 + row * 12 : 12 + row * 12, 1 + col * 5 : 5 + col * 5] += 180
        order = rng.permutation(len(y))
        return x[order].astype(np.uint8), y[order].astype(np.int32)

    train_x, train_y = split(per_class)
    test_x, test_y = split(test_per_class)
    return Dataset("mnist", train_x, train_y, test_x, test_y, n_classes)


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    return synthetic_dataset()


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA / 'mnist'}")
    return load_dataset("mnist", SHARED_DATA, download=False)


@pytest.fixture
def disk_cache(tmp_path, monkeypatch):
    """JAX's persistent cache in a temporary folder, switched off again afterwards."""
    from jax.experimental.compilation_cache import compilation_cache

    monkeypatch.setenv("CLJAX_COMPILE_CACHE", "off")
    assert enable_compilation_cache() is None
    monkeypatch.setenv("CLJAX_COMPILE_CACHE", str(tmp_path / "xla"))
    hits: list[str] = []

    def listen(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    jax.monitoring.register_event_listener(listen)
    yield tmp_path / "xla", hits
    jax.monitoring.unregister_event_listener(listen)
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()


@pytest.fixture(autouse=True)
def fresh_programs():
    """Each test compiles its own programs: the engine's cache of compiled programs (which lets runs of one
    process share them) is emptied before it, so tests that patch internals never get a stale program."""
    from cljax.engine import clear_program_cache

    clear_program_cache()
    yield
