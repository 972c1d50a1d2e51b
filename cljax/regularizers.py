"""Pieces the distillation and regularisation strategies share: quadratic penalties and published settings.

Published settings: each strategy's defaults are the NMI-2022 values, those of split MNIST unless the
paper published others for the benchmark (permuted MNIST). The option ``protocol="3s2019"`` swaps every
option the user left at its default for the 3S-2019 value; options the user set explicitly are kept.
Defaults are marked (:class:`Published` numbers and strings, ``None`` for flags) so an explicit value is
never mistaken for a default, even when it is numerically equal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cljax.hyper import is_traced, number

PROTOCOLS = ("nmi2022", "3s2019")

Params = Any


class Published(float):
    """A numeric default taken from a paper; ``protocol`` may replace it with the other paper's value."""


class PublishedStr(str):
    """A string default taken from a paper; ``protocol`` may replace it with the other paper's value."""


class PublishedInt(int):
    """An integer default (a size) taken from a paper; a benchmark's published value may replace it."""


def published(value: Any) -> Any:
    """Mark a default as the protocol's choice (numbers and strings; flags use ``None`` instead)."""
    return PublishedStr(value) if isinstance(value, str) else Published(value)


PublishedTable = Mapping[str, Mapping[str, Mapping[str, Any]]]  # protocol -> scenario -> option values


def resolve_protocol(
    options: Mapping[str, Any],
    table: PublishedTable,
    scenario: str,
    benchmark: str | None = None,
    by_benchmark: Mapping[str, PublishedTable] | None = None,
) -> dict[str, Any]:
    """The options with every unset default (marked or ``None``) replaced by ``table[protocol][scenario]``.

    ``by_benchmark[benchmark][protocol]``, where a paper published settings for that benchmark, takes the
    place of ``table[protocol]`` (split MNIST's). Raises ValueError for an unknown ``protocol``.
    """
    protocol = options.get("protocol", PROTOCOLS[0])
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    values = (by_benchmark or {}).get(benchmark, {}).get(protocol, table[protocol])[scenario]
    out = dict(options)
    for name, value in values.items():
        current = out.get(name)
        if current is None or isinstance(current, (Published, PublishedStr)):
            out[name] = value
    return out


def protocol_resolver(
    table: PublishedTable, by_benchmark: Mapping[str, PublishedTable] | None = None
) -> Callable[[dict[str, Any], str, str], dict[str, Any]]:
    """A ``StrategySpec.resolve``: the options with ``protocol``'s published values, as plain values."""

    def resolve(options: dict[str, Any], benchmark: str, scenario: str) -> dict[str, Any]:
        out = resolve_protocol(options, table, scenario, benchmark, by_benchmark)
        return {
            k: float(v) if isinstance(v, Published) else str(v) if isinstance(v, PublishedStr) else v
            for k, v in out.items()
        }

    return resolve


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float = float("inf"),
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> float | jax.Array:
    """``value`` as a float, or a ValueError naming the option and its valid range.

    A traced value (a hyperparameter inside a compiled program) passes unchanged: its concrete value was
    checked when the strategy was first built.
    """
    value = number(value)
    if is_traced(value):
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"option {name!r} must be a number in {left}{low:g}, {high:g}{right}; got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``choices``, else a ValueError naming the option and the choices."""
    if value not in choices:
        raise ValueError(f"option {name!r} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def quadratic_penalty(params: Params, anchor: Params, importance: Params) -> jax.Array:
    """sum_i importance_i (theta_i - anchor_i)^2 over every parameter."""
    terms = jax.tree.map(lambda p, a, w: jnp.sum(w * jnp.square(p - a)), params, anchor, importance)
    return sum(jax.tree.leaves(terms))


def stacked_quadratic_penalty(
    params: Params, anchors: Params, importances: Params, count: jax.Array
) -> jax.Array:
    """sum over the first ``count`` slots s of sum_i importance_si (theta_i - anchor_si)^2.

    ``anchors`` and ``importances`` hold a leading slot axis (S, ...); slots >= ``count`` are ignored.
    """
    n_slots = jax.tree.leaves(anchors)[0].shape[0]
    total = jnp.zeros((), jnp.float32)
    # Unrolled over the (few, static) slots: with the slot axis vectorised, XLA's CPU gradient of the
    # broadcast is about 15x slower than the whole training step.
    for s in range(n_slots):
        term = quadratic_penalty(
            params, jax.tree.map(lambda a, s=s: a[s], anchors), jax.tree.map(lambda w, s=s: w[s], importances)
        )
        total = total + jnp.where(s < count, term, 0.0)
    return total


def merge_quadratic_penalties(
    anchors: Params, importances: Params, count: jax.Array
) -> tuple[Params, Params, jax.Array]:
    """One quadratic equal to the sum of the first ``count`` slots' penalties, value and gradient.

    sum_s F_s (theta - a_s)^2 = A (theta - m)^2 + K with A = sum_s F_s, m = sum_s F_s a_s / A and
    K = sum_s F_s (a_s - m)^2 (>= 0, computed without cancellation). Returns (A, m, K), so that
    ``quadratic_penalty(theta, m, A) + K`` equals :func:`stacked_quadratic_penalty` at a cost that does not
    grow with the number of slots.
    """

    def used(x):
        return (jnp.arange(x.shape[0]) < count).reshape((-1,) + (1,) * (x.ndim - 1))

    precision = jax.tree.map(lambda w: jnp.sum(jnp.where(used(w), w, 0.0), axis=0), importances)

    def mean(a, w, total):
        # relative to the first slot: exact when one slot is filled, well conditioned when anchors are close
        shift = jnp.sum(jnp.where(used(w), w * (a - a[:1]), 0.0), axis=0)
        return a[0] + jnp.where(total > 0, shift / jnp.where(total > 0, total, 1.0), 0.0)

    means = jax.tree.map(mean, anchors, importances, precision)
    offsets = jax.tree.map(
        lambda a, w, m: jnp.sum(jnp.where(used(w), w * jnp.square(a - m[None]), 0.0)),
        anchors,
        importances,
        means,
    )
    return precision, means, sum(jax.tree.leaves(offsets))


def stack_slots(tree: Params, n: int) -> Params:
    """``n`` zero-filled slots shaped like ``tree``: leaves (n, ...)."""
    return jax.tree.map(lambda x: jnp.zeros((n, *x.shape), x.dtype), tree)


def set_slot(stack: Params, slot: jax.Array, tree: Params) -> Params:
    """``stack`` with slot ``slot`` replaced by ``tree``."""
    return jax.tree.map(lambda s, x: jax.lax.dynamic_update_index_in_dim(s, x, slot, 0), stack, tree)
