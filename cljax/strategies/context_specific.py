"""Context-specific components (Task-IL only): a separate network per context, and XdG.

Both use the context label that Task-IL gives with every sample, as the reference does
(GMvandeVen/continual-learning, ``models/separate_classifiers.py``, ``main.py`` "XdG", ``compare.py`` and
``compare_task_free.py``):

- ``separate-networks``: one MLP per context (split MNIST: 2 hidden layers of 100 units, the reference's
  ``fc_units_sep``; 400 on CIFAR), each with its context's output units; a sample trains only its
  context's network. All networks are one stacked pytree; each has its own Adam state, and a network with
  no sample in a batch is left as it is (the reference's one optimizer skips parameters without a
  gradient).
- ``xdg``: context-dependent gating (Masse et al. 2018): one network whose hidden units are gated by a fixed
  random mask per context, a proportion ``gating_prop`` of each hidden layer's units switched off (the
  reference's defaults: 0.9 on split MNIST, 0.85 on CIFAR-100, 0.6 otherwise), drawn once per run.

Neither needs a boundary, so both learn from task-free streams as they are (``--stream``; in Task-IL the
stream gives each sample's context). Evaluation runs every context's component and keeps each output
unit from its own context's, which is what testing context j on its own units asks for.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from cljax.losses import cross_entropy
from cljax.models.classifiers import MLP
from cljax.models.layers import Linear
from cljax.regularizers import check_range, published
from cljax.strategies.base import (
    PASS_AN_MLP,
    ClassifierState,
    Setup,
    Strategy,
    StrategySpec,
    apply_gradients,
    context_steps,
    keep_state_on_stream,
    require_mlp,
)
from cljax.strategies.dgr import positive_int

SEPARATE_UNITS = {"split-mnist": 100}  # fc_units_sep (params/param_values.py); 400 elsewhere
GATING_PROP = {"split-mnist": 0.9, "split-cifar100": 0.85}  # gating_prop; 0.6 elsewhere


class SeparateState(flax.struct.PyTreeNode):
    """Every context's network and Adam state (leading axis: context)."""

    params: Any
    opt_state: Any


class XdGState(ClassifierState):
    """The network, its optimizer state and each context's gates: a tuple, per hidden layer, (C, width)."""

    gates: Any


def _per_unit(logits: jax.Array, cpc: int) -> jax.Array:
    """(C, B, n_out) logits of every context's component -> (B, n_out), unit u from context u // cpc's."""
    n_out = logits.shape[-1]
    return logits[jnp.arange(n_out) // cpc, :, jnp.arange(n_out)].T


def separate_networks(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """A separate MLP per context (see the module docstring). Option ``units``: its hidden widths."""
    info = setup.info
    options = {**separate_defaults(info.scenario), **dict(options or {})}
    require_mlp(setup, "separate-networks builds its own MLP per context (option units)", "leave model unset")
    units = options["units"] or SEPARATE_UNITS.get(info.benchmark, 400)
    units = (units, units) if isinstance(units, int) else tuple(units)
    units = tuple(positive_int("units", u) for u in units)
    cpc, n_ctx = info.classes_per_context, info.n_contexts
    net = MLP(cpc, units)
    optimizer = setup.optimizer

    def all_logits(params, x):
        """(C, B, n_out): every network's logits, placed on its context's units."""
        own = jax.vmap(lambda p: net.apply(p, x))(params)  # (C, B, cpc)
        placed = jnp.zeros((n_ctx, x.shape[0], n_ctx, cpc), own.dtype)
        placed = placed.at[jnp.arange(n_ctx), :, jnp.arange(n_ctx)].set(own)
        return placed.reshape(n_ctx, x.shape[0], n_ctx * cpc)

    def init(key, images, stream):
        del images, stream
        x = jnp.zeros((1, *info.input_shape), jnp.float32)
        params = jax.vmap(lambda k: net.init(k, x))(jax.random.split(key, n_ctx))
        return SeparateState(params, jax.vmap(optimizer.init)(params))

    def learn(state: SeparateState, images, stream, batch, key):
        del images, stream, key

        def loss_fn(params):
            logits = all_logits(params, batch.x)[batch.context, jnp.arange(batch.x.shape[0])]
            return cross_entropy(logits, batch.y, batch.mask)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        present = jnp.zeros((n_ctx,), bool).at[batch.context].set(True)

        def one(p, o, g, here):
            updates, new_o = optimizer.update(g, o, p)
            keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(here, new, old))
            return keep(optax.apply_updates(p, updates), p), keep(new_o, o)

        params, opt_state = jax.vmap(one)(state.params, state.opt_state, grads, present)
        return SeparateState(params, opt_state), {"loss": loss}

    def predict(state: SeparateState, x):
        return _per_unit(all_logits(state.params, x), cpc)

    step, end_context = context_steps(setup, learn, keep_state_on_stream)
    return Strategy(init, step, end_context, predict, learn=learn, consolidate=keep_state_on_stream)


class GatedMLP(nn.Module):
    """:class:`MLP`'s layers (same names and initialisation) with each hidden layer multiplied by a gate."""

    n_out: int
    hidden: Sequence[int]

    def setup(self) -> None:
        self.layers = [Linear(width) for width in self.hidden]
        self.head = Linear(self.n_out)

    def __call__(self, x: jax.Array, gates: Sequence[jax.Array] | None = None) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers):
            h = nn.relu(layer(h))
            if gates is not None:
                h = h * gates[i]
        return self.head(h)


def xdg(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Context-dependent gating of the classifier's hidden units (see the module docstring)."""
    info = setup.info
    options = {**xdg_defaults(info.scenario), **dict(options or {})}
    require_mlp(setup, "xdg gates the hidden layers of an MLP", PASS_AN_MLP)
    prop = options["gating_prop"]
    prop = GATING_PROP.get(info.benchmark, 0.6) if prop is None else prop
    prop = float(check_range("gating_prop", prop, 0.0, 1.0, low_open=False, high_open=True))
    hidden, n_ctx, cpc = tuple(setup.model.hidden), info.n_contexts, info.classes_per_context
    net = GatedMLP(info.n_out, hidden)

    def draw_gates(key):
        """Per hidden layer (C, width): int(prop * width) units of each context's row switched off."""
        gates = []
        for width, k in zip(hidden, jax.random.split(key, len(hidden)), strict=True):
            keys = jax.random.split(k, n_ctx)
            order = jnp.stack([jax.random.permutation(kk, width) for kk in keys])
            off = int(prop * width)
            gates.append((jnp.argsort(order, axis=1) >= off).astype(jnp.float32))
        return tuple(gates)

    def init(key, images, stream):
        del images, stream
        params = net.init(key, jnp.zeros((1, *info.input_shape), jnp.float32))  # as init_classifier's
        return XdGState(params, setup.optimizer.init(params), draw_gates(jax.random.fold_in(key, 1)))

    def learn(state: XdGState, images, stream, batch, key):
        del images, stream, key
        gates = tuple(g[batch.context] for g in state.gates)

        def loss_fn(params):
            return cross_entropy(net.apply(params, batch.x, gates), batch.y, batch.mask)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_gradients(setup, state, grads), {"loss": loss}

    def predict(state: XdGState, x):
        def with_context(c):
            return net.apply(state.params, x, tuple(jnp.broadcast_to(g[c], (x.shape[0], g.shape[1]))
                                                     for g in state.gates))  # fmt: skip

        return _per_unit(jax.lax.map(with_context, jnp.arange(n_ctx)), cpc)

    step, end_context = context_steps(setup, learn, keep_state_on_stream)
    return Strategy(init, step, end_context, predict, learn=learn, consolidate=keep_state_on_stream)


def separate_defaults(scenario: str) -> dict[str, Any]:
    """The reference's fc_units_sep: 100 on split MNIST, 400 otherwise (``units=None``)."""
    del scenario
    return {"units": None}


def xdg_defaults(scenario: str) -> dict[str, Any]:
    """The reference's gating_prop: 0.9 on split MNIST, 0.85 on CIFAR-100, 0.6 otherwise (``None``)."""
    del scenario
    return {"gating_prop": None}


def _resolve_units(options: dict[str, Any], benchmark: str, scenario: str) -> dict[str, Any]:
    del scenario
    if options.get("units") is None:
        return {**options, "units": SEPARATE_UNITS.get(benchmark, 400)}
    return options


def _resolve_gating(options: dict[str, Any], benchmark: str, scenario: str) -> dict[str, Any]:
    del scenario
    if options.get("gating_prop") is None:
        return {**options, "gating_prop": published(GATING_PROP.get(benchmark, 0.6))}
    return options


SPECS = (
    StrategySpec(
        "separate-networks",
        separate_networks,
        "a separate network per context (Task-IL; the reference's 2 x 100 units on split MNIST)",
        scenarios=("task",),
        defaults=separate_defaults,
        resolve=_resolve_units,
        task_free=True,
        update_every=1,  # nothing to consolidate
    ),
    StrategySpec(
        "xdg",
        xdg,
        "context-dependent gating of the hidden units (Masse et al. 2018; Task-IL; 90 % off on split MNIST)",
        scenarios=("task",),
        defaults=xdg_defaults,
        resolve=_resolve_gating,
        task_free=True,
        update_every=1,  # nothing to consolidate
    ),
)
