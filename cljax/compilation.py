"""Compiling the run's programs: backend-specific XLA options, seeds mapped or not, several at once.

On the CPU, XLA (jaxlib 0.10) hands dots *and* their neighbouring elementwise and reduction ops to its
YNNPACK library fusions. For the small MLPs of the split-MNIST protocol this is slower than leaving the
elementwise work to XLA's own loop fusions: the VAE's per-pixel loss became one slow library reduction, and
a DGR step took 17-18 ms instead of 15-16 ms (benchmarks/README.md). Limiting the library to individual
dots is a compile option of that executable only; where the option does not exist (another jaxlib), the
program is compiled with the defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax

CPU_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


def compiler_options() -> dict[str, str]:
    """The options cljax compiles with on the current default backend."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def compile_lowered(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """Compile with :func:`compiler_options`, falling back to XLA's defaults if this jaxlib rejects them."""
    options = compiler_options()
    if options:
        try:
            return lowered.compile(compiler_options=options)
        except jax.errors.JaxRuntimeError as err:
            if "INVALID_ARGUMENT" not in str(err):
                raise
    return lowered.compile()


def compile_all(lowered: Sequence[jax.stages.Lowered]) -> list[jax.stages.Compiled]:
    """Compile several programs concurrently (XLA compiles outside the GIL), in the order given."""
    with ThreadPoolExecutor(max_workers=len(lowered)) as pool:
        return list(pool.map(compile_lowered, lowered))


def over_seeds(fn: Callable[..., Any], in_axes: tuple[int | None, ...], n_seeds: int) -> Callable[..., Any]:
    """``fn`` per seed: ``jax.vmap`` for several seeds; for one, the seed axis is dropped and put back.

    Both give the same results; a single seed's program then has no batched dots, which XLA's CPU backend
    runs a few per cent faster.
    """
    if n_seeds != 1:
        return jax.vmap(fn, in_axes=in_axes)

    def single(*args):
        args = [
            a if axis is None else jax.tree.map(lambda x: x[0], a)
            for a, axis in zip(args, in_axes, strict=True)
        ]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return single
