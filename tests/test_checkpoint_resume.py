"""Every strategy's state survives a checkpoint: a run interrupted after a context and resumed gives the same
numbers, bit for bit, as one that ran straight through, zero-size state leaves (a buffer without logits)
included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax
from cljax import engine
from cljax.checkpoint import Checkpoints
from cljax.compilation import enable_compilation_cache
from cljax.data import Dataset
from cljax.strategies import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
INTERRUPTED_AFTER = 2  # of split-MNIST's 5 contexts


class Interrupted(BaseException):
    """Stands in for a kill or Ctrl-C: not an ``Exception``, so nothing on its way out catches it."""


def scenario_of(name: str) -> str:
    """Class-IL where the strategy supports it, else its first scenario."""
    scenarios = REGISTRY[name].scenarios
    return "class" if "class" in scenarios else scenarios[0]


def tiny_config(name: str, seeds: int = 1) -> cljax.RunConfig:
    """A run of a few iterations per context, so that even the generators' runs take seconds."""
    options = {"fisher_n": 20} if name in ("ewc", "online-ewc") else {}
    return cljax.RunConfig(
        benchmark="split-mnist",
        scenario=scenario_of(name),
        strategy=name,
        seeds=seeds,
        iters=5,
        batch_size=16,
        options=options,
    )


def run_interrupted(config: cljax.RunConfig, data: Dataset, folder: Path, monkeypatch) -> None:
    """Run with checkpoints into ``folder`` and die once context ``INTERRUPTED_AFTER + 1`` has trained,
    before it is saved: steps 1..INTERRUPTED_AFTER are left on disk."""
    check = engine._check_finite

    def check_or_die(losses: np.ndarray, context: int, seeds: list[int]) -> None:
        if context == INTERRUPTED_AFTER:
            raise Interrupted
        check(losses, context, seeds)

    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(engine, "_check_finite", check_or_die)
        cljax.run(config, dataset=data, quiet=True, checkpoint_dir=folder)


def saved_steps(folder: Path) -> list[int]:
    """The complete checkpoint steps in ``folder`` (orbax renames a step's folder into place when done)."""
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_an_interrupted_run_resumes_to_the_same_numbers(name, tiny_data, tmp_path, monkeypatch, disk_cache):
    # the three runs share their programs through a disk cache of their own, so only the first compiles
    assert enable_compilation_cache() == disk_cache[0]
    config, folder = tiny_config(name), tmp_path / "ckpt"
    run_interrupted(config, tiny_data, folder, monkeypatch)
    assert saved_steps(folder)[-1] == INTERRUPTED_AFTER
    resumed = cljax.run(config, dataset=tiny_data, quiet=True, checkpoint_dir=folder, resume=True)
    straight = cljax.run(config, dataset=tiny_data, quiet=True)
    assert resumed.acc_matrix == straight.acc_matrix
    assert resumed.context_loss == straight.context_loss


def buffer_like_state() -> dict:
    """A state with zero-size leaves of several dtypes and ranks beside ordinary ones."""
    return {
        "buffer": {
            "logits": jnp.zeros((2, 5, 0), jnp.float32),
            "slot": jnp.arange(10, dtype=jnp.int32).reshape(2, 5),
            "seen": jnp.int32(7),
        },
        "flags": jnp.zeros((0,), bool),
        "weights": jnp.linspace(0.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3),
    }


def test_zero_size_leaves_come_back_with_their_shape_and_dtype(tmp_path):
    state = buffer_like_state()
    saving = Checkpoints(tmp_path, {"strategy": "er"}, resume=False)
    saving.save(1, state, {"rows": [[0.5]]})
    saving.close()
    loading = Checkpoints(tmp_path, {"strategy": "er"}, resume=True)
    step, restored, progress = loading.restore(jax.tree.map(jnp.zeros_like, state))
    loading.close()
    assert step == 1 and progress == {"rows": [[0.5]]}
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for want, got in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        assert isinstance(got, jax.Array)
        assert (got.shape, got.dtype, got.sharding) == (want.shape, want.dtype, want.sharding)
        np.testing.assert_array_equal(got, want)


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(tmp_path):
    config = cljax.RunConfig(strategy="si", scenario="task").to_dict()
    older = {k: v for k, v in config.items() if k not in ("stream", "fuzziness", "labels_per_batch")}
    state = buffer_like_state()
    saving = Checkpoints(tmp_path, {**older, "sweep": [older, older]}, resume=False)
    saving.save(1, state, {"rows": []})
    saving.close()
    loading = Checkpoints(tmp_path, {**config, "sweep": [config, config]}, resume=True)
    assert loading.restore(jax.tree.map(jnp.zeros_like, state))[0] == 1  # new fields: their defaults
    loading.close()
    other = {**config, "stream": "random"}
    named = r"\(stream: None -> 'random', sweep: other configurations\); rerun"
    with pytest.raises(cljax.ConfigError, match=named):
        Checkpoints(tmp_path, {**other, "sweep": [other, other]}, resume=True).restore(state)


def test_a_leaf_saved_empty_but_expected_full_is_another_layout(tmp_path):
    state = buffer_like_state()
    saving = Checkpoints(tmp_path, {"strategy": "derpp"}, resume=False)
    saving.save(1, state, {"rows": []})
    saving.close()
    loading = Checkpoints(tmp_path, {"strategy": "derpp"}, resume=True)
    with_logits = {**state, "buffer": {**state["buffer"], "logits": jnp.zeros((2, 5, 3), jnp.float32)}}
    expected = r"nothing saved for \['buffer'\]\['logits'\].*--checkpoint-dir"
    with pytest.raises(cljax.ConfigError, match=expected):
        loading.restore(with_logits)
    loading.close()


SHARDED_RESUME = """
import json, sys
import jax
import numpy as np
import cljax
from cljax import engine
from cljax.checkpoint import Checkpoints
from cljax.compilation import enable_compilation_cache
from tests.conftest import synthetic_dataset
from tests.test_checkpoint_resume import Interrupted, tiny_config

enable_compilation_cache()
leaves = []


class Recorded(Checkpoints):
    def restore(self, state_like):
        restored = super().restore(state_like)
        for like, got in zip(jax.tree.leaves(state_like), jax.tree.leaves(restored[1]), strict=True):
            leaves.append({
                "empty": like.size == 0,
                "same": [got.shape == like.shape, got.dtype == like.dtype, got.sharding == like.sharding],
                "devices": len(got.sharding.device_set),
            })
        return restored


def check_or_die(losses, context, seeds):
    if context == 2:
        raise Interrupted


data, config, folder = synthetic_dataset(), tiny_config("er", seeds=2), sys.argv[1]
engine.Checkpoints = Recorded
check = engine._check_finite
engine._check_finite = check_or_die
try:
    cljax.run(config, dataset=data, quiet=True, checkpoint_dir=folder)
except Interrupted:
    pass
engine._check_finite = check
resumed = cljax.run(config, dataset=data, quiet=True, checkpoint_dir=folder, resume=True)
straight = cljax.run(config, dataset=data, quiet=True)
print(json.dumps({
    "seed_devices": resumed.environment["seed_devices"],
    "leaves": leaves,
    "same_acc": resumed.acc_matrix == straight.acc_matrix,
    "same_loss": resumed.context_loss == straight.context_loss,
}))
"""


def test_restored_leaves_keep_the_seed_sharding(tmp_path):
    """Two seeds over two CPU devices (a process of its own): every restored leaf, the rebuilt empty ones
    too, has the template's shape, dtype and sharding, and the resumed run matches the straight one."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "CLJAX_COMPILE_CACHE": str(tmp_path / "xla")}
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_RESUME, str(tmp_path / "ckpt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seed_devices"] == 2
    assert any(leaf["empty"] for leaf in result["leaves"]), "er's buffer should hold zero-size logits"
    assert all(leaf["same"] == [True, True, True] and leaf["devices"] == 2 for leaf in result["leaves"])
    assert result["same_acc"] and result["same_loss"]
