"""A grid of K hyperparameter values x S seeds, run four ways: one sweep against K separate runs.

    python benchmarks/sweep.py --data-dir ../shared/data                   # EWC lambda, K=12, S=1, Domain-IL
    python benchmarks/sweep.py --k 2 --iters 3 --repeats 1 --out /tmp/sweep.json    # a smoke run
    python benchmarks/sweep.py --k 16 --seeds 5 --data-dir .bench-data               # on a GPU machine

The ways, each timed from a cleared cache of compiled programs:

- ``sweep``: one ``cljax.sweep`` call, all K x S runs in one program (continuous hyperparameters are inputs
  of the compiled programs; a shape-changing key such as ``budget`` splits the grid, one program per value).
- ``loop``: K ``cljax.run`` calls in this process, one per value; the engine's cache of compiled programs
  lets them share the programs the first one compiled.
- ``loop-cleared``: the same loop with ``cljax.engine.clear_program_cache()`` before each run, so every run
  compiles its own programs (what a loop in one process cost before that cache existed).
- ``processes``: K ``cljax run`` processes one after another, as a user's shell loop would start them, with
  the disk cache of compiled programs off (``CLJAX_COMPILE_CACHE=off``) so each process compiles; each loads
  MNIST and imports JAX itself.
- ``alone``: one ``cljax.run`` of the first value, the cost of a single configuration (the GPU question: how
  much more than one configuration do K cost in one program?).

Repeats alternate the order of the ways (forward, then backward, ...) so that a machine that slows down for a
while slows every way alike; the summary gives medians. The results go to ``--out`` (default
``benchmarks/results/sweep.json``, with a ``.md`` beside it), rewritten after every measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
WAYS = ("sweep", "loop", "loop-cleared", "processes", "alone")
RUN_KEYS = ("lr", "batch_size", "iters")  # RunConfig fields a grid may sweep (cljax.sweep.RUN_KEYS)

# Default values for a key when --values is not given: K points between these bounds.
DEFAULT_RANGES = {
    "lambda": ("log", 1.0, 12.0),  # 1e1 .. 1e12 (K=12: the decades)
    "c": ("log", -3.0, 5.0),
    "dg_prop": ("lin", 0.0, 0.9),
    "temperature": ("lin", 1.0, 8.0),
    "gamma": ("lin", 0.5, 1.0),
    "damping": ("log", -3.0, 0.0),
    "lr": ("log", -4.0, -2.0),
}

# A `cljax run` process that also prints how many XLA programs it compiled (cljax.engine.programs_compiled);
# otherwise it is `python -m cljax.cli run ...`.
PROCESS_MAIN = (
    "import sys; from cljax.cli import main; from cljax.engine import programs_compiled; "
    "code = main(sys.argv[1:]); print(f'programs_compiled={programs_compiled()}'); sys.exit(code)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", default="ewc")
    parser.add_argument("--scenario", default="domain")
    parser.add_argument("--benchmark", default="split-mnist")
    parser.add_argument("--key", default="lambda", help="the hyperparameter the grid varies")
    parser.add_argument("--k", type=int, default=12, help="number of values (ignored with --values)")
    parser.add_argument("--values", default=None, help="the values, separated by commas (default: K points)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per value (S)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument(
        "--iters", type=int, default=None, help="iterations per context (default: protocol's)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ways", default=",".join(WAYS), help=f"some of: {', '.join(WAYS)}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(RESULTS / "sweep.json"), help="the results JSON (.md beside)")
    parser.add_argument(
        "--host-devices",
        type=int,
        default=None,
        help="CPU devices for this process (default: as `cljax sweep` picks them for K x S runs)",
    )
    args = parser.parse_args(argv)
    args.key = args.key.replace("-", "_")
    args.values = grid_values(args.key, args.k, args.values)
    args.k = len(args.values)
    args.ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = sorted(set(args.ways) - set(WAYS))
    if unknown:
        parser.error(f"--ways: unknown {', '.join(unknown)}; choose from {', '.join(WAYS)}")
    if args.repeats < 1 or args.seeds < 1:
        parser.error("--repeats and --seeds must be at least 1")
    return args


def grid_values(key: str, k: int, values: str | None) -> list[Any]:
    """``--values`` as numbers (ints stay ints), else K points of the key's default range."""
    if values is not None:
        out = []
        for text in values.split(","):
            number = float(text)
            out.append(int(number) if number.is_integer() and "." not in text and "e" not in text else number)
        return out
    if key not in DEFAULT_RANGES:
        raise SystemExit(f"--key {key}: no default range; give --values V1,V2,...")
    if k < 1:
        raise SystemExit("--k must be at least 1")
    kind, lo, hi = DEFAULT_RANGES[key]
    points = np.logspace(lo, hi, k) if kind == "log" else np.linspace(lo, hi, k)
    return [float(f"{p:.6g}") for p in points]


def base_config(args: argparse.Namespace):
    from cljax import RunConfig

    return RunConfig(
        benchmark=args.benchmark,
        scenario=args.scenario,
        strategy=args.strategy,
        seeds=args.seeds,
        first_seed=args.first_seed,
        iters=args.iters,
        data_dir=args.data_dir,
        download=False,
    )


def with_value(config, key: str, value: Any):
    """``config`` with ``key`` set to ``value`` (a RunConfig field or a strategy option)."""
    if key in RUN_KEYS:
        return dataclasses.replace(config, **{key: value})
    return dataclasses.replace(config, options={**dict(config.options), key: value})


# ----------------------------------------------------------------------------------------------- the ways


def way_sweep(args, config, dataset) -> dict[str, Any]:
    import cljax
    from cljax.engine import clear_program_cache, programs_compiled

    clear_program_cache()
    before, start = programs_compiled(), time.perf_counter()
    result = cljax.sweep(config, {args.key: args.values}, dataset=dataset, quiet=True)
    return {
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": result.train_seconds,
        "compile_seconds": result.compile_seconds,
        "programs_compiled": programs_compiled() - before,
        "programs_run": result.groups,
        "final_avg_acc": [entry["mean"] for entry in result.configs],
    }


def way_loop(args, config, dataset, clear_each: bool, values: list[Any] | None = None) -> dict[str, Any]:
    import cljax
    from cljax.engine import clear_program_cache, programs_compiled

    clear_program_cache()
    before, start = programs_compiled(), time.perf_counter()
    runs = []
    for value in args.values if values is None else values:
        if clear_each:
            clear_program_cache()
        result = cljax.run(with_value(config, args.key, value), dataset=dataset, quiet=True)
        runs.append((result.train_seconds, result.compile_seconds, result.mean))
    return {
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": sum(r[0] for r in runs),
        "compile_seconds": sum(r[1] for r in runs),
        "programs_compiled": programs_compiled() - before,
        "programs_run": len(runs),
        "final_avg_acc": [r[2] for r in runs],
        "per_run_train_seconds": [r[0] for r in runs],
        "per_run_compile_seconds": [r[1] for r in runs],
    }


def process_command(args: argparse.Namespace, value: Any, out: Path) -> list[str]:
    """The `cljax run` command line of one value (run through PROCESS_MAIN)."""
    command = [sys.executable, "-c", PROCESS_MAIN, "run", "--benchmark", args.benchmark]
    command += ["--scenario", args.scenario, "--strategy", args.strategy, "--seeds", str(args.seeds)]
    command += ["--first-seed", str(args.first_seed), "--quiet", "--no-download", "--out", str(out)]
    if args.iters is not None and args.key != "iters":
        command += ["--iters", str(args.iters)]
    if args.data_dir is not None:
        command += ["--data-dir", args.data_dir]
    if args.key in RUN_KEYS:
        command += [f"--{args.key.replace('_', '-')}", repr(value)]
    else:
        command += ["--option", f"{args.key}={value!r}"]
    return command


def way_processes(args) -> dict[str, Any]:
    env = {**os.environ, "CLJAX_COMPILE_CACHE": "off"}
    env.pop("JAX_NUM_CPU_DEVICES", None)  # each process picks its devices as `cljax run` does
    runs = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cljax-sweep-bench-") as tmp:
        for i, value in enumerate(args.values):
            out = Path(tmp) / f"run-{i}.json"
            done = subprocess.run(process_command(args, value, out), env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"cljax run ({args.key}={value}) failed:\n{done.stderr[-3000:]}")
            compiled = [ln for ln in done.stdout.splitlines() if ln.startswith("programs_compiled=")]
            result = json.loads(out.read_text())
            runs.append(
                (
                    result["train_seconds"],
                    result["compile_seconds"],
                    result["mean"],
                    int(compiled[-1].split("=")[1]) if compiled else None,
                    result["config"]["wall_seconds"],
                )
            )
    return {
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": sum(r[0] for r in runs),
        "compile_seconds": sum(r[1] for r in runs),
        "programs_compiled": None if any(r[3] is None for r in runs) else sum(r[3] for r in runs),
        "programs_run": len(runs),
        "final_avg_acc": [r[2] for r in runs],
        "per_run_train_seconds": [r[0] for r in runs],
        "per_run_compile_seconds": [r[1] for r in runs],
        "run_wall_seconds": sum(r[4] for r in runs),  # inside the processes, without Python and imports
    }


def measure(way: str, args, config, dataset) -> dict[str, Any]:
    if way == "sweep":
        return way_sweep(args, config, dataset)
    if way == "loop":
        return way_loop(args, config, dataset, clear_each=False)
    if way == "loop-cleared":
        return way_loop(args, config, dataset, clear_each=True)
    if way == "processes":
        return way_processes(args)
    if way == "alone":
        return way_loop(args, config, dataset, clear_each=False, values=args.values[:1])
    raise ValueError(way)


# ---------------------------------------------------------------------------------------------- the summary

NUMBERS = ("wall_seconds", "train_seconds", "compile_seconds", "programs_compiled")


def summarize(rows: list[dict[str, Any]], ways: list[str]) -> dict[str, Any]:
    """Medians per way, ratios of the medians, per-repeat ratios, and how far each way's accuracies are from
    the sweep's (the same runs: they should agree to float rounding)."""
    medians: dict[str, dict[str, Any]] = {}
    for way in ways:
        done = [r for r in rows if r["way"] == way and "error" not in r]
        if not done:
            continue
        medians[way] = {"n": len(done)}
        for name in NUMBERS:
            values = [r[name] for r in done if r.get(name) is not None]
            medians[way][name] = statistics.median(values) if values else None

    def ratio(a: str, b: str, name: str) -> float | None:
        if a in medians and b in medians and medians[a][name] and medians[b][name]:
            return medians[a][name] / medians[b][name]
        return None

    ratios = {
        "sweep_over_loop_train": ratio("sweep", "loop", "train_seconds"),
        "sweep_over_loop_cleared_train": ratio("sweep", "loop-cleared", "train_seconds"),
        "sweep_over_processes_train": ratio("sweep", "processes", "train_seconds"),
        "sweep_over_loop_wall": ratio("sweep", "loop", "wall_seconds"),
        "sweep_over_loop_cleared_wall": ratio("sweep", "loop-cleared", "wall_seconds"),
        "sweep_over_processes_wall": ratio("sweep", "processes", "wall_seconds"),
        "sweep_over_alone_wall": ratio("sweep", "alone", "wall_seconds"),
        "sweep_over_alone_train": ratio("sweep", "alone", "train_seconds"),
    }
    paired: dict[str, list[float]] = {}
    for other, name in (("loop", "train_seconds"), ("processes", "wall_seconds")):
        key = f"sweep_over_{other}_{name.split('_')[0]}"
        for r in sorted({row["repeat"] for row in rows}):
            a = [x for x in rows if x["repeat"] == r and x["way"] == "sweep" and "error" not in x]
            b = [x for x in rows if x["repeat"] == r and x["way"] == other and "error" not in x]
            if a and b and b[0][name]:
                paired.setdefault(key, []).append(a[0][name] / b[0][name])
    accuracy: dict[str, float] = {}
    sweeps = [r for r in rows if r["way"] == "sweep" and "error" not in r]
    if sweeps:
        reference = np.asarray(sweeps[-1]["final_avg_acc"])
        for way in ways:
            done = [r for r in rows if r["way"] == way and "error" not in r]
            if way != "sweep" and done:
                acc = np.asarray(done[-1]["final_avg_acc"])
                accuracy[way] = float(np.abs(acc - reference[: len(acc)]).max())
    return {
        "medians": medians,
        "ratios": ratios,
        "paired_ratios": {k: {"each": v, "median": statistics.median(v)} for k, v in paired.items()},
        "max_accuracy_difference_from_sweep": accuracy,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    env = report["environment"]
    lines = [
        f"# One sweep against {s['k']} separate runs: {s['strategy']} {s['key']}, {s['benchmark']} "
        f"{s['scenario']}",
        "",
        f"{s['k']} values x {s['seeds']} seed(s), {s['iters']} iterations per context; medians of up to "
        f"{s['repeats']} repeats (n: how many finished); {env.get('device_count')} {env.get('backend')} "
        f"device(s) ({env.get('device_kind')}, {env.get('cpu_cores')} CPU cores).",
        "",
        "| way | n | wall (s) | train (s) | compile (s) | programs compiled |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(value: Any, digits: int = 1) -> str:
        return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))

    for way, m in report["medians"].items():
        lines.append(
            f"| {way} | {m['n']} | {fmt(m['wall_seconds'])} | {fmt(m['train_seconds'])} | "
            f"{fmt(m['compile_seconds'])} | {fmt(m['programs_compiled'], 0)} |"
        )
    lines += ["", "| ratio (of the medians) | value |", "| --- | --- |"]
    for name, value in report["ratios"].items():
        if value is not None:
            lines.append(f"| {name.replace('_', ' ')} | {value:.3f} |")
    diffs = report["max_accuracy_difference_from_sweep"]
    if diffs:
        lines += [
            "",
            "Largest difference of a value's final average accuracy from the sweep's (points): "
            + ", ".join(f"{w} {d:.3f}" for w, d in diffs.items())
            + ".",
        ]
    lines += ["", f"`{report['command']}`", ""]
    return "\n".join(lines)


def save(report: dict[str, Any], out: Path) -> None:
    report.update(summarize(report["measurements"], report["settings"]["ways"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ["CLJAX_COMPILE_CACHE"] = "off"  # every way compiles; nothing comes from the disk cache
    import jax

    from cljax import use_host_devices

    if args.host_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.host_devices)
    else:
        use_host_devices(args.k * args.seeds)  # as `cljax sweep` does before JAX starts
    from cljax.engine import environment, load_data
    from cljax.presets import get_benchmark

    config = base_config(args)
    resolved = with_value(config, args.key, args.values[0]).resolved()
    dataset = load_data(get_benchmark(args.benchmark), resolved, None)
    out = Path(args.out)
    report: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/sweep.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            "benchmark": args.benchmark,
            "scenario": args.scenario,
            "strategy": args.strategy,
            "key": args.key,
            "values": args.values,
            "k": args.k,
            "seeds": args.seeds,
            "first_seed": args.first_seed,
            "iters": resolved.iters,
            "repeats": args.repeats,
            "ways": args.ways,
        },
        "environment": {**environment(), "cpu_devices": len(jax.devices("cpu"))},
        "measurements": [],
    }
    started = time.perf_counter()
    for repeat in range(args.repeats):
        order = args.ways if repeat % 2 == 0 else args.ways[::-1]
        for way in order:
            row: dict[str, Any] = {"way": way, "repeat": repeat + 1}
            try:
                row.update(measure(way, args, config, dataset))
            except Exception as err:  # a failed way is recorded; the others still run
                row["error"] = f"{type(err).__name__}: {err}"
            report["measurements"].append(row)
            report["total_seconds"] = time.perf_counter() - started
            save(report, out)
            shown = {k: row.get(k) for k in ("wall_seconds", "train_seconds", "compile_seconds")}
            text = ", ".join(f"{k.split('_')[0]} {v:.1f} s" for k, v in shown.items() if v is not None)
            compiled = row.get("programs_compiled")
            print(
                f"repeat {repeat + 1} {way}: {row.get('error') or text}, programs compiled {compiled}",
                flush=True,
            )
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
