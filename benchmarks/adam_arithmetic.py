"""Time cljax's training step with its Adam (PyTorch's arithmetic) against optax.adam.

cljax's :func:`cljax.optim.adam` folds Adam's bias corrections into two scalars, as torch.optim.Adam
does, so a parameter's update costs one square root and one division instead of optax.adam's one square
root and three divisions. This script builds each strategy's compiled split-MNIST Class-IL context
program with each optimizer and times them alternately in one process (the order flips every repeat).
Both start from the same state and draw the same batches; it also reports how far their mean losses over
the context drift apart. Results go to ``results/adam_arithmetic.json``.

    python -m benchmarks.adam_arithmetic --strategies none,dgr --repeats 12 --data-dir ../shared/data
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import optax

import cljax.optim
from benchmarks.context_program import alternate, compare, second_context, split_mnist


@contextmanager
def optax_adam() -> Iterator[None]:
    """Build strategies (classifier and generator) with optax.adam wherever cljax uses its own Adam."""
    saved = cljax.optim.adam
    cljax.optim.adam = optax.adam
    try:
        yield
    finally:
        cljax.optim.adam = saved


def mean_loss(program, args) -> float:
    """The mean training loss over the context the program trains."""
    return float(np.mean(np.asarray(program(*args)[1]["loss"])))


def measure(strategy: str, iters: int, repeats: int, data_dir: str | None) -> dict:
    """Alternating timings of both optimizers; milliseconds per iteration."""
    with optax_adam():
        theirs = second_context(split_mnist(strategy, iters, data_dir))
    programs = {"torch_arithmetic": second_context(split_mnist(strategy, iters, data_dir)), "optax": theirs}
    times = alternate(programs, iters, repeats)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    pairs = np.asarray(times["torch_arithmetic"]) / np.asarray(times["optax"])  # timed back to back
    losses = {name: mean_loss(*programs[name]) for name in programs}
    return {
        "iters": iters,
        "ms_per_iter": medians,
        "all_ms_per_iter": times,
        "ratio_torch_arithmetic_over_optax": medians["torch_arithmetic"] / medians["optax"],
        "median_ratio_of_pairs": float(np.median(pairs)),
        "mean_loss": losses,
    }


def describe(result: dict) -> str:
    ms, loss = result["ms_per_iter"], result["mean_loss"]
    return (
        f"PyTorch's arithmetic {ms['torch_arithmetic']:.3f} ms/iter, optax.adam {ms['optax']:.3f} ms/iter, "
        f"ratio {result['ratio_torch_arithmetic_over_optax']:.3f}, median ratio of back-to-back pairs "
        f"{result['median_ratio_of_pairs']:.3f}; mean loss {loss['torch_arithmetic']:.6f} against "
        f"{loss['optax']:.6f}"
    )


def main() -> None:
    compare(__doc__.splitlines()[0], "adam_arithmetic", 12, measure, describe)


if __name__ == "__main__":
    main()
