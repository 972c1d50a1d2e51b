"""The engine's compiled program for one split-MNIST Class-IL context of one seed, to time a step with."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from cljax.compilation import compile_lowered
from cljax.config import RunConfig
from cljax.data import Dataset
from cljax.engine import Experiment, environment, prepare

RESULTS = Path(__file__).parent / "results"


def split_mnist(
    strategy: str, iters: int, data_dir: str | None, dataset: Dataset | None = None
) -> Experiment:
    """A one-seed split-MNIST Class-IL run of ``strategy`` with ``iters`` steps per context, prepared."""
    config = RunConfig(
        benchmark="split-mnist", scenario="class", strategy=strategy, seeds=1, iters=iters, data_dir=data_dir
    )
    return prepare(config, dataset)


def compiled_context(exp: Experiment) -> tuple[jax.stages.Compiled, dict[int, tuple[Any, ...]]]:
    """The compiled context program (as the engine compiles it, without donation, so that it can be timed
    again and again on the same state) and its arguments for context indices 0 and 1."""
    programs = exp.programs()
    keys = jax.vmap(jax.random.key)(jnp.asarray(exp.seeds, dtype=jnp.uint32))
    state = jax.jit(programs["init"])(keys, exp.images, exp.streams, exp.hparams)
    args = {c: (state, exp.images, exp.streams, jnp.asarray(c, jnp.int32), keys, exp.hparams) for c in (0, 1)}
    return compile_lowered(jax.jit(programs["train"]).lower(*args[0])), args


def second_context(exp: Experiment) -> tuple[jax.stages.Compiled, tuple[Any, ...]]:
    """The compiled context program with its inputs for the second context, where replaying strategies
    replay (the first has nothing to replay)."""
    train, args = compiled_context(exp)
    return train, args[1]


def seconds(program: Any, args: tuple[Any, ...]) -> float:
    """Wall time of one call of ``program`` on ``args``, until its results are ready."""
    start = time.perf_counter()
    jax.block_until_ready(program(*args))
    return time.perf_counter() - start


def alternate(
    programs: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]], iters: int, repeats: int
) -> dict[str, list[float]]:
    """Milliseconds per iteration of each ``(program, args)``, timed in turn ``repeats`` times.

    The order flips every repeat, so a machine that slows down for a while slows every variant alike.
    """
    times: dict[str, list[float]] = {name: [] for name in programs}
    for r in range(repeats):
        for name in list(programs)[:: 1 if r % 2 == 0 else -1]:
            times[name].append(seconds(*programs[name]) / iters * 1e3)
    return times


def step_timing_arguments(
    description: str, name: str, repeats: int, other_iters: int
) -> argparse.ArgumentParser:
    """The options of a script that times steps: strategies, steps per timing, repeats, data and output.

    ``name``: the default output, ``results/<name>.json``; ``other_iters``: the default steps per timing for
    strategies other than ``none``, whose steps are slower.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--strategies", default="none,dgr")
    parser.add_argument(
        "--iters", type=int, default=None, help=f"steps per timing (default: none 1000, others {other_iters})"
    )
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(RESULTS / f"{name}.json"))
    parser.set_defaults(other_iters=other_iters)
    return parser


def steps_per_timing(args: argparse.Namespace, strategy: str) -> int:
    """``--iters`` if given, else 1000 steps of ``none`` or the script's default for slower strategies."""
    return args.iters or (1000 if strategy == "none" else args.other_iters)


def write_results(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Write the results, their repeats and the environment they were measured in to ``--out``."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"repeats": args.repeats, "results": results, "environment": environment()}
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


def compare(
    description: str,
    name: str,
    repeats: int,
    measure: Callable[[str, int, int, str | None], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
) -> None:
    """What a script comparing variants of a step runs: ``measure(strategy, iters, repeats, data_dir)``
    for each strategy asked for, a line of ``describe(result)`` each, then the results to ``--out``."""
    args = step_timing_arguments(description, name, repeats, other_iters=300).parse_args()
    results = {}
    for strategy in args.strategies.split(","):
        results[strategy] = measure(strategy, steps_per_timing(args, strategy), args.repeats, args.data_dir)
        print(f"{strategy}: {describe(results[strategy])} (medians of {args.repeats})", flush=True)
    write_results(args, results)
