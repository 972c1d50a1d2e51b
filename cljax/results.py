"""The result of a run: what the JSON file holds and the summary the terminal shows."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cljax.presets import SCENARIO_NAMES


@dataclass
class RunResult:
    """Per-seed accuracy matrices (in %) and the metrics derived from them."""

    benchmark: str
    scenario: str
    strategy: str
    seeds: list[int]
    acc_matrix: list[list[list[float]]]  # (seeds, contexts trained, contexts tested), %
    initial_acc: list[list[float]]  # (seeds, contexts) before training, %
    final_avg_acc: list[float]  # per seed, %
    mean: float
    sem: float
    forgetting: list[float]
    bwt: list[float]
    fwt: list[float]
    train_seconds: float
    compile_seconds: float
    iterations_per_second: float
    context_loss: list[list[float]]  # (seeds, contexts): mean training loss over each context's iterations
    config: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically (a crash never leaves a half-written result)."""
        return write_json(path, self.to_dict())

    def summary(self) -> str:
        """A readable report: the mean accuracy matrix, final average accuracy and timing."""
        acc = np.asarray(self.acc_matrix).mean(axis=0)
        n = acc.shape[0]
        head = (
            f"{self.strategy} on {self.benchmark}, {SCENARIO_NAMES[self.scenario]}, {len(self.seeds)} seed(s)"
        )
        lines = [head, "accuracy (%) after training on context i (rows), tested on context j (columns):"]
        lines.append("        " + "".join(f"{'ctx ' + str(j + 1):>8}" for j in range(n)) + "     avg")
        for i in range(n):
            row = "".join(f"{acc[i, j]:8.2f}" for j in range(n))
            lines.append(f"ctx {i + 1:<3} {row}{acc[i, : i + 1].mean():8.2f}")
        lines.append(
            f"final average accuracy: {self.mean:.2f} % +- {self.sem:.2f} (SEM)  "
            f"forgetting {np.mean(self.forgetting):.2f}  BWT {np.mean(self.bwt):.2f}"
        )
        lines.append(
            f"time: {self.train_seconds:.1f} s training, {self.compile_seconds:.1f} s compiling, "
            f"{self.iterations_per_second:.0f} it/s (all seeds together)"
        )
        return "\n".join(lines)


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as JSON through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write the results to {path}: {err.strerror or err}") from err
    return path
