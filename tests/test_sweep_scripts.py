"""benchmarks/sweep.py and examples/nmi2022_hyperparams.py at a tiny length, on tiny synthetic MNIST files."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    spec = importlib.util.spec_from_file_location(Path(relative).stem + "_under_test", ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, np.uint8)
    head = struct.pack(">I", 0x800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return head + array.tobytes()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The tests' synthetic dataset written as the four MNIST IDX files, for scripts that take --data-dir."""
    ds = synthetic_dataset()
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    files = {
        "train-images-idx3-ubyte": ds.train_x[..., 0],
        "train-labels-idx1-ubyte": ds.train_y,
        "t10k-images-idx3-ubyte": ds.test_x[..., 0],
        "t10k-labels-idx1-ubyte": ds.test_y,
    }
    for name, array in files.items():
        (root / "mnist" / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return root


def run_script(relative: str, *args: str) -> str:
    env = {**os.environ, "CLJAX_COMPILE_CACHE": "off", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(ROOT / relative), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_sweep_benchmark_measures_every_way_and_counts_their_compilations(data_dir, tmp_path):
    out = tmp_path / "sweep.json"
    args = ["--strategy", "none", "--key", "lr", "--k", "2", "--iters", "3", "--repeats", "1"]
    args += ["--ways", "sweep,loop,loop-cleared,processes"]  # and `alone`, left out to save time
    run_script("benchmarks/sweep.py", *args, "--data-dir", str(data_dir), "--out", str(out))
    report = json.loads(out.read_text())
    assert {"created", "command", "settings", "environment", "measurements", "medians", "ratios"} <= set(
        report
    )
    assert report["settings"]["values"] == [1e-4, 1e-2] and report["settings"]["k"] == 2
    assert report["command"].startswith("python benchmarks/sweep.py --strategy none")
    rows = {row["way"]: row for row in report["measurements"]}
    assert set(rows) == {"sweep", "loop", "loop-cleared", "processes"}
    for row in rows.values():
        assert "error" not in row, row
        assert {"wall_seconds", "train_seconds", "compile_seconds", "programs_compiled"} <= set(row)
    compiled = {way: row["programs_compiled"] for way, row in rows.items()}
    # init, train, evaluate once for the whole grid; the cleared loop and the processes compile per value
    assert compiled == {"sweep": 3, "loop": 3, "loop-cleared": 6, "processes": 6}
    assert report["ratios"]["sweep_over_loop_train"] > 0 and report["ratios"]["sweep_over_processes_wall"] > 0
    # the same runs every way: the accuracies agree
    assert max(report["max_accuracy_difference_from_sweep"].values()) < 1e-3
    assert out.with_suffix(".md").read_text().startswith("# One sweep against 2 separate runs")


def test_the_sweep_benchmark_passes_a_strategy_option_to_its_processes():
    bench = load_script("benchmarks/sweep.py")
    args = bench.parse_args(["--iters", "5", "--data-dir", "data"])
    assert args.values == [10.0**e for e in range(1, 13)] and args.k == 12  # default: 12 decades of lambda
    command = bench.process_command(args, 1e3, Path("out.json"))
    assert command[command.index("--option") + 1] == "lambda=1000.0"
    assert command[command.index("--iters") + 1] == "5" and "--no-download" in command
    args = bench.parse_args(["--strategy", "none", "--key", "lr", "--values", "1e-3,2e-3"])
    command = bench.process_command(args, 2e-3, Path("out.json"))
    assert command[command.index("--lr") + 1] == "0.002" and "--option" not in command


def test_the_hyperparameter_example_sweeps_the_reference_grid_and_compares_the_pick(data_dir, tmp_path):
    out = tmp_path / "hp"
    args = ["--iters", "3", "--methods", "ewc", "--scenarios", "domain", "--out", str(out)]
    args += ["--data-dir", str(data_dir), "--quiet", "--no-checkpoints"]
    run_script("examples/nmi2022_hyperparams.py", *args)
    example = load_script("examples/nmi2022_hyperparams.py")
    sweep = json.loads((out / "ewc_domain" / "sweep.json").read_text())
    assert [e["values"]["lambda"] for e in sweep["configs"]] == example.EWC_LAMBDAS
    assert sweep["seeds"] == [1] and sweep["groups"] == 1 and sweep["programs_compiled"] == 3
    assert (out / "ewc_domain" / "sweep.md").is_file() and (out / "none_domain" / "run.json").is_file()
    assert not (out / "ewc_domain" / "checkpoints").exists()
    selection = json.loads((out / "selection.json").read_text())
    (entry,) = selection["selected"]
    assert {"strategy", "scenario", "key", "pick", "pick_mean", "paper_value", "paper_mean", "agrees"} <= set(
        entry
    )
    assert entry["paper_value"] == 1e10 and "PROTOCOL.md" in entry["paper_source"]
    assert entry["baseline_mean"] is not None  # fine-tuning is a candidate, as in the reference
    assert selection["budgets"] == [] and selection["seeds"] == [1] and selection["iters"] == [3]
    assert "| ewc | domain | lambda |" in (out / "selection.md").read_text()
    again = run_script("examples/nmi2022_hyperparams.py", *args)  # a finished grid is kept, not run again
    assert f"kept {out / 'ewc_domain' / 'sweep.json'}" in again


def test_the_selection_flags_a_differing_pick_and_lists_budgets_without_one(tmp_path):
    example = load_script("examples/nmi2022_hyperparams.py")

    def write(folder: str, key: str, means: dict) -> None:
        configs = [{"values": {key: v}, "mean": m} for v, m in means.items()]
        payload = {"configs": configs, "seeds": [1], "config": {"iters": 2000}}
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "sweep.json").write_text(json.dumps(payload))

    write("si_class", "c", {10.0: 19.5, 5000.0: 20.1, 1e5: 21.0})
    write("bir_domain", "dg_prop", {0.0: 90.0, 0.1: 97.0, 0.2: 96.0})
    write("er_class", "budget", {10: 60.0, 100: 88.0})
    (tmp_path / "none_class").mkdir()
    (tmp_path / "none_class" / "run.json").write_text(json.dumps({"mean": 19.9}))
    example.write_selection(tmp_path, "python examples/nmi2022_hyperparams.py")
    summary = json.loads((tmp_path / "selection.json").read_text())
    si, bir = summary["selected"]
    assert (si["pick"], si["paper_value"], si["agrees"]) == (1e5, 5000.0, False)
    assert si["gap"] == pytest.approx(0.9) and si["baseline_mean"] == 19.9
    assert (bir["pick"], bir["paper_value"], bir["agrees"], bir["baseline_mean"]) == (0.1, 0.1, True, None)
    (er,) = summary["budgets"]
    assert er["values"] == [10, 100] and er["means"] == [60.0, 88.0] and er["paper_value"] == 100
    text = (tmp_path / "selection.md").read_text()
    assert "⚠ differs" in text and "1 of 2 picks agree" in text and "no pick" in text
