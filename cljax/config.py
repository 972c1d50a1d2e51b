"""A run's configuration: validated field by field before any data is read or anything compiled."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cljax.presets import SCENARIOS, Benchmark, get_benchmark
from cljax.scenarios import CLASS_IL_ACTIVE


class ConfigError(ValueError):
    """A config field is out of range; the message names the field and what is allowed."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. ``None`` means: the benchmark's published setting.

    ``benchmark`` is a registered name or a :class:`cljax.Benchmark`; ``model`` a registered name, a Flax
    module mapping images to logits, or a factory ``n_out -> module`` (:func:`cljax.models.model_from`).
    """

    benchmark: str | Benchmark = "split-mnist"
    scenario: str = "class"
    strategy: str = "none"
    seeds: int = 1
    first_seed: int = 0
    iters: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    model: Any = None
    class_il_active: str = "all"
    data_dir: str | None = None
    download: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    # task-free learning (cljax.task_free): a label stream instead of announced contexts; None: contexts
    stream: str | None = None
    fuzziness: int = 500  # fuzzy-boundaries: iterations of each boundary's ramp (the reference's default)
    update_every: int | None = None  # iterations between consolidations; None: the strategy's default
    labels_per_batch: bool = False  # one context per batch instead of one per sample

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    def resolved(self) -> RunConfig:
        """Validate, then fill every ``None`` with the benchmark's and the strategy's defaults."""
        from cljax.strategies import get_strategy

        validate(self)
        bench = get_benchmark(self.benchmark)
        spec = get_strategy(self.strategy)
        stream_options = spec.stream_defaults(self.scenario) if self.stream is not None else {}
        options = {**spec.defaults(self.scenario), **stream_options, **dict(self.options)}
        if spec.resolve is not None:
            try:
                options = spec.resolve(options, bench.name, self.scenario)
            except ValueError as err:
                raise ConfigError(f"options: {err}") from err
        return dataclasses.replace(
            self,
            iters=self.iters if self.iters is not None else bench.iters,
            batch_size=self.batch_size if self.batch_size is not None else bench.batch_size,
            lr=self.lr if self.lr is not None else bench.lr,
            model=self.model if self.model is not None else bench.model,
            class_il_active=self.class_il_active if self.scenario == "class" else "all",  # unused elsewhere
            options=options,
            update_every=(None if self.stream is None else self.update_every or spec.update_every),
        )

    @property
    def benchmark_name(self) -> str:
        return self.benchmark.name if isinstance(self.benchmark, Benchmark) else self.benchmark

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: names for the benchmark and model, and the protocol that ran."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        protocol = get_benchmark(self.benchmark).describe() if _known(self.benchmark) else None
        return {
            **fields,
            "benchmark": self.benchmark_name,
            "model": model_name(self.model),
            "options": dict(self.options),
            "protocol": protocol,
        }


def _known(benchmark: Any) -> bool:
    from cljax.presets import BENCHMARKS

    return isinstance(benchmark, Benchmark) or benchmark in BENCHMARKS


def model_name(model: Any) -> str | None:
    """The name a result records for ``model``: a registered name, else the class or factory's name."""
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, type) or callable(model) and hasattr(model, "__name__"):
        return model.__name__
    return type(model).__name__


def _choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: unknown value {value!r}; choose one of: {', '.join(choices)}")


def _positive_int(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")


def validate(config: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the first field that is out of range."""
    from cljax.strategies import REGISTRY

    try:
        get_benchmark(config.benchmark)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _choice("scenario", config.scenario, SCENARIOS)
    _choice("strategy", config.strategy, REGISTRY)
    spec = REGISTRY[config.strategy]
    if config.scenario not in spec.scenarios:
        raise ConfigError(
            f"strategy: {config.strategy!r} is not defined for the {config.scenario} scenario; "
            f"it supports: {', '.join(spec.scenarios)}"
        )
    _positive_int("seeds", config.seeds, allow_none=False)
    if isinstance(config.first_seed, bool) or not isinstance(config.first_seed, int) or config.first_seed < 0:
        raise ConfigError(f"first_seed: must be an integer >= 0, got {config.first_seed!r}")
    _positive_int("iters", config.iters)
    _positive_int("batch_size", config.batch_size)
    if config.lr is not None and not (
        isinstance(config.lr, (int, float)) and math.isfinite(config.lr) and config.lr > 0
    ):
        raise ConfigError(f"lr: must be a finite number > 0, got {config.lr!r}")
    if isinstance(config.model, str):
        from cljax.models import MODELS

        _choice("model", config.model, MODELS)
    elif config.model is not None and not callable(config.model):
        raise ConfigError(
            f"model: expected a registered model name, a Flax module or a factory n_out -> module, "
            f"got {type(config.model).__name__}"
        )
    _choice("class_il_active", config.class_il_active, CLASS_IL_ACTIVE)
    if config.stream is not None:
        _check_stream(config, spec)
    if not isinstance(config.options, Mapping):
        raise ConfigError(
            f"options: must be a mapping of strategy hyperparameters, got {type(config.options).__name__}"
        )
    known = spec.defaults(config.scenario)
    unknown = sorted(set(config.options) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ConfigError(
            f"options: {config.strategy!r} has no hyperparameter {unknown[0]!r}; it takes: {allowed}"
        )


def _check_stream(config: RunConfig, spec: Any) -> None:
    """A task-free run: a known label stream, a strategy that learns from one, Class-IL on all units."""
    from cljax.label_streams import LABEL_STREAMS
    from cljax.strategies import REGISTRY

    _choice("stream", config.stream, LABEL_STREAMS)
    if not spec.task_free:
        able = ", ".join(name for name, s in REGISTRY.items() if s.task_free)
        raise ConfigError(
            f"stream: {config.strategy!r} needs context boundaries and has no task-free form; "
            f"strategies that learn from a stream: {able}"
        )
    _positive_int("fuzziness", config.fuzziness, allow_none=False)
    _positive_int("update_every", config.update_every)
    if not isinstance(config.labels_per_batch, bool):
        raise ConfigError(f"labels_per_batch: must be True or False, got {config.labels_per_batch!r}")
    if config.scenario == "class" and config.class_il_active != "all":
        raise ConfigError(
            "class_il_active: a task-free learner is not told which classes a context brings; "
            "Class-IL streams train and test on all units (class_il_active='all')"
        )
