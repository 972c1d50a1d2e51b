"""Benchmark cljax against an eager PyTorch implementation of the same split-MNIST protocol.

    python benchmarks/run.py                                   # all strategies, 2000 iterations, 3 repeats
    python benchmarks/run.py --iters 200 --repeats 1 --strategies none      # a smoke run
    python benchmarks/run.py --device gpu --seeds 20 --torch-compile none   # see benchmarks/gpu.sh

For every strategy it measures cljax with one seed and with N seeds in one program, and the PyTorch
reference (benchmarks/torch_reference) eager and, with ``--torch-compile``, under ``torch.compile``:
compile or warm-up seconds, steady-state iterations per second, the whole run's wall time, peak memory
and the final average accuracy. Every measurement runs in a fresh process (this script with
``--worker``), pinned to the same CPU cores and thread counts; repeats are interleaved and the tables
show medians. It also times a large matmul in both frameworks and reports the achieved FLOP/s of the
``none`` training step against it. Results: ``benchmarks/results/<machine>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("none", "er", "lwf", "dgr")
TORCH_STRATEGIES = ("none", "er", "lwf", "dgr")  # benchmarks/torch_reference/strategies.py
SCENARIOS = ("task", "domain", "class")
BATCH_SIZE = 128
HIDDEN = (400, 400)
N_PIXELS = 784
METRICS = (
    "compile_seconds",
    "iterations_per_second",
    "seed_iterations_per_second",
    "train_seconds",
    "wall_seconds",
    "process_seconds",
    "peak_memory_mb",
    "final_acc",
)


# ------------------------------------------------------------------------------------------ FLOP count


def mlp_step_flops(batch: int = BATCH_SIZE, n_out: int = 10, hidden: Sequence[int] = HIDDEN) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of one MLP training step, forward and backward.

    A dense layer with n_in inputs and n_out outputs costs 2 B n_in n_out in the forward pass, as much
    again for the weight gradient and as much again for the input gradient, which the first layer does
    not need. Biases, ReLU, softmax and Adam (about 10 FLOPs per parameter) add well under 2 % and are
    left out.
    """
    widths = [N_PIXELS, *hidden, n_out]
    layers = [2 * batch * a * b for a, b in zip(widths[:-1], widths[1:], strict=False)]
    return 2 * sum(layers) + sum(layers[1:])


def n_out(scenario: str) -> int:
    """Output units of the split-MNIST classifier."""
    return 2 if scenario == "domain" else 10


# ----------------------------------------------------------------------------------------------- worker


def pin_threads(threads: int) -> list[int]:
    """Restrict this process (and the threads it will start) to ``threads`` of its allowed CPUs."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is in KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_npz(path: str):
    """The dataset the parent saved (``cljax.data.Dataset`` fields) without importing any framework."""
    import numpy as np

    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return argparse.Namespace(name="mnist", num_classes=10, **arrays)


def cljax_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One cljax run of ``spec['seeds']`` seeds in one program."""
    import jax

    if spec["precision"] == "fp32":
        jax.config.update("jax_default_matmul_precision", "highest")
    import cljax
    from cljax.data import Dataset
    from cljax.devices import use_host_devices

    use_host_devices(spec["seeds"])  # as the command line does: seeds side by side on the cores

    ns = load_npz(spec["data"])
    dataset = Dataset("mnist", ns.train_x, ns.train_y, ns.test_x, ns.test_y, 10)
    start = time.perf_counter()
    res = cljax.run(
        strategy=spec["strategy"],
        scenario=spec["scenario"],
        seeds=spec["seeds"],
        iters=spec["iters"],
        dataset=dataset,
        quiet=True,
    )
    wall = time.perf_counter() - start
    out = {
        "compile_seconds": res.compile_seconds,
        "iterations_per_second": res.iterations_per_second,
        "seed_iterations_per_second": spec["seeds"] * res.iterations_per_second,
        "train_seconds": res.train_seconds,
        "wall_seconds": wall,
        "final_acc": res.mean,
        "final_acc_per_seed": res.final_avg_acc,
        "seed_devices": res.environment["seed_devices"],
        "backend": jax.default_backend(),
        "device_name": jax.devices()[0].device_kind,
        "versions": {"jax": jax.__version__, "cljax": cljax.__version__},
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def torch_setup(spec: dict[str, Any]):
    """Import torch with the spec's threads and float32 matmul precision."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_float32_matmul_precision("high" if spec["precision"] == "tf32" else "highest")
    return torch


def torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of the PyTorch reference (one seed), eager or compiled."""
    torch = torch_setup(spec)
    from benchmarks.torch_reference import Hyper, TorchConfig, run

    device = "cuda" if spec["device"] == "gpu" else "cpu"
    config = TorchConfig(
        strategy=spec["strategy"],
        scenario=spec["scenario"],
        iters=spec["iters"],
        device=device,
        hyper=Hyper(compile=spec["compile"]),
    )
    res = run(config, load_npz(spec["data"]))
    out = {
        "compile_seconds": res.warmup_seconds,
        "iterations_per_second": res.iterations_per_second,
        "seed_iterations_per_second": res.iterations_per_second,
        "train_seconds": res.train_seconds,
        "wall_seconds": res.wall_seconds,
        "final_acc": res.final_avg_acc,
        "final_acc_per_seed": [res.final_avg_acc],
        "backend": device,
        "device_name": res.environment["device_name"],
        "versions": {"torch": torch.__version__},
    }
    if device == "cuda":
        out["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def matmul_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """FLOP/s of an n x n float32 matmul (best of ``reps`` after a warm-up), in jax or torch."""
    n, reps = spec["size"], spec["reps"]
    if spec["framework"] == "jax":
        import jax
        import jax.numpy as jnp

        precision = "highest" if spec["precision"] == "fp32" else None
        a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32) for i in range(2))
        f = jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))

        def once() -> None:
            f(a, b).block_until_ready()
    else:
        torch = torch_setup(spec)
        device = "cuda" if spec["device"] == "gpu" else "cpu"
        a, b = (torch.randn(n, n, device=device) for _ in range(2))

        def once() -> None:
            (a @ b).sum().item()

    once()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return {"gflops": 2 * n**3 / min(times) / 1e9, "seconds": min(times)}


def worker_main(spec_json: str, result_path: str) -> None:
    """Entry point of a measuring process: pin threads, measure, write JSON to ``result_path``."""
    use_checkout()
    spec = json.loads(spec_json)
    cpus = pin_threads(spec["threads"])
    measure = {"cljax": cljax_worker, "torch": torch_worker, "matmul": matmul_worker}[spec["kind"]]
    out = measure(spec)
    out["cpus"] = cpus
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_memory_mb"] = out.get("device_peak_mb", out["peak_rss_mb"])
    Path(result_path).write_text(json.dumps(out))


# ----------------------------------------------------------------------------------------------- parent


def slug(text: str) -> str:
    """Lower-case letters, digits and single dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs that nvidia-smi sees (empty without one)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine_slug(device: str, threads: int) -> str:
    """E.g. ``cpu-amd-epyc-2t-x86_64`` or ``gpu-nvidia-h200-x86_64``: the hardware the numbers depend on."""
    arch = platform.machine().lower()
    if device == "gpu":
        gpus = gpu_names()
        return f"gpu-{slug(gpus[0] if gpus else 'unknown')}-{arch}"
    return f"cpu-{slug(cpu_model())}-{threads}t-{arch}"


def worker_env(threads: int, device: str) -> dict[str, str]:
    """Environment of a measuring process: the same thread counts for every library, the chosen device.

    OMP/MKL/OpenBLAS threads for PyTorch's CPU kernels (torch.set_num_threads is also called); XLA's CPU
    thread pool follows the process's CPU affinity, which the worker restricts to ``threads`` cores, and
    with one thread Eigen's multi-threading is switched off (``--xla_cpu_multi_thread_eigen=false``).
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def measure(spec: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh process; the result, or an ``error`` entry."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), str(result_path)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        elapsed = time.perf_counter() - start
        if proc.returncode != 0 or not result_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}
        out = json.loads(result_path.read_text())
        out["process_seconds"] = elapsed
        return out


def label(spec: dict[str, Any]) -> str:
    """The implementation's name in the tables: ``cljax``, ``cljax x5``, ``torch``, ``torch.compile``."""
    if spec["kind"] == "cljax":
        return "cljax" if spec["seeds"] == 1 else f"cljax x{spec['seeds']}"
    return "torch.compile" if spec["compile"] else "torch"


def plan(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """The measurements of one repeat (strategy by strategy) and what is skipped, with why."""
    from cljax.strategies import REGISTRY

    skipped: list[str] = []
    torch_ok = args.torch and _has_torch()
    if args.torch and not torch_ok:
        skipped.append("torch: not installed (pip install -e '.[bench]'), every PyTorch measurement skipped")
    compiled = set(args.strategies if args.torch_compile == ["all"] else args.torch_compile or [])
    base = {"scenario": args.scenario, "iters": args.iters}
    specs: list[dict[str, Any]] = []
    for strategy in args.strategies:
        if args.cljax and strategy not in REGISTRY:
            skipped.append(f"cljax {strategy}: not in the cljax registry (has: {', '.join(REGISTRY)})")
        elif args.cljax:
            multi = (
                args.seeds
                if args.multi_seed_strategies is None or strategy in args.multi_seed_strategies
                else []
            )
            for seeds in [1, *multi]:
                specs.append({"kind": "cljax", "strategy": strategy, "seeds": seeds, **base})
        if torch_ok and strategy not in TORCH_STRATEGIES:
            skipped.append(
                f"torch {strategy}: not in the PyTorch reference (has: {', '.join(TORCH_STRATEGIES)})"
            )
        elif torch_ok:
            for comp in (False, True) if strategy in compiled else (False,):
                specs.append({"kind": "torch", "strategy": strategy, "seeds": 1, "compile": comp, **base})
    return specs, skipped


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def median_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over repeats of every metric, one entry per (strategy, implementation)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if "error" not in row:
            groups.setdefault((row["strategy"], row["impl"]), []).append(row)
    summary = []
    for (strategy, impl), runs in groups.items():
        entry = {"strategy": strategy, "impl": impl, "seeds": runs[0]["seeds"], "n": len(runs)}
        for m in METRICS:
            values = [r[m] for r in runs if isinstance(r.get(m), (int, float))]
            entry[m] = statistics.median(values) if values else None
        entry["backend"] = runs[0].get("backend")
        summary.append(entry)
    return summary


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def markdown(report: dict[str, Any]) -> str:
    """The tables of ``benchmarks/results/<machine>.md``."""
    s = report["settings"]
    summary = report["summary"]
    by = {(e["strategy"], e["impl"]): e for e in summary}
    lines = [
        f"# cljax vs PyTorch on split MNIST ({s['scenario']}-IL): {report['machine']}",
        "",
        f"{report['created']}; {report['host']['description']}; {s['threads']} thread(s); "
        f"{s['iters']} iterations per context x 5 contexts, batch {BATCH_SIZE}; float32 matmuls: "
        f"{s['precision']}; medians of up to {s['repeats']} repeats (n = runs that finished), each a fresh "
        f"process. Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        "",
        "## Measurements",
        "",
        "compile / warm-up: cljax's ahead-of-time compilation; for PyTorch the training time beyond what "
        "the steady-state rate would take (first iterations, torch.compile). it/s: training iterations per "
        "second after warm-up (cljax with N seeds: steps of the N-seed program); seed-it/s = seeds x it/s. "
        "wall: the whole run in the process (data to the device, compile, train, evaluate); process: the "
        "same plus interpreter start and imports. peak memory: "
        + ("device allocator peak." if s["device"] == "gpu" else "peak RSS of the process (ru_maxrss).")
        + "",
        "",
        "| strategy | implementation | n | compile / warm-up (s) | it/s | seed-it/s | train (s) | wall (s) "
        "| process (s) | peak memory (MB) | final acc (%) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in summary:
        lines.append(
            f"| {e['strategy']} | {e['impl']} | {e['n']} | {_fmt(e['compile_seconds'], 2)} | "
            f"{_fmt(e['iterations_per_second'])} | {_fmt(e['seed_iterations_per_second'])} | "
            f"{_fmt(e['train_seconds'], 2)} | {_fmt(e['wall_seconds'], 2)} | "
            f"{_fmt(e['process_seconds'], 2)} | "
            f"{_fmt(e['peak_memory_mb'], 0)} | {_fmt(e['final_acc'], 2)} |"
        )
    lines += [
        "",
        "## cljax / torch",
        "",
        "Speed-ups of cljax over the eager PyTorch reference (above 1: cljax is faster): steady-state "
        "iterations per second, cljax / torch; wall time, torch / cljax; N seeds: N sequential torch runs' "
        "wall time / one N-seed cljax program's. Memory: cljax / torch. Accuracy: cljax - torch, in points.",
        "",
        "| strategy | it/s | wall | "
        + " | ".join(f"x{n} seeds" for n in s["seeds"])
        + " | memory | accuracy |",
        "| --- | --- | --- | " + " | ".join("---" for _ in s["seeds"]) + " | --- | --- |",
    ]
    for strategy in s["strategies"]:
        c, t = by.get((strategy, "cljax")), by.get((strategy, "torch"))
        if not c or not t:
            continue
        many = [by.get((strategy, f"cljax x{n}")) for n in s["seeds"]]
        seeds_cells = [
            _ratio(n * t["wall_seconds"], m["wall_seconds"]) if m else "-"
            for n, m in zip(s["seeds"], many, strict=True)
        ]
        acc = (
            c["final_acc"] - t["final_acc"]
            if c["final_acc"] is not None and t["final_acc"] is not None
            else None
        )
        lines.append(
            f"| {strategy} | {_ratio(c['iterations_per_second'], t['iterations_per_second'])} | "
            f"{_ratio(t['wall_seconds'], c['wall_seconds'])} | {' | '.join(seeds_cells)} | "
            f"{_ratio(c['peak_memory_mb'], t['peak_memory_mb'])} | {_fmt(acc, 2)} |"
        )
    flops = report["flops"]
    mm = report.get("matmul", {})
    lines += [
        "",
        "## Achieved FLOP/s of the `none` training step",
        "",
        f"One step of the MLP 784-400-400-{flops['n_out']} at batch {BATCH_SIZE}: "
        f"{flops['step_flops'] / 1e6:.1f} MFLOP (forward 2 B (784 x 400 + 400 x 400 + 400 x out), the "
        "weight gradients as much again, the input gradients of the last two layers; biases, ReLU, softmax "
        "and Adam left out: see README). Compared with "
        f"a {mm.get('size', '?')} x {mm.get('size', '?')} float32 matmul measured in the same run: "
        + ", ".join(f"{k} {_fmt(v.get('gflops'))} GFLOP/s" for k, v in mm.items() if isinstance(v, dict))
        + ".",
        "",
        "| implementation | GFLOP/s | % of the jax matmul | % of the torch matmul |",
        "| --- | --- | --- | --- |",
    ]
    for e in summary:
        if e["strategy"] != "none" or not e["seed_iterations_per_second"]:
            continue
        gflops = flops["step_flops"] * e["seed_iterations_per_second"] / 1e9
        cells = []
        for fw in ("jax", "torch"):
            peak = mm.get(fw, {}).get("gflops")
            cells.append(f"{100 * gflops / peak:.1f}" if peak else "-")
        lines.append(f"| {e['impl']} | {gflops:.1f} | {' | '.join(cells)} |")
    lines += [
        "",
        "## Seeds in one cljax program",
        "",
        "Time of N seeds in one program relative to one seed (target on a GPU: at most 2x for 20 seeds).",
        "",
        "| strategy | seeds | train (s) | train / 1 seed | wall (s) | wall / 1 seed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for strategy in s["strategies"]:
        one = by.get((strategy, "cljax"))
        for n in s["seeds"]:
            m = by.get((strategy, f"cljax x{n}"))
            if one and m:
                lines.append(
                    f"| {strategy} | {n} | {_fmt(m['train_seconds'], 2)} | "
                    f"{_ratio(m['train_seconds'], one['train_seconds'])} | {_fmt(m['wall_seconds'], 2)} | "
                    f"{_ratio(m['wall_seconds'], one['wall_seconds'])} |"
                )
    if report["skipped"] or report["errors"]:
        lines += ["", "## Skipped and failed", ""]
        lines += [f"- skipped: {x}" for x in report["skipped"]]
        lines += [f"- failed: {x}" for x in report["errors"]]
    return "\n".join(lines) + "\n"


def save_dataset(data_dir: str | None, folder: Path) -> Path:
    """Load MNIST once with cljax's loader and save it for the workers (same arrays on both sides)."""
    import numpy as np

    from cljax.data import load_dataset

    ds = load_dataset("mnist", data_dir)
    path = folder / "mnist.npz"
    np.savez(path, train_x=ds.train_x, train_y=ds.train_y, test_x=ds.test_x, test_y=ds.test_y)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    def names(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    def ints(text: str) -> list[int]:
        return [int(x) for x in names(text)]

    parser.add_argument("--strategies", type=names, default=list(STRATEGIES), help="comma-separated")
    parser.add_argument("--scenario", default="class", choices=SCENARIOS)
    parser.add_argument("--iters", type=int, default=2000, help="iterations per context (protocol: 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs of each measurement")
    parser.add_argument(
        "--seeds", type=ints, default=[5], help="cljax seed counts in one program besides 1 (e.g. 5,20)"
    )
    parser.add_argument(
        "--multi-seed-strategies",
        type=names,
        default=None,
        help="measure the --seeds programs only for these strategies (default: all)",
    )
    parser.add_argument(
        "--torch-compile",
        type=names,
        nargs="?",
        const=["all"],
        default=None,
        help="also measure torch.compile (for the listed strategies; without a list: all)",
    )
    parser.add_argument("--no-torch", dest="torch", action="store_false", help="skip the PyTorch runs")
    parser.add_argument("--no-cljax", dest="cljax", action="store_false", help="skip the cljax runs")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU cores and threads (default: all allowed)"
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "tf32"),
        help="float32 matmuls on a GPU: full fp32 in both (default) or TF32 in both",
    )
    parser.add_argument("--matmul-size", type=int, default=None, help="default 4096 on a GPU, 2048 on a CPU")
    parser.add_argument("--data-dir", default=None, help="MNIST root (cljax's lookup order if omitted)")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--machine", default=None, help="results file name (default: a slug of the hardware)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument(
        "--budget-seconds", type=float, default=None, help="start no measurement after this many seconds"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"--strategies: unknown {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    if args.iters < 2 or args.repeats < 1 or any(n < 2 for n in args.seeds):
        parser.error("--iters must be >= 2, --repeats >= 1 and every --seeds count >= 2")
    if args.device == "auto":
        args.device = "gpu" if gpu_names() else "cpu"
    args.threads = args.threads or len(os.sched_getaffinity(0))
    args.matmul_size = args.matmul_size or (4096 if args.device == "gpu" else 2048)
    return args


def use_checkout() -> None:
    """Import cljax and the reference from this checkout (works without ``pip install``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def build_report(
    args: argparse.Namespace,
    machine: str,
    rows: list[dict[str, Any]],
    matmul: dict[str, Any],
    skipped: list[str],
    errors: list[str],
    seconds: float,
) -> dict[str, Any]:
    """Everything a results file holds: settings, hardware, versions, raw measurements and medians."""
    versions: dict[str, str] = {"python": platform.python_version()}
    for row in rows:
        versions.update(row.get("versions", {}))
    gpus = gpu_names() if args.device == "gpu" else []
    cpus = len(os.sched_getaffinity(0))
    settings = ("strategies", "scenario", "iters", "repeats", "seeds", "device", "threads", "precision")
    return {
        "machine": machine,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": [sys.executable, *sys.argv],
        "settings": {k: getattr(args, k) for k in settings},
        "host": {
            "cpu": cpu_model(),
            "cpus_allowed": cpus,
            "gpus": gpus,
            "platform": platform.platform(),
            "description": f"{gpus[0] if gpus else cpu_model()}, {cpus} CPUs",
        },
        "versions": versions,
        "flops": {
            "n_out": n_out(args.scenario),
            "step_flops": mlp_step_flops(BATCH_SIZE, n_out(args.scenario)),
        },
        "matmul": matmul,
        "summary": median_summary(rows),
        "measurements": rows,
        "skipped": skipped,
        "errors": errors,
        "total_seconds": seconds,
    }


def save(report: dict[str, Any], out_dir: str) -> Path:
    """Write ``<machine>.json`` and ``<machine>.md``; called after every measurement, so that a run that is
    stopped keeps what it measured."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{report['machine']}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{report['machine']}.md").write_text(markdown(report))
    return out / report["machine"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    use_checkout()
    args = parse_args(argv)
    machine = args.machine or machine_slug(args.device, args.threads)
    env = worker_env(args.threads, args.device)
    common = {"threads": args.threads, "device": args.device, "precision": args.precision}
    specs, skipped = plan(args)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    matmul: dict[str, Any] = {"size": args.matmul_size}
    print(
        f"{machine}: {len(specs)} measurements x {args.repeats} repeats, {args.threads} thread(s)", flush=True
    )
    for line in skipped:
        print(f"skipped: {line}", flush=True)

    def report() -> dict[str, Any]:
        return build_report(args, machine, rows, matmul, skipped, errors, time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as tmp:
        data = str(save_dataset(args.data_dir, Path(tmp)))
        for fw in ("jax", "torch") if args.torch and _has_torch() else ("jax",):
            spec = {"kind": "matmul", "framework": fw, "size": args.matmul_size, "reps": 5, **common}
            matmul[fw] = res = measure(spec, env, args.timeout)
            print(f"matmul {fw}: {_fmt(res.get('gflops'))} GFLOP/s {res.get('error', '')}", flush=True)
        for repeat in range(args.repeats):
            for spec in specs:
                name = f"{spec['strategy']} {label(spec)} (repeat {repeat + 1})"
                if args.budget_seconds is not None and time.perf_counter() - start > args.budget_seconds:
                    skipped.append(f"{name}: over --budget-seconds {args.budget_seconds:.0f}")
                    continue
                res = measure({**spec, **common, "data": data}, env, args.timeout)
                rows.append({**spec, "impl": label(spec), "repeat": repeat, **res})
                if "error" in res:
                    errors.append(f"{name}: {res['error']}")
                    print(f"{name}: FAILED {res['error']}", flush=True)
                else:
                    print(
                        f"{name}: {res['iterations_per_second']:.0f} it/s, compile/warm-up "
                        f"{res['compile_seconds']:.2f} s, wall {res['wall_seconds']:.2f} s, "
                        f"{res['peak_memory_mb']:.0f} MB, acc {res['final_acc']:.2f} %",
                        flush=True,
                    )
                save(report(), args.out_dir)

    final = report()
    path = save(final, args.out_dir)
    print(f"\n{markdown(final)}\nwritten: {path}.json and .md ({final['total_seconds']:.0f} s)")
    return final


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        main()
