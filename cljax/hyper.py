"""Hyperparameters as program inputs: what a strategy's validators and builders need to know about them.

A strategy's continuous options (``StrategySpec.hyperparameters``) reach its ``build`` twice: once as the
concrete, resolved Python numbers (all validation happens then, before anything compiles), and again
inside every compiled program as 0-d float32 tracers, so that runs differing only in them share one
compilation and a sweep over them is one vmapped program. A tracer has no value to check or branch on:
validators let it through unchanged (:func:`is_traced`), and builders use it only in arithmetic
(``jnp.where`` / ``lax.cond`` where a branch depends on it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
    """Whether ``value`` is known only when the program runs (a tracer); its concrete value was checked."""
    return isinstance(value, jax.core.Tracer)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a concrete real number (Python or NumPy, not a bool): a value a program can
    take as a hyperparameter input."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def number(value: Any) -> Any:
    """A 0-d NumPy or JAX array (or NumPy scalar) as a Python number, so validators accept it; else ``value``.

    Tracers are returned unchanged. Covers ``np.float32(0.5)`` options and programs run under
    ``jax.disable_jit``, where the hyperparameters arrive as concrete arrays.
    """
    if is_traced(value):
        return value
    if isinstance(value, np.generic) or (isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0):
        return value.item()
    return value


def values(options: Mapping[str, Any], names: Iterable[str]) -> dict[str, jax.Array]:
    """The hyperparameters ``names`` of resolved ``options`` as 0-d float32 arrays: a program's inputs.

    Raises a ValueError naming an option that is not a number (e.g. left at ``None``: the strategy's
    ``resolve`` must turn it into one first).
    """
    out = {}
    for name in names:
        value = number(options.get(name))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"{name}: a hyperparameter must be a number once the options are resolved, got {value!r}"
            )
        out[name] = jnp.asarray(value, jnp.float32)
    return out
