"""The engine's compiled program for one split-MNIST Class-IL context of one seed, to time a step with."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cljax.compilation import compile_lowered
from cljax.config import RunConfig
from cljax.data import Dataset
from cljax.engine import Experiment, prepare


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
    state = jax.jit(programs["init"])(keys, exp.images, exp.streams)
    args = {c: (state, exp.images, exp.streams, jnp.asarray(c, jnp.int32), keys) for c in (0, 1)}
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
