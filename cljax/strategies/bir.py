"""Brain-inspired replay (BI-R; van de Ven, Siegelmann & Tolias, Nature Communications 2020).

Settings from shared/PROTOCOL.md (NMI-2022 split MNIST) and the reference code (GMvandeVen/continual-learning,
``models/cond_vae.py``, ``train/train_task_based.py``, ``param_values.py``):

- replay-through-feedback: one model, :class:`cljax.models.generators.CondVAE`; the classifier is the encoder
  (784-400-400) plus a softmax head on the 400-unit layer, the decoder (100-400-400-784) generates;
- conditional replay: a Gaussian-mixture prior with one mode per class (z = 100);
- gating based on internal context: fixed random gates in the decoder's hidden layers, one mask per class
  (Task- and Class-IL) or per context (Domain-IL), a proportion ``dg_prop`` of units gated off
  (split MNIST: Task 0, Domain 0.1, Class 0.1);
- distillation: replayed samples learn the frozen model's outputs softened at T = 2 (not multiplied by T^2);
- loss = reconstruction (pixel-averaged BCE) + KL / 784 (estimated with one z, the reference's GMM form) +
  cross-entropy (current) or distillation (replayed), weighted (1/t, 1 - 1/t), one Adam for everything.

Replay: 128 samples per iteration from the frozen model; each is assigned an earlier context (round robin,
so Task-IL's contexts get equal shares, as the reference's ceil(128/(t-1)) per context) and a class of that
context (Domain-IL: any class, with the context's gate), decoded from that class's prior mode.

Hyperparameters (inputs of the compiled programs, :mod:`cljax.hyper`): ``temperature`` and ``dg_prop``.
Whether the decoder has gates at all changes the program, so it is the static option ``gates``; left at
``None`` it is resolved to ``dg_prop > 0`` before anything is built (:func:`resolve_gates`). Runs whose
``dg_prop`` are all > 0 (or all 0) therefore share one program; a grid mixing 0 and > 0 splits into two,
unless it sets ``gates=True`` (then ``dg_prop = 0`` draws all-ones masks: gated layers that gate nothing
off, equal to no gates up to rounding). The masks are drawn once, at ``init``, from ``dg_prop``. Static:
``z_dim``, ``replay_batch`` and ``units`` (shapes).

Internal replay: on split CIFAR-100 the inputs are the frozen pre-trained conv layers' features
(:mod:`cljax.features`), so the decoder generates those (the reference's ``--hidden``), with a linear
output and the reference's CIFAR reconstruction loss, mean 0.5 (x - recon)^2 (``--recon-loss MSE``), and
the reference's CIFAR gate proportions 0 / 0.5 / 0.7. The split-MNIST models have no conv layers (the
reference's ``depth=0``), so there BI-R replays pixels, as the reference's does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from cljax.batching import sample_context
from cljax.hyper import is_traced, number
from cljax.losses import cross_entropy, distillation, mask_logits, replay_weight
from cljax.models.generators import CondVAE, log_normal_diag, reconstruction_loss
from cljax.regularizers import Published, published
from cljax.strategies.base import (
    PASS_AN_MLP,
    ClassifierState,
    Setup,
    Strategy,
    StrategySpec,
    apply_gradients,
    require_mlp,
)
from cljax.strategies.dgr import check_unit_interval, hidden_widths, positive_float, positive_int


class TracedGatesVAE(CondVAE):
    """:class:`CondVAE` whose gates exist whenever ``gate_size > 0``: whether there are gates is then a
    static choice, so ``gate_prop`` may be a traced hyperparameter (the masks are drawn from it at ``init``,
    with the same keys as CondVAE's). With ``gate_prop = 0`` the masks are all ones and gate nothing off."""

    @property
    def gated(self) -> bool:
        return self.gate_size > 0


def gate_proportion(value: Any) -> float | jax.Array:
    """``dg_prop`` as a number in [0, 1), or a ValueError; a traced value passes (it was checked before)."""
    value = number(value)
    if is_traced(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"dg_prop: must be a number in [0, 1), got {value!r}")
    return float(value)


def has_gates(gates: Any, dg_prop: float | jax.Array) -> bool:
    """Whether the decoder is gated: ``gates`` if set, else ``dg_prop > 0`` (which needs its concrete value;
    :func:`resolve_gates` sets ``gates`` before anything is compiled)."""
    if gates is None:
        if is_traced(dg_prop):
            raise ValueError(
                "gates: must be True or False when dg_prop is traced (resolve the options first: "
                "cljax.strategies.bir.resolve_gates)"
            )
        return dg_prop > 0
    if not isinstance(gates, bool):
        raise ValueError(f"gates: must be True, False or None (= dg_prop > 0), got {gates!r}")
    if not gates and not is_traced(dg_prop) and dg_prop > 0:
        raise ValueError(f"gates: False gates nothing, but dg_prop = {dg_prop} asks to gate units off")
    return gates


# The reference's gate proportions where they differ from split MNIST's (params/param_values.py lines
# 149-154 at e6d795a: "0. / 0.5 / 0.7" for its CIFAR experiments)
DG_PROP_BY_BENCHMARK = {"split-cifar100": {"task": 0.0, "domain": 0.5, "class": 0.7}}


def resolve_gates(options: dict[str, Any], benchmark: str, scenario: str) -> dict[str, Any]:
    """A ``StrategySpec.resolve``: a default ``dg_prop`` becomes the benchmark's published one, and
    ``gates=None`` becomes ``dg_prop > 0``, so the options fix the program's shape and ``dg_prop`` can be
    an input of it. An invalid ``dg_prop`` is left for ``build`` to report."""
    if isinstance(options.get("dg_prop"), Published) and benchmark in DG_PROP_BY_BENCHMARK:
        options = {**options, "dg_prop": published(DG_PROP_BY_BENCHMARK[benchmark][scenario])}
    if options.get("gates") is not None:
        return options
    try:
        return {**options, "gates": gate_proportion(options.get("dg_prop")) > 0}
    except ValueError:
        return options


class BIRState(flax.struct.PyTreeNode):
    """The model's params and optimizer state, its fixed decoder gates and the frozen previous params."""

    model: ClassifierState
    gates: Any  # fixed binary masks (the ``gates`` collection); empty without gating
    prev_params: Any
    seen: jax.Array  # int32: contexts finished, for ``sample``


def feature_reconstruction_loss(recon: jax.Array, x: jax.Array) -> jax.Array:
    """The reference's reconstruction loss on conv features (``--recon-loss MSE``, a linear output): the
    mean over the features of 0.5 (x - recon)^2, per sample."""
    return 0.5 * jnp.square(x - recon).reshape(x.shape[0], -1).mean(axis=1)


def bir(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Brain-inspired replay with replay-through-feedback, conditional replay, gating and distillation."""
    info, batch_size = setup.info, setup.batch_size
    options = {**bir_defaults(info.scenario), **dict(options or {})}
    on_features = info.features is not None  # internal replay: the decoder generates the conv features
    if not on_features:
        check_unit_interval(setup, "bir")
    recon_loss = feature_reconstruction_loss if on_features else reconstruction_loss
    output = (lambda y: y) if on_features else nn.sigmoid
    require_mlp(setup, "bir's classifier is its own VAE's encoder, built from an MLP's widths", PASS_AN_MLP)
    temperature = positive_float("temperature", options["temperature"])
    replay_n = positive_int("replay_batch", options["replay_batch"])
    z_dim = positive_int("z_dim", options["z_dim"])
    dg_prop = gate_proportion(options["dg_prop"])
    domain = info.scenario == "domain"
    cpc, n_out, n_ctx = info.classes_per_context, info.n_out, info.n_contexts
    gate_size = (n_ctx if domain else n_out) if has_gates(options["gates"], dg_prop) else 0
    model = TracedGatesVAE(
        tuple(info.input_shape),
        n_out,
        hidden_widths(setup, options["units"]),
        z_dim,
        gate_size,
        dg_prop,
    )
    n_pixels = float(math.prod(info.input_shape))  # a constant: no jnp op, which would be traced

    def variables(params, gates):
        return {"params": params, "gates": gates}

    def gate_input(classes: jax.Array, contexts: jax.Array) -> jax.Array | None:
        """One-hot gate rows: the context's (Domain-IL) or the class's (Task-, Class-IL)."""
        if not gate_size:
            return None
        return jax.nn.one_hot(contexts if domain else classes, gate_size)

    def losses(params, gates, x, eps, gate, class_probs):
        """Per-sample reconstruction + KL / pixels, and the class logits."""
        logits, recon, mean, logvar, z = model.apply(variables(params, gates), x, eps, gate)
        log_q = log_normal_diag(z, mean, logvar)
        log_p = model.apply(variables(params, gates), z, class_probs, method=CondVAE.prior_log_prob)
        return recon_loss(recon, x) + (log_q - log_p) / n_pixels, logits

    def init(key, images, stream):
        del images, stream
        k_model, k_gates = jax.random.split(key)
        x = jnp.zeros((1, *info.input_shape), jnp.float32)
        gate = jnp.zeros((1, gate_size), jnp.float32) if gate_size else None
        v = model.init({"params": k_model}, x, jnp.zeros((1, z_dim), jnp.float32), gate)
        params, gates = v["params"], v.get("gates", {})
        return BIRState(ClassifierState(params, setup.optimizer.init(params)), gates, params, jnp.int32(0))

    def generate(params, gates, contexts, classes, key):
        """Images decoded from the prior modes of ``classes`` with the gates of ``classes``/``contexts``."""
        v = variables(params, gates)
        z = model.apply(
            v, classes, jax.random.normal(key, (classes.shape[0], z_dim)), method=CondVAE.prior_sample
        )
        return output(model.apply(v, z, gate_input(classes, contexts), method=CondVAE.decode))

    def replay_plan(n: int, n_done: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per sample an earlier context (round robin over ``n_done``) and a class of it."""
        contexts = jnp.arange(n) % jnp.maximum(n_done, 1)
        within = jax.random.randint(key, (n,), 0, cpc)
        return contexts, within if domain else contexts * cpc + within

    def step(state: BIRState, images, stream, context, key):
        k_batch, k_eps, k_plan, k_gen = jax.random.split(key, 4)
        batch = sample_context(info, images, stream, context, k_batch, batch_size)
        gates = state.gates
        contexts_cur = jnp.full((batch_size,), context)
        gate_cur = gate_input(batch.y, contexts_cur)
        onehot_cur = jax.nn.one_hot(batch.y, n_out)

        def current_only(params):
            eps = jax.random.normal(k_eps, (batch_size, z_dim))

            def loss_fn(p):
                vae, logits = losses(p, gates, batch.x, eps, gate_cur, onehot_cur)
                return jnp.mean(vae) + cross_entropy(logits, batch.y, batch.mask)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            return grads, {"loss": loss, "replay_loss": jnp.zeros(())}

        def with_replay(params):
            contexts_r, classes_r = replay_plan(replay_n, context, k_plan)
            x_r = generate(state.prev_params, gates, contexts_r, classes_r, k_gen)
            teacher = model.apply(variables(state.prev_params, gates), x_r, method=CondVAE.classify)
            if info.task_il:
                t_mask = s_mask = stream.active[contexts_r]
            else:
                t_mask = stream.active[jnp.maximum(context - 1, 0)][None]
                s_mask = stream.active[context][None]
            teacher = mask_logits(teacher, t_mask)
            probs_r = jax.nn.softmax(teacher / temperature, axis=-1)
            if not gate_size:
                gate_r = None
            else:
                gate_r = jax.nn.one_hot(contexts_r, gate_size) if domain else probs_r
            x_all = jnp.concatenate([batch.x, x_r])
            eps = jax.random.normal(k_eps, (batch_size + replay_n, z_dim))
            gate_all = None if gate_r is None else jnp.concatenate([gate_cur, gate_r])
            probs_all = jnp.concatenate([onehot_cur, probs_r])
            w = replay_weight(context)

            def loss_fn(p):
                vae, logits = losses(p, gates, x_all, eps, gate_all, probs_all)
                current = jnp.mean(vae[:batch_size]) + cross_entropy(logits[:batch_size], batch.y, batch.mask)
                replayed = jnp.mean(vae[batch_size:]) + distillation(
                    logits[batch_size:], teacher, s_mask, temperature
                )
                return w * current + (1 - w) * replayed, replayed

            (loss, replayed), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return grads, {"loss": loss, "replay_loss": replayed}

        grads, metrics = jax.lax.cond(context > 0, with_replay, current_only, state.model.params)
        return state.replace(model=apply_gradients(setup, state.model, grads)), metrics

    def end_context(state: BIRState, images, stream, context, key):
        del images, stream, context, key
        return state.replace(prev_params=state.model.params, seen=state.seen + 1)

    def predict(state: BIRState, x):
        return model.apply(variables(state.model.params, state.gates), x, method=CondVAE.classify)

    def sample(state: BIRState, key, n):
        # Ordered for a readable grid: consecutive images cycle through a context's classes.
        idx = jnp.arange(n)
        contexts = (idx // cpc) % jnp.maximum(state.seen, 1)
        classes = idx % cpc if domain else contexts * cpc + idx % cpc
        return generate(state.model.params, state.gates, contexts, classes, key)

    return Strategy(init=init, step=step, end_context=end_context, predict=predict, sample=sample)


def bir_defaults(scenario: str) -> dict[str, Any]:
    """NMI-2022 split MNIST (reference ``param_values.py``).

    Decoder-gate proportion 0 / 0.1 / 0.1 (Task / Domain / Class), T = 2, z = 100, replay batch 128; the
    hidden widths follow the classifier's (``units=None``: 400, the reference's fc_units); ``gates=None``:
    gated exactly when ``dg_prop > 0``.
    """
    dg_prop = {"task": 0.0, "domain": 0.1, "class": 0.1}[scenario]
    return {
        "temperature": 2.0,
        "dg_prop": published(dg_prop),
        "gates": None,
        "z_dim": 100,
        "replay_batch": 128,
        "units": None,
    }


SPECS = (
    StrategySpec(
        "bir",
        bir,
        "brain-inspired replay: replay-through-feedback, class-conditional prior, decoder gates, "
        "distillation (van de Ven et al. 2020; NMI-2022 settings)",
        defaults=bir_defaults,
        resolve=resolve_gates,
        hyperparameters=("temperature", "dg_prop"),
    ),
)
