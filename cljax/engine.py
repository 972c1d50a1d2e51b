"""The one training loop: compile once, scan each context, evaluate, repeat, with seeds side by side.

Each context's training is a single XLA program: ``lax.scan`` over ``strategy.step`` followed by
``strategy.end_context``, mapped over seeds. Programs are compiled ahead of time, once per run, and the
context index is an argument, so every context and every seed reuses the same executable. Where JAX has
several CPU devices, the seed axis is sharded over them (:mod:`cljax.devices`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from cljax import metrics, optim
from cljax.batching import gather
from cljax.checkpoint import Checkpoints
from cljax.compilation import Program, compile_all, over_seeds
from cljax.config import ConfigError, RunConfig
from cljax.data import Dataset, load_dataset
from cljax.data.checks import check_dataset
from cljax.devices import placer, seed_sharding
from cljax.images import grid, write_png
from cljax.logs import MetricsLog
from cljax.losses import accuracy_counts
from cljax.models import check_logits_shape, model_from
from cljax.presets import Benchmark, get_benchmark
from cljax.results import RunResult
from cljax.scenarios import (
    Images,
    ScenarioInfo,
    Stream,
    make_stream,
    scenario_info,
    stack_streams,
    unit_classes,
)
from cljax.strategies import Setup, Strategy, get_strategy
from cljax.trained import TrainedModel


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def train_context(
    strategy: Strategy,
    iters: int,
    state: Any,
    images: Images,
    stream: Stream,
    context: jax.Array,
    key: jax.Array,
) -> tuple[Any, dict[str, jax.Array]]:
    """One seed's whole context: ``iters`` steps in a scan, then ``end_context``."""
    step_key, end_key = jax.random.split(key)

    def body(carry, k):
        return strategy.step(carry, images, stream, context, k)

    state, step_metrics = jax.lax.scan(body, state, jax.random.split(step_key, iters))
    return strategy.end_context(state, images, stream, context, end_key), step_metrics


def evaluate(
    strategy: Strategy,
    info: ScenarioInfo,
    state: Any,
    images: Images,
    stream: Stream,
    trained_upto: jax.Array,
) -> jax.Array:
    """Accuracy on every context's full test set after training on contexts 0..trained_upto.

    Task-IL evaluates each context on its own output units; Domain- and Class-IL on the units active in
    the last trained context.
    """
    slots = jnp.arange(stream.test_idx.shape[1])

    def one_context(j):
        ctx = jnp.full(slots.shape, j, jnp.int32)
        batch = gather(info, images, stream, ctx, slots, train=False)
        mask = stream.active[j] if info.task_il else stream.active[trained_upto]
        hits = accuracy_counts(strategy.predict(state, batch.x), batch.y, mask, slots < stream.test_n[j])
        return hits / stream.test_n[j]

    return jax.lax.map(one_context, jnp.arange(info.n_contexts))


@dataclass
class Experiment:
    """A prepared run: the data on the device, the streams of every seed and the strategy's functions."""

    config: RunConfig
    info: ScenarioInfo
    setup: Setup
    strategy: Strategy
    images: Images
    streams: Stream  # leading axis: seeds
    seeds: list[int]
    benchmark: Benchmark | None = None

    def programs(self) -> dict[str, Callable]:
        """The programs of this run over all seeds (leading axis), not yet compiled."""
        strategy, info, iters, n = self.strategy, self.info, self.setup.iters, len(self.seeds)
        return {
            "init": over_seeds(strategy.init, (0, None, 0), n),
            "train": over_seeds(
                lambda s, im, st, c, k: train_context(strategy, iters, s, im, st, c, k),
                (0, None, 0, None, 0),
                n,
            ),
            "evaluate": over_seeds(
                lambda s, im, st, c: evaluate(strategy, info, s, im, st, c), (0, None, 0, None), n
            ),
        }


def make_optimizer(config: RunConfig) -> optax.GradientTransformation:
    """Adam (0.9, 0.999) in PyTorch's arithmetic, as the reference; one optimizer for the run, never reset."""
    return optim.adam(config.lr, b1=0.9, b2=0.999)


def make_setup(config: RunConfig, info: ScenarioInfo, model: Any = None) -> Setup:
    """The static pieces of a resolved config: the network (checked to give n_out logits) and optimizer.

    ``model`` overrides ``config.model`` (a saved run whose network was a Python object).
    """
    spec = config.model if model is None else model
    try:
        module, _ = model_from(spec, info.n_out)
        check_logits_shape(module, info.input_shape, info.n_out)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    return Setup(
        info=info,
        model=module,
        optimizer=make_optimizer(config),
        batch_size=config.batch_size,
        iters=config.iters,
    )


def build_strategy(config: RunConfig | dict[str, Any], info: ScenarioInfo, model: Any = None) -> Strategy:
    """The strategy of a resolved config (or its ``to_dict()``, as saved with a model) for ``info``."""
    if isinstance(config, dict):
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        config = RunConfig(**{k: v for k, v in config.items() if k in fields and k != "benchmark"})
        if model is None and config.model is not None and not _registered_model(config.model):
            raise ConfigError(
                f"model: the run used the network {config.model!r}, which is not a registered model; "
                "pass it again: load_model(path, model=...)"
            )
    spec = get_strategy(config.strategy)
    setup = make_setup(config, info, model)
    return spec.build(setup, config.options)


def _registered_model(name: str) -> bool:
    from cljax.models import MODELS

    return name in MODELS


def load_data(bench: Benchmark, config: RunConfig, dataset: Dataset | None) -> Dataset:
    """The run's dataset, checked against the benchmark's protocol before anything compiles."""
    if dataset is None:
        source = bench.dataset
        if source is None:
            raise ConfigError(
                f"dataset: benchmark {bench.name!r} names no dataset; pass your arrays: "
                "cljax.run(..., dataset=cljax.Dataset(name, train_x, train_y, test_x, test_y, num_classes))"
            )
        dataset = (
            load_dataset(source, config.data_dir, download=config.download)
            if isinstance(source, str)
            else source()
        )
    return check_dataset(dataset, bench)


def prepare(config: RunConfig, dataset: Dataset | None = None) -> Experiment:
    """Validate the config, load and check the data (unless given, then only check) and build streams and
    strategy; every error is raised here, before anything compiles."""
    config = config.resolved()
    bench = get_benchmark(config.benchmark)
    spec = get_strategy(config.strategy)
    dataset = load_data(bench, config, dataset)
    info = scenario_info(bench, config.scenario, dataset.train_x.shape[1:])
    seeds = config.seed_list
    per_seed = [
        make_stream(
            bench,
            config.scenario,
            dataset.train_y,
            dataset.test_y,
            seed,
            config.class_il_active,
            dataset.num_classes,
        )
        for seed in seeds
    ]
    streams = stack_streams(per_seed)
    images = Images(
        *(jnp.asarray(a) for a in (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y))
    )
    setup = make_setup(config, info)
    try:
        strategy = spec.build(setup, config.options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return Experiment(config, info, setup, strategy, images, streams, seeds, bench)


def trained_model(exp: Experiment, states: Any) -> TrainedModel:
    """The final states of a run with what predicting on raw images needs."""
    bench = exp.benchmark or get_benchmark(exp.config.benchmark)

    def shapes(tree: Any, seed_axis: bool) -> dict[str, Any]:
        return {k: [list(v.shape[int(seed_axis) :]), str(v.dtype)] for k, v in tree._asdict().items()}

    return TrainedModel(
        config=exp.config.to_dict(),
        info=exp.info,
        strategy=exp.strategy,
        states=states,
        seeds=list(exp.seeds),
        image_shape=tuple(exp.images.train_x.shape[1:]),
        active=np.asarray(exp.streams.active),
        pixel_perm=np.asarray(exp.streams.pixel_perm),
        unit_classes=np.stack([unit_classes(bench, exp.config.scenario, s) for s in exp.seeds]),
        shapes={"images": shapes(exp.images, False), "stream": shapes(exp.streams, True)},
    )


def environment() -> dict[str, Any]:
    """Versions and hardware, so a table can be traced to how it was made."""
    import flax
    import jaxlib

    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "compilation_cache": bool(jax.config.jax_compilation_cache_dir),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def _cpu_model() -> str:
    """The CPU's marketing name where the system says it (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _check_finite(losses: np.ndarray, context: int, seeds: list[int]) -> None:
    bad = ~np.isfinite(losses)
    if bad.any():
        s, i = np.argwhere(bad)[0]
        raise NonFiniteLossError(
            f"the loss became {losses[s, i]} in context {context + 1}, iteration {i + 1} (seed {seeds[s]}); "
            "lower the learning rate (--lr) or the strategy's penalty strength"
        )


def _save_samples(exp: Experiment, states: Any, context: int, folder: Path) -> None:
    """A PNG grid of what the strategy's generator replays now, one file per seed."""
    key = jax.random.key(context)
    samples = jax.vmap(lambda s: exp.strategy.sample(s, key, 100))(states)
    for seed, images in zip(exp.seeds, np.asarray(samples), strict=True):
        write_png(folder / f"{exp.config.strategy}_seed{seed}_context{context + 1}.png", grid(images))


def execute(
    exp: Experiment,
    quiet: bool = False,
    save_samples: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    log_dir: str | os.PathLike | None = None,
) -> RunResult:
    """Compile the programs once, then train and evaluate context after context.

    ``save_samples``: a folder for PNG grids of the replayed samples after each context (generative replay).
    ``checkpoint_dir``: save everything after each context; with ``resume``, continue from the last one.
    ``log_dir``: per-context metrics as CSV (and TensorBoard events where available).
    """
    cfg, n_ctx = exp.config, exp.info.n_contexts
    if save_samples is not None:
        if exp.strategy.sample is None:
            raise ConfigError(f"save_samples: strategy {cfg.strategy!r} has no generator to sample from")
        Path(save_samples).mkdir(parents=True, exist_ok=True)
    if resume and checkpoint_dir is None:
        raise ConfigError("resume: needs --checkpoint-dir, the folder of the run to continue")
    checkpoints = Checkpoints(checkpoint_dir, cfg.to_dict(), resume) if checkpoint_dir is not None else None
    wall_start = time.perf_counter()
    by_seed = seed_sharding(len(exp.seeds))
    place = placer(by_seed)
    images, streams = place(exp.images, whole=True), place(exp.streams)
    base_keys = place(jax.vmap(jax.random.key)(jnp.asarray(exp.seeds, dtype=jnp.uint32)))
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(base_keys)

    def context_keys(c: int) -> jax.Array:
        return place(jax.vmap(lambda k: jax.random.fold_in(k, c + 1))(base_keys))

    def context_index(c: int) -> jax.Array:
        return place(jnp.asarray(c, jnp.int32), whole=True)

    progs = exp.programs()
    t0 = time.perf_counter()
    sharded = {} if by_seed is None else {"out_shardings": by_seed}
    init_jit = jax.jit(progs["init"], **sharded)
    state_shapes = jax.eval_shape(init_jit, init_keys, images, streams)  # with the seed sharding, if any
    c0 = context_index(0)
    init, train, evaluate_all = compile_all(
        [
            Program(lambda: init_jit.lower(init_keys, images, streams), runs_once=True),
            Program(
                lambda: jax.jit(progs["train"], donate_argnums=0, **sharded).lower(
                    state_shapes, images, streams, c0, context_keys(0)
                )
            ),
            Program(lambda: jax.jit(progs["evaluate"], **sharded).lower(state_shapes, images, streams, c0)),
        ]
    )
    compile_seconds = time.perf_counter() - t0
    states = init(init_keys, images, streams)

    progress = {
        "initial": np.asarray(evaluate_all(states, images, streams, c0)).tolist(),
        "rows": [],  # per context: (seeds, contexts) accuracies in [0, 1]
        "context_loss": [],  # per context: (seeds,)
        "train_seconds": 0.0,
    }
    start = 0
    if resume:
        restored = checkpoints.restore(states)
        if restored is not None:
            start, states, progress = restored
    log = (
        MetricsLog(
            log_dir,
            {"benchmark": cfg.benchmark_name, "scenario": cfg.scenario, "strategy": cfg.strategy},
            exp.seeds,
        )
        if log_dir is not None
        else None
    )
    bar = tqdm(
        total=n_ctx,
        initial=start,
        desc=f"{cfg.strategy} {cfg.benchmark_name} {cfg.scenario}",
        unit="ctx",
        disable=True if quiet else None,
        leave=False,
    )
    try:
        for c in range(start, n_ctx):
            ctx = context_index(c)
            t = time.perf_counter()
            states, step_metrics = train(states, images, streams, ctx, context_keys(c))
            losses = np.asarray(step_metrics["loss"])  # (seeds, iters); also waits for the context to finish
            elapsed = time.perf_counter() - t
            _check_finite(losses, c, exp.seeds)
            row = np.asarray(evaluate_all(states, images, streams, ctx))
            progress["train_seconds"] += elapsed
            progress["rows"].append(row.tolist())
            progress["context_loss"].append(losses.mean(axis=1).tolist())
            if checkpoints is not None:
                checkpoints.save(c + 1, states, progress)
            if log is not None:
                log.context(c, elapsed, losses.mean(axis=1), row)
            if save_samples is not None:
                _save_samples(exp, states, c, Path(save_samples))
            bar.set_postfix(
                loss=f"{losses[:, -100:].mean():.4f}",
                it_s=f"{cfg.iters / elapsed:.0f}",
                acc=f"{100 * row[:, : c + 1].mean():.1f}",
            )
            bar.update()
    finally:
        bar.close()
        if log is not None:
            log.close()
        if checkpoints is not None:
            checkpoints.close()

    acc = np.stack([np.asarray(r) for r in progress["rows"]], axis=1)  # (seeds, trained, tested)
    initial = np.asarray(progress["initial"])
    per_seed = [metrics.summarize(acc[s], initial[s]) for s in range(len(exp.seeds))]
    finals = [m["final_avg_acc"] for m in per_seed]
    mean, sem = metrics.mean_sem(finals)
    train_seconds = progress["train_seconds"]
    config_dict = cfg.to_dict()
    config_dict["wall_seconds"] = time.perf_counter() - wall_start
    return RunResult(
        benchmark=cfg.benchmark_name,
        scenario=cfg.scenario,
        strategy=cfg.strategy,
        seeds=exp.seeds,
        acc_matrix=(100 * acc).tolist(),
        initial_acc=(100 * initial).tolist(),
        final_avg_acc=finals,
        mean=mean,
        sem=sem,
        forgetting=[m["forgetting"] for m in per_seed],
        bwt=[m["bwt"] for m in per_seed],
        fwt=[m["fwt"] for m in per_seed],
        train_seconds=train_seconds,
        compile_seconds=compile_seconds,
        iterations_per_second=n_ctx * cfg.iters / train_seconds if train_seconds else 0.0,
        context_loss=np.asarray(progress["context_loss"]).T.tolist(),
        config=config_dict,
        environment={**environment(), "seed_devices": 1 if by_seed is None else by_seed.mesh.size},
        model=trained_model(exp, states),
    )


def run(
    config: RunConfig | None = None,
    *,
    quiet: bool = False,
    dataset: Dataset | None = None,
    save_samples: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    log_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> RunResult:
    """Run one strategy on one benchmark and scenario for every seed, side by side.

    >>> result = cljax.run(benchmark="split-mnist", scenario="class", strategy="none", seeds=5)
    >>> result.mean, result.sem
    """
    config = dataclasses.replace(config or RunConfig(), **overrides)
    return execute(
        prepare(config, dataset),
        quiet=quiet,
        save_samples=save_samples,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        log_dir=log_dir,
    )
