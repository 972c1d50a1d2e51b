"""Per-context metrics to CSV and, where tensorboardX or tensorboard is installed, TensorBoard events."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

CSV_FIELDS = ("benchmark", "scenario", "strategy", "seed", "context", "loss", "avg_acc", "seconds", "acc")


def _summary_writer(folder: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter(str(folder))


class MetricsLog:
    """Appends one CSV row per seed and context to ``<log_dir>/metrics.csv``; mirrors them to TensorBoard."""

    def __init__(self, log_dir: str | os.PathLike, run: dict[str, str], seeds: list[int]) -> None:
        self.folder = Path(log_dir)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"log_dir: cannot create {self.folder}: {err.strerror}") from err
        self.path = self.folder / "metrics.csv"
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.DictWriter(self.file, CSV_FIELDS)
        if new:
            self.writer.writeheader()
        self.run, self.seeds = run, seeds
        name = f"{run['benchmark']}_{run['scenario']}_{run['strategy']}"
        self.tensorboard = _summary_writer(self.folder / name)

    def context(self, context: int, seconds: float, losses: np.ndarray, acc: np.ndarray) -> None:
        """``losses``: (seeds,) mean loss of the context; ``acc``: (seeds, contexts) accuracies in [0, 1]."""
        for i, seed in enumerate(self.seeds):
            avg = float(acc[i, : context + 1].mean())
            self.writer.writerow(
                {
                    **self.run,
                    "seed": seed,
                    "context": context + 1,
                    "loss": f"{losses[i]:.6g}",
                    "avg_acc": f"{100 * avg:.4f}",
                    "seconds": f"{seconds:.3f}",
                    "acc": " ".join(f"{100 * a:.4f}" for a in acc[i]),
                }
            )
            if self.tensorboard is not None:
                self.tensorboard.add_scalar(f"seed{seed}/loss", float(losses[i]), context + 1)
                self.tensorboard.add_scalar(f"seed{seed}/average_accuracy", 100 * avg, context + 1)
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
