"""Runs people can trust: resume after a crash, bit-identical reruns, logs, plots and clear failures."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import cljax
from cljax.checkpoint import Checkpoints
from cljax.cli import main
from tests.conftest import SHARED_DATA

TINY = dict(benchmark="split-mnist", scenario="class", strategy="none", iters=30, batch_size=16, quiet=True)
needs_mnist = pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="real MNIST not available")


@needs_mnist
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    common = [
        "--scenario",
        "domain",
        "--strategy",
        "none",
        "--seeds",
        "2",
        "--iters",
        "300",
        "--batch-size",
        "16",
        "--data-dir",
        str(SHARED_DATA),
        "--no-download",
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cljax.cli", "run", *common, "--checkpoint-dir", str(ckpt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not (ckpt / "2").is_dir():  # orbax renames the step folder into place once it is complete
        assert proc.poll() is None, f"the run ended early: {proc.stderr.read().decode()}"
        assert time.time() < deadline, "no checkpoint after context 2 within 5 minutes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckpt / "5").exists(), "the run finished before it could be killed"

    # The command line spreads the seeds over host devices as the killed run did (cljax.devices), so the
    # resumed and the uninterrupted runs are separate processes too.
    resumed = tmp_path / "resumed.json"
    cli = [sys.executable, "-m", "cljax.cli", "run", *common]
    subprocess.run([*cli, "--checkpoint-dir", str(ckpt), "--resume", "--out", str(resumed)], check=True)
    straight = tmp_path / "straight.json"
    subprocess.run([*cli, "--out", str(straight)], check=True)
    a, b = json.loads(resumed.read_text()), json.loads(straight.read_text())
    assert a["acc_matrix"] == b["acc_matrix"]
    assert a["context_loss"] == b["context_loss"]


def test_same_command_same_numbers(tiny_data):
    first = cljax.run(seeds=2, dataset=tiny_data, **TINY)
    second = cljax.run(seeds=2, dataset=tiny_data, **TINY)
    assert first.acc_matrix == second.acc_matrix
    assert first.context_loss == second.context_loss
    other_seed = cljax.run(seeds=2, first_seed=7, dataset=tiny_data, **TINY)
    assert other_seed.context_loss != first.context_loss


def test_result_records_versions_and_config(tiny_data):
    result = cljax.run(dataset=tiny_data, **TINY).to_dict()
    env = result["environment"]
    for key in ("jax", "jaxlib", "flax", "optax", "device_kind", "backend"):
        assert env[key]
    assert env["jax"] == jax.__version__
    assert result["config"]["iters"] == 30 and result["config"]["lr"] == 1e-3


def test_nan_keeps_the_last_good_checkpoint_and_writes_no_results(tiny_data, tmp_path):
    exp = cljax.prepare(cljax.RunConfig(**{k: v for k, v in TINY.items() if k != "quiet"}), dataset=tiny_data)
    step = exp.strategy.step

    def poisoned(state, images, stream, context, key):
        state, metrics = step(state, images, stream, context, key)
        return state, {"loss": jax.numpy.where(context == 2, jax.numpy.inf, metrics["loss"])}

    exp.strategy = exp.strategy._replace(step=poisoned)
    with pytest.raises(cljax.NonFiniteLossError, match="context 3, iteration 1"):
        cljax.execute(exp, quiet=True, checkpoint_dir=tmp_path / "ckpt")
    steps = sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit())
    assert steps[-1] == 2  # contexts 1 and 2 are safe; nothing of the broken context 3 was saved


def test_resuming_a_state_of_another_layout_says_so(tmp_path):
    config = {"strategy": "none"}
    old = Checkpoints(tmp_path, config, resume=False)
    old.save(1, {"layer": {"kernel": np.zeros((3, 2), np.float32)}}, {"rows": []})
    old.close()
    new = Checkpoints(tmp_path, config, resume=True)
    with pytest.raises(cljax.ConfigError, match="another cljax version.*new --checkpoint-dir"):
        new.restore({"layer": {"weight": np.zeros((2, 3), np.float32)}})
    new.close()
    assert (tmp_path / "1").is_dir()  # the saved run is left as it was


def test_a_used_checkpoint_folder_needs_resume(tiny_data, tmp_path):
    cljax.run(dataset=tiny_data, checkpoint_dir=tmp_path, **TINY)
    with pytest.raises(cljax.ConfigError, match="--resume"):
        cljax.run(dataset=tiny_data, checkpoint_dir=tmp_path, **TINY)
    with pytest.raises(cljax.ConfigError, match="iters: 30 -> 31"):
        cljax.run(dataset=tiny_data, checkpoint_dir=tmp_path, resume=True, **{**TINY, "iters": 31})


def test_unwritable_places_fail_clearly(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(cljax.ConfigError, match="checkpoint_dir: cannot create"):
        cljax.run(dataset=tiny_data, checkpoint_dir=blocker / "ckpt", **TINY)
    assert main(["run", "--strategy", "none", "--out", str(tmp_path / "missing" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_full_disk_gives_a_clear_error_and_no_partial_file(tmp_path, monkeypatch):
    from cljax import results

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        results.write_json(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_log_dir_writes_a_row_per_seed_and_context(tiny_data, tmp_path):
    cljax.run(seeds=2, dataset=tiny_data, log_dir=tmp_path, **TINY)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 2 * 5
    assert {(r["seed"], r["context"]) for r in rows} == {
        (str(s), str(c)) for s in (0, 1) for c in range(1, 6)
    }
    assert all(0 <= float(r["avg_acc"]) <= 100 for r in rows)


def test_plot_draws_a_png(tiny_data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    result = cljax.run(seeds=2, dataset=tiny_data, **TINY)
    path = result.save(tmp_path / "r.json")
    out = tmp_path / "fig.png"
    assert main(["plot", str(path), str(path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    (tmp_path / "bad.json").write_text("{}")
    assert main(["plot", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.png")]) == 1
    assert "not a cljax results file" in capsys.readouterr().err


def test_png_writer_round_trip(tmp_path):
    from cljax.images import grid, write_png

    picture = grid(np.random.default_rng(0).random((12, 8, 8, 1)), columns=5)
    assert picture.shape == (3 * 9 + 1, 5 * 9 + 1, 1)
    path = write_png(tmp_path / "g.png", picture)
    PIL = pytest.importorskip("PIL.Image")
    np.testing.assert_array_equal(np.asarray(PIL.open(path)), picture[:, :, 0])
