"""Figures from result files: the accuracy matrix as a heatmap and average accuracy after each context."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cljax.metrics import average_accuracy_curve
from cljax.presets import SCENARIO_NAMES


def load_runs(paths: list[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every run in the given result files (a file holds one run or ``{"runs": [...]}``)."""
    runs = []
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"plot: no results file {path}") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"plot: {path} is not a cljax results file (invalid JSON: {err.msg})") from err
        found = payload.get("runs", [payload]) if isinstance(payload, dict) else []
        if not found or any("acc_matrix" not in r for r in found):
            raise ValueError(f"plot: {path} is not a cljax results file (no acc_matrix)")
        runs.extend(found)
    return runs


def plot_runs(runs: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """One heatmap per run (mean over seeds) and one panel of average accuracy, a line per run."""
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
