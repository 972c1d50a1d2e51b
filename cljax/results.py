"""The result of a run: what the JSON file holds and the summary the terminal shows."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from cljax.presets import SCENARIO_NAMES


@dataclass
class RunResult:
    """Per-seed accuracy matrices (in %) and the metrics derived from them, and the trained model.

    ``model`` (a :class:`cljax.trained.TrainedModel`, not written to JSON) holds every seed's final state:
    ``result.predict(x, seed=...)``, ``result.params(seed)``, ``result.save_model(folder)``.
    """

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
    diverged: list[int | None] | None = None  # sweeps: per seed, the first context whose loss was not finite
    model: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the trained model, as JSON-ready values."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically (a crash never leaves a half-written result)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunResult:
        """A result written by :meth:`save` or ``cljax run --out`` (without the trained model)."""
        try:
            payload = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"load: no results file {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"load: {path} is not a cljax results file (invalid JSON: {err.msg})") from None
        if isinstance(payload, dict) and "runs" in payload:
            raise ValueError(
                f"load: {path} holds {len(payload['runs'])} runs; read them with cljax.plots.load_runs"
            )
        names = {f.name for f in fields(cls)} - {"model"}
        if not isinstance(payload, dict) or "acc_matrix" not in payload:
            raise ValueError(f"load: {path} is not a cljax results file (no acc_matrix)")
        return cls(**{k: v for k, v in payload.items() if k in names})

    def _trained(self) -> Any:
        if self.model is None:
            raise ValueError(
                "this result has no trained model (it was loaded from JSON); load a saved model with "
                "cljax.load_model(folder), or rerun"
            )
        return self.model

    @property
    def state(self) -> Any:
        """Every seed's final state (leading axis: seeds), as the strategy keeps it."""
        return self._trained().states

    def params(self, seed: int | None = None) -> Any:
        """The classifier's params after the last context (default: the first seed)."""
        return self._trained().params(seed)

    def predict(self, x: Any, seed: int | None = None, context: int | None = None) -> np.ndarray:
        """Predicted dataset classes of raw images (see :meth:`cljax.trained.TrainedModel.predict`)."""
        return self._trained().predict(x, seed, context)

    def save_model(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the trained model to the folder ``path``; ``cljax.load_model(path)`` reads it back."""
        return self._trained().save(path, overwrite)

    def summary(self) -> str:
        """A readable report: the mean accuracy matrix, final average accuracy and timing."""
        acc = np.asarray(self.acc_matrix).mean(axis=0)
        n = acc.shape[0]
        head = (
            f"{self.strategy} on {self.benchmark}, {SCENARIO_NAMES[self.scenario]}, {len(self.seeds)} seed(s)"
        )
        stream = self.config.get("stream")
        if stream is None:
            lines = [head, "accuracy (%) after training on context i (rows), tested on context j (columns):"]
        else:
            every = self.config["update_every"]
            head += f", task-free {stream} stream, consolidating every {every} iterations"
            lines = [head, f"accuracy (%) after i x {self.config['iters']} iterations of the stream (rows), "
                           "tested on context j (columns):"]  # fmt: skip
        lines.append("        " + "".join(f"{'ctx ' + str(j + 1):>8}" for j in range(n)) + "     avg")
        for i in range(n):
            row = "".join(f"{acc[i, j]:8.2f}" for j in range(n))
            seen = acc[i] if stream is not None else acc[i, : i + 1]  # a stream shows every context early
            lines.append(f"{'ctx' if stream is None else 'i =':<3} {i + 1:<3} {row}{seen.mean():8.2f}")
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
