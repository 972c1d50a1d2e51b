"""Several processes as one sweep (multi-controller JAX over gloo on the CPU): the flags, the layout of the
run axis over the processes' devices, and two local processes giving one process's numbers."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cljax.cli import main
from cljax.config import ConfigError
from cljax.devices import global_devices_for_runs
from cljax.distributed import check_join, is_loopback, join, parse_address

ROOT = Path(__file__).resolve().parents[1]
PROCESS_TIMEOUT = 240  # seconds for each process: a hung collective fails the test instead of hanging it


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (dict(coordinator="127.0.0.1:1234"), "missing --num-processes, --process-id"),
        (dict(num_processes=2, process_id=0), "missing --coordinator"),
        (dict(coordinator="127.0.0.1", num_processes=2, process_id=0), "must be HOST:PORT"),
        (dict(coordinator=":1234", num_processes=2, process_id=0), "must be HOST:PORT"),
        (dict(coordinator="127.0.0.1:http", num_processes=2, process_id=0), "port must be a number"),
        (dict(coordinator="127.0.0.1:70000", num_processes=2, process_id=0), "port must be a number"),
        (dict(coordinator="127.0.0.1:1234", num_processes=0, process_id=0), "at least 1, got 0"),
        (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=2), "lie in 0..1 for 2 processes"),
        (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=-1), "lie in 0..1"),
        (dict(coordinator="127.0.0.1:1234", auto=True), "drop --coordinator"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_join(**flags)
    assert "\n" not in str(err.value)


def test_good_flags_and_none():
    assert check_join() is None and check_join(auto=True) is None
    assert check_join("10.0.0.1:1234", 4, 3) == ("10.0.0.1", 1234)
    assert parse_address("[::1]:8476") == ("[::1]", 8476)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("10.0.0.1") and not is_loopback("node-1")


def test_join_without_flags_does_nothing_and_after_jax_started_refuses():
    assert join() is False
    with pytest.raises(ConfigError, match="JAX has already started"):  # the tests' JAX has started
        join("127.0.0.1:1234", 2, 0)


def test_auto_detection_outside_a_cluster_says_what_to_give():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMIX_", "JAX_COORD"))}
    code = "from cljax.distributed import join; join(auto=True)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ConfigError: distributed: could not join the processes" in done.stderr
    assert "SLURM" in done.stderr and "--coordinator" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--coordinator", "127.0.0.1:1234"],
        ["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "5"],
        ["--distributed-auto", "--process-id", "0"],
    ],
)
@pytest.mark.parametrize("command", ["sweep", "run"])
def test_the_command_line_names_bad_flags_before_anything_runs(command, argv, capsys):
    grid = ["--grid", "lr=0.001"] if command == "sweep" else []
    assert main([command, "--strategy", "none", *grid, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cljax: error: distributed:") and err.count("\n") == 1


# ---------------------------------------------------------------- layout of the run axis


@pytest.mark.parametrize(
    ("runs", "processes", "local", "per_process", "padded"),
    [
        (2, 2, 1, 1, 2),
        (3, 2, 1, 1, 4),
        (5, 2, 1, 1, 6),
        (8, 2, 2, 2, 8),
        (6, 2, 2, 2, 8),
        (6, 2, 3, 3, 6),
        (2, 2, 4, 1, 2),
        (4, 2, 8, 2, 4),
        (20, 4, 2, 2, 24),
    ],
)
def test_runs_over_joined_processes(runs, processes, local, per_process, padded):
    assert global_devices_for_runs(runs, processes, local) == (per_process, padded)
    assert padded >= runs and padded % (processes * per_process) == 0
    # no fewer runs per device is possible with the processes' devices
    best = -(-runs // (processes * min(local, -(-runs // processes))))
    assert padded // (processes * per_process) == best


# ---------------------------------------------------------------- two processes against one


def write_mnist_idx(folder: Path, per_class: int = 60, test_per_class: int = 20, seed: int = 0) -> None:
    """A tiny noisy MNIST-like IDX folder: each class lifts its own block of pixels a little above the
    noise, so a few iterations learn something but not everything (accuracies between chance and 100)."""
    rng = np.random.default_rng(seed)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(10), count)
        x = rng.integers(0, 200, size=(len(y), 28, 28))
        for c in range(10):
            row, col = divmod(c, 5)
            x[y == c, 2 + row * 12 : 12 + row * 12, 1 + col * 5 : 5 + col * 5] += 40
        order = rng.permutation(len(y))
        return x[order].astype(np.uint8), y[order].astype(np.uint8)

    def idx(a: np.ndarray) -> bytes:
        return bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()

    (train_x, train_y), (test_x, test_y) = split(per_class), split(test_per_class)
    folder.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": train_x,
        "train-labels-idx1-ubyte": train_y,
        "t10k-images-idx3-ubyte": test_x,
        "t10k-labels-idx1-ubyte": test_y,
    }
    for base, array in arrays.items():
        (folder / f"{base}.gz").write_bytes(gzip.compress(idx(array)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(commands: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Start every command at once and wait for all; any still running at the deadline is killed."""
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    deadline = time.monotonic() + PROCESS_TIMEOUT
    done = []
    try:
        for cmd, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a process did not finish within {PROCESS_TIMEOUT} s (a hung collective?)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def test_two_processes_give_one_process_numbers(tmp_path):
    """Three configurations over two joined processes (one CPU device each: the run axis is padded to 4)
    against the same sweep in one process: the same sweep.json numbers, exactly; only process 0 writes."""
    write_mnist_idx(tmp_path / "data" / "mnist")
    sweep = [sys.executable, "-m", "cljax.cli", "sweep", "--benchmark", "split-mnist", "--scenario",
             "domain", "--strategy", "none", "--grid", "lr=0.0001,0.001,0.0003", "--seeds", "1", "--iters",
             "20", "--batch-size", "16", "--data-dir", str(tmp_path / "data"), "--no-download",
             "--quiet"]  # fmt: skip
    joined = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CLJAX_COMPILE_CACHE": "off", "JAX_NUM_CPU_DEVICES": "1"}
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_LOCAL_DEVICE_IDS", "JAX_PARTITION_INDEX"):
        env.pop(name, None)
    two, one = tmp_path / "two", tmp_path / "one"
    first, second, alone = run_all(
        [
            [*sweep, "--out", str(two), *joined, "--process-id", "0"],
            [*sweep, "--out", str(two), *joined, "--process-id", "1"],
            [*sweep, "--out", str(one)],
        ],
        env,
    )
    for done in (first, second, alone):
        assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote" in first.stdout and "wrote" not in second.stdout

    def table(out: str) -> list[str]:
        return [line for line in out.splitlines() if line.startswith("| 0.")]

    assert len(table(first.stdout)) == 3 and table(first.stdout) == table(second.stdout)  # both print it
    joined_result = json.loads((two / "sweep.json").read_text())
    single = json.loads((one / "sweep.json").read_text())
    assert joined_result["environment"]["process_count"] == 2
    assert joined_result["environment"]["device_count"] == 2
    assert single["environment"]["process_count"] == 1
    for a, b in zip(joined_result["configs"], single["configs"], strict=True):
        assert a["values"] == b["values"]
        assert a["final_avg_acc"] == b["final_avg_acc"]
        assert a["acc_matrix"] == b["acc_matrix"]
        assert (a["mean"], a["sem"]) == (b["mean"], b["sem"])
    # the numbers say something: neither chance everywhere nor perfect
    acc = np.array([c["acc_matrix"] for c in single["configs"]])
    assert 50 < acc.mean() < 100 and len({round(x, 3) for x in acc.ravel()}) > 5
