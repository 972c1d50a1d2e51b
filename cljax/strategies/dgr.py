"""Deep generative replay (Shin et al. 2017) with a separate generator, as the reference trains it.

Settings from shared/PROTOCOL.md (NMI-2022 and 3S-2019, reference code GMvandeVen/continual-learning,
``train/train_task_based.py``): a VAE (encoder 784-400-400, z 100, decoder 100-400-400-784, sigmoid output;
loss = pixel-averaged BCE + KL / 784) trained in the same loop as the classifier with its own Adam (lr
0.001); from the second context on every iteration also draws 128 samples from the previous (frozen)
generator, labelled by the previous (frozen) classifier. Loss = (1/t) L_current + (1 - 1/t) L_replay for
the classifier and, on the same samples, for the generator. DGR uses the frozen classifier's arg-max (hard
targets); DGR+distill its outputs softened at T = 2 (3S-2019 multiplies that loss by T^2).

Replay targets per scenario, as the reference computes them: Task-IL labels every replayed sample under
every earlier context's output units (arg-max over that context's units) and averages the losses over those
contexts; Domain-IL uses all units; Class-IL takes the arg-max over the units active in the previous context
(all units for NMI-2022's ``all``, the classes seen so far for ``seen``) and trains over the current units.

Option ``generator``: "vae" (the reference's, default) or "gan" (an MLP GAN with the non-saturating loss;
Shin et al. 2017 used WGAN-GP, see :func:`cljax.models.generators.gan_generator`).

Sampling z, generating, labelling, the classifier update and the generator update are one compiled step. In
the first context there is nothing to replay, so a ``lax.cond`` on the (unbatched) context index skips that
half of the work; both branches live in the same program, compiled once for every context.

Hyperparameters (inputs of the compiled programs, :mod:`cljax.hyper`): ``gen_lr`` (``None``, the default,
is resolved to the generator's published rate before anything is built, :func:`resolve_generator`) and,
for DGR+distill, ``temperature``. Static, as they change shapes or the program: ``generator``,
``gen_units``, ``z_dim``, ``replay_batch`` and the flag ``t_squared``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cljax.batching import sample_context
from cljax.hyper import is_traced, number
from cljax.losses import cross_entropy, distillation, mask_logits, replay_weight
from cljax.models.generators import GAN_LR, VAE_LR, Generator, GeneratorState, make_generator
from cljax.scenarios import ScenarioInfo, Stream
from cljax.strategies.base import (
    ClassifierState,
    Setup,
    Strategy,
    StrategySpec,
    apply_gradients,
    init_classifier,
)

# (student_logits, teacher_logits, teacher_mask, student_mask) -> scalar, for one replay head.
HeadLoss = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

# Each generator's published learning rate, what ``gen_lr=None`` stands for (:func:`resolve_generator`).
GENERATOR_LR = {"vae": VAE_LR, "gan": GAN_LR}


class ReplayState(flax.struct.PyTreeNode):
    """Classifier and generator (trainable, with optimizer states) and their frozen copies."""

    classifier: ClassifierState
    generator: GeneratorState
    prev_classifier: Any  # classifier params at the end of the previous context
    prev_generator: Any  # generator params at the end of the previous context


# ------------------------------------------------------------------------------------------ shared parts


def replay_heads(info: ScenarioInfo, stream: Stream, context: jax.Array) -> tuple[jax.Array, ...]:
    """The units replay is judged on: teacher masks (K, n_out), student masks (K, n_out) and weights (K,).

    Task-IL: one head per context, weight 1/(t-1) for each earlier context and 0 for the others; Domain- and
    Class-IL: one head, the teacher on the previous context's units and the student on the current ones.
    """
    if info.task_il:
        weights = (jnp.arange(info.n_contexts) < context) / jnp.maximum(context, 1)
        return stream.active, stream.active, weights.astype(jnp.float32)
    previous = jnp.maximum(context - 1, 0)
    return stream.active[previous][None], stream.active[context][None], jnp.ones((1,), jnp.float32)


def replay_labels(teacher_logits: jax.Array, teacher_masks: jax.Array) -> jax.Array:
    """Hard targets (K, R): the frozen classifier's arg-max over each head's units."""
    return jnp.argmax(mask_logits(teacher_logits[None], teacher_masks[:, None, :]), axis=-1)


def hard_target_loss(
    student: jax.Array, teacher: jax.Array, t_mask: jax.Array, s_mask: jax.Array
) -> jax.Array:
    """Cross-entropy on the teacher's arg-max (DGR)."""
    return cross_entropy(student, jnp.argmax(mask_logits(teacher, t_mask), axis=-1), s_mask)


def soft_target_loss(temperature: float, t_squared: bool) -> HeadLoss:
    """Distillation on the teacher's softened outputs (DGR+distill); units outside the teacher's mask get
    target probability 0, as the reference pads them."""

    def loss(student, teacher, t_mask, s_mask):
        return distillation(student, mask_logits(teacher, t_mask), s_mask, temperature, t_squared)

    return loss


def heads_loss(head_loss: HeadLoss, student: jax.Array, teacher: jax.Array, heads: tuple) -> jax.Array:
    """Weighted sum over heads of ``head_loss``."""
    t_masks, s_masks, weights = heads
    per_head = jax.vmap(head_loss, in_axes=(None, None, 0, 0))(student, teacher, t_masks, s_masks)
    return jnp.sum(weights * per_head)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


def positive_float(name: str, value: Any) -> float | jax.Array:
    """``value`` as a finite float > 0, or a ValueError naming the option.

    A traced value (a hyperparameter inside a compiled program) passes unchanged: its concrete value was
    checked when the strategy was first built.
    """
    value = number(value)
    if is_traced(value):
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


def hidden_widths(setup: Setup, units: Any) -> tuple[int, ...]:
    """The generator's hidden widths: ``units`` if given, else the classifier's (the reference's g_fc_uni =
    fc_units), else 400."""
    if units is None:
        return tuple(getattr(setup.model, "hidden", (400, 400)))
    if isinstance(units, int):
        units = (positive_int("gen_units", units),) * 2
    return tuple(positive_int("gen_units", u) for u in units)


def check_unit_interval(setup: Setup, name: str) -> None:
    """The generators model pixels in [0, 1]; normalised benchmarks and conv features are not supported."""
    if setup.info.features is not None:
        raise ValueError(
            f"{name}: {setup.info.benchmark} trains on the features of frozen pre-trained conv layers; "
            "NMI-2022's DGR there replays images through a convolutional VAE, which cljax does not have "
            "yet (BI-R and the generative classifier model the features: bir, gen-classifier)"
        )
    if setup.info.normalize is not None:
        raise ValueError(
            f"{name}: generators model pixels in [0, 1], but {setup.info.benchmark} normalises its inputs; "
            "use a split/permuted MNIST or Fashion-MNIST benchmark"
        )


def build_generator(setup: Setup, options: Mapping[str, Any], strategy: str) -> Generator:
    """The generator the options ask for (``generator``, ``gen_units``, ``z_dim``, ``gen_lr``).

    ``gen_lr`` may be traced (a hyperparameter): it only scales the generator's Adam updates.
    """
    check_unit_interval(setup, strategy)
    lr = options.get("gen_lr")
    return make_generator(
        options.get("generator", "vae"),
        setup.info.input_shape,
        hidden_widths(setup, options.get("gen_units")),
        positive_int("z_dim", options.get("z_dim", 100)),
        None if lr is None else positive_float("gen_lr", lr),
    )


def resolve_generator(options: dict[str, Any], benchmark: str, scenario: str) -> dict[str, Any]:
    """A ``StrategySpec.resolve``: ``gen_lr=None`` becomes the generator's published rate (VAE 0.001, GAN
    2e-4), so the rate that ran is recorded and ``gen_lr`` is always a number, an input of the compiled
    programs. An unknown generator is left for ``build`` to report."""
    del benchmark, scenario
    if options.get("gen_lr") is not None or options.get("generator", "vae") not in GENERATOR_LR:
        return options
    return {**options, "gen_lr": GENERATOR_LR[options.get("generator", "vae")]}


def generative_replay(
    setup: Setup,
    generator: Generator,
    replay_n: int,
    head_loss: HeadLoss,
    classifier_weights: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
) -> Strategy:
    """Replay from a frozen generator, labelled by a frozen classifier, fused into one step.

    ``classifier_weights(context) -> (w_current, w_replay)`` weigh the classifier's two losses; the generator
    is always trained with the reference's (1/t, 1 - 1/t) on its current and replayed samples.
    """
    info, model, batch_size = setup.info, setup.model, setup.batch_size

    def init(key, images, stream):
        del images, stream
        k_cls, k_gen = jax.random.split(key)
        classifier, gen_state = init_classifier(setup, k_cls), generator.init(k_gen)
        return ReplayState(classifier, gen_state, classifier.params, gen_state.params)

    def step(state: ReplayState, images, stream, context, key):
        k_batch, k_replay, k_gen = jax.random.split(key, 3)
        batch = sample_context(info, images, stream, context, k_batch, batch_size)

        def current_only(params):
            cls_params, gen_params = params
            loss, g_cls = jax.value_and_grad(
                lambda p: cross_entropy(model.apply(p, batch.x), batch.y, batch.mask)
            )(cls_params)
            weights = jnp.full((batch_size,), 1.0 / batch_size)
            gen_loss, g_gen = generator.loss_and_grads(gen_params, batch.x, weights, k_gen)
            return (g_cls, g_gen), {"loss": loss, "replay_loss": jnp.zeros(()), "gen_loss": gen_loss}

        def with_replay(params):
            cls_params, gen_params = params
            x_replay = generator.sample(state.prev_generator, k_replay, replay_n)
            teacher = model.apply(state.prev_classifier, x_replay)
            heads = replay_heads(info, stream, context)
            w_cur, w_rep = classifier_weights(context)
            x_all = jnp.concatenate([batch.x, x_replay])

            def loss_fn(p):
                logits = model.apply(p, x_all)
                current = cross_entropy(logits[:batch_size], batch.y, batch.mask)
                replayed = heads_loss(head_loss, logits[batch_size:], teacher, heads)
                return w_cur * current + w_rep * replayed, replayed

            (loss, replayed), g_cls = jax.value_and_grad(loss_fn, has_aux=True)(cls_params)
            w = replay_weight(context)
            weights = jnp.concatenate(
                [jnp.full((batch_size,), w / batch_size), jnp.full((replay_n,), (1 - w) / replay_n)]
            )
            gen_loss, g_gen = generator.loss_and_grads(gen_params, x_all, weights, k_gen)
            return (g_cls, g_gen), {"loss": loss, "replay_loss": replayed, "gen_loss": gen_loss}

        (g_cls, g_gen), metrics = jax.lax.cond(
            context > 0, with_replay, current_only, (state.classifier.params, state.generator.params)
        )
        new_state = state.replace(
            classifier=apply_gradients(setup, state.classifier, g_cls),
            generator=generator.apply_gradients(state.generator, g_gen),
        )
        return new_state, metrics

    def end_context(state: ReplayState, images, stream, context, key):
        del images, stream, context, key
        return state.replace(prev_classifier=state.classifier.params, prev_generator=state.generator.params)

    def predict(state: ReplayState, x):
        return model.apply(state.classifier.params, x)

    def sample(state: ReplayState, key, n):
        return generator.sample(state.generator.params, key, n)

    return Strategy(init=init, step=step, end_context=end_context, predict=predict, sample=sample)


def reference_weights(context: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(1/t, 1 - 1/t): the reference's weighting of current and replayed losses."""
    w = replay_weight(context)
    return w, 1.0 - w


# ----------------------------------------------------------------------------------------------- methods


def dgr(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """DGR: replayed samples labelled with the frozen classifier's arg-max (hard targets)."""
    options = {**dgr_defaults(setup.info.scenario), **dict(options or {})}
    generator = build_generator(setup, options, "dgr")
    replay_n = positive_int("replay_batch", options["replay_batch"])
    return generative_replay(setup, generator, replay_n, hard_target_loss, reference_weights)


def dgr_distill(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """DGR+distill: replayed samples learn the frozen classifier's outputs softened at ``temperature``."""
    options = {**dgr_distill_defaults(setup.info.scenario), **dict(options or {})}
    generator = build_generator(setup, options, "dgr-distill")
    replay_n = positive_int("replay_batch", options["replay_batch"])
    head_loss = soft_target_loss(
        positive_float("temperature", options["temperature"]), bool(options["t_squared"])
    )
    return generative_replay(setup, generator, replay_n, head_loss, reference_weights)


def dgr_defaults(scenario: str) -> dict[str, Any]:
    """PROTOCOL.md split MNIST (NMI-2022, 3S-2019): VAE with z 100, replay batch 128; the VAE's hidden
    layers match the classifier's (``gen_units=None``) and its Adam lr is the classifier's 0.001
    (``gen_lr=None``: the generator's published rate, 0.001 for the VAE, 2e-4 for the GAN)."""
    del scenario
    return {"generator": "vae", "gen_lr": None, "gen_units": None, "z_dim": 100, "replay_batch": 128}


def dgr_distill_defaults(scenario: str) -> dict[str, Any]:
    """DGR's settings plus distillation at T = 2 multiplied by T^2, as 3S-2019 (which reports DGR+distill)."""
    return {**dgr_defaults(scenario), "temperature": 2.0, "t_squared": True}


SPECS = (
    StrategySpec(
        "dgr",
        dgr,
        "deep generative replay, hard targets (Shin et al. 2017; VAE and settings of NMI-2022 / 3S-2019)",
        defaults=dgr_defaults,
        resolve=resolve_generator,
        hyperparameters=("gen_lr",),
    ),
    StrategySpec(
        "dgr-distill",
        dgr_distill,
        "deep generative replay with distillation at T = 2 (3S-2019's DGR+distill)",
        defaults=dgr_distill_defaults,
        resolve=resolve_generator,
        hyperparameters=("gen_lr", "temperature"),
    ),
)
