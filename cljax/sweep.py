"""Sweeps: a grid of hyperparameter values x seeds, as few compiled programs as the grid's shapes allow.

The hyperparameters a strategy declares continuous (and the learning rate) are inputs of the compiled
programs, so every configuration that differs only in them runs in ONE program: its configurations x seeds
are one leading run axis, vmapped and, where JAX has several devices, sharded over them. A key that changes
shapes or control flow (a budget, a sample count, a generator kind) is static: the grid is split into one
program per combination of static values. ``cljax run`` is the same machinery with one configuration.

    result = cljax.sweep(cljax.RunConfig(strategy="ewc", scenario="domain", seeds=2),
                         {"lambda": [1e3, 1e5, 1e7, 1e9]})
    result.best, result.save("sweeps/ewc")
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cljax.config import ConfigError, RunConfig
from cljax.data import Dataset
from cljax.hyper import is_number
from cljax.results import RunResult, write_json

# Run settings a grid may sweep besides the strategy's options; lr is continuous, the others static.
RUN_KEYS = ("lr", "batch_size", "iters")
SWEEP_FILES = ("sweep.json", "sweep.md", "sweep.png")


@dataclass
class SweepResult:
    """Every configuration's accuracies, in grid order, with the best one and how the sweep ran."""

    benchmark: str
    scenario: str
    strategy: str
    grid: dict[str, list[Any]]
    configs: list[dict[str, Any]]  # values, final_avg_acc (per seed), acc_matrix, mean, sem
    best: dict[str, Any]
    seeds: list[int]
    train_seconds: float
    compile_seconds: float
    programs_compiled: int
    groups: int  # programs run: one per combination of static values
    wall_seconds: float
    config: dict[str, Any]
    environment: dict[str, Any]
    results: list[RunResult] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-configuration RunResults (and their trained models)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "results"}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write sweep.json, sweep.md and (with matplotlib) sweep.png into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "sweep.json", self.to_dict())
        (folder / "sweep.md").write_text(self.markdown())
        from cljax.plots import matplotlib_missing

        if matplotlib_missing("sweep") is None:
            from cljax.plots import plot_sweep

            plot_sweep(self.to_dict(), folder / "sweep.png")
        return folder

    def markdown(self) -> str:
        """The grid as a table: one row per configuration, the best marked."""
        keys = list(self.grid)
        head = f"| {' | '.join(keys)} | final average accuracy (%) | per seed |"
        lines = [
            f"# {self.strategy} on {self.benchmark}, {self.scenario} scenario: sweep over {', '.join(keys)}",
            "",
            head,
            "|" + " --- |" * (len(keys) + 2),
        ]
        for entry in self.configs:
            mark = " **best**" if entry["values"] == self.best["values"] else ""
            if any(d is not None for d in entry.get("diverged") or []):
                mark += " (loss not finite)"
            values = " | ".join(f"{entry['values'][k]:g}" if is_number(entry["values"][k]) else str(
                entry["values"][k]) for k in keys)  # fmt: skip
            seeds = ", ".join(f"{a:.2f}" for a in entry["final_avg_acc"])
            lines.append(f"| {values} | {entry['mean']:.2f} +- {entry['sem']:.2f}{mark} | {seeds} |")
        env = self.environment
        lines += [
            "",
            f"Seeds {self.seeds}; {len(self.configs)} configurations in {self.groups} program(s); "
            f"{self.programs_compiled} XLA programs compiled in {self.compile_seconds:.1f} s; "
            f"{self.train_seconds:.1f} s training, {self.wall_seconds:.1f} s in all; "
            f"{env.get('device_count')} {env.get('backend')} device(s) ({env.get('device_kind')}), "
            f"{env.get('process_count', 1)} process(es).",
        ]
        return "\n".join(lines) + "\n"


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["lambda=1e3,1e5", "c=0.1,1"]`` -> ``{"lambda": [1000.0, 100000.0], "c": [0.1, 1]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"grid: expected KEY=V1,V2,..., got {item!r} (for example --grid lambda=1e3,1e5)"
            )
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in grid:
            raise ConfigError(f"grid: {key!r} is given twice; list all its values in one --grid {key}=...")
        grid[key] = [_literal(v.strip()) for v in raw.split(",") if v.strip()]
    return grid


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return float(text)  # inf, nan: refused by check_grid with their own message
    except ValueError:
        return text


def check_grid(config: RunConfig, grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """The grid with its keys checked against the strategy and its values against their kind, before
    anything is loaded or compiled; a ConfigError names the first problem."""
    from cljax.strategies import get_strategy

    if not grid:
        raise ConfigError("grid: nothing to sweep; give at least one --grid KEY=V1,V2,...")
    spec = get_strategy(config.strategy)
    known = set(spec.defaults(config.scenario)) | set(RUN_KEYS)
    checked = {}
    for key, values in grid.items():
        if key not in known:
            raise ConfigError(
                f"grid: {config.strategy!r} has no hyperparameter {key!r}; it takes: "
                f"{', '.join(sorted(known))}"
            )
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(f"grid: {key!r} has no values")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"grid: {key!r} lists a value twice: {values}")
        kinds = {type(v) for v in values if v is not None}
        if any(is_number(v) for v in values) and not all(is_number(v) for v in values if v is not None):
            raise ConfigError(f"grid: {key!r} mixes numbers and other values: {values}")
        for v in values:
            if is_number(v) and not math.isfinite(v):
                raise ConfigError(f"grid: {key!r} has a non-finite value {v!r}; every value must be finite")
        if key in spec.hyperparameters and len(kinds) > 1 and not kinds <= {int, float}:
            raise ConfigError(f"grid: {key!r} mixes kinds of values: {values}")
        checked[key] = values
    return checked


def grid_configs(config: RunConfig, grid: Mapping[str, list[Any]]) -> list[tuple[dict[str, Any], RunConfig]]:
    """Every combination of the grid's values (first key slowest) as (values, config)."""
    out = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        run = {k: v for k, v in values.items() if k in RUN_KEYS}
        options = {**dict(config.options), **{k: v for k, v in values.items() if k not in RUN_KEYS}}
        if "lr" in run:
            run["lr"] = float(run["lr"])
        out.append((values, dataclasses.replace(config, options=options, **run)))
    return out


def group_by_program(configs: list[RunConfig]) -> list[list[int]]:
    """Indices of the configurations that can share one program (they differ only in traced values)."""
    from cljax.engine import traced_names
    from cljax.strategies import get_strategy

    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        resolved = config.resolved()
        names = traced_names(get_strategy(config.strategy), resolved)
        static = {k: v for k, v in resolved.to_dict().items() if k not in ("lr", "options")}
        static["options"] = {k: v for k, v in resolved.options.items() if k not in names}
        static["traced"] = names
        groups.setdefault(repr(sorted(static.items())), []).append(i)
    return list(groups.values())


def sweep(
    config: RunConfig,
    grid: Mapping[str, Sequence[Any]],
    *,
    dataset: Dataset | None = None,
    out: str | os.PathLike | None = None,
    quiet: bool = False,
) -> SweepResult:
    """Run every configuration of ``grid`` (over ``config``) x ``config``'s seeds; see the module docstring.

    ``out``: write sweep.json / .md / .png there, and keep a checkpoint per program after every context
    in ``out/checkpoints`` so an interrupted sweep continues where it stopped.
    """
    from cljax.engine import environment, execute_runs, prepare, programs_compiled

    grid = check_grid(config, grid)
    entries = grid_configs(config, grid)
    configs = [c for _, c in entries]
    for c in configs:
        c.resolved()  # every configuration is checked before anything runs
    groups = group_by_program(configs)
    started, compiled_before = time.perf_counter(), programs_compiled()
    results: list[RunResult | None] = [None] * len(configs)
    compile_seconds = train_seconds = 0.0
    for number, members in enumerate(groups):
        exp = prepare(configs[members[0]], dataset, configs=[configs[i] for i in members])
        checkpoint_dir = Path(out) / "checkpoints" / f"program-{number}" if out is not None else None
        group_results = execute_runs(
            exp,
            quiet=quiet,
            checkpoint_dir=checkpoint_dir,
            resume=checkpoint_dir is not None,
            stop_on_nonfinite=False,  # one diverging value must not end the whole grid
        )
        compile_seconds += group_results[0].compile_seconds
        train_seconds += group_results[0].train_seconds
        for i, result in zip(members, group_results, strict=True):
            results[i] = result
    summary = []
    for (values, _), result in zip(entries, results, strict=True):
        summary.append(
            {
                "values": values,
                "final_avg_acc": result.final_avg_acc,
                "acc_matrix": result.acc_matrix,
                "mean": result.mean,
                "sem": result.sem,
                "options": result.config["options"],
                "diverged": result.diverged,
            }
        )
    finite = [e for e in summary if not any(d is not None for d in e["diverged"] or [])]
    best = max(finite or summary, key=lambda e: e["mean"])
    import jax

    sweep_result = SweepResult(
        benchmark=results[0].benchmark,
        scenario=config.scenario,
        strategy=config.strategy,
        grid=grid,
        configs=summary,
        best={"values": best["values"], "mean": best["mean"], "sem": best["sem"]},
        seeds=config.seed_list,
        train_seconds=train_seconds,
        compile_seconds=compile_seconds,
        programs_compiled=programs_compiled() - compiled_before,
        groups=len(groups),
        wall_seconds=time.perf_counter() - started,
        config={k: v for k, v in results[0].config.items() if k != "wall_seconds"},
        environment={**environment(), "process_count": jax.process_count()},
        results=list(results),
    )
    if out is not None and jax.process_index() == 0:
        sweep_result.save(out)
    return sweep_result
