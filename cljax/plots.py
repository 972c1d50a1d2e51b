"""Figures from runs: the accuracy matrix as a heatmap and average accuracy after each context.

A run is a :class:`~cljax.results.RunResult`, its dict (``RunResult.to_dict()``, or one run of a results
file) or the path of a results file (which may hold several runs).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cljax.hyper import is_number
from cljax.metrics import average_accuracy_curve
from cljax.presets import SCENARIO_NAMES
from cljax.results import RunResult

RunLike = RunResult | Mapping[str, Any] | str | os.PathLike

MATPLOTLIB_HINT = "install it with pip install -e '.[plots]' (in a clone of cljax) or pip install matplotlib"


def matplotlib_missing(prefix: str) -> str | None:
    """``prefix``, then that matplotlib is missing and how to install it; None where it is installed."""
    if importlib.util.find_spec("matplotlib") is not None:
        return None
    return f"{prefix}: matplotlib is not installed; {MATPLOTLIB_HINT}"


def _read_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The runs in one results file (a file holds one run or ``{"runs": [...]}``)."""
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"plot: no results file {path}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"plot: {path} is not a cljax results file (invalid JSON: {err.msg})") from err
    found = payload.get("runs", [payload]) if isinstance(payload, dict) else []
    if not found or any(not isinstance(r, dict) or "acc_matrix" not in r for r in found):
        raise ValueError(f"plot: {path} is not a cljax results file (no acc_matrix)")
    return found


def _as_dicts(run: RunLike) -> list[dict[str, Any]]:
    """One run (or a file's runs) as the dicts the figures are drawn from."""
    if isinstance(run, RunResult):
        return [run.to_dict()]
    if isinstance(run, Mapping):
        if "acc_matrix" not in run:
            raise ValueError("plot: a run given as a dict needs an acc_matrix (RunResult.to_dict())")
        return [dict(run)]
    if isinstance(run, (str, os.PathLike)):
        return _read_file(run)
    raise TypeError(f"plot: expected a RunResult, a dict or a results file, got {type(run).__name__}")


def load_runs(runs: RunLike | Sequence[RunLike]) -> list[dict[str, Any]]:
    """Every run given, as dicts: results files are read (all their runs), RunResults and dicts kept."""
    items = [runs] if isinstance(runs, (RunResult, Mapping, str, os.PathLike)) else list(runs)
    return [found for item in items for found in _as_dicts(item)]


def plot_runs(runs: RunLike | Sequence[RunLike], out: str | os.PathLike) -> Path:
    """One heatmap per run (mean over seeds) and one panel of average accuracy, a line per run.

    ``runs``: RunResults, their dicts or results files (:func:`load_runs`), or one of them. Returns ``out``.
    """
    runs = load_runs(runs)
    if not runs:
        raise ValueError("plot: no runs to plot")
    missing = matplotlib_missing("plot")
    if missing:
        raise ImportError(missing)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(4.2 * (len(runs) + 1), 3.8), squeeze=False)
    axes = axes[0]
    for ax, run in zip(axes, runs, strict=False):
        acc = np.asarray(run["acc_matrix"]).mean(axis=0)
        n = acc.shape[0]
        image = ax.imshow(acc, vmin=0, vmax=100, cmap="viridis")
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{acc[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if acc[i, j] < 60 else "black",
                )
        ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
        ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
        ax.set_xlabel("tested on context")
        ax.set_ylabel("after training on context")
        ax.set_title(
            f"{run['strategy']} ({SCENARIO_NAMES.get(run['scenario'], run['scenario'])})", fontsize=10
        )
    fig.colorbar(image, ax=axes[: len(runs)].tolist(), shrink=0.8, label="accuracy (%)")
    curve_ax = axes[-1]
    for run in runs:
        curves = np.stack([average_accuracy_curve(np.asarray(a)) for a in run["acc_matrix"]])
        mean = curves.mean(axis=0)
        sem = curves.std(axis=0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 else np.zeros_like(mean)
        x = np.arange(1, len(mean) + 1)
        curve_ax.plot(x, mean, marker="o", label=f"{run['strategy']} ({run['scenario']})")
        curve_ax.fill_between(x, mean - sem, mean + sem, alpha=0.2)
    curve_ax.set_xlabel("contexts trained")
    curve_ax.set_ylabel("average accuracy so far (%)")
    curve_ax.set_ylim(0, 100)
    curve_ax.set_xticks(x)
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8)
    curve_ax.set_title(runs[0]["benchmark"], fontsize=10)
    out = Path(out)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_sweep(sweep: Mapping[str, Any], out: str | os.PathLike) -> Path:
    """Final average accuracy against each swept value (mean +- SEM over seeds); one panel per key, one
    line per combination of the other keys' values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, entries = sweep["grid"], sweep["configs"]
    keys = list(grid)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        others = [k for k in keys if k != key]
        lines: dict[tuple, list[dict[str, Any]]] = {}
        for entry in entries:
            lines.setdefault(tuple(entry["values"][k] for k in others), []).append(entry)
        numeric = all(is_number(v) for v in grid[key])
        for label, members in lines.items():
            x = [e["values"][key] for e in members]
            positions = x if numeric else list(range(len(x)))
            means = [float(np.mean(e["final_avg_acc"])) for e in members]
            sems = [e["sem"] for e in members]
            name = ", ".join(f"{k}={v}" for k, v in zip(others, label, strict=True)) or None
            ax.errorbar(positions, means, yerr=sems, marker="o", capsize=3, label=name)
            if not numeric:
                ax.set_xticks(positions, [str(v) for v in x])
        if numeric and min(grid[key]) > 0 and max(grid[key]) / min(grid[key]) >= 100:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("final average accuracy (%)")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    scenario = SCENARIO_NAMES.get(sweep["scenario"], sweep["scenario"])
    fig.suptitle(
        f"{sweep['strategy']} on {sweep['benchmark']} ({scenario}), seeds {sweep['seeds']}", fontsize=10
    )
    out = Path(out)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
