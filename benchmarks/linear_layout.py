"""Time cljax's training step with torch's (out, in) Linear weights against Flax's (in, out) kernels.

cljax's :class:`~cljax.models.layers.Linear` keeps its weight as torch.nn.Linear does, (out, in), and
computes ``x @ w.T``. This script builds each strategy's compiled context program twice, once with that
layer and once with an otherwise identical (in, out) layer, and times them alternately in one process
(the order flips every repeat, so a machine that slows down affects both alike). Both start from the
same initial values. It prints the medians and their ratio and writes them to
``results/linear_layout.json``.

    python -m benchmarks.linear_layout --strategies none,dgr --repeats 8 --data-dir ../shared/data
"""

from __future__ import annotations

from contextlib import contextmanager

import flax.linen as nn
import jax
import numpy as np

import cljax.models.classifiers
import cljax.models.generators
from benchmarks.context_program import alternate, compare, second_context, split_mnist
from cljax.models.layers import torch_uniform


class InOutLinear(nn.Module):
    """cljax's Linear with Flax's (in, out) kernel: the same values, ``x @ kernel + b``."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        y = x @ self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
        if self.use_bias:
            y = y + self.param("bias", torch_uniform(fan_in), (self.features,))
        return y


@contextmanager
def in_out_layers():
    """Build models with :class:`InOutLinear` wherever cljax's models use ``Linear``."""
    modules = (cljax.models.classifiers, cljax.models.generators)
    saved = [m.Linear for m in modules]
    for m in modules:
        m.Linear = InOutLinear
    try:
        yield
    finally:
        for m, linear in zip(modules, saved, strict=True):
            m.Linear = linear


def measure(strategy: str, iters: int, repeats: int, data_dir: str | None) -> dict:
    """Alternating timings of both layouts; milliseconds per iteration."""
    with in_out_layers():
        in_out = second_context(split_mnist(strategy, iters, data_dir))
    programs = {"out_in": second_context(split_mnist(strategy, iters, data_dir)), "in_out": in_out}
    times = alternate(programs, iters, repeats)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "iters": iters,
        "ms_per_iter": medians,
        "all_ms_per_iter": times,
        "ratio_out_in_over_in_out": medians["out_in"] / medians["in_out"],
    }


def describe(result: dict) -> str:
    ms = result["ms_per_iter"]
    return (
        f"(out, in) {ms['out_in']:.3f} ms/iter, (in, out) {ms['in_out']:.3f} ms/iter, "
        f"ratio {result['ratio_out_in_over_in_out']:.3f}"
    )


def main() -> None:
    compare(__doc__.splitlines()[0], "linear_layout", 8, measure, describe)


if __name__ == "__main__":
    main()
