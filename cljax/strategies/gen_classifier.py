"""The generative classifier: one VAE per class, classification by the likelihood each gives a sample.

As NMI-2022 runs it (van de Ven et al. 2022; GMvandeVen/continual-learning,
``models/generative_classifier.py``, ``models/vae.py``, ``train_gen_classifier`` in
``train/train_task_based.py``, ``compare.py``): each class has its own VAE, trained only on that class's
data, with its own Adam (lr 0.001, betas 0.9 / 0.999) for
``iters / classes_per_context`` iterations (``compare.py`` divides the iterations among a context's
classes). Nothing is shared between classes, so nothing is forgotten: the method is Class-IL only and
needs no replay. A sample is assigned to the class whose VAE gives it the highest log-likelihood,
estimated by importance sampling with ``eval_s`` samples from q(z|x) (``--eval-s``, 50 by default;
the reference's CIFAR-100 table uses 10000)::

    log p(x) ~ logsumexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S,   z_s ~ q(z|x)

with p(x|z) a unit-variance Gaussian around the decoded image, p(z) = N(0, I), both without their 2 pi
constants, as the reference's ``estimate_lls``. Classes not yet trained are never predicted.

On split CIFAR-100 the VAEs model the frozen conv layers' features (the reference's ``--hidden``, on
the features it computes once, as cljax does: :mod:`cljax.features`) with a linear output and the
reference's CIFAR reconstruction loss, mean 0.5 (x - recon)^2 (``--recon-loss MSE``); 2 fc layers, z 20.

On a task-free stream (``--stream``; the reference's ``train_gen_classifier_on_stream``, run by
``compare_task_free.py``) every class present in a batch takes one step on its samples in that batch: the
method needs no boundaries.

All class VAEs are one stacked pytree (leading axis: the output unit); the current context's are also
held apart with their Adam states, and every ``classes_per_context``-th step updates all of them at once
(vmapped), each on a batch of its own class, so each gets ``iters / classes_per_context`` updates as in the
reference (which trains them one after the other; they share nothing, so the order does not matter).
Writing one class's VAE into the whole stack at every step would copy the stack each time.
Evaluation maps over the classes.

Settings (``params/param_values.py``): 85 units per hidden layer (``fc_units_gc``); 3 fc layers and z 5
on split MNIST, 2 and z 20 otherwise (``fc_lay_gc``, ``z_dim_gc``). NMI-2022 Table 2: 93.82 (0.06) on split
MNIST Class-IL.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from cljax import optim
from cljax.batching import gather
from cljax.models.generators import VAE, gaussian_kl, log_normal_diag, vae_loss
from cljax.regularizers import published
from cljax.strategies.base import (
    Setup,
    Strategy,
    StrategySpec,
    context_steps,
    keep_state_on_stream,
    require_mlp,
)
from cljax.strategies.dgr import check_unit_interval, positive_float, positive_int

UNITS = 85  # fc_units_gc
LR = 1e-3  # compare.py: args.lr = 0.001 for the generative classifier
EVAL_S = 50  # --eval-s
# fc_lay_gc and z_dim_gc: split MNIST, else (params/param_values.py)
MNIST_LIKE = ("split-mnist", "perm-mnist", "split-fmnist")
LAYERS_AND_Z = {"mnist": (3, 5), "other": (2, 20)}
UNTRAINED = -1e30  # score of a class whose VAE has not been trained


class GenClassifierState(flax.struct.PyTreeNode):
    """Every class's VAE (leading axis: output unit), the current context's VAEs and Adam states (leading
    axis: its classes), which classes are trained, the steps taken in this context, each context's samples
    grouped by class, and the key of the importance samples."""

    params: Any
    current: Any
    opt_state: Any
    trained: jax.Array  # bool (n_out,)
    step: jax.Array  # int32 (): steps taken in the current context
    loss: jax.Array  # float32 (): the latest update's mean loss (reported at every step)
    class_slots: jax.Array  # int32 (C, classes_per_context, N_max): positions of each class's samples
    class_n: jax.Array  # int32 (C, classes_per_context)
    eval_key: jax.Array  # uint32 key data (jax.random.key_data), so the state holds numbers only


def layers_and_z(benchmark: str) -> tuple[int, int]:
    """The reference's fc layers and z size for a benchmark's generative classifier."""
    return LAYERS_AND_Z["mnist" if benchmark in MNIST_LIKE else "other"]


def _settings(setup: Setup, options: Mapping[str, Any]) -> dict[str, Any]:
    layers, z_dim = layers_and_z(setup.info.benchmark)
    layers = positive_int("gen_layers", options.get("gen_layers") or layers)
    if layers < 2:
        raise ValueError(f"option 'gen_layers': the VAE needs 2 fc layers or more (one hidden), got {layers}")
    return {
        "units": positive_int("gen_units", options.get("gen_units", UNITS)),
        "layers": layers,
        "z_dim": positive_int("z_dim", options.get("z_dim") or z_dim),
        "lr": positive_float("gen_lr", options.get("gen_lr", LR)),
        "eval_s": positive_int("eval_s", options.get("eval_s", EVAL_S)),
    }


def feature_vae_loss(recon: jax.Array, x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """The reference's VAE loss on conv features (``--recon-loss MSE``, ``network_output="none"``) per
    sample: the mean of 0.5 (x - recon)^2 over the features + KL / number of features."""
    n = math.prod(x.shape[1:])
    squared = jnp.square(x - recon).reshape(x.shape[0], -1)
    return 0.5 * squared.mean(axis=1) + gaussian_kl(mean, logvar) / n


def log_likelihoods(
    model: VAE, params: Any, x: jax.Array, eps: jax.Array, output: Callable = nn.sigmoid
) -> jax.Array:
    """Importance-sampled log p(x) (B,) under one VAE, with eps (S, B, z) the standard-normal draws;
    ``output`` maps the decoder's last layer to the data (sigmoid for pixels, identity for features)."""
    mean, logvar = model.apply(params, x, method=VAE.encode)
    flat = x.reshape(x.shape[0], -1)

    def one(e):
        z = mean + jnp.exp(0.5 * logvar) * e
        recon = output(model.apply(params, z, method=VAE.decode)).reshape(flat.shape)
        log_p_x_z = -0.5 * jnp.sum(jnp.square(flat - recon), axis=-1)
        log_p_z = -0.5 * jnp.sum(jnp.square(z), axis=-1)
        return log_p_x_z + log_p_z - log_normal_diag(z, mean, logvar)

    per_sample = jax.lax.map(one, eps)  # (S, B): one decoding of the batch at a time
    return jax.nn.logsumexp(per_sample, axis=0) - math.log(eps.shape[0])


def group_by_class(info, images, stream) -> tuple[jax.Array, jax.Array]:
    """Each context's training positions grouped by its classes: (C, k, N_max) positions, the class's first,
    and (C, k) counts. Class j of context c is the output unit c * k + j (Class-IL)."""
    k = info.classes_per_context
    n_max = stream.train_idx.shape[1]
    slot = jnp.arange(n_max)

    def one_context(c):
        units = stream.label_map[c, images.train_y[stream.train_idx[c]]]
        member = (units[None, :] == c * k + jnp.arange(k)[:, None]) & (slot < stream.train_n[c])[None, :]
        return jnp.argsort(~member, axis=1, stable=True).astype(jnp.int32), member.sum(axis=1)

    return jax.lax.map(one_context, jnp.arange(info.n_contexts))


def gen_classifier(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """One VAE per class, classification by importance-sampled likelihood (see the module docstring)."""
    info = setup.info
    require_mlp(setup, "gen-classifier has no classifier network (one VAE per class)", "leave model unset")
    on_features = info.features is not None  # the reference's --hidden: VAEs of the frozen conv features
    if not on_features:
        check_unit_interval(setup, "gen-classifier")
    loss_of = feature_vae_loss if on_features else vae_loss
    output = (lambda y: y) if on_features else nn.sigmoid
    s = _settings(setup, {**gen_classifier_defaults(info.scenario), **dict(options or {})})
    model = VAE(tuple(info.input_shape), (s["units"],) * (s["layers"] - 1), s["z_dim"])
    optimizer = optim.adam(s["lr"], b1=0.9, b2=0.999)
    k = info.classes_per_context

    def context_vaes(params, context):
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, context * k, k), params)

    def init(key, images, stream):
        k_vae, k_eval = jax.random.split(key)
        x = jnp.zeros((1, *info.input_shape), jnp.float32)
        z = jnp.zeros((1, s["z_dim"]), jnp.float32)
        params = jax.vmap(lambda kk: model.init(kk, x, z))(jax.random.split(k_vae, info.n_out))
        current = context_vaes(params, 0)
        class_slots, class_n = group_by_class(info, images, stream)
        return GenClassifierState(
            params=params,
            current=current,
            opt_state=jax.vmap(optimizer.init)(current),
            trained=jnp.zeros((info.n_out,), bool),
            step=jnp.zeros((), jnp.int32),
            loss=jnp.zeros((), jnp.float32),
            class_slots=class_slots,
            class_n=class_n,
            eval_key=jax.random.key_data(k_eval),
        )

    def update(state: GenClassifierState, images, stream, context, key):
        """One Adam step for each of the context's VAEs, each on a batch of its own class."""
        k_batch, k_eps = jax.random.split(key)
        n = jnp.maximum(state.class_n[context], 1)[:, None]
        pos = jax.random.randint(k_batch, (k, setup.batch_size), 0, n)
        slots = jnp.take_along_axis(state.class_slots[context], pos, axis=1).reshape(-1)
        ctx = jnp.full(slots.shape, context, jnp.int32)
        x = gather(info, images, stream, ctx, slots).x.reshape(k, setup.batch_size, *info.input_shape)
        eps = jax.random.normal(k_eps, (k, setup.batch_size, s["z_dim"]))

        def one(p, o, x, e):
            def loss_fn(p):
                recon, mean, logvar = model.apply(p, x, e)
                return jnp.mean(loss_of(recon, x, mean, logvar))

            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, o = optimizer.update(grads, o, p)
            return optax.apply_updates(p, updates), o, loss

        current, opt_state, loss = jax.vmap(one)(state.current, state.opt_state, x, eps)
        return state.replace(current=current, opt_state=opt_state, loss=jnp.mean(loss))

    def step(state: GenClassifierState, images, stream, context, key):
        state = jax.lax.cond(
            state.step % k == 0, lambda st: update(st, images, stream, context, key), lambda st: st, state
        )
        return state.replace(step=state.step + 1), {"loss": state.loss}

    def end_context(state: GenClassifierState, images, stream, context, key):
        del images, stream, key

        def write(stack, vaes):
            return jax.lax.dynamic_update_slice_in_dim(stack, vaes, context * k, 0)

        params = jax.tree.map(write, state.params, state.current)
        trained = jax.lax.dynamic_update_slice_in_dim(state.trained, jnp.ones((k,), bool), context * k, 0)
        following = jnp.minimum(context + 1, info.n_contexts - 1)
        current = context_vaes(params, following)
        return state.replace(
            params=params,
            current=current,
            opt_state=jax.vmap(optimizer.init)(current),
            trained=trained,
            step=jnp.zeros((), jnp.int32),
        )

    def predict(state: GenClassifierState, x):
        key = jax.random.wrap_key_data(state.eval_key)
        eps = jax.random.normal(key, (s["eval_s"], x.shape[0], s["z_dim"]))
        scores = jax.lax.map(lambda p: log_likelihoods(model, p, x, eps, output), state.params)  # (n_out, B)
        return jnp.where(state.trained[:, None], scores, UNTRAINED).T

    if not setup.task_free:
        return Strategy(init=init, step=step, end_context=end_context, predict=predict)

    def learn(state: GenClassifierState, images, stream, batch, key):
        """The reference's ``train_gen_classifier_on_stream``: every class present in the batch takes one
        Adam step on its own samples (their mean loss); the other classes' VAEs and Adam states stay."""
        del images, stream
        eps = jax.random.normal(key, (batch.x.shape[0], s["z_dim"]))
        member = batch.y[None, :] == jnp.arange(info.n_out)[:, None]  # (n_out, B)
        count = member.sum(axis=1)

        def one(p, o, m, n):
            def loss_fn(p):
                recon, mean, logvar = model.apply(p, batch.x, eps)
                return jnp.sum(m * loss_of(recon, batch.x, mean, logvar)) / jnp.maximum(n, 1)

            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, new_o = optimizer.update(grads, o, p)
            present = n > 0
            keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(present, new, old))
            return keep(optax.apply_updates(p, updates), p), keep(new_o, o), loss

        params, opt_state, loss = jax.vmap(one)(state.params, state.opt_state, member, count)
        trained = state.trained | (count > 0)
        mean_loss = jnp.sum(loss * count) / batch.x.shape[0]
        return state.replace(params=params, opt_state=opt_state, trained=trained), {"loss": mean_loss}

    def stream_init(key, images, stream):
        state = init(key, images, stream)
        return state.replace(opt_state=jax.vmap(optimizer.init)(state.params))

    stream_step, stream_end = context_steps(setup, learn, keep_state_on_stream)
    return Strategy(
        stream_init, stream_step, stream_end, predict, learn=learn, consolidate=keep_state_on_stream
    )


def gen_classifier_defaults(scenario: str) -> dict[str, Any]:
    """NMI-2022 (the reference's compare.py and params/param_values.py): 85 units, Adam lr 0.001, 50
    importance samples; fc layers and z size by benchmark (None: split MNIST 3 and 5, otherwise 2 and 20)."""
    del scenario
    return {
        "gen_units": UNITS,
        "gen_layers": None,
        "z_dim": None,
        "gen_lr": published(LR),
        "eval_s": EVAL_S,
    }


def resolve_gen_classifier(options: dict[str, Any], benchmark: str, scenario: str) -> dict[str, Any]:
    """Fill the benchmark's fc layers and z size, so results record what ran."""
    del scenario
    layers, z_dim = layers_and_z(benchmark)
    return {
        **options,
        "gen_layers": options.get("gen_layers") or layers,
        "z_dim": options.get("z_dim") or z_dim,
    }


SPECS = (
    StrategySpec(
        "gen-classifier",
        gen_classifier,
        "generative classifier: one VAE per class, importance-sampled likelihood, S = 50 (NMI-2022)",
        scenarios=("class",),
        defaults=gen_classifier_defaults,
        resolve=resolve_gen_classifier,
        hyperparameters=("gen_lr",),
        task_free=True,  # compare_task_free.py: every class present in a batch trains its VAE
        update_every=1,  # nothing to consolidate
    ),
)
