"""The diagonal of the Fisher information, computed for a whole context in one compiled program.

The exact Fisher of a classifier averages, over samples x and labels y drawn from the model itself,
the squared gradient of the log-likelihood::

    F = 1/N sum_n sum_y p(y | x_n) (d log p(y | x_n) / d theta)^2

(EWC's "labels weighted by predicted probabilities", NMI-2022). The reference computes it with a data
loader of batch size 1 and one backward pass per sample and label. Here the samples are processed in
chunks with ``lax.scan`` and, for every dense layer called once on (B, features) inputs (cljax's ``Linear``,
``y = a @ W.T + b``, or ``flax.linen.Dense``, ``y = a @ K + b``), the per-sample gradients are never formed:
the gradient of sample n and label y is ``a_n (x) delta_ny`` (delta = the gradient at the layer's output), so
the sum of its squares is the matrix product ``(sum_y p_ny delta_ny**2).T @ a**2`` (transposed for ``K``).
Everything else (convolutions, layers called twice, nnx modules behind flax's bridge, any other linen
module) takes the general route: per-sample gradients with ``jax.vmap``, summed chunk by chunk. Both give
the same numbers, so any linen network works.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cljax.batching import gather
from cljax.losses import mask_logits
from cljax.models import DENSE_LAYERS
from cljax.scenarios import Images, ScenarioInfo, Stream

FISHER_LABELS = ("all", "sample", "pred", "true")
"""Which labels the Fisher uses for a sample, by the reference's names: ``all`` (every label weighted by its
predicted probability: the exact Fisher, NMI-2022), ``sample`` (one label drawn from the prediction),
``pred`` (the predicted label, 3S-2019) or ``true`` (the data label: the 'empirical Fisher')."""

Params = Any
# Loads chunk i: float inputs (B, ...), int labels (B,) and a validity weight (B,) (0 for padding).
ChunkLoader = Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]

_TAP = "fisher_inputs"
_GENERAL_SUBCHUNK = 16  # samples per vmapped per-sample-gradient block on the general route


class _Dense(NamedTuple):
    """A dense layer on the factored route: its module path and the name and layout of its matrix."""

    path: tuple[str, ...]
    matrix: str  # "weight" (cljax Linear, (out, in)) or "kernel" (flax.linen.Dense, (in, out))
    width: int  # output units


def _tap(perturbations: dict[str, jax.Array] | None):
    """Interceptor: record each dense layer's input and add a zero perturbation to its output.

    The gradient with respect to that perturbation is the gradient at the layer's output (``delta``).
    Layers without a perturbation (not on the factored route) are only recorded.
    """

    def interceptor(next_fun, args, kwargs, context):
        if not (isinstance(context.module, DENSE_LAYERS) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        context.module.sow("intermediates", _TAP, args[0])
        out = next_fun(*args, **kwargs)
        name = "/".join(context.module.path)
        if perturbations is not None and name in perturbations:
            out = out + perturbations[name]
        return out

    return interceptor


def _factored_layers(model: nn.Module, params: Params, x: jax.Array) -> dict[str, _Dense]:
    """The dense layers whose Fisher can be factored: called once, on (B, features) inputs.

    Returns {"/".join(module path): layer}.
    """
    with nn.intercept_methods(_tap(None)):
        _, state = jax.eval_shape(lambda p, x: model.apply(p, x, mutable=["intermediates"]), params, x)
    taps = traverse_util.flatten_dict(state.get("intermediates", {}))
    flat = traverse_util.flatten_dict(params.get("params", {}))
    layers = {}
    for key, calls in taps.items():
        if key[-1] != _TAP or len(calls) != 1 or calls[0].ndim != 2 or calls[0].shape[0] != x.shape[0]:
            continue
        path, fan_in = key[:-1], calls[0].shape[1]
        weight, kernel = flat.get((*path, "weight")), flat.get((*path, "kernel"))
        if weight is not None and weight.ndim == 2 and weight.shape[1] == fan_in:
            layers["/".join(path)] = _Dense(path, "weight", weight.shape[0])
        elif kernel is not None and kernel.ndim == 2 and kernel.shape[0] == fan_in:
            layers["/".join(path)] = _Dense(path, "kernel", kernel.shape[1])
    return layers


def _label_cotangents(
    logits: jax.Array, labels: jax.Array, mode: str, n_labels: int, mask: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Cotangents of -log p(y) at the logits, (K, B, n_out), and their weights (B, K).

    d(-log softmax(z)_y)/dz = p - onehot(y). ``all`` enumerates the first ``n_labels`` active units and
    weights each by its predicted probability; the other modes use one label per sample with weight 1.
    """
    p = jax.nn.softmax(logits, axis=-1)
    n_out = logits.shape[-1]
    if mode == "all":
        units = jnp.argsort(~mask, stable=True)[:n_labels]  # active units first
        onehots = jax.nn.one_hot(units, n_out, dtype=p.dtype)  # (K, n_out)
        return p[None] - onehots[:, None, :], p[:, units] * mask[units]
    if mode == "sample":
        y = jax.random.categorical(key, logits, axis=-1)
    elif mode == "pred":
        y = jnp.argmax(logits, axis=-1)
    else:
        y = labels
    return (p - jax.nn.one_hot(y, n_out, dtype=p.dtype))[None], jnp.ones((p.shape[0], 1), p.dtype)


def diagonal_fisher(
    model: nn.Module,
    params: Params,
    load: ChunkLoader,
    n_chunks: int,
    mask: jax.Array,
    labels: str = "all",
    key: jax.Array | None = None,
    n_labels: int | None = None,
    factor_dense: bool = True,
) -> Params:
    """The diagonal Fisher of ``model`` at ``params`` over ``n_chunks`` chunks from ``load``.

    ``mask`` (n_out,) selects the output units the softmax runs over (Task-IL: the context's own units,
    as the reference slices the output layer). ``labels`` is one of :data:`FISHER_LABELS`; ``n_labels``
    (static) is how many active units ``all`` enumerates (default: every unit). ``key`` is needed for
    ``sample``. ``factor_dense=False`` sends every layer along the general (per-sample gradient) route.
    Returns a pytree like ``params``: the mean over the valid samples.
    """
    total, count = fisher_sums(model, params, load, n_chunks, mask, labels, key, n_labels, factor_dense)
    return fisher_mean(total, count)


def fisher_mean(total: dict, count: jax.Array) -> Params:
    """The Fisher from :func:`fisher_sums`' running sums: their mean over the valid samples."""
    return traverse_util.unflatten_dict({k: v / jnp.maximum(count, 1.0) for k, v in total.items()})


def fisher_sums(
    model: nn.Module,
    params: Params,
    load: ChunkLoader,
    n_chunks: int | jax.Array,
    mask: jax.Array,
    labels: str = "all",
    key: jax.Array | None = None,
    n_labels: int | None = None,
    factor_dense: bool = True,
    start: tuple[dict, jax.Array] | None = None,
) -> tuple[dict, jax.Array]:
    """As :func:`diagonal_fisher`, but the sums (flattened like ``params``) and the count of valid samples,
    added to ``start``; ``n_chunks`` may be traced (a loop of as many chunks as there are)."""
    if labels not in FISHER_LABELS:
        raise ValueError(f"fisher_labels must be one of {', '.join(FISHER_LABELS)}; got {labels!r}")
    if key is None:
        key = jax.random.key(0)
    x0, _, _ = jax.eval_shape(load, jnp.zeros((), jnp.int32))
    n_out = mask.shape[-1]
    n_labels = n_out if n_labels is None else min(n_labels, n_out)
    factored = _factored_layers(model, params, jnp.zeros(x0.shape, x0.dtype)) if factor_dense else {}
    flat = traverse_util.flatten_dict(params)
    fast_keys = {("params", *f.path, leaf) for f in factored.values() for leaf in (f.matrix, "bias")}
    rest = {k: v for k, v in flat.items() if k not in fast_keys}
    fixed = {k: v for k, v in flat.items() if k in fast_keys}

    def logits_fn(variables, x, perturbations=None):
        if not factored:  # no taps: the network runs as it is
            return mask_logits(model.apply(variables, x), mask), {}
        with nn.intercept_methods(_tap(perturbations)):
            z, state = model.apply(variables, x, mutable=["intermediates"])
        taps = traverse_util.flatten_dict(state["intermediates"])
        inputs = {name: taps[(*layer.path, _TAP)][0] for name, layer in factored.items()}
        return mask_logits(z, mask), inputs

    def factored_forward(x):
        """Logits, the pullback to every factored layer's output, and those layers' inputs."""
        zeros = {name: jnp.zeros((x.shape[0], layer.width), x.dtype) for name, layer in factored.items()}
        return jax.vjp(lambda e: logits_fn(params, x, e), zeros, has_aux=True)

    def factored_part(vjp, inputs, cotangents, weights):
        deltas = jax.vmap(lambda c: vjp(c)[0])(cotangents)  # name -> (K, B, out)
        out = {}
        for name, layer in factored.items():
            d2 = jnp.einsum("bk,kbo->bo", weights, jnp.square(deltas[name]))
            a2 = jnp.square(inputs[name])
            out[("params", *layer.path, layer.matrix)] = d2.T @ a2 if layer.matrix == "weight" else a2.T @ d2
            if ("params", *layer.path, "bias") in flat:
                out[("params", *layer.path, "bias")] = d2.sum(0)
        return out

    def general_chunk(x, cotangents, weights):
        def one(xn, cn, wn):
            def f(r):
                return logits_fn(traverse_util.unflatten_dict({**fixed, **r}), xn[None])[0][0]

            _, vjp = jax.vjp(f, rest)
            grads = jax.vmap(lambda c: vjp(c)[0])(cn)  # (K, ...)
            return jax.tree.map(lambda g: jnp.tensordot(wn, jnp.square(g), axes=1), grads)

        b = x.shape[0]
        sub = math.gcd(b, _GENERAL_SUBCHUNK)
        blocks = (
            x.reshape(b // sub, sub, *x.shape[1:]),
            jnp.swapaxes(cotangents, 0, 1).reshape(b // sub, sub, cotangents.shape[0], cotangents.shape[2]),
            weights.reshape(b // sub, sub, -1),
        )

        def body(acc, block):
            f = jax.vmap(one)(*block)
            return jax.tree.map(lambda a, g: a + g.sum(0), acc, f), None

        acc, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, rest), blocks)
        return acc

    def body(carry, i):
        total, count = carry
        x, y, valid = load(i)
        if factored:
            z, vjp, inputs = factored_forward(x)
        else:
            z, _ = logits_fn(params, x)
        z = jax.lax.stop_gradient(z)
        cotangents, weights = _label_cotangents(z, y, labels, n_labels, mask, jax.random.fold_in(key, i))
        weights = weights * valid[:, None].astype(weights.dtype)
        part = factored_part(vjp, inputs, cotangents, weights) if factored else {}
        if rest:
            part.update(general_chunk(x, cotangents, weights))
        total = {k: total[k] + part[k] for k in total}
        return (total, count + valid.sum()), None

    init = start if start is not None else fisher_zeros(params)
    if isinstance(n_chunks, int):
        return jax.lax.scan(body, init, jnp.arange(n_chunks))[0]
    return jax.lax.fori_loop(0, n_chunks, lambda i, carry: body(carry, i)[0], init)


def fisher_zeros(params: Params) -> tuple[dict, jax.Array]:
    """Empty running sums for :func:`fisher_sums`."""
    flat = traverse_util.flatten_dict(params)
    return {k: jnp.zeros_like(v) for k, v in flat.items()}, jnp.zeros((), jnp.float32)


def context_fisher(
    info: ScenarioInfo,
    model: nn.Module,
    params: Params,
    images: Images,
    stream: Stream,
    context: jax.Array,
    key: jax.Array,
    labels: str = "all",
    n: int | None = None,
    chunk_size: int = 500,
) -> Params:
    """The diagonal Fisher over a context's training data, on the units active in that context.

    ``n``: use ``n`` samples drawn at random without replacement (default: every sample of the context,
    as NMI-2022). ``labels``: see :data:`FISHER_LABELS`.
    """
    n_max = stream.train_idx.shape[-1]
    n_real = stream.train_n[context]
    perm_key, label_key = jax.random.split(key)
    if n is None:
        total, slots = n_max, jnp.arange(n_max)
    else:
        total = n
        draw = jnp.where(jnp.arange(n_max) < n_real, jax.random.uniform(perm_key, (n_max,)), jnp.inf)
        slots = jnp.argsort(draw)[: min(n, n_max)]
        slots = jnp.pad(slots, (0, max(n - n_max, 0)))
    used = jnp.minimum(n_real, total)
    chunk = min(chunk_size, total)
    n_chunks = -(-total // chunk)
    positions = jnp.arange(n_chunks * chunk)
    slots = jnp.pad(slots, (0, n_chunks * chunk - slots.shape[0]))

    def load(i):
        pos = jax.lax.dynamic_slice_in_dim(positions, i * chunk, chunk)
        s = jax.lax.dynamic_slice_in_dim(slots, i * chunk, chunk)
        ctx = jnp.full((chunk,), context, jnp.int32)
        batch = gather(info, images, stream, ctx, s)
        return batch.x, batch.y, (pos < used).astype(jnp.float32)

    n_labels = info.classes_per_context if info.task_il else info.n_out
    mask = stream.active[context]
    return diagonal_fisher(model, params, load, n_chunks, mask, labels, label_key, n_labels)


def seen_fisher(
    info: ScenarioInfo,
    model: nn.Module,
    params: Params,
    images: Images,
    stream: Stream,
    seen: jax.Array,
    key: jax.Array,
    labels: str = "all",
    n: int | None = None,
    chunk_size: int = 500,
) -> Params:
    """The diagonal Fisher over the training samples marked in ``seen`` (bool (C, N_max), by context and
    position): what a task-free learner was shown since its last consolidation.

    Each sample is on its context's active units, as in :func:`context_fisher`; ``n`` draws that many of the
    seen samples without replacement (default: all). When ``seen`` marks every sample of one context, the
    numbers are :func:`context_fisher`'s for that context: the same chunks in the same order.
    """
    n_contexts, n_max = seen.shape
    perm_key, label_key = jax.random.split(key)
    if n is not None:
        draw = jnp.where(seen.reshape(-1), jax.random.uniform(perm_key, (seen.size,)), jnp.inf)
        keep = jnp.argsort(draw)[: min(n, seen.size)]
        chosen = jnp.zeros(seen.size, bool).at[keep].set(True) & seen.reshape(-1)
        seen = chosen.reshape(seen.shape)
    chunk = min(chunk_size, n_max)
    n_labels = info.classes_per_context if info.task_il else info.n_out

    def one_context(sums, context):
        slots = jnp.argsort(~seen[context], stable=True)  # the seen positions first, in order
        used = seen[context].sum()
        slots = jnp.pad(slots, (0, -(-n_max // chunk) * chunk - n_max))

        def load(i):
            pos = i * chunk + jnp.arange(chunk)
            s = jax.lax.dynamic_slice_in_dim(slots, i * chunk, chunk)
            batch = gather(info, images, stream, jnp.full((chunk,), context, jnp.int32), s)
            return batch.x, batch.y, (pos < used).astype(jnp.float32)

        mask = stream.active[context]
        context_key = jax.random.fold_in(label_key, context)
        n_chunks = -(-used // chunk)
        sums = fisher_sums(model, params, load, n_chunks, mask, labels, context_key, n_labels, start=sums)
        return sums, None

    sums, _ = jax.lax.scan(one_context, fisher_zeros(params), jnp.arange(n_contexts))
    return fisher_mean(*sums)
