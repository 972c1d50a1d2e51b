"""What a fresh ``pip install -e ".[dev]"`` brings: every package cljax and its tests import is declared.

The source is read with ``ast``, so a package missing from this environment is still noticed: a module
imported at the top of a cljax file must be a dependency; one imported lazily (inside a function, for an
optional feature) a dependency or in an extra; one the tests import (or ``importorskip``) a dependency or
in the ``dev`` extra, except torch, which stays in ``bench`` (its tests skip without it).
"""

from __future__ import annotations

import ast
import re
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import jax
import pytest

from cljax.compilation import COMPILE_CACHE_MAX_BYTES, cache_size_limit, enable_compilation_cache

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"cljax", "tests", "benchmarks"}
# Import names whose distribution is called something else (compared after PEP 503 normalisation).
DISTRIBUTIONS = {
    "PIL": "pillow",
    "orbax": "orbax-checkpoint",
    "tensorflow_datasets": "tensorflow-datasets",
    "tensorboardX": "tensorboardx",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
}
NOT_IN_DEV = {"torch", "torchvision"}  # the bench extra; tests that need it skip without it
# benchmarks/reference_pretrain.py imports the reference's own module from a checkout of it
FROM_THE_REFERENCE = {"main_pretrain"}


def normalise(name: str) -> str:
    """A distribution's name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(module: str) -> str:
    """The (normalised) distribution that provides the top-level module ``module``."""
    return normalise(DISTRIBUTIONS.get(module, module))


def requirement_names(requirements: Iterable[str]) -> set[str]:
    """The normalised names of PEP 508 requirement strings."""
    return {normalise(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.strip()).group()) for r in requirements}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def runtime() -> set[str]:
    return requirement_names(_pyproject()["dependencies"])


def extra(name: str) -> set[str]:
    return requirement_names(_pyproject()["optional-dependencies"][name])


def all_extras() -> set[str]:
    return set().union(*(requirement_names(r) for r in _pyproject()["optional-dependencies"].values()))


def _third_party(module: str) -> str | None:
    top = module.split(".")[0]
    return None if top in LOCAL or top in sys.stdlib_module_names else top


def imports(files: Iterable[Path], top_level_only: bool = False) -> dict[str, str]:
    """Third-party top-level module -> a file importing it (lazy imports too unless ``top_level_only``).

    ``pytest.importorskip("X")`` counts as an import of ``X``.
    """
    found: dict[str, str] = {}
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [node.args[0].value]
            for name in filter(None, map(_third_party, names)):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_the_scan_sees_imports_of_every_kind():
    found = imports(python_files("cljax"))
    assert {"jax", "numpy", "flax", "optax"} <= set(found)  # top of the module
    assert {"matplotlib", "tensorboardX"} <= set(found)  # inside functions
    assert "PIL" in imports(python_files("tests")), "importorskip('PIL.Image') is an import of PIL"
    assert distribution("PIL") == "pillow" and distribution("orbax") == "orbax-checkpoint"
    assert requirement_names(["orbax_checkpoint>=0.11", "Pillow ; python_version>'3'"]) == {
        "orbax-checkpoint",
        "pillow",
    }


def test_modules_imported_when_cljax_loads_are_dependencies():
    missing = {
        module: where
        for module, where in imports(python_files("cljax"), top_level_only=True).items()
        if distribution(module) not in runtime()
    }
    assert not missing, f"add to [project] dependencies in pyproject.toml: {missing}"


def test_every_package_cljax_imports_is_declared():
    declared = runtime() | all_extras()
    missing = {
        m: where for m, where in imports(python_files("cljax")).items() if distribution(m) not in declared
    }
    assert not missing, f"declare in pyproject.toml (dependencies or an extra): {missing}"


def test_the_dev_extra_has_everything_the_tests_use_but_torch():
    installed = runtime() | extra("dev")
    used = imports(python_files("tests", "benchmarks"))
    missing = {
        m: where
        for m, where in used.items()
        if m not in NOT_IN_DEV | FROM_THE_REFERENCE and distribution(m) not in installed
    }
    assert not missing, f"add to the dev extra in pyproject.toml: {missing}"
    assert not NOT_IN_DEV & {normalise(n) for n in extra("dev")}, "torch stays in the bench extra"


def test_the_compilation_cache_has_what_it_needs():
    """JAX keeps a size-limited cache only with filelock; without it the cache would stay empty."""
    assert "filelock" in runtime()
    assert cache_size_limit() == COMPILE_CACHE_MAX_BYTES, "filelock is a dependency: pip install -e '.[dev]'"


def test_without_filelock_the_cache_has_no_size_limit(monkeypatch):
    monkeypatch.setitem(sys.modules, "filelock", None)
    assert cache_size_limit() == -1


def test_a_cached_compile_warns_about_nothing(disk_cache):
    folder, _ = disk_cache
    assert enable_compilation_cache() == folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(jax.jit(lambda x: x * 3 + 1)(jax.numpy.int32(2))) == 7
    assert any(folder.iterdir()), "the compiled program is kept on disk"
