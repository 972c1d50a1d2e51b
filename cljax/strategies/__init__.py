"""The strategy registry: every method by the name the command line and ``cljax.run`` use.

A user's method enters through the same door as cljax's own: :func:`register_strategy` (a function or a
decorator). Each module in this package that defines ``SPECS`` (a tuple of :class:`StrategySpec`) is
registered through it when the package is imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from cljax.presets import SCENARIOS
from cljax.strategies.base import ClassifierState, Setup, Strategy, StrategySpec

REGISTRY: dict[str, StrategySpec] = {}

Build = Callable[[Setup, Mapping[str, Any]], Strategy]
Defaults = Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None


def register_strategy(
    name: str,
    build: Build | None = None,
    *,
    summary: str = "",
    scenarios: tuple[str, ...] = SCENARIOS,
    defaults: Defaults = None,
    resolve: Callable[[dict[str, Any], str, str], dict[str, Any]] | None = None,
    hyperparameters: tuple[str, ...] = (),
    task_free: bool = False,
    update_every: int = 100,
    stream_defaults: Defaults = None,
    pixels: bool = False,
    overwrite: bool = False,
) -> Any:
    """Register ``build(setup, options) -> Strategy`` as the strategy ``name``.

    ``defaults``: its hyperparameters (a dict, or a function of the scenario returning one); only these
    option names are accepted, and results record the values that ran. ``scenarios``: where it applies.
    ``hyperparameters``: the continuous options (floats) the compiled programs take as inputs instead of
    constants, so runs that differ only in them share one compilation and a sweep over them is one
    program; ``build`` then receives them as traced scalars and must not branch on them in Python.
    ``task_free``: the Strategy it builds also has ``learn(state, batch, key)`` and
    ``consolidate(state, key)``, so it can learn from a task-free stream (``--stream``), consolidating
    every ``update_every`` iterations by default, with ``stream_defaults`` over ``defaults`` there.
    ``pixels``: on a benchmark whose inputs are frozen conv features (split-cifar100), the strategy also gets
    the training images (``images.pixels``, :func:`cljax.features.batch_pixels`) and each run's frozen conv
    layers (``stream.conv``, :func:`cljax.features.frozen_features`).
    Without ``build``, a decorator::

        @cljax.register_strategy("l2", defaults={"strength": 1.0})
        def l2(setup, options): ...

    Returns the :class:`StrategySpec` (the decorator returns ``build`` unchanged).
    """
    if build is None:

        def decorate(fn: Build) -> Build:
            register_strategy(
                name,
                fn,
                summary=summary,
                scenarios=scenarios,
                defaults=defaults,
                resolve=resolve,
                hyperparameters=hyperparameters,
                task_free=task_free,
                update_every=update_every,
                stream_defaults=stream_defaults,
                pixels=pixels,
                overwrite=overwrite,
            )
            return fn

        return decorate
    if not isinstance(name, str) or not name.strip() or any(c in name for c in ", =") or name != name.strip():
        raise ValueError(
            f"register_strategy: the name must be a word without spaces, commas or '=', got {name!r}"
        )
    if not callable(build):
        raise TypeError(
            f"register_strategy: build must be a function (setup, options) -> Strategy, got {build!r}"
        )
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if not scenarios or unknown:
        raise ValueError(
            f"register_strategy: scenarios must be some of {', '.join(SCENARIOS)}, got {scenarios!r}"
        )
    if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
        raise ValueError(f"register_strategy: update_every must be an integer >= 1, got {update_every!r}")
    if name in REGISTRY and not overwrite:
        raise ValueError(
            f"register_strategy: {name!r} is already registered; pass overwrite=True to replace it"
        )
    spec = StrategySpec(
        name=name,
        build=build,
        summary=summary or (build.__doc__ or "").strip().split("\n")[0],
        scenarios=tuple(scenarios),
        defaults=_defaults_function(defaults),
        resolve=resolve,
        hyperparameters=tuple(hyperparameters),
        task_free=bool(task_free),
        update_every=update_every,
        stream_defaults=_defaults_function(stream_defaults),
        pixels=bool(pixels),
    )
    REGISTRY[name] = spec
    return spec


def _defaults_function(defaults: Defaults) -> Callable[[str], dict[str, Any]]:
    if defaults is None:
        return lambda scenario: {}
    if isinstance(defaults, Mapping):
        fixed = dict(defaults)
        return lambda scenario: dict(fixed)
    if callable(defaults):
        return lambda scenario: dict(defaults(scenario))
    raise TypeError(
        f"register_strategy: defaults must be a dict or a function of the scenario, got {defaults!r}"
    )


def _register_builtins() -> None:
    specs = []
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        specs.extend(getattr(module, "SPECS", ()))
    order = ("none", "joint")  # baselines first, then alphabetical
    for spec in sorted(
        specs, key=lambda s: (s.name not in order, order.index(s.name) if s.name in order else 0, s.name)
    ):
        register_strategy(
            spec.name,
            spec.build,
            summary=spec.summary,
            scenarios=spec.scenarios,
            defaults=spec.defaults,
            resolve=spec.resolve,
            hyperparameters=spec.hyperparameters,
            task_free=spec.task_free,
            update_every=spec.update_every,
            stream_defaults=spec.stream_defaults,
            pixels=spec.pixels,
        )


_register_builtins()


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy ``name``, or an error listing the valid names."""
    if name not in REGISTRY:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of: {', '.join(REGISTRY)} (a strategy of your own must "
            "be registered first: cljax.register_strategy, or `cljax run --import MODULE`)"
        )
    return REGISTRY[name]


__all__ = [
    "REGISTRY",
    "ClassifierState",
    "Setup",
    "Strategy",
    "StrategySpec",
    "get_strategy",
    "register_strategy",
]
