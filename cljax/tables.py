"""Published tables as runnable specifications: each method x scenario cell beside the paper's value.

``run_table`` runs the cells that are missing from the output folder (so a long table can be continued),
keeping a checkpoint of the running cell after every context (so a cell of hours continues mid-way), then
writes the table as markdown, CSV and JSON and draws two figures. A cell is flagged when it differs
from the published mean by more than max(2 points, 3 SEM x sqrt(20 / seeds)) (the papers used 20 seeds).
A cell whose configuration equals a finished cell of another table beside it (NMI-2022 and 3S-2019 share
fine-tuning, joint training and DGR in Task- and Domain-IL) is copied from there instead of run again.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cljax.config import ConfigError, RunConfig
from cljax.plots import matplotlib_missing
from cljax.presets import SCENARIO_NAMES, SCENARIOS
from cljax.results import write_json

Published = Mapping[str, tuple[float, float | None]]  # scenario -> (mean, SEM or None)


@dataclass(frozen=True)
class Method:
    """One row of a table: a strategy with its options per scenario and the published values."""

    label: str
    strategy: str
    published: Published = field(default_factory=dict)
    options: Callable[[str], dict[str, Any]] = field(default=lambda scenario: {})
    scenarios: tuple[str, ...] = SCENARIOS
    class_il_active: str = "all"
    stream: str | None = None  # a task-free label stream in place of the table's (cljax.task_free)


@dataclass(frozen=True)
class Table:
    """A published table: its benchmark, methods and the protocol's seeds."""

    name: str
    title: str
    benchmark: str
    methods: tuple[Method, ...]
    seeds: int = 20
    first_seed: int = 2
    source: str = ""
    stream: str | None = None  # every cell learns from this task-free stream (None: context by context)


def _nmi_split_mnist() -> Table:
    p = {  # NMI-2022 Table 2 (shared/PROTOCOL.md), mean (SEM) over 20 seeds
        "none": {"task": (84.32, 0.99), "domain": (60.13, 1.66), "class": (19.89, 0.02)},
        "joint": {"task": (99.67, 0.03), "domain": (98.59, 0.05), "class": (98.17, 0.04)},
        "ewc": {"task": (99.06, 0.15), "domain": (63.03, 1.58), "class": (20.64, 0.52)},
        "lwf": {"task": (99.60, 0.03), "domain": (71.18, 1.42), "class": (21.89, 0.32)},
        "agem": {"task": (98.54, 0.10), "domain": (87.67, 1.33), "class": (65.10, 3.64)},
        "er": {"domain": (93.75, None), "class": (88.79, None)},
        "dgr": {"domain": (95.57, None), "class": (90.35, None)},
        "bir": {"domain": (97.26, None), "class": (94.41, None)},
        "gen-classifier": {"class": (93.82, 0.06)},
    }
    methods = (
        Method("None", "none", p["none"]),
        Method("Joint", "joint", p["joint"]),
        Method("EWC", "ewc", p["ewc"]),
        Method("SI", "si"),
        Method("LwF", "lwf", p["lwf"]),
        Method("A-GEM (100/class)", "agem", p["agem"]),
        Method("ER (100/class)", "er", p["er"]),
        Method("DGR", "dgr", p["dgr"]),
        Method("BI-R", "bir", p["bir"]),
        Method("iCaRL (100/class)", "icarl", {}, lambda s: {"budget": 100}, scenarios=("class",)),
        Method("Generative classifier", "gen-classifier", p["gen-classifier"], scenarios=("class",)),
    )
    return Table(
        "nmi2022-split-mnist",
        "NMI-2022 Table 2: split MNIST",
        "split-mnist",
        methods,
        source="van de Ven, Tuytelaars & Tolias, Nat. Mach. Intell. 2022, Table 2",
    )


def _three_scenarios_split_mnist() -> Table:
    p = {  # 3S-2019 (arXiv 1904.07734), mean (SEM) over 20 seeds; shared/PROTOCOL.md
        "none": {"task": (87.2, None), "domain": (59.2, None), "class": (19.90, 0.02)},
        "joint": {"task": (99.7, None), "domain": (98.4, None), "class": (97.9, None)},
        "ewc": {"task": (98.64, 0.22), "domain": (63.95, 1.90), "class": (20.01, 0.06)},
        "online-ewc": {"task": (99.1, None), "domain": (64.3, None), "class": (19.96, 0.07)},
        "si": {"task": (99.1, None), "domain": (65.4, None), "class": (19.99, 0.06)},
        "lwf": {"task": (99.6, None), "domain": (71.5, None), "class": (23.85, 0.44)},
        "dgr": {"task": (99.50, 0.03), "domain": (95.72, 0.25), "class": (90.79, 0.41)},
        "dgr-distill": {"task": (99.61, 0.02), "domain": (96.83, 0.20), "class": (91.79, 0.32)},
        "icarl": {"class": (94.57, 0.11)},
    }
    three_s = {"protocol": "3s2019"}
    methods = (
        Method("None", "none", p["none"], class_il_active="seen"),
        Method("Offline (joint)", "joint", p["joint"], class_il_active="seen"),
        Method("EWC", "ewc", p["ewc"], lambda s: dict(three_s), class_il_active="seen"),
        Method("Online EWC", "online-ewc", p["online-ewc"], lambda s: dict(three_s), class_il_active="seen"),
        Method("SI", "si", p["si"], lambda s: dict(three_s), class_il_active="seen"),
        Method("LwF", "lwf", p["lwf"], lambda s: dict(three_s), class_il_active="seen"),
        Method("DGR", "dgr", p["dgr"], class_il_active="seen"),
        Method("DGR+distill", "dgr-distill", p["dgr-distill"], class_il_active="seen"),
        Method(
            "iCaRL (total budget 2000)",
            "icarl",
            p["icarl"],
            lambda s: {"total_budget": 2000},
            scenarios=("class",),
            class_il_active="seen",
        ),
    )
    return Table(
        "3s2019-split-mnist",
        "3S-2019: split MNIST",
        "split-mnist",
        methods,
        source="van de Ven & Tolias, arXiv 1904.07734 (2019), split MNIST table",
    )


def _nmi_permuted_mnist() -> Table:
    methods = (
        Method("None", "none"),
        Method("Joint", "joint"),
        Method("EWC", "ewc"),
        Method("SI", "si"),
        Method("LwF", "lwf"),
        Method("A-GEM (10/class)", "agem", options=lambda s: {"budget": 10}),
        Method("ER (10/class)", "er", options=lambda s: {"budget": 10}),
        Method("DGR", "dgr"),  # its VAE takes the classifier's 1000-unit hidden layers, as published
    )
    return Table(
        "nmi2022-perm-mnist",
        "NMI-2022: permuted MNIST (settings of shared/PROTOCOL.md)",
        "perm-mnist",
        methods,
        seeds=5,
        first_seed=2,
        source="van de Ven, Tuytelaars & Tolias 2022, permuted MNIST protocol (no numbers transcribed)",
    )


def _nmi_split_cifar100() -> Table:
    p = {  # NMI-2022 Table 3 (shared/PROTOCOL.md), mean (SEM) over 10 seeds
        "none": {"task": (61.43, 0.36), "domain": (18.42, 0.33), "class": (7.71, 0.18)},
        "joint": {"task": (78.78, 0.25), "domain": (46.85, 0.51), "class": (49.78, 0.21)},
        "ewc": {"task": (76.34, 0.29), "domain": (21.65, 0.55), "class": (8.24, 0.25)},
        "si": {"task": (74.84, 0.39), "domain": (22.58, 0.42), "class": (8.10, 0.24)},
        "lwf": {"task": (78.59, 0.24), "domain": (29.45, 0.39), "class": (25.57, 0.27)},
        "dgr": {"task": (71.40, 0.32), "domain": (20.52, 0.43), "class": (9.67, 0.22)},
        "er": {"task": (76.43, 0.24), "domain": (39.00, 0.34), "class": (37.57, 0.21)},
        "agem": {"task": (73.30, 0.39), "domain": (20.51, 0.59), "class": (20.38, 1.45)},
        "icarl": {"class": (37.83, 0.21)},
        "gen-classifier": {"class": (46.83, 0.18)},
        "bir": {"task": (79.14, 0.21), "domain": (30.26, 0.44), "class": (25.81, 0.41)},
    }
    methods = (
        Method("None", "none", p["none"]),
        Method("Joint", "joint", p["joint"]),
        Method("EWC", "ewc", p["ewc"]),
        Method("SI", "si", p["si"]),
        Method("LwF", "lwf", p["lwf"]),
        Method("A-GEM (100/class)", "agem", p["agem"]),
        Method("ER (100/class)", "er", p["er"]),
        # pixel-level replay through the convolutional VAE; its defaults there are the reference's (gen_lr
        # 1e-4, a replay batch of 256: cljax.strategies.dgr.resolve_generator)
        Method("DGR", "dgr", p["dgr"]),
        # internal replay of the conv features; the reference replays a batch as large as the current one
        Method("BI-R", "bir", p["bir"], lambda s: {"replay_batch": 256}),
        Method("iCaRL (100/class)", "icarl", p["icarl"], lambda s: {"budget": 100}, scenarios=("class",)),
        # all_results.sh line 63: compare.py ... --scenario=class --eval-s=10000
        Method(
            "Generative classifier",
            "gen-classifier",
            p["gen-classifier"],
            lambda s: {"eval_s": 10000},
            scenarios=("class",),
        ),
    )
    return Table(
        "nmi2022-split-cifar100",
        "NMI-2022 Table 3: split CIFAR-100 (frozen conv layers pre-trained on CIFAR-10)",
        "split-cifar100",
        methods,
        seeds=10,
        first_seed=2,
        source="van de Ven, Tuytelaars & Tolias, Nat. Mach. Intell. 2022, Table 3; needs `cljax pretrain "
        "--seed S` for every seed",
    )


def _task_free_split_mnist() -> Table:
    # The reference's compare_task_free.py as all_results.sh runs it (lines 88-90 at e6d795a:
    # --seed=2 --n-seeds=20 --c=10.): a fuzzy-boundaries stream (fuzziness 500, a context per sample),
    # 2000 iterations per context, SI and LwF consolidating every 100 iterations, ER and A-GEM with a
    # 100-sample reservoir updated every iteration (iCaRL too, Class-IL), the generative classifier
    # (Class-IL: 85 units, lr 0.001, S = 50), and "Joint" as fine-tuning on a random stream.
    methods = (
        Method("None", "none"),
        Method("Joint", "none", stream="random"),
        Method("Separate networks", "separate-networks", scenarios=("task",)),
        Method("XdG", "xdg", scenarios=("task",)),
        Method("SI", "si"),
        Method("LwF", "lwf"),
        Method("ER (budget 100)", "er"),
        Method("A-GEM (budget 100)", "agem"),
        Method("iCaRL (budget 100)", "icarl", scenarios=("class",)),
        Method("Generative classifier", "gen-classifier", scenarios=("class",)),
    )
    return Table(
        "task-free-split-mnist",
        "Task-free split MNIST: fuzzy context boundaries, no boundaries given",
        "split-mnist",
        methods,
        source="GMvandeVen/continual-learning@e6d795a compare_task_free.py (all_results.sh lines 88-90); "
        "no published numbers",
        stream="fuzzy-boundaries",
    )


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        _nmi_split_mnist(),
        _three_scenarios_split_mnist(),
        _nmi_permuted_mnist(),
        _nmi_split_cifar100(),
        _task_free_split_mnist(),
    )
}


def tolerance(published_sem: float | None, seeds: int) -> float:
    """Allowed difference from the published mean: max(2 points, 3 SEM x sqrt(20 / seeds))."""
    if published_sem is None:
        return 2.0
    return max(2.0, 3.0 * published_sem * math.sqrt(20.0 / seeds))


def _cell_file(out_dir: Path, method: Method, scenario: str) -> Path:
    return out_dir / "runs" / f"{method.strategy}_{method.label.split(' ')[0].lower()}_{scenario}.json"


def run_table(
    table: Table,
    out_dir: str | os.PathLike,
    seeds: int | None = None,
    first_seed: int | None = None,
    iters: int | None = None,
    methods: list[str] | None = None,
    scenarios: list[str] | None = None,
    data_dir: str | None = None,
    quiet: bool = False,
    run_fn: Callable[..., Any] | None = None,
    fuzziness: int | None = None,
) -> dict[str, Any]:
    """Run the missing cells of ``table`` into ``out_dir``, then write its summaries.

    The running cell is checkpointed after every context in ``out_dir/checkpoints/<cell>`` and continues
    from there when the table is run again; the folder goes once the cell's result is written. A
    ``run_fn`` of your own (called as ``run_fn(config, quiet=...)``) gets ``checkpoint_dir`` and
    ``resume=True`` too when it takes a ``checkpoint_dir`` argument.
    ``fuzziness``: the fuzzy boundaries' width for a task-free table (default the reference's, 500).
    """
    from cljax.engine import run
    from cljax.strategies import REGISTRY

    run_fn = run_fn or run
    seeds = seeds or table.seeds
    first_seed = table.first_seed if first_seed is None else first_seed
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    table = with_extra_methods(table, methods or [])
    wanted = [m for m in table.methods if methods is None or m.strategy in methods]
    cells = []
    for method in wanted:
        if method.strategy not in REGISTRY:
            if not quiet:
                print(f"skipped {method.label}: strategy {method.strategy!r} is not available")
            continue
        for scenario in method.scenarios:
            if scenarios is not None and scenario not in scenarios:
                continue
            config = RunConfig(
                benchmark=table.benchmark,
                scenario=scenario,
                strategy=method.strategy,
                seeds=seeds,
                first_seed=first_seed,
                iters=iters,
                class_il_active=method.class_il_active,
                data_dir=data_dir,
                options=method.options(scenario),
                stream=method.stream or table.stream,
                **({} if fuzziness is None else {"fuzziness": fuzziness}),
            )
            cells.append((method, scenario, config))
    for config in (c for _, _, c in cells):
        config.resolved()  # every cell's config is checked before the first one runs
    started = time.perf_counter()
    for method, scenario, config in cells:
        path = _cell_file(out, method, scenario)
        if path.exists():
            continue
        same = find_same_cell(out, config)
        if same is not None:
            shared = json.loads(same.read_text())
            shared["reused_from"] = f"{same.parent.parent.name}/{same.parent.name}/{same.name}"
            write_json(path, shared)
            if not quiet:
                print(f"{method.label:<28} {SCENARIO_NAMES[scenario]:<9} copied from {shared['reused_from']}")
            continue
        checkpoint_dir = out / "checkpoints" / path.stem
        resumable = {"checkpoint_dir": checkpoint_dir, "resume": True} if _takes_checkpoints(run_fn) else {}
        try:
            result = run_fn(config, quiet=quiet, **resumable)
        except ConfigError as err:
            if resumable and str(err).startswith("resume:"):
                raise ConfigError(
                    f"{err}; for this table: delete {checkpoint_dir} to start the cell again"
                ) from err
            raise
        result.save(path)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if not quiet:
            print(f"{method.label:<28} {SCENARIO_NAMES[scenario]:<9} {result.mean:6.2f} +- {result.sem:.2f}")
    return write_summaries(table, out, wall_seconds=time.perf_counter() - started)


def _takes_checkpoints(run_fn: Callable[..., Any]) -> bool:
    try:
        return "checkpoint_dir" in inspect.signature(run_fn).parameters
    except (TypeError, ValueError):  # a callable without a signature (a builtin, say)
        return False


def with_extra_methods(table: Table, methods: list[str]) -> Table:
    """``table`` with a row for every registered strategy in ``methods`` that it does not list (a user's
    method beside the published ones; such a row has no published value)."""
    from cljax.strategies import REGISTRY

    listed = {m.strategy for m in table.methods}
    unknown = [name for name in methods if name not in listed and name not in REGISTRY]
    if unknown:
        raise ConfigError(
            f"methods: {table.name} has no method {unknown[0]!r} and no strategy of that name is registered; "
            f"it has: {', '.join(m.strategy for m in table.methods)}"
        )
    extras = tuple(
        Method(name, name, scenarios=REGISTRY[name].scenarios)
        for name in dict.fromkeys(methods)
        if name not in listed
    )
    return dataclasses.replace(table, methods=table.methods + extras)


_NOT_PROTOCOL = ("data_dir", "download", "wall_seconds")


def _protocol(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's configuration as JSON would hold it, less what cannot change its results."""
    return {k: v for k, v in json.loads(json.dumps(dict(config))).items() if k not in _NOT_PROTOCOL}


def find_same_cell(out: Path, config: RunConfig) -> Path | None:
    """A finished cell of another table beside ``out`` (same parent folder) run with exactly ``config``."""
    wanted = _protocol(config.resolved().to_dict())
    for path in sorted(out.parent.glob("*/runs/*.json")):
        if path.parent.parent.resolve() == out.resolve():
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and _protocol(result.get("config", {})) == wanted:
            return path
    return None


def collect(table: Table, out: Path) -> list[dict[str, Any]]:
    """One record per finished cell: measured and published values and whether they agree."""
    records = []
    for method in table.methods:
        for scenario in method.scenarios:
            path = _cell_file(out, method, scenario)
            if not path.exists():
                continue
            result = json.loads(path.read_text())
            n = len(result["seeds"])
            pub_mean, pub_sem = method.published.get(scenario, (None, None))
            diff = None if pub_mean is None else result["mean"] - pub_mean
            records.append(
                {
                    "method": method.label,
                    "strategy": method.strategy,
                    "scenario": scenario,
                    "seeds": n,
                    "mean": result["mean"],
                    "sem": result["sem"],
                    "published_mean": pub_mean,
                    "published_sem": pub_sem,
                    "difference": diff,
                    "tolerance": None if pub_mean is None else tolerance(pub_sem, n),
                    "flagged": diff is not None and abs(diff) > tolerance(pub_sem, n),
                    "train_seconds": result["train_seconds"],
                    "wall_seconds": result["config"].get("wall_seconds"),
                    "seed_list": result["seeds"],
                    "device_kind": result.get("environment", {}).get("device_kind"),
                    "cpu_cores": result.get("environment", {}).get("cpu_cores"),
                    "reused_from": result.get("reused_from"),
                    "acc_matrix": result["acc_matrix"],
                    "pretrained": result.get("environment", {}).get("pretrained"),
                }
            )
    return records


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _seeds(seed_lists: list[tuple[int, ...]]) -> str:
    """'seed 2 (...)' for one seed, 'seeds 2, 3, 4' otherwise; several lists separated by ' / '."""
    if len(seed_lists) == 1 and len(seed_lists[0]) == 1:
        return f"seed {seed_lists[0][0]} (one seed: means without SEM)"
    return "seeds " + " / ".join(", ".join(map(str, s)) for s in seed_lists)


def markdown(table: Table, records: list[dict[str, Any]]) -> str:
    """The table as markdown: measured mean +- SEM, the published value and the difference per cell."""
    by_cell = {(r["method"], r["scenario"]): r for r in records}
    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in records)]
    compared = [r for r in records if r["published_mean"] is not None]
    source = f"Published values: {table.source}."
    if compared:
        source += (
            " Cells marked ⚠ differ from the published mean by more than max(2, 3 SEM x sqrt(20 / seeds))."
        )
    lines = [f"## {table.title}", "", source, ""]
    lines.append("| method | " + " | ".join(SCENARIO_NAMES[s] for s in scenarios) + " |")
    lines.append("| --- |" + " --- |" * len(scenarios))
    for method in table.methods:
        cells = []
        for s in scenarios:
            r = by_cell.get((method.label, s))
            if r is None:
                cells.append("-")
                continue
            text = f"{r['mean']:.2f}" if len(r["seed_list"]) == 1 else f"{r['mean']:.2f} ± {r['sem']:.2f}"
            if r["published_mean"] is not None:
                text += f" (pub. {r['published_mean']:.2f}, {r['difference']:+.2f})"
                if r["flagged"]:
                    text += " ⚠"
            cells.append(text)
        if any(c != "-" for c in cells):
            lines.append(f"| {method.label} | " + " | ".join(cells) + " |")
    if compared:
        ok = sum(not r["flagged"] for r in compared)
        lines += ["", f"{ok} of {len(compared)} cells with a published value are within tolerance."]
    if records:
        seed_lists = sorted({tuple(r["seed_list"]) for r in records})
        devices = sorted({str(r["device_kind"]) for r in records})
        cores = sorted({r["cpu_cores"] for r in records if r["cpu_cores"] and r["device_kind"] == "cpu"})
        on_cores = ""
        if cores:
            on_cores = f" ({' or '.join(map(str, cores))} CPU {_plural(max(cores), 'core')} per cell)"
        wall = sum(r["wall_seconds"] or 0.0 for r in records)
        lines += [
            "",
            f"{len(records)} {_plural(len(records), 'cell')}; {_seeds(seed_lists)}; "
            f"device {', '.join(devices)}{on_cores}; wall time of all cells {wall / 60:.1f} min.",
        ]
        reused = [r for r in records if r["reused_from"]]
        if reused:
            sources = sorted({r["reused_from"].split("/")[0] for r in reused})
            minutes = sum(r["wall_seconds"] or 0.0 for r in reused) / 60
            lines.append(
                f"{len(reused)} of them ({minutes:.1f} min) were run once with an identical configuration "
                f"for {', '.join(sources)} and copied from there."
            )
        sets = {(p["seed"], p["sha256"]): p for r in records for p in r.get("pretrained") or []}
        if sets:
            named = [
                f"seed {p['seed']} ({p['test_accuracy']:.2f} % on CIFAR-10's test set, {p['epochs']} epochs, "
                f"sha256 {p['sha256'][:12]})"
                for _, p in sorted(sets.items())
            ]
            lines.append(f"Frozen conv layers pre-trained on CIFAR-10 (cljax pretrain): {'; '.join(named)}.")
    return "\n".join(lines) + "\n"


def write_summaries(table: Table, out: Path, wall_seconds: float | None = None) -> dict[str, Any]:
    """table.md, table.csv, table.json and (with matplotlib) two figures in ``out``."""
    from cljax.engine import environment

    records = collect(table, out)
    env = environment()
    command = " ".join(sys.argv)
    provenance = (
        f"\nMachine: {env['cpu_model']}, {env['cpu_cores']} {_plural(env['cpu_cores'], 'core')}, "
        f"{env['backend']} "
        f"({env['device_kind']}); jax {env['jax']}, flax {env['flax']}, optax {env['optax']}, "
        f"python {env['python']}. Command: `{command}`.\n"
    )
    (out / "table.md").write_text(markdown(table, records) + provenance)
    fields = [
        "method",
        "strategy",
        "scenario",
        "seeds",
        "mean",
        "sem",
        "published_mean",
        "published_sem",
        "difference",
        "tolerance",
        "flagged",
        "train_seconds",
        "wall_seconds",
        "reused_from",
    ]
    with open(out / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    summary = {
        "table": table.name,
        "title": table.title,
        "source": table.source,
        "environment": env,
        "command": command,
        "wall_seconds_this_invocation": wall_seconds,
        "wall_seconds_all_cells": sum(r["wall_seconds"] or 0.0 for r in records),
        "cells": [{k: v for k, v in r.items() if k != "acc_matrix"} for r in records],
    }
    write_json(out / "table.json", summary)
    missing = matplotlib_missing("table: no figures (final_accuracy.png, average_accuracy.png)")
    if missing:
        print(f"cljax: {missing}", file=sys.stderr)
    else:
        _figures(table, records, out)
    return summary


def _figures(table: Table, records: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cljax.metrics import average_accuracy_curve

    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in records)]
    labels = [m.label for m in table.methods if any(r["method"] == m.label for r in records)]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels) * len(scenarios) / 2), 4))
    width = 0.8 / max(1, len(scenarios))
    any_published = any(r["published_mean"] is not None for r in records)
    for k, s in enumerate(scenarios):
        rows = {r["method"]: r for r in records if r["scenario"] == s}
        x = np.arange(len(labels)) + k * width
        means = [rows[m]["mean"] if m in rows else np.nan for m in labels]
        sems = [rows[m]["sem"] if m in rows else 0 for m in labels]
        ax.bar(x, means, width, yerr=sems, label=SCENARIO_NAMES[s])
        if any_published:
            pubs = [
                rows[m]["published_mean"] if m in rows and rows[m]["published_mean"] is not None else np.nan
                for m in labels
            ]
            label = "published" if k == 0 else None
            ax.scatter(x, pubs, marker="_", s=200, color="black", zorder=3, label=label)
    ax.set_xticks(np.arange(len(labels)) + width * (len(scenarios) - 1) / 2, labels, rotation=30, ha="right")
    ax.set_ylabel("final average accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(table.title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never on them
    fig.savefig(out / "final_accuracy.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 3.6), squeeze=False)
    for ax, s in zip(axes[0], scenarios, strict=True):
        for r in (r for r in records if r["scenario"] == s):
            if table.stream is None:
                curve = np.mean([average_accuracy_curve(np.asarray(a)) for a in r["acc_matrix"]], axis=0)
            else:  # a stream shows every context early: the average over all of them, along the stream
                curve = np.asarray(r["acc_matrix"]).mean(axis=(0, 2))
            ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", label=r["method"])
        ax.set_title(SCENARIO_NAMES[s], fontsize=10)
        ax.set_xlabel("contexts trained" if table.stream is None else "iterations of the stream / iters")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("average accuracy so far (%)" if table.stream is None else "average accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.savefig(out / "average_accuracy.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
