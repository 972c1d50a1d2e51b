"""Split MNIST (shared/PROTOCOL.md) in eager PyTorch: train 5 contexts, test every context after each.

    python -m benchmarks.torch_reference.split_mnist --strategy er --data-dir ../shared/data

The data come from ``cljax.data.load_dataset`` so that cljax and this reference see the same arrays.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .data import N_CONTEXTS, SCENARIOS, SplitMNIST
from .strategies import STRATEGIES, Hyper, Strategy


@dataclass(frozen=True)
class TorchConfig:
    """One run of the reference: a strategy, a scenario, one seed and the protocol's settings."""

    strategy: str = "none"
    scenario: str = "class"
    seed: int = 0
    iters: int = 2000
    device: str = "auto"  # "auto": CUDA when available, else the CPU
    warmup_iters: int = 20  # the first iterations of each context, timed apart from the steady state
    hyper: Hyper = field(default_factory=Hyper)

    def check(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of: {', '.join(SCENARIOS)}")
        if self.iters < 1:
            raise ValueError(f"iters: must be a positive integer, got {self.iters}")


@dataclass
class TorchResult:
    """Accuracies (in %) and timings of one run; the fields mirror cljax's ``RunResult``."""

    strategy: str
    scenario: str
    seed: int
    acc_matrix: list[list[float]]  # row i: after context i; column j: tested on context j
    final_avg_acc: float
    context_loss: list[float]  # mean training loss of each context
    train_seconds: float  # all training iterations and end_context calls, evaluation excluded
    warmup_seconds: float  # train_seconds beyond what the steady-state rate would take (compilation, caches)
    iterations_per_second: float  # steady state: iterations after each context's first warmup_iters
    wall_seconds: float  # the whole run: moving data to the device, training, evaluation
    config: dict[str, Any]
    environment: dict[str, Any]

    def summary(self) -> str:
        acc = np.asarray(self.acc_matrix)
        lines = [
            f"torch {self.strategy}, {self.scenario}-IL, seed {self.seed}: "
            "accuracy (%) after context i (rows) on context j (columns)"
        ]
        for i, row in enumerate(acc):
            lines.append(
                f"ctx {i + 1}  " + "".join(f"{a:8.2f}" for a in row) + f"   avg {row[: i + 1].mean():.2f}"
            )
        lines.append(
            f"final average accuracy {self.final_avg_acc:.2f} %; "
            f"{self.iterations_per_second:.0f} it/s steady, warm-up {self.warmup_seconds:.1f} s, "
            f"train {self.train_seconds:.1f} s, wall {self.wall_seconds:.1f} s"
        )
        return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device (timings must not stop while kernels are still queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(strategy: Strategy, data: SplitMNIST) -> list[float]:
    """Accuracy (%) on every context's test set; Task-IL on each context's own units, else on all."""
    accs = []
    for j in range(N_CONTEXTS):
        x, y = data.test_set(j)
        logits = strategy.predict(x)[:, data.units(j)]
        accs.append(100.0 * (logits.argmax(dim=1) == y).float().mean().item())
    return accs


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware of the run."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def run(config: TorchConfig, dataset) -> TorchResult:
    """Train ``config.strategy`` on split MNIST from ``dataset`` (a ``cljax.data.Dataset``)."""
    config.check()
    wall_start = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    data = SplitMNIST.build(dataset, config.scenario, config.seed, device)
    strategy = STRATEGIES[config.strategy](data, config.hyper, generator)
    warmup = min(config.warmup_iters, config.iters - 1)

    rows, context_loss = [], []
    train_seconds = steady_seconds = 0.0
    for t in range(N_CONTEXTS):
        total = torch.zeros((), device=device)
        synchronize(device)
        start = time.perf_counter()
        steady_start = start
        for i in range(config.iters):
            if i == warmup:
                synchronize(device)
                steady_start = time.perf_counter()
            total += strategy.step(t)
        strategy.end_context(t)
        synchronize(device)
        end = time.perf_counter()
        train_seconds += end - start
        steady_seconds += end - steady_start
        loss = total.item() / config.iters
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} in context {t + 1}")
        context_loss.append(loss)
        rows.append(evaluate(strategy, data))

    steady_iters = N_CONTEXTS * (config.iters - warmup)
    rate = steady_iters / steady_seconds if steady_seconds > 0 else float("nan")
    acc = np.asarray(rows)
    return TorchResult(
        strategy=config.strategy,
        scenario=config.scenario,
        seed=config.seed,
        acc_matrix=acc.tolist(),
        final_avg_acc=float(acc[-1].mean()),
        context_loss=context_loss,
        train_seconds=train_seconds,
        warmup_seconds=max(0.0, train_seconds - N_CONTEXTS * config.iters / rate),
        iterations_per_second=rate,
        wall_seconds=time.perf_counter() - wall_start,
        config={**asdict(config), "device": str(device)},
        environment=environment(device),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="none", choices=sorted(STRATEGIES))
    parser.add_argument("--scenario", default="class", choices=SCENARIOS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward passes and losses")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    from cljax.data import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TorchConfig(
        strategy=args.strategy,
        scenario=args.scenario,
        seed=args.seed,
        iters=args.iters,
        device=args.device,
        hyper=Hyper(compile=args.compile),
    )
    print(run(config, load_dataset("mnist", args.data_dir)).summary())


if __name__ == "__main__":
    main()
