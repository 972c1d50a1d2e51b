"""Compiling the run's programs: backend-specific XLA options, seeds mapped or not, several at once.

On the CPU, XLA (jaxlib 0.10) hands dots *and* their neighbouring elementwise and reduction ops to its
YNNPACK library fusions. For the small MLPs of the split-MNIST protocol this is slower than leaving the
elementwise work to XLA's own loop fusions: the VAE's per-pixel loss became one slow library reduction, and
a DGR step took 17-18 ms instead of 15-16 ms (benchmarks/README.md). Limiting the library to individual
dots is a compile option of that executable only; where the option does not exist (another jaxlib), the
program is compiled with the defaults.

A program that runs once per run (the state's initialisation) is compiled with LLVM at -O1: it computes the
same values, bit for bit, and compiles in half the time, because -O3's loop passes spend most of a cold
compile on its random-number code (split-MNIST MLP: 0.56 s instead of 1.33 s; the VAE: 1.56 s instead of
2.46 s). The run's programs are lowered one after another and each is compiled in the background as soon as
it is lowered, so XLA compiles one while Python traces the next.

The command line also keeps compiled programs on disk (JAX's persistent compilation cache), so a repeated
run, or the next cell of a table with the same shapes, loads its programs instead of compiling them again.
JAX keeps that cache within its size limit only with the ``filelock`` package (a dependency of cljax); in
an environment without it the limit is left off, since JAX would otherwise read and write nothing and warn
at every compile.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh, PartitionSpec

from cljax.data.locate import cache_dir

CPU_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}

# Added for programs that run once: LLVM's -O1 instead of -O3 (bit-identical results, tests/test_engine.py).
CPU_RUN_ONCE_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 1}

COMPILE_CACHE_ENV = "CLJAX_COMPILE_CACHE"
COMPILE_CACHE_MAX_BYTES = 2**30
_DISABLED = {"0", "off", "no", "false", "none"}


def compilation_cache_dir() -> Path | None:
    """``$CLJAX_COMPILE_CACHE`` (a folder, or ``off``), else ``xla/`` in cljax's cache folder."""
    value = os.environ.get(COMPILE_CACHE_ENV, "").strip()
    if value.lower() in _DISABLED:
        return None
    return Path(value).expanduser() if value else cache_dir() / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Keep compiled programs in ``path`` (default :func:`compilation_cache_dir`) across processes.

    Without ``path``, a cache set up through JAX itself (``JAX_COMPILATION_CACHE_DIR``) is left as it is.
    Returns the folder in use, or None when the cache is off. Programs compiled before the call are not
    kept. Only programs of the same jaxlib, backend and compile options are reused: the key covers them.
    """
    configured = jax.config.jax_compilation_cache_dir
    if path is None and configured:
        return Path(configured)
    folder = Path(path) if path is not None else compilation_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile every time rather than fail the run
    compilation_cache.reset_cache()  # forget an earlier "no cache" decision, so the folder takes effect
    compilation_cache.set_cache_dir(str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", cache_size_limit())
    return folder


def cache_size_limit() -> int:
    """:data:`COMPILE_CACHE_MAX_BYTES`, or -1 (no limit) without ``filelock``, which JAX needs for a limit."""
    return COMPILE_CACHE_MAX_BYTES if importlib.util.find_spec("filelock") is not None else -1


def compiler_options(runs_once: bool = False) -> dict[str, Any]:
    """The options cljax compiles with on the current default backend (more for a program run once)."""
    if jax.default_backend() != "cpu":
        return {}
    return {**CPU_COMPILER_OPTIONS, **(CPU_RUN_ONCE_OPTIONS if runs_once else {})}


def compile_lowered(lowered: jax.stages.Lowered, runs_once: bool = False) -> jax.stages.Compiled:
    """Compile with :func:`compiler_options`, falling back to XLA's defaults if this jaxlib rejects them."""
    options = compiler_options(runs_once)
    if options:
        try:
            return lowered.compile(compiler_options=options)
        except jax.errors.JaxRuntimeError as err:
            if "INVALID_ARGUMENT" not in str(err):
                raise
    return lowered.compile()


@dataclass(frozen=True)
class Program:
    """A program to compile: how to lower it, and whether it runs only once per run."""

    lower: Callable[[], jax.stages.Lowered]
    runs_once: bool = False


def compile_all(programs: Sequence[Program]) -> list[jax.stages.Compiled]:
    """Lower the programs in the order given, each compiled in the background as soon as it is lowered.

    XLA compiles outside the GIL, so the first program compiles while Python traces the next.
    """
    with ThreadPoolExecutor(max_workers=len(programs)) as pool:
        pending = [pool.submit(compile_lowered, program.lower(), program.runs_once) for program in programs]
        return [future.result() for future in pending]


def over_seeds(fn: Callable[..., Any], in_axes: tuple[int | None, ...], n_seeds: int) -> Callable[..., Any]:
    """``fn`` per seed: ``jax.vmap`` for several seeds; for one, the seed axis is dropped and put back.

    Both give the same results; a single seed's program then has no batched dots, which XLA's CPU backend
    runs a few per cent faster.
    """
    if n_seeds != 1:
        return jax.vmap(fn, in_axes=in_axes)
    return _one_run(fn, in_axes)


def _one_run(fn: Callable[..., Any], in_axes: tuple[int | None, ...]) -> Callable[..., Any]:
    """``fn`` on a run axis of length one: dropped before, put back after (no batched products)."""

    def single(*args):
        args = [
            a if axis is None else jax.tree.map(lambda x: x[0], a)
            for a, axis in zip(args, in_axes, strict=True)
        ]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return single


def one_after_another(
    fn: Callable[..., Any], in_axes: tuple[int | None, ...], n_runs: int
) -> Callable[..., Any]:
    """``fn`` per run, the runs computed one after another (``lax.map``), each with unbatched products.

    Every run then computes exactly what it computes alone, however many runs share the device.
    """
    if n_runs == 1:
        return _one_run(fn, in_axes)
    mapped = [i for i, axis in enumerate(in_axes) if axis is not None]

    def sequential(*args):
        def one(xs):
            full = list(args)
            for i, x in zip(mapped, xs, strict=True):
                full[i] = x
            return fn(*full)

        return jax.lax.map(one, [args[i] for i in mapped])

    return sequential


def over_runs(
    fn: Callable[..., Any], in_axes: tuple[int | None, ...], n_runs: int, mesh: Mesh | None = None
) -> Callable[..., Any]:
    """``fn`` over the leading run axis of its ``in_axes == 0`` arguments, laid out for the backend.

    On an accelerator the runs are one batch (``jax.vmap``), which the devices' sharding splits. On the CPU
    each device computes its runs one after another (:func:`one_after_another`; inside ``jax.shard_map``
    when the runs are sharded over host devices, ``mesh``). Batched products round differently from a run
    computed alone, and over thousands of steps such differences grow to points of accuracy; unbatched, a
    run of a sweep or of several seeds computes what it computes beside any other runs, and for the small
    products of the split-MNIST protocol batching gains nothing on a CPU (benchmarks/README.md).
    """
    if jax.default_backend() != "cpu":
        return over_seeds(fn, in_axes, n_runs)
    if mesh is None:
        return one_after_another(fn, in_axes, n_runs)
    local = math.ceil(n_runs / mesh.size)
    runs = PartitionSpec(mesh.axis_names)
    return jax.shard_map(
        one_after_another(fn, in_axes, local),
        mesh=mesh,
        in_specs=tuple(PartitionSpec() if axis is None else runs for axis in in_axes),
        out_specs=runs,
        check_vma=False,
    )
