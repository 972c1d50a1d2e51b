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

Split CIFAR-100 (NMI-2022 Table 3): the reference's ``--replay=generative`` uses no feature extractor; its
classifier runs the frozen pre-trained conv layers on the images, and its VAE is ``define_vae(depth=5)``
(``main.py``, ``models/define_models.py``), whose encoder's conv layers are loaded with the same pre-trained
set and frozen (``init_params``, ``--pre-convE --freeze-convE --seed-to-ltag``). Replay is pixel-level:
images are decoded, go through the frozen conv layers and are labelled by the frozen classifier. Here the
classifier trains its fc layers on the features computed once (:mod:`cljax.features`: the same numbers, the
conv layers being frozen in evaluation mode), and the generator is :class:`cljax.models.generators.ConvVAE`
(fc 2000-2000 as the classifier's, z 100, transposed convolutions with batch norm, MSE reconstruction of the
normalised images, its own Adam at the classifier's lr 1e-4). The strategy declares ``pixels``, so each step
also gets the current batch's images (``images.pixels``) and the run's own frozen conv layers
(``stream.conv``), through which the replayed images become that run's features. The replay batch is as
large as the batch (256), as the reference samples ``batch_size`` images (:func:`resolve_generator`).

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

from cljax.batching import Batch, sample_context
from cljax.features import batch_pixels, frozen_features, pixel_info
from cljax.hyper import is_traced, number
from cljax.losses import cross_entropy, distillation, mask_logits, replay_weight
from cljax.models.conv_layers import CHANNELS
from cljax.models.generators import (
    CONV_VAE_LR,
    GAN_LR,
    GENERATORS,
    VAE_LR,
    ConvGenerator,
    Generator,
    GeneratorState,
    conv_vae_generator,
    make_generator,
)
from cljax.regularizers import PublishedInt
from cljax.scenarios import Images, ScenarioInfo, Stream
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

# The reference's settings where they differ from split MNIST's: its generator's lr is the classifier's
# (params/param_values.py: lr_gen = lr, 1e-4 on CIFAR) and it replays as many images as the batch holds
# (train/train_task_based.py: previous_generator.sample(batch_size), 256 on CIFAR).
GENERATOR_BY_BENCHMARK = {"split-cifar100": {"gen_lr": CONV_VAE_LR, "replay_batch": 256}}


class ReplayState(flax.struct.PyTreeNode):
    """Classifier and generator (trainable, with optimizer states) and their frozen copies."""

    classifier: ClassifierState
    generator: GeneratorState
    prev_classifier: Any  # classifier params at the end of the previous context
    prev_generator: Any  # generator params at the end of the previous context


# ------------------------------------------------------------------------------------------ shared parts


def replay_init(setup: Setup, generator: Any) -> Callable:
    """``init``: a fresh classifier and generator, each also as its frozen previous copy."""

    def init(key, images, stream):
        del images, stream
        k_cls, k_gen = jax.random.split(key)
        classifier, gen_state = init_classifier(setup, k_cls), generator.init(k_gen)
        return ReplayState(classifier, gen_state, classifier.params, gen_state.params)

    return init


def remember_previous(state: ReplayState, images: Any, stream: Stream, context: jax.Array, key: jax.Array):
    """``end_context``: the classifier and generator just trained become the frozen previous ones."""
    del images, stream, context, key
    return state.replace(prev_classifier=state.classifier.params, prev_generator=state.generator.params)


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
    """The fully connected generators model pixels in [0, 1]; normalised benchmarks and conv features are
    not theirs (on conv features DGR uses its convolutional VAE: :func:`build_conv_generator`)."""
    if setup.info.features is not None:
        raise ValueError(
            f"{name}: {setup.info.benchmark} trains on the features of frozen pre-trained conv layers, and "
            "its fully connected generator models pixels in [0, 1]; there DGR replays images through the "
            "reference's convolutional VAE (dgr, dgr-distill), BI-R and the generative classifier model the "
            "features (bir, gen-classifier)"
        )
    if setup.info.normalize is not None:
        raise ValueError(
            f"{name}: generators model pixels in [0, 1], but {setup.info.benchmark} normalises its inputs "
            "and has no frozen pre-trained conv layers (DGR's convolutional VAE encodes with them); use "
            "split-cifar100, or a split/permuted MNIST or Fashion-MNIST benchmark"
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


def build_conv_generator(setup: Setup, options: Mapping[str, Any], strategy: str) -> ConvGenerator:
    """The convolutional VAE for a benchmark whose inputs are frozen conv features (``gen_units``, ``z_dim``,
    ``gen_lr``), or a ValueError naming what does not fit, before anything compiles."""
    info, name = setup.info, options.get("generator", "vae")
    if name not in GENERATORS:
        raise ValueError(f"generator: unknown value {name!r}; choose one of: {', '.join(GENERATORS)}")
    if name != "vae":
        raise ValueError(
            f"generator: {strategy} on {info.benchmark} replays images through the reference's convolutional "
            f"VAE; {name!r} is a fully connected generator of pixels in [0, 1] (use generator='vae')"
        )
    image, features = pixel_info(info).input_shape, info.input_shape
    scale = 2 ** (len(CHANNELS) - 1)
    if (features[0] * scale, features[1] * scale) != tuple(image[:2]):
        raise ValueError(
            f"{strategy}: the convolutional VAE decodes the conv layers' {features[0]}x{features[1]} output "
            f"to {features[0] * scale}x{features[1] * scale} images, but {info.benchmark}'s are "
            f"{image[0]}x{image[1]}"
        )
    lr = options.get("gen_lr")
    return conv_vae_generator(
        image,
        features,
        hidden_widths(setup, options.get("gen_units")),
        positive_int("z_dim", options.get("z_dim", 100)),
        CONV_VAE_LR if lr is None else positive_float("gen_lr", lr),
    )


def resolve_generator(options: dict[str, Any], benchmark: str, scenario: str) -> dict[str, Any]:
    """A ``StrategySpec.resolve``: ``gen_lr=None`` becomes the generator's published rate (VAE 0.001, GAN
    2e-4; on split CIFAR-100 the reference's 1e-4), so the rate that ran is recorded and ``gen_lr`` is always
    a number, an input of the compiled programs; a default ``replay_batch`` becomes the benchmark's published
    one where it differs (split CIFAR-100: 256). An unknown generator is left for ``build`` to report."""
    del scenario
    reference = GENERATOR_BY_BENCHMARK.get(benchmark, {})
    if isinstance(options.get("replay_batch"), PublishedInt) and "replay_batch" in reference:
        options = {**options, "replay_batch": PublishedInt(reference["replay_batch"])}
    name = options.get("generator", "vae")
    if options.get("gen_lr") is not None or name not in GENERATOR_LR:
        return options
    return {**options, "gen_lr": reference.get("gen_lr", VAE_LR) if name == "vae" else GENERATOR_LR[name]}


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

    init = replay_init(setup, generator)

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
            (loss, replayed), g_cls = replay_classifier_grads(
                setup,
                cls_params,
                state.prev_classifier,
                batch,
                x_replay,
                head_loss,
                replay_heads(info, stream, context),
                classifier_weights(context),
            )
            w = replay_weight(context)
            x_all = jnp.concatenate([batch.x, x_replay])
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

    def predict(state: ReplayState, x):
        return model.apply(state.classifier.params, x)

    def sample(state: ReplayState, key, n):
        return generator.sample(state.generator.params, key, n)

    return Strategy(init=init, step=step, end_context=remember_previous, predict=predict, sample=sample)


def replay_classifier_grads(
    setup: Setup,
    params: Any,
    prev_params: Any,
    batch: Batch,
    x_replay: jax.Array,
    head_loss: HeadLoss,
    heads: tuple,
    weights: tuple[jax.Array, jax.Array],
) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """((loss, replay loss), grads) of the classifier on the current batch and the replayed inputs
    ``x_replay``, these labelled by the frozen classifier ``prev_params``; the two losses weighted ``weights``
    (:func:`heads_loss` over the scenario's ``heads``)."""
    model, n = setup.model, setup.batch_size
    teacher = model.apply(prev_params, x_replay)
    w_cur, w_rep = weights
    x_all = jnp.concatenate([batch.x, x_replay])

    def loss_fn(p):
        logits = model.apply(p, x_all)
        current = cross_entropy(logits[:n], batch.y, batch.mask)
        replayed = heads_loss(head_loss, logits[n:], teacher, heads)
        return w_cur * current + w_rep * replayed, replayed

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def conv_generative_replay(
    setup: Setup,
    generator: ConvGenerator,
    replay_n: int,
    head_loss: HeadLoss,
    classifier_weights: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
) -> Strategy:
    """:func:`generative_replay` at the pixel level on a benchmark whose inputs are frozen conv features.

    The classifier trains on the current batch's features; the generator on its images (``images.pixels``),
    encoded from their features. Replayed images, decoded by the frozen generator, become features through
    the run's frozen conv layers (``stream.conv``); the frozen classifier labels those and the classifier
    trains on them, the generator on the images. The generator's two parts are weighted (1/t, 1 - 1/t), each
    part normalised by its own statistics in the decoder's batch norm (the reference's two forward passes).
    """
    info, model, batch_size = setup.info, setup.model, setup.batch_size
    image_info = pixel_info(info)

    init = replay_init(setup, generator)

    def step(state: ReplayState, images, stream, context, key):
        require_pixels(info, images, stream)
        k_batch, k_replay, k_gen = jax.random.split(key, 3)
        batch = sample_context(info, images, stream, context, k_batch, batch_size)
        x_images = batch_pixels(info, images, stream, batch)

        def current_only(params):
            cls_params, gen_variables = params
            loss, g_cls = jax.value_and_grad(
                lambda p: cross_entropy(model.apply(p, batch.x), batch.y, batch.mask)
            )(cls_params)
            weights = jnp.full((batch_size,), 1.0 / batch_size)
            gen_loss, g_gen, stats = generator.loss_and_grads(
                gen_variables, batch.x, x_images, weights, k_gen, (batch_size,)
            )
            return (g_cls, g_gen, stats), {"loss": loss, "replay_loss": jnp.zeros(()), "gen_loss": gen_loss}

        def with_replay(params):
            cls_params, gen_variables = params
            x_replay = generator.sample(state.prev_generator, k_replay, replay_n)
            f_replay = frozen_features(stream.conv, x_replay)
            (loss, replayed), g_cls = replay_classifier_grads(
                setup,
                cls_params,
                state.prev_classifier,
                batch,
                f_replay,
                head_loss,
                replay_heads(info, stream, context),
                classifier_weights(context),
            )
            w = replay_weight(context)
            weights = jnp.concatenate(
                [jnp.full((batch_size,), w / batch_size), jnp.full((replay_n,), (1 - w) / replay_n)]
            )
            gen_loss, g_gen, stats = generator.loss_and_grads(
                gen_variables,
                jnp.concatenate([batch.x, f_replay]),
                jnp.concatenate([x_images, x_replay]),
                weights,
                k_gen,
                (batch_size, replay_n),
            )
            return (g_cls, g_gen, stats), {"loss": loss, "replay_loss": replayed, "gen_loss": gen_loss}

        (g_cls, g_gen, stats), metrics = jax.lax.cond(
            context > 0, with_replay, current_only, (state.classifier.params, state.generator.params)
        )
        new_state = state.replace(
            classifier=apply_gradients(setup, state.classifier, g_cls),
            generator=generator.apply_gradients(state.generator, g_gen, stats),
        )
        return new_state, metrics

    def predict(state: ReplayState, x):
        return model.apply(state.classifier.params, x)

    def sample(state: ReplayState, key, n):
        x = generator.sample(state.generator.params, key, n)
        if image_info.normalize is not None:  # back to [0, 1] for pictures
            mean, std = (jnp.asarray(v, jnp.float32) for v in image_info.normalize)
            x = x * std + mean
        return jnp.clip(x, 0.0, 1.0)

    return Strategy(init=init, step=step, end_context=remember_previous, predict=predict, sample=sample)


def require_pixels(info: ScenarioInfo, images: Images, stream: Stream) -> None:
    """Refuse, while tracing, a run that did not give the images and the run's conv layers."""
    if images.pixels is None or stream.conv is None:
        raise ValueError(
            f"dgr: on {info.benchmark} the convolutional VAE needs the training images (images.pixels) and "
            "each run's frozen conv layers (stream.conv) beside the features; cljax.run gives them to "
            "strategies registered with pixels=True"
        )


def reference_weights(context: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(1/t, 1 - 1/t): the reference's weighting of current and replayed losses."""
    w = replay_weight(context)
    return w, 1.0 - w


# ----------------------------------------------------------------------------------------------- methods


def replay_strategy(setup: Setup, options: Mapping[str, Any], name: str, head_loss: HeadLoss) -> Strategy:
    """DGR with ``head_loss``: pixel-level replay through the convolutional VAE where the inputs are frozen
    conv features, else through the fully connected generator ``generator``."""
    replay_n = positive_int("replay_batch", options["replay_batch"])
    if setup.info.features is not None:
        generator = build_conv_generator(setup, options, name)
        return conv_generative_replay(setup, generator, replay_n, head_loss, reference_weights)
    generator = build_generator(setup, options, name)
    return generative_replay(setup, generator, replay_n, head_loss, reference_weights)


def dgr(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """DGR: replayed samples labelled with the frozen classifier's arg-max (hard targets)."""
    options = {**dgr_defaults(setup.info.scenario), **dict(options or {})}
    return replay_strategy(setup, options, "dgr", hard_target_loss)


def dgr_distill(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """DGR+distill: replayed samples learn the frozen classifier's outputs softened at ``temperature``."""
    options = {**dgr_distill_defaults(setup.info.scenario), **dict(options or {})}
    head_loss = soft_target_loss(
        positive_float("temperature", options["temperature"]), bool(options["t_squared"])
    )
    return replay_strategy(setup, options, "dgr-distill", head_loss)


def dgr_defaults(scenario: str) -> dict[str, Any]:
    """PROTOCOL.md split MNIST (NMI-2022, 3S-2019): VAE with z 100, replay batch 128; the VAE's hidden
    layers match the classifier's (``gen_units=None``) and its Adam lr is the classifier's 0.001
    (``gen_lr=None``: the generator's published rate, 0.001 for the VAE, 2e-4 for the GAN). On split
    CIFAR-100 the reference's lr 1e-4 and replay batch 256 (:func:`resolve_generator`)."""
    del scenario
    return {
        "generator": "vae",
        "gen_lr": None,
        "gen_units": None,
        "z_dim": 100,
        "replay_batch": PublishedInt(128),
    }


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
        pixels=True,
    ),
    StrategySpec(
        "dgr-distill",
        dgr_distill,
        "deep generative replay with distillation at T = 2 (3S-2019's DGR+distill)",
        defaults=dgr_distill_defaults,
        resolve=resolve_generator,
        hyperparameters=("gen_lr", "temperature"),
        pixels=True,
    ),
)
