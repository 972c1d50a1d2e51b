"""The strategy registry: every method by the name the command line and ``cljax.run`` use.

Each module in this package that defines ``SPECS`` (a tuple of :class:`StrategySpec`) is registered.
"""

from __future__ import annotations

import importlib
import pkgutil

from cljax.strategies.base import ClassifierState, Setup, Strategy, StrategySpec


def _discover() -> dict[str, StrategySpec]:
    registry: dict[str, StrategySpec] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for spec in getattr(module, "SPECS", ()):
            if spec.name in registry:
                raise RuntimeError(f"strategy {spec.name!r} is registered twice")
            registry[spec.name] = spec
    order = ("none", "joint")  # baselines first, then alphabetical
    return {
        name: registry[name]
        for name in sorted(registry, key=lambda n: (n not in order, order.index(n) if n in order else 0, n))
    }


REGISTRY: dict[str, StrategySpec] = _discover()


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy ``name``, or an error listing the valid names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "ClassifierState", "Setup", "Strategy", "StrategySpec", "get_strategy"]
