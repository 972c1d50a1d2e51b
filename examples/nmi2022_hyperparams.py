"""NMI-2022's hyperparameter grid searches on split MNIST, each grid one ``cljax.sweep`` on seed 1.

    python examples/nmi2022_hyperparams.py --data-dir ../shared/data          # every grid, full length
    python examples/nmi2022_hyperparams.py --methods ewc,si --scenarios class  # some grids
    python examples/nmi2022_hyperparams.py --iters 100 --methods ewc --scenarios domain --out /tmp/hp

The reference code (GMvandeVen/continual-learning, master, the NMI-2022 version) selected the paper's
hyperparameters with ``compare_hyperParams.py --seed=1`` (``all_results.sh`` lines 27-29): one run per
value on seed 1, then the value with the best final average accuracy, the fine-tuning baseline ("None",
i.e. lambda = 0 or c = 0) included among the candidates; the tables report seeds 2..21. This script runs
the same grids on cljax's seed 1 (``first_seed=1``), each grid as ONE ``cljax.sweep`` (all its values in one
compiled program; a budget changes shapes, so the budget grids are one program per budget inside one
sweep call), and writes per grid ``<out>/<strategy>_<scenario>/sweep.json``, ``sweep.md``, ``sweep.png``.
A grid whose ``sweep.json`` exists is skipped, so an interrupted invocation continues (an interrupted grid
continues from its checkpoints, removed once it is finished). At the end ``selection.md`` and
``selection.json`` list per strategy and scenario the value the sweep picks beside the value the paper used.

Memory budgets are not selected: the paper shows accuracy as a function of the budget (its
``compare_replay.py``) and uses 100 samples per class in its tables; the summary lists the accuracy at every
budget instead of a pick.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

# The reference: GMvandeVen/continual-learning at e6d795aa81b9cef742b8de76cb71222d4d1ce00b (2025-11-05).
REFERENCE = "GMvandeVen/continual-learning@e6d795a"
# compare_hyperParams.py lines 15-16, `lamda_list` (split MNIST; permuted MNIST has its own, line 17).
EWC_LAMBDAS = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13]
# compare_hyperParams.py line 18, `c_list`.
SI_CS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1e3, 5e3, 1e4, 5e4, 1e5]
# compare_hyperParams.py line 22, `dg_prop_list`; every value runs with decoder gates on (`args.dg_gates =
# True`, line 155), so dg_prop = 0 is a gated decoder that gates nothing off: cljax's option gates=True,
# which also keeps the whole grid in one program.
BIR_DG_PROPS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
# compare_replay.py line 15, `budget_list_splitMNIST`: samples per class, for ER and A-GEM (lines 126-146).
BUDGETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]

PROTOCOL = "shared/PROTOCOL.md"
PARAM_VALUES = f"{REFERENCE} params/param_values.py"
GRIDS: dict[str, dict[str, Any]] = {
    "ewc": {
        "key": "lambda",
        "values": EWC_LAMBDAS,
        "options": {},
        "grid_source": f"{REFERENCE} compare_hyperParams.py lines 15-16 (lamda_list)",
        "paper_source": f"{PROTOCOL} (EWC, NMI-2022: lambda 1e5 / 1e10 / 1e9); cljax/strategies/ewc.py "
        f"EWC_PUBLISHED; {PARAM_VALUES} lines 124-138",
        "baseline": True,
    },
    "si": {
        "key": "c",
        "values": SI_CS,
        "options": {},
        "grid_source": f"{REFERENCE} compare_hyperParams.py line 18 (c_list)",
        "paper_source": f"{PROTOCOL} (SI, NMI-2022: c 10 / 5e4 / 5e3); cljax/strategies/si.py SI_PUBLISHED; "
        f"{PARAM_VALUES} lines 120-135",
        "baseline": True,
    },
    "bir": {
        "key": "dg_prop",
        "values": BIR_DG_PROPS,
        "options": {"gates": True},
        "grid_source": f"{REFERENCE} compare_hyperParams.py line 22 (dg_prop_list), dg_gates on (line 155)",
        "paper_source": f"{PROTOCOL} (BI-R: gate proportion Task 0, Domain 0.1, Class 0.1); "
        f"cljax/strategies/bir.py bir_defaults; {PARAM_VALUES} lines 149-154",
        "baseline": False,
    },
    "er": {
        "key": "budget",
        "values": BUDGETS,
        "options": {},
        "grid_source": f"{REFERENCE} compare_replay.py line 15 (budget_list_splitMNIST)",
        "paper_source": f"{PROTOCOL} (ER / A-GEM: 100 stored samples per class, NMI-2022); "
        f"cljax/strategies/memory_replay.py PUBLISHED_BUDGET; {PARAM_VALUES} line 88",
        "baseline": False,
    },
}
GRIDS["agem"] = dict(GRIDS["er"])
METHODS = ("ewc", "si", "bir", "er", "agem")
SCENARIOS = ("task", "domain", "class")
SELECTED = ("ewc", "si", "bir")  # the grids the paper selected a value from; budgets form a curve
# BI-R has no Task-IL cell in NMI-2022's split-MNIST table (shared/PROTOCOL.md); its grid there is optional.
DEFAULT_SKIP = {("bir", "task")}
RESULTS = Path(__file__).resolve().parent / "results" / "nmi2022_hyperparams"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"some of: {', '.join(METHODS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="some of: task, domain, class")
    parser.add_argument("--iters", type=int, default=None, help="iterations per context (default: 2000)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per value (the reference: 1)")
    parser.add_argument("--first-seed", type=int, default=1, help="the reference selects on seed 1")
    parser.add_argument(
        "--bir-task",
        action="store_true",
        help="also BI-R's grid in Task-IL (the reference's compare_hyperParams.py runs it; paper value 0)",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(RESULTS), help="folder of the grids and selection.md/.json")
    parser.add_argument(
        "--no-checkpoints", action="store_true", help="no checkpoints (an interrupted grid starts over)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name, given, known in (("methods", args.methods, METHODS), ("scenarios", args.scenarios, SCENARIOS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            parser.error(f"--{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def planned(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(strategy, scenario) of every grid asked for, in the order they run."""
    return [
        (m, s)
        for m in METHODS
        if m in args.methods
        for s in SCENARIOS
        if s in args.scenarios and ((m, s) not in DEFAULT_SKIP or args.bir_task)
    ]


def config_for(args: argparse.Namespace, strategy: str, scenario: str, options: dict[str, Any] | None = None):
    import cljax

    return cljax.RunConfig(
        benchmark="split-mnist",
        scenario=scenario,
        strategy=strategy,
        seeds=args.seeds,
        first_seed=args.first_seed,
        iters=args.iters,
        data_dir=args.data_dir,
        options=dict(options or {}),
    )


def check_kept(path: Path, config) -> None:
    """A kept result must come from the same length and seeds, else it would be mixed into the summary."""
    saved = json.loads(path.read_text())
    settings = saved["config"]
    resolved = config.resolved()
    seeds = saved.get("seeds", settings.get("seeds"))
    if settings.get("iters") != resolved.iters or list(seeds) != resolved.seed_list:
        raise SystemExit(
            f"{path} was made with {settings.get('iters')} iterations and seeds {seeds}, not "
            f"{resolved.iters} and {resolved.seed_list}; delete it or choose another --out"
        )


def run_baseline(args, scenario: str, dataset, out: Path) -> None:
    """Fine-tuning on the same seeds: the reference's BASE, a candidate of the EWC and SI selections."""
    import cljax

    path = out / f"none_{scenario}" / "run.json"
    config = config_for(args, "none", scenario)
    if path.is_file():
        check_kept(path, config)
        print(f"kept {path}")
        return
    result = cljax.run(config, dataset=dataset, quiet=args.quiet)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.save(path)
    print(f"none, {scenario}: {result.mean:.2f} %; wrote {path}")


def run_grid(args, strategy: str, scenario: str, dataset, out: Path) -> None:
    import cljax

    grid = GRIDS[strategy]
    folder = out / f"{strategy}_{scenario}"
    config = config_for(args, strategy, scenario, grid["options"])
    if (folder / "sweep.json").is_file():
        check_kept(folder / "sweep.json", config)
        print(f"kept {folder / 'sweep.json'}")
        return
    print(f"{strategy}, {scenario}: {grid['key']} over {len(grid['values'])} values ...", flush=True)
    sweep_out = None if args.no_checkpoints else folder
    result = cljax.sweep(
        config, {grid["key"]: grid["values"]}, dataset=dataset, out=sweep_out, quiet=args.quiet
    )
    if sweep_out is None:
        result.save(folder)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # finished: sweep.json is what is kept
    print(
        f"{strategy}, {scenario}: best {result.best['values']} at {result.best['mean']:.2f} %, "
        f"{result.programs_compiled} programs compiled, {result.train_seconds:.0f} s training, "
        f"{result.wall_seconds:.0f} s in all; wrote {folder}/sweep.json, .md, .png",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------- the summary


def paper_value(strategy: str, scenario: str) -> Any:
    """What cljax runs by default, NMI-2022's split-MNIST value (the sources are in GRIDS)."""
    import cljax

    return cljax.RunConfig(strategy=strategy, scenario=scenario).resolved().options[GRIDS[strategy]["key"]]


def same(a: Any, b: Any) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def selection(out: Path) -> dict[str, Any]:
    """Every finished grid under ``out``: the value picked (by the reference's rule) beside the paper's, and
    the accuracy per budget for ER and A-GEM."""
    selected, budgets = [], []
    for strategy in METHODS:
        grid = GRIDS[strategy]
        for scenario in SCENARIOS:
            path = out / f"{strategy}_{scenario}" / "sweep.json"
            if not path.is_file():
                continue
            sweep = json.loads(path.read_text())
            key, paper = grid["key"], paper_value(strategy, scenario)
            means = {entry["values"][key]: entry["mean"] for entry in sweep["configs"]}
            common = {
                "strategy": strategy,
                "scenario": scenario,
                "key": key,
                "seeds": sweep["seeds"],
                "iters": sweep["config"]["iters"],
                "grid_source": grid["grid_source"],
                "paper_value": paper,
                "paper_source": grid["paper_source"],
                "folder": f"{strategy}_{scenario}",
            }
            if strategy not in SELECTED:
                budgets.append({**common, "values": list(means), "means": list(means.values())})
                continue
            candidates = [(v, m) for v, m in means.items()]
            baseline = None
            base_path = out / f"none_{scenario}" / "run.json"
            if grid["baseline"] and base_path.is_file():
                baseline = json.loads(base_path.read_text())["mean"]
                candidates.insert(0, (0.0, baseline))  # the reference's [BASE] + list: lambda / c = 0
            pick, pick_mean = max(candidates, key=lambda c: c[1])  # the first best, as np.argmax
            paper_mean = next((m for v, m in means.items() if same(v, paper)), None)
            selected.append(
                {
                    **common,
                    "values": list(means),
                    "means": list(means.values()),
                    "baseline_mean": baseline,
                    "pick": pick,
                    "pick_mean": pick_mean,
                    "paper_mean": paper_mean,
                    "gap": None if paper_mean is None else pick_mean - paper_mean,
                    "agrees": same(pick, paper),
                }
            )
    return {"selected": selected, "budgets": budgets}


def fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:g}" if isinstance(value, (int, float)) else str(value))


def selection_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# NMI-2022 hyperparameters on split MNIST: the sweep's pick beside the paper's value",
        "",
        f"Each grid is one `cljax.sweep` ({REFERENCE}'s grids) on seed(s) "
        f"{', '.join(map(str, summary['seeds']))}, {' / '.join(map(str, summary['iters']))} iterations per "
        "context; selection as the reference's compare_hyperParams.py: "
        "the value with the best final average accuracy, fine-tuning (= 0) among the candidates for EWC and "
        "SI. One seed: differences of a point or two between neighbouring values are seed noise.",
        "",
        "| strategy | scenario | key | sweep's pick | acc. (%) | paper's value | acc. at paper's value (%) | "
        "gap (points) | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in summary["selected"]:
        pick = "0 (fine-tuning)" if e["baseline_mean"] is not None and e["pick"] == 0.0 else fmt(e["pick"])
        flag = "agrees" if e["agrees"] else "⚠ differs"
        gap = "-" if e["gap"] is None else f"{e['gap']:.2f}"
        paper_mean = "-" if e["paper_mean"] is None else f"{e['paper_mean']:.2f}"
        lines.append(
            f"| {e['strategy']} | {e['scenario']} | {e['key']} | {pick} | {e['pick_mean']:.2f} | "
            f"{fmt(e['paper_value'])} | {paper_mean} | {gap} | {flag} |"
        )
    disagree = [e for e in summary["selected"] if not e["agrees"]]
    lines += [
        "",
        f"{len(summary['selected']) - len(disagree)} of {len(summary['selected'])} picks agree with the "
        "paper."
        if summary["selected"]
        else "No selection grid has run yet.",
    ]
    if summary["budgets"]:
        budgets = summary["budgets"][0]["values"]
        lines += [
            "",
            "## Memory budgets (samples per class): accuracy per budget, no pick",
            "",
            "The paper does not select a budget: it shows accuracy against the budget (compare_replay.py, "
            "seeds 2-6) and uses 100 per class in its tables (marked *).",
            "",
            "| strategy | scenario | " + " | ".join(f"{b}{'*' if b == 100 else ''}" for b in budgets) + " |",
            "| --- | --- |" + " --- |" * len(budgets),
        ]
        for e in summary["budgets"]:
            means = dict(zip(e["values"], e["means"], strict=True))
            cells = " | ".join("-" if b not in means else f"{means[b]:.2f}" for b in budgets)
            lines.append(f"| {e['strategy']} | {e['scenario']} | {cells} |")
    lines += ["", "## Sources", ""]
    for strategy in METHODS:
        g = GRIDS[strategy]
        lines.append(f"- {strategy}: grid {g['grid_source']}; paper's value {g['paper_source']}.")
    lines += ["", f"`{summary['command']}`", ""]
    return "\n".join(lines)


def write_selection(out: Path, command: str) -> Path:
    from cljax.engine import environment

    summary = selection(out)
    entries = summary["selected"] + summary["budgets"]
    summary.update(
        {
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "reference": REFERENCE,
            "seeds": sorted({s for e in entries for s in e["seeds"]}),
            "iters": sorted({e["iters"] for e in entries}),
            "command": command,
            "environment": environment(),
        }
    )
    (out / "selection.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "selection.md").write_text(selection_markdown(summary))
    return out / "selection.md"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import cljax
    from cljax.devices import cpu_cores

    cljax.use_host_devices(cpu_cores())  # a grid's runs side by side on the cores (cljax.devices)
    cljax.enable_compilation_cache()  # as the command line: an interrupted grid needs no recompiling
    from cljax.engine import load_data
    from cljax.presets import get_benchmark

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grids = planned(args)
    dataset = None
    if grids:
        dataset = load_data(get_benchmark("split-mnist"), config_for(args, "none", "class").resolved(), None)
    for scenario in SCENARIOS:
        if any(s == scenario and GRIDS[m]["baseline"] for m, s in grids):
            run_baseline(args, scenario, dataset, out)
    for strategy, scenario in grids:
        run_grid(args, strategy, scenario, dataset, out)
    command = shlex.join(
        ["python", "examples/nmi2022_hyperparams.py", *(sys.argv[1:] if argv is None else argv)]
    )
    path = write_selection(out, command)
    print(path.read_text())
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
