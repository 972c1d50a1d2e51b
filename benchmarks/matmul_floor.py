"""How close a strategy's training step comes to its matrix products alone on this machine.

The split-MNIST step is almost all matrix products. This script collects every ``dot_general`` of one
strategy's step from its jaxpr (one seed; the forward pass, the backward pass and any frozen model), times
each product alone, compiled with cljax's options, and puts their sum beside the time of the engine's
compiled context program. The sum is a floor: however the rest of the step (sampling, losses, Adam, the
threads handing work to each other) is written, the step cannot be faster than its products run one
after another at the speed they reach alone. The script also says what a whole run would take at
that floor, which tells whether a time target is within reach of this machine.

A ``lax.cond`` counts with its costliest branch for the steady state (DGR replays from the second
context on) and with its cheapest for the first context. All timings alternate in one process, so
a host that slows down slows every measurement alike; the figures are medians.

    python -m benchmarks.matmul_floor --strategies none,dgr --data-dir ../shared/data
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from benchmarks.context_program import (
    compiled_context,
    seconds,
    split_mnist,
    step_timing_arguments,
    steps_per_timing,
    write_results,
)
from cljax.compilation import compile_lowered
from cljax.config import RunConfig
from cljax.data import Dataset
from cljax.engine import Experiment


class Dot(NamedTuple):
    """One matrix product of the step: operand shapes, dtypes and dimension numbers."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    dtype: str
    dimension_numbers: tuple

    @property
    def flops(self) -> int:
        """2 x the multiply-adds: batch x lhs-free x rhs-free x contracted sizes."""
        (lc, rc), (lb, rb) = self.dimension_numbers
        lhs_free = [n for i, n in enumerate(self.lhs) if i not in lc and i not in lb]
        rhs_free = [n for i, n in enumerate(self.rhs) if i not in rc and i not in rb]
        sizes = [self.lhs[i] for i in lb] + lhs_free + rhs_free + [self.lhs[i] for i in lc]
        return 2 * math.prod(sizes)

    def label(self) -> str:
        (lc, rc), (lb, _) = self.dimension_numbers
        batch = f" batch {list(lb)}" if lb else ""
        return f"{list(self.lhs)} x {list(self.rhs)} contracting {list(lc)}/{list(rc)}{batch}"


def _subjaxprs(value: Any) -> list[Jaxpr]:
    if isinstance(value, ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _subjaxprs(v)]
    return []


def _fold_transpose(dot: Dot, side: int, shape: tuple[int, ...], perm: tuple[int, ...]) -> Dot:
    """``dot`` reading the un-transposed operand, as XLA folds a transpose into the product."""
    (lc, rc), (lb, rb) = dot.dimension_numbers
    contracting, batch = [list(lc), list(rc)], [list(lb), list(rb)]
    contracting[side] = [perm[i] for i in contracting[side]]
    batch[side] = [perm[i] for i in batch[side]]
    operands = [dot.lhs, dot.rhs]
    operands[side] = shape
    dims = ((tuple(contracting[0]), tuple(contracting[1])), (tuple(batch[0]), tuple(batch[1])))
    return Dot(operands[0], operands[1], dot.dtype, dims)


def collect_dots(jaxpr: Jaxpr, costly: bool = True) -> list[Dot]:
    """Every ``dot_general`` the jaxpr runs, nested calls included; for a ``cond`` the costliest branch
    (``costly``) or the cheapest. Loops with a known length (``scan``) count their body that many times.
    An operand that is a transpose (``x @ w.T``) is read in its stored layout, as XLA compiles it."""
    dots: list[Dot] = []
    transposed: dict[Any, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "transpose" and not isinstance(eqn.invars[0], Literal):
            transposed[eqn.outvars[0]] = (eqn.invars[0].aval.shape, tuple(eqn.params["permutation"]))
        elif name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            dot = Dot(lhs.shape, rhs.shape, str(lhs.dtype), eqn.params["dimension_numbers"])
            for side, var in enumerate(eqn.invars):
                if not isinstance(var, Literal) and var in transposed:
                    dot = _fold_transpose(dot, side, *transposed[var])
            dots.append(dot)
        elif name == "cond":
            branches = [collect_dots(b, costly) for b in _subjaxprs(eqn.params["branches"])]
            cost = [sum(d.flops for d in b) for b in branches]
            dots += branches[cost.index(max(cost) if costly else min(cost))]
        elif name == "scan":
            dots += collect_dots(eqn.params["jaxpr"].jaxpr, costly) * eqn.params["length"]
        else:
            for sub in (j for v in eqn.params.values() for j in _subjaxprs(v)):
                dots += collect_dots(sub, costly)
    return dots


def step_jaxpr(exp: Experiment) -> Jaxpr:
    """The jaxpr of one seed's training step (first seed), context index traced."""
    stream = jax.tree.map(lambda a: a[0], exp.streams)
    key = jax.random.key(0)
    state = jax.eval_shape(exp.strategy.init, key, exp.images, stream)

    def step(state, context, key):
        return exp.strategy.step(state, exp.images, stream, context, key)

    return jax.make_jaxpr(step)(state, jnp.asarray(1, jnp.int32), key).jaxpr


# The context index each phase of a step is timed at: the first context, and the second for the later ones.
PHASE_CONTEXT = {"first": 0, "later": 1}


def step_dots(exp: Experiment) -> dict[str, list[Dot]]:
    """The products of the first context's step (cheapest branches) and of the later ones (costliest)."""
    jaxpr = step_jaxpr(exp)
    return {"first": collect_dots(jaxpr, costly=False), "later": collect_dots(jaxpr, costly=True)}


def dot_program(dot: Dot, length: int):
    """A compiled scan of ``length`` products of ``dot``'s shapes, each feeding the next (nothing to hoist
    or to drop), and its two operands."""
    kl, kr = jax.random.split(jax.random.key(0))
    a = jax.random.normal(kl, dot.lhs, dot.dtype)
    b = jax.random.normal(kr, dot.rhs, dot.dtype)

    def repeated(a, b):
        def body(carry, _):
            a, _ = carry
            c = lax.dot_general(a, b, dot.dimension_numbers)
            corner = (0,) * a.ndim
            return (a.at[corner].add(c[(0,) * c.ndim] * 1e-30), c), None

        c0 = jnp.zeros(jax.eval_shape(lambda: lax.dot_general(a, b, dot.dimension_numbers)).shape, a.dtype)
        return lax.scan(body, (a, c0), None, length=length)[0]

    return compile_lowered(jax.jit(repeated).lower(a, b)), (a, b)


def measure(
    strategy: str, iters: int, dot_length: int, repeats: int, data_dir: str | None, dataset: Dataset | None
) -> dict[str, Any]:
    """Step times and matmul floors of one strategy (split MNIST, Class-IL, one seed), in milliseconds."""
    exp = split_mnist(strategy, iters, data_dir, dataset)
    dots = step_dots(exp)
    counts = {phase: Counter(phase_dots) for phase, phase_dots in dots.items()}
    distinct = sorted(set(dots["first"]) | set(dots["later"]), key=lambda d: -d.flops)
    train, args = compiled_context(exp)
    dot_programs = {d: dot_program(d, dot_length) for d in distinct}
    step_s: dict[str, list[float]] = {"first": [], "later": []}
    dot_s: dict[Dot, list[float]] = {d: [] for d in distinct}
    for r in range(repeats):
        for phase in ("first", "later")[:: 1 if r % 2 == 0 else -1]:
            step_s[phase].append(seconds(train, args[PHASE_CONTEXT[phase]]) / iters)
        for d in distinct[:: 1 if r % 2 == 0 else -1]:
            dot_s[d].append(seconds(*dot_programs[d]) / dot_length)
    dot_ms = {d: 1e3 * float(np.median(t)) for d, t in dot_s.items()}
    phases = {}
    for phase in ("first", "later"):
        floor = sum(dot_ms[d] * n for d, n in counts[phase].items())
        step = 1e3 * float(np.median(step_s[phase]))
        gflop = sum(d.flops for d in dots[phase]) / 1e9
        phases[phase] = {
            "step_gflop_in_dots": gflop,
            "matmul_floor_ms": floor,
            "step_ms": step,
            "floor_over_step": floor / step,
            "dots_gflop_per_s": gflop / floor * 1e3,
            "step_gflop_per_s": gflop / step * 1e3,
            "all_step_ms": [1e3 * t for t in step_s[phase]],
        }
    n_ctx, run_iters = exp.info.n_contexts, RunConfig(benchmark="split-mnist").resolved().iters
    per_run = {
        key: run_iters * (phases["first"][key] + (n_ctx - 1) * phases["later"][key]) / 1e3
        for key in ("matmul_floor_ms", "step_ms")
    }
    return {
        "strategy": strategy,
        "timed_iters": iters,
        "dot_length": dot_length,
        "phases": phases,
        "dots": [
            {
                "shape": d.label(),
                "gflop": d.flops / 1e9,
                "ms": dot_ms[d],
                "gflop_per_s": d.flops / dot_ms[d] / 1e6,
                "per_step": {phase: counts[phase][d] for phase in phases},
            }
            for d in distinct
        ],
        "run_iters_per_context": run_iters,
        "run_seconds_at_matmul_floor": per_run["matmul_floor_ms"],
        "run_seconds_at_measured_step": per_run["step_ms"],
    }


def summary(result: dict[str, Any]) -> str:
    lines = [f"{result['strategy']}:"]
    for phase, p in result["phases"].items():
        context = "first context" if phase == "first" else "later contexts"
        lines.append(
            f"  {context}: {p['step_gflop_in_dots']:.3f} GFLOP in products; products alone "
            f"{p['matmul_floor_ms']:.3f} ms ({p['dots_gflop_per_s']:.0f} GFLOP/s), "
            f"whole step {p['step_ms']:.3f} ms ({p['step_gflop_per_s']:.0f} GFLOP/s): "
            f"the products are {100 * p['floor_over_step']:.0f} % of it"
        )
    for d in result["dots"]:
        lines.append(f"    {d['shape']:55s} {1e3 * d['ms']:8.1f} us {d['gflop_per_s']:5.0f} GFLOP/s")
    lines.append(
        f"  a run of {result['run_iters_per_context']} iterations per context: "
        f"{result['run_seconds_at_matmul_floor']:.1f} s at the matmul floor, "
        f"{result['run_seconds_at_measured_step']:.1f} s at the measured step (training only)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = step_timing_arguments(__doc__.splitlines()[0], "matmul_floor", repeats=7, other_iters=200)
    parser.add_argument("--dot-length", type=int, default=200, help="products per timing of one product")
    args = parser.parse_args()
    results = {}
    for strategy in args.strategies.split(","):
        iters = steps_per_timing(args, strategy)
        results[strategy] = measure(strategy, iters, args.dot_length, args.repeats, args.data_dir, None)
        print(summary(results[strategy]), flush=True)
    write_results(args, results)


if __name__ == "__main__":
    main()
