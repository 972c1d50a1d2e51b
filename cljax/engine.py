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
from jax.sharding import Mesh
from tqdm.auto import tqdm

from cljax import metrics, optim
from cljax.batching import gather
from cljax.checkpoint import Checkpoints
from cljax.compilation import Program, compile_all, over_runs
from cljax.config import ConfigError, RunConfig
from cljax.data import Dataset, load_dataset
from cljax.data.checks import check_dataset
from cljax.devices import gather_runs, gatherer, placer, seed_sharding
from cljax.hyper import is_number
from cljax.images import grid, write_png
from cljax.logs import MetricsLog
from cljax.losses import accuracy_counts
from cljax.models import check_logits_shape, fast_convolutions, model_from
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
from cljax.strategies import Setup, Strategy, StrategySpec, get_strategy
from cljax.task_free import check_stream, stream_probabilities, train_segment
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


Hyper = dict[str, jax.Array]  # continuous hyperparameters by name, each with a leading run axis


@dataclass
class Experiment:
    """A prepared run: the data on the device, the streams of every run and the strategy's functions.

    The runs are ``configs`` x ``seeds`` (configuration-major): one configuration and its seeds for
    ``cljax.run``, several for a sweep. ``hparams`` holds, per run, the continuous hyperparameters the
    programs take as inputs (the learning rate and the strategy's declared ``hyperparameters``), so that
    runs differing only in them share one compiled program.
    """

    config: RunConfig
    info: ScenarioInfo
    setup: Setup
    strategy: Strategy
    images: Images
    streams: Stream  # leading axis: runs
    seeds: list[int]
    benchmark: Benchmark | None = None
    hparams: Hyper | None = None
    configs: list[RunConfig] | None = None  # one per group of len(seeds) runs; None: [config]
    spec: StrategySpec | None = None
    built: Strategy | None = None  # the strategy prepare built; another one in ``strategy`` is a user's
    convs: list[Any] | None = None  # each seed's frozen pre-trained conv layers (features benchmarks)
    conv_records: list[dict[str, Any]] | None = None  # how each seed's set was made (its record.json)

    @property
    def run_configs(self) -> list[RunConfig]:
        return self.configs if self.configs is not None else [self.config]

    @property
    def n_runs(self) -> int:
        return len(self.run_configs) * len(self.seeds)

    @property
    def run_seeds(self) -> list[int]:
        return [seed for _ in self.run_configs for seed in self.seeds]

    def strategy_of(self) -> Callable[[Hyper], Strategy]:
        """``h -> Strategy`` for the programs: built inside their trace, so ``h``'s values are inputs.

        A strategy a user put in place of the built one is used as it is (its values are constants).
        """
        spec = self.spec
        if spec is None or self.hparams is None or self.strategy is not self.built:
            return lambda h: self.strategy
        setup, options = self.setup, dict(self.config.options)

        def build(h: Hyper) -> Strategy:
            traced_setup = setup._replace(optimizer=adam_for(h["lr"]))
            return spec.build(traced_setup, {**options, **{k: v for k, v in h.items() if k != "lr"}})

        return build

    def programs(self, mesh: Mesh | None = None) -> dict[str, Callable]:
        """The programs of every run (leading axis), not yet compiled; each takes the runs' hparams last.

        ``mesh``: the devices the run axis is sharded over (:func:`cljax.compilation.over_runs`).
        """
        build, info, iters, n = self.strategy_of(), self.info, self.setup.iters, self.n_runs
        train = self.stream_trainer() or (lambda strategy, *args: train_context(strategy, iters, *args))
        return {
            "init": over_runs(lambda k, im, st, h: build(h).init(k, im, st), (0, None, 0, 0), n, mesh),
            "train": over_runs(
                lambda s, im, st, c, k, h: train(build(h), s, im, st, c, k),
                (0, None, 0, None, 0, 0),
                n,
                mesh,
            ),
            "evaluate": over_runs(
                lambda s, im, st, c, h: evaluate(build(h), info, s, im, st, c), (0, None, 0, None, 0), n, mesh
            ),
        }

    def stream_trainer(self) -> Callable | None:
        """On a task-free stream, ``(strategy, state, images, stream, segment, key) -> (state, metrics)``
        for one segment of ``iters`` iterations (:func:`cljax.task_free.train_segment`); else None."""
        cfg = self.config
        if cfg.stream is None:
            return None
        probabilities = jnp.asarray(stream_probabilities(cfg.stream, self.info, cfg.iters, cfg.fuzziness))

        settings = (probabilities, cfg.iters, cfg.update_every, cfg.batch_size, cfg.labels_per_batch)

        def train(strategy, state, images, stream, segment, key):
            return train_segment(strategy, self.info, *settings, state, images, stream, segment, key)

        return train


def adam_for(lr: float | jax.Array) -> optax.GradientTransformation:
    """Adam (0.9, 0.999) in PyTorch's arithmetic, as the reference; one optimizer for the run, never reset."""
    return optim.adam(lr, b1=0.9, b2=0.999)


def make_optimizer(config: RunConfig) -> optax.GradientTransformation:
    """The classifier's optimizer of a resolved config (:func:`adam_for` its learning rate)."""
    return adam_for(config.lr)


def traced_names(spec: StrategySpec, config: RunConfig) -> tuple[str, ...]:
    """The hyperparameters the programs take as inputs: ``lr`` and the strategy's declared continuous
    options that hold a number in this config (one left at None keeps its own meaning, as a constant)."""
    declared = [k for k in spec.hyperparameters if is_number(config.options.get(k))]
    return ("lr", *declared)


def stack_hparams(names: tuple[str, ...], configs: list[RunConfig], n_seeds: int) -> Hyper:
    """Per run (configs x seeds, configuration-major), the value of every traced hyperparameter."""

    def value(config: RunConfig, name: str) -> float:
        return config.lr if name == "lr" else config.options[name]

    return {
        name: jnp.asarray([value(c, name) for c in configs for _ in range(n_seeds)], jnp.float32)
        for name in names
    }


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
        task_free=config.stream is not None,
        update_every=config.update_every,
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


def prepare(
    config: RunConfig, dataset: Dataset | None = None, configs: list[RunConfig] | None = None
) -> Experiment:
    """Validate the config, load and check the data (unless given, then only check) and build streams and
    strategy; every error is raised here, before anything compiles.

    ``configs``: several configurations run side by side (a sweep), which may differ only in the
    hyperparameters the programs take as inputs (:func:`traced_names`); ``config`` is then the first.
    """
    config = config.resolved()
    bench = get_benchmark(config.benchmark)
    spec = get_strategy(config.strategy)
    configs = [c.resolved() for c in configs] if configs else [config]
    names = traced_names(spec, config)
    for other in configs:
        _check_same_program(config, other, names)
    seeds = config.seed_list
    convs, conv_records = pretrained_convs(bench, seeds) if bench.pretrained is not None else (None, None)
    dataset = load_data(bench, config, dataset)
    info = pixels = scenario_info(bench, config.scenario, dataset.train_x.shape[1:])
    if convs is not None:
        from cljax.features import feature_info

        info = feature_info(info, FEATURE_SHAPE, f"{bench.pretrained} (e{bench.pretrained_epochs})")
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
    streams = stack_streams(per_seed * len(configs))
    images = Images(
        *(jnp.asarray(a) for a in (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y))
    )
    setup = make_setup(config, info)
    try:
        for other in configs:  # every configuration's values are checked before anything compiles
            strategy = spec.build(make_setup(other, info) if other is not config else setup, other.options)
        strategy = spec.build(setup, config.options)
        if config.stream is not None:
            check_stream(config.stream, info, config.iters, config.fuzziness, config.update_every)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if config.stream is not None and (strategy.learn is None or strategy.consolidate is None):
        raise ConfigError(
            f"stream: strategy {config.strategy!r} is registered with task_free=True but its Strategy has no "
            "learn and consolidate functions; give both to learn from a task-free stream"
        )
    if convs is not None:  # every seed's images through its frozen conv layers, once (cljax.features)
        from cljax.features import features_of_seeds, shift_to_seed_rows

        images, _ = features_of_seeds(convs, pixels, dataset)
        streams = shift_to_seed_rows(streams, len(seeds), len(dataset.train_y), len(dataset.test_y))
        if spec.pixels:  # the strategy works on the images too: they and each run's conv set are its data
            from cljax.features import with_pixels

            images, streams = with_pixels(images, streams, convs, np.asarray(dataset.train_x), len(configs))
    return Experiment(
        config,
        info,
        setup,
        strategy,
        images,
        streams,
        seeds,
        bench,
        hparams=stack_hparams(names, configs, len(seeds)),
        configs=configs,
        spec=spec,
        built=strategy,
        convs=convs,
        conv_records=conv_records,
    )


FEATURE_SHAPE = (2, 2, 256)  # the pre-trained conv layers' output for a 32x32 image


def pretrained_convs(bench: Benchmark, seeds: list[int]) -> tuple[list[Any], list[dict[str, Any]]]:
    """Each seed's pre-trained conv layers (the reference's --seed-to-ltag) and their records, or a
    ConfigError that says how to make the missing ones, before anything compiles."""
    from cljax.pretrain import load_pretrained

    convs, records, missing = [], [], []
    for seed in seeds:
        try:
            conv, record = load_pretrained(seed, bench.pretrained_epochs)
            convs.append(conv)
            records.append(record)
        except FileNotFoundError:
            missing.append(seed)
        except ValueError as err:
            raise ConfigError(f"benchmark {bench.name}: {err}") from None
    if missing:
        seeds_text = ", ".join(map(str, missing))
        raise ConfigError(
            f"benchmark {bench.name}: NMI-2022 runs it on conv layers pre-trained on {bench.pretrained}, one "
            f"set per seed, and seed(s) {seeds_text} have none; make them with `cljax pretrain --benchmark "
            f"{bench.pretrained} --seed S --epochs {bench.pretrained_epochs}` for each (about 80 minutes per "
            "seed on 2 CPU cores), or use split-cifar100-scratch to train the conv layers with the fc layers"
        )
    return convs, records


def pretrained_provenance(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a pre-trained set's record that a result names: which set, how good, its hash."""
    keys = ("name", "seed", "epochs", "test_accuracy", "sha256")
    return {k: record.get(k) for k in keys}


def _check_same_program(config: RunConfig, other: RunConfig, names: tuple[str, ...]) -> None:
    """Configurations run as one program may differ only in the traced hyperparameters ``names``."""
    a, b = config.to_dict(), other.to_dict()
    for key in ("lr", "options"):
        a.pop(key), b.pop(key)
    static_a = {k: v for k, v in config.options.items() if k not in names}
    static_b = {k: v for k, v in other.options.items() if k not in names}
    if a != b or static_a != static_b:
        changed = sorted(k for k in {**a, **static_a} if {**a, **static_a}.get(k) != {**b, **static_b}.get(k))
        raise ConfigError(
            f"configs: runs of one program may differ only in {', '.join(names)}; these differ too: "
            f"{', '.join(changed)} (run them as separate programs)"
        )


def trained_model(
    exp: Experiment, states: Any, config: RunConfig | None = None, index: int = 0
) -> TrainedModel:
    """The final states of one configuration's runs (the ``index``-th) with what predicting needs."""
    config = config or exp.config
    bench = exp.benchmark or get_benchmark(config.benchmark)
    n_seeds = len(exp.seeds)
    streams = jax.tree.map(lambda x: np.asarray(x[index * n_seeds : (index + 1) * n_seeds]), exp.streams)
    strategy = (
        exp.strategy
        if index == 0
        else get_strategy(config.strategy).build(make_setup(config, exp.info), config.options)
    )

    def shapes(tree: Any, seed_axis: bool) -> dict[str, Any]:
        """The array fields' shapes (optional ones left empty, and a stream's conv set, are not recorded)."""
        return {
            k: [list(v.shape[int(seed_axis) :]), str(v.dtype)]
            for k, v in tree._asdict().items()
            if hasattr(v, "shape")
        }

    image_shape, frozen_conv = tuple(exp.images.train_x.shape[1:]), None
    if exp.info.features is not None:  # the model takes images, as the frozen layers did before training
        image_shape = exp.info.pixel_shape
        frozen_conv = jax.tree.map(lambda *a: jnp.stack(a), *exp.convs)
    return TrainedModel(
        config=config.to_dict(),
        info=exp.info,
        strategy=strategy,
        states=states,
        seeds=list(exp.seeds),
        image_shape=image_shape,
        active=streams.active,
        pixel_perm=streams.pixel_perm,
        unit_classes=np.stack([unit_classes(bench, config.scenario, s) for s in exp.seeds]),
        shapes={"images": shapes(exp.images, False), "stream": shapes(exp.streams, True)},
        frozen_conv=frozen_conv,
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
    for seed, images in zip(exp.run_seeds, gatherer(exp.n_runs)(samples), strict=True):
        write_png(folder / f"{exp.config.strategy}_seed{seed}_context{context + 1}.png", grid(images))


# Compiled programs of this process, by everything that shapes them (see _program_key): a run that differs
# from an earlier one only in the inputs (data, seeds' streams, traced hyperparameters) reuses them.
_PROGRAMS: dict[tuple, tuple[Any, ...]] = {}
_COMPILED_COUNT = [0]


def programs_compiled() -> int:
    """How many XLA programs this process has compiled for runs (a program found in the cache of
    compiled programs of this process is not counted again)."""
    return _COMPILED_COUNT[0]


def clear_program_cache() -> None:
    """Forget the compiled programs kept for later runs of this process."""
    _PROGRAMS.clear()


def _program_key(exp: Experiment, *trees: Any) -> tuple | None:
    """What a run's programs depend on besides their inputs; None when it cannot be known (a strategy
    replaced by hand), and the programs are then compiled afresh."""
    if exp.strategy is not exp.built or exp.spec is None:
        return None
    cfg = exp.config
    names = tuple(exp.hparams or ())
    static = tuple(sorted((k, repr(v)) for k, v in cfg.options.items() if k not in names))
    # the network that runs: the config's, else the benchmark's (two Benchmarks of one name may differ);
    # a function or module class is kept in the key itself (hashed by identity), so its id is never reused
    used = cfg.model if cfg.model is not None else getattr(exp.benchmark, "model", None)
    try:
        model = (used, hash(used))
    except TypeError:
        model = id(used)
    shapes = tuple(
        (str(jax.tree.structure(t)), tuple((x.shape, str(x.dtype), str(getattr(x, "sharding", None)))
                                           for x in jax.tree.leaves(t)))
        for t in trees
    )  # fmt: skip
    stream = (cfg.stream, cfg.fuzziness, cfg.update_every, cfg.labels_per_batch)
    return (exp.spec.name, id(exp.spec.build), names, static, model, exp.info, cfg.iters, cfg.batch_size,
            stream, exp.n_runs, shapes, jax.default_backend())  # fmt: skip


def compile_programs(
    exp: Experiment, images, streams, hparams, init_keys, keys0, c0, sharding
) -> tuple[Any, ...]:
    """The run's init, train and evaluate programs: from this process's cache, or lowered and compiled."""
    key = _program_key(exp, images, streams, hparams, init_keys, keys0)
    if key is not None and key in _PROGRAMS:
        return _PROGRAMS[key]
    with fast_convolutions():  # every nn.Conv traced here gets gradients XLA:CPU runs fast inside a scan
        compiled = _lower_and_compile(exp, images, streams, hparams, init_keys, keys0, c0, sharding)
    _COMPILED_COUNT[0] += len(compiled)
    if key is not None:
        _PROGRAMS[key] = compiled
    return compiled


def _lower_and_compile(exp, images, streams, hparams, init_keys, keys0, c0, sharding) -> tuple[Any, ...]:
    """Trace init, train and evaluate for these inputs and compile them (cljax.compilation.compile_all)."""
    progs = exp.programs(None if sharding is None else sharding.mesh)
    sharded = {} if sharding is None else {"out_shardings": sharding}
    init_jit = jax.jit(progs["init"], **sharded)
    state_shapes = jax.eval_shape(init_jit, init_keys, images, streams, hparams)  # with the sharding, if any
    return tuple(
        compile_all(
            [
                Program(lambda: init_jit.lower(init_keys, images, streams, hparams), runs_once=True),
                Program(
                    lambda: jax.jit(progs["train"], donate_argnums=0, **sharded).lower(
                        state_shapes, images, streams, c0, keys0, hparams
                    )
                ),
                Program(
                    lambda: jax.jit(progs["evaluate"], **sharded).lower(
                        state_shapes, images, streams, c0, hparams
                    )
                ),
            ]
        )
    )


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
    if len(exp.run_configs) != 1:
        raise ConfigError("execute: this experiment holds several configurations; use execute_runs")
    return execute_runs(exp, quiet, save_samples, checkpoint_dir, resume, log_dir)[0]


def execute_runs(
    exp: Experiment,
    quiet: bool = False,
    save_samples: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    log_dir: str | os.PathLike | None = None,
    stop_on_nonfinite: bool = True,
) -> list[RunResult]:
    """Every configuration x seed of ``exp`` as one program per context; one result per configuration.

    ``stop_on_nonfinite=False`` (sweeps): a run whose loss becomes NaN or infinite does not stop the
    others; each result's ``diverged`` says, per seed, the first context where it did (else None).
    """
    cfg, n_ctx, n_runs = exp.config, exp.info.n_contexts, exp.n_runs
    if save_samples is not None:
        if exp.strategy.sample is None:
            raise ConfigError(f"save_samples: strategy {cfg.strategy!r} has no generator to sample from")
        Path(save_samples).mkdir(parents=True, exist_ok=True)
    if resume and checkpoint_dir is None:
        raise ConfigError("resume: needs --checkpoint-dir, the folder of the run to continue")
    checkpoint_config = cfg.to_dict()
    if len(exp.run_configs) > 1:
        checkpoint_config["sweep"] = [_json_ready(c.to_dict()) for c in exp.run_configs]
    checkpoints = (
        Checkpoints(checkpoint_dir, checkpoint_config, resume) if checkpoint_dir is not None else None
    )
    wall_start = time.perf_counter()
    run_seeds = exp.run_seeds
    by_run = seed_sharding(n_runs)
    place = placer(by_run)
    fetch = gatherer(n_runs)  # np.asarray of the runs' rows, gathered from every process (cljax.devices)
    images, streams = place(exp.images, whole=True), place(exp.streams)
    hparams = place(
        exp.hparams if exp.hparams is not None else {"lr": jnp.full((n_runs,), cfg.lr or 0.0, jnp.float32)}
    )
    base_keys = place(jax.vmap(jax.random.key)(jnp.asarray(run_seeds, dtype=jnp.uint32)))
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(base_keys)

    def context_keys(c: int) -> jax.Array:
        return place(jax.vmap(lambda k: jax.random.fold_in(k, c + 1))(base_keys))

    def context_index(c: int) -> jax.Array:
        return place(jnp.asarray(c, jnp.int32), whole=True)

    t0 = time.perf_counter()
    c0 = context_index(0)
    init, train, evaluate_all = compile_programs(
        exp, images, streams, hparams, init_keys, context_keys(0), c0, by_run
    )
    compile_seconds = time.perf_counter() - t0
    states = init(init_keys, images, streams, hparams)

    progress = {
        "initial": fetch(evaluate_all(states, images, streams, c0, hparams)).tolist(),
        "rows": [],  # per context: (runs, contexts) accuracies in [0, 1]
        "context_loss": [],  # per context: (runs,)
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
            run_seeds,
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
            states, step_metrics = train(states, images, streams, ctx, context_keys(c), hparams)
            losses = fetch(step_metrics["loss"])  # (runs, iters); also waits for the context to finish
            elapsed = time.perf_counter() - t
            if stop_on_nonfinite:
                _check_finite(losses, c, run_seeds)
            bad = ~np.isfinite(losses).all(axis=1)
            progress.setdefault("diverged", [None] * n_runs)
            progress["diverged"] = [d if d is not None or not b else c + 1 for d, b in zip(
                progress["diverged"], bad, strict=True)]  # fmt: skip
            row = fetch(evaluate_all(states, images, streams, ctx, hparams))
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

    states = gather_runs(states, n_runs)  # joined processes: whole in each (cljax.devices); else as is
    acc = np.stack([np.asarray(r) for r in progress["rows"]], axis=1)  # (runs, trained, tested)
    initial = np.asarray(progress["initial"])
    context_loss = np.asarray(progress["context_loss"]).T  # (runs, contexts)
    wall_seconds = time.perf_counter() - wall_start
    environment_info = {**environment(), "seed_devices": 1 if by_run is None else by_run.mesh.size}
    if exp.conv_records is not None:  # which frozen conv layers the numbers rest on
        environment_info["pretrained"] = [pretrained_provenance(r) for r in exp.conv_records]
    n_seeds = len(exp.seeds)
    results = []
    for i, config in enumerate(exp.run_configs):
        runs = slice(i * n_seeds, (i + 1) * n_seeds)
        per_seed = [metrics.summarize(a, b) for a, b in zip(acc[runs], initial[runs], strict=True)]
        finals = [m["final_avg_acc"] for m in per_seed]
        mean, sem = metrics.mean_sem(finals)
        train_seconds = progress["train_seconds"]
        config_dict = config.to_dict()
        config_dict["wall_seconds"] = wall_seconds
        config_states = states if len(exp.run_configs) == 1 else jax.tree.map(lambda x, r=runs: x[r], states)
        results.append(
            RunResult(
                benchmark=config.benchmark_name,
                scenario=config.scenario,
                strategy=config.strategy,
                seeds=list(exp.seeds),
                acc_matrix=(100 * acc[runs]).tolist(),
                initial_acc=(100 * initial[runs]).tolist(),
                final_avg_acc=finals,
                mean=mean,
                sem=sem,
                forgetting=[m["forgetting"] for m in per_seed],
                bwt=[m["bwt"] for m in per_seed],
                fwt=[m["fwt"] for m in per_seed],
                train_seconds=train_seconds,
                compile_seconds=compile_seconds,
                iterations_per_second=n_ctx * cfg.iters / train_seconds if train_seconds else 0.0,
                context_loss=context_loss[runs].tolist(),
                diverged=progress.get("diverged", [None] * n_runs)[runs]
                if progress.get("diverged")
                else None,
                config=config_dict,
                environment=environment_info,
                model=trained_model(exp, config_states, config, i),
            )
        )
    return results


def _json_ready(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


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
