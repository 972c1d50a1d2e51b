"""The library examples run at a tiny length, and use only cljax's public names."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cljax

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
LIBRARY_EXAMPLES = ("own_method.py", "own_data.py")


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "CLJAX_COMPILE_CACHE": "off", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("name", LIBRARY_EXAMPLES)
def test_the_library_examples_reach_only_into_public_names(name):
    """Every cljax name an example uses is exported by ``cljax`` (or a public, documented module)."""
    tree = ast.parse((ROOT / "examples" / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cljax"):
            assert node.module == "cljax", f"{name} imports from {node.module}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name == "cljax" or not alias.name.startswith("cljax"), alias.name
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cljax":
            assert node.attr in cljax.__all__, f"{name} uses cljax.{node.attr}, which is not public"
            assert not node.attr.startswith("_")


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="real MNIST not available")
def test_own_method_compares_the_users_strategy_with_none_and_ewc():
    out = run_example("own_method.py", "--iters", "5", "--seeds", "1", "--data-dir", str(SHARED_DATA))
    lines = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert [line[0] for line in lines] == ["none", "ewc", "l2"]
    assert "strength=1.0" in out and "lambda=" in out


@pytest.mark.skipif(not (SHARED_DATA / "cifar100").is_dir(), reason="CIFAR-100 not available")
def test_own_data_trains_a_users_cnn_on_a_users_arrays(tmp_path):
    subprocess.run(
        [sys.executable, str(SHARED_DATA / "prepare.py"), str(tmp_path), "cifar100"],
        check=True,
        capture_output=True,
    )
    out = run_example("own_data.py", "--iters", "3", "--seeds", "1", "--data-dir", str(tmp_path))
    assert "none on my-protocol, Class-IL" in out and "er on my-protocol, Class-IL" in out
    assert "accuracy of er's final model on all 1200 test images" in out
