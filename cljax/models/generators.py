"""Generators for generative replay: the reference VAE, BI-R's conditional VAE and an MLP GAN.

All model images in [0, 1] of the benchmark's ``input_shape`` (H, W, C) and are fully connected, as the
reference's split- and permuted-MNIST models are (GMvandeVen/continual-learning, ``models/vae.py`` and
``models/cond_vae.py``; NMI-2022 and 3S-2019). Layers use PyTorch's initialisation (:class:`Linear`), so the
published learning rates transfer.

A :class:`Generator` bundles the pure functions a replay strategy needs: ``init``, ``sample``,
``loss_and_grads`` (per-sample weighted, so current and replayed samples can share one batch) and
``apply_gradients``; :func:`make_generator` builds one by name.

:class:`ConvVAE` is the reference's VAE on CIFAR (``models/vae.py`` with ``depth=5``): its encoder starts
with the frozen pre-trained conv layers, its decoder ends with transposed convolutions with batch norm
(:class:`cljax.models.conv_layers.DeconvLayers`), and it models normalised images; :func:`conv_vae_generator`
bundles its functions as a :class:`ConvGenerator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from cljax import optim
from cljax.models.conv_layers import CHANNELS, DeconvLayers
from cljax.models.layers import Linear

GENERATORS: tuple[str, ...] = ("vae", "gan")

# Published generator learning rates: the reference trains its VAE with Adam at the classifier's lr
# (split MNIST 0.001); the GAN uses DCGAN's Adam(2e-4, beta1 = 0.5) (Radford et al. 2016).
VAE_LR = 1e-3
GAN_LR = 2e-4
# The reference has its convolutional VAE for CIFAR only, where lr_gen = lr = 1e-4 (params/param_values.py)
CONV_VAE_LR = 1e-4
GAN_BETA1 = 0.5


def _pixels(input_shape: Sequence[int]) -> int:
    return math.prod(input_shape)


class VAE(nn.Module):
    """The reference's symmetric VAE (split MNIST: encoder 784-400-400, z 100, decoder 100-400-400-784).

    The decoder returns logits; ``sigmoid`` of them is the image (the reference's sigmoid output layer), and
    the logits give a numerically stable binary cross-entropy.
    """

    input_shape: tuple[int, ...]
    hidden: Sequence[int] = (400, 400)
    z_dim: int = 100

    def setup(self) -> None:
        self.encoder = [Linear(w) for w in self.hidden]
        self.to_mean = Linear(self.z_dim)
        self.to_logvar = Linear(self.z_dim, use_bias=False)  # the reference has no bias here
        self.decoder = [Linear(w) for w in reversed(self.hidden)]
        self.to_pixels = Linear(_pixels(self.input_shape))

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z|x): mean and log-variance."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.encoder:
            h = nn.relu(layer(h))
        return self.to_mean(h), self.to_logvar(h)

    def decode(self, z: jax.Array) -> jax.Array:
        """p(x|z): pixel logits, shaped like the input (B, H, W, C)."""
        h = z
        for layer in self.decoder:
            h = nn.relu(layer(h))
        return self.to_pixels(h).reshape(z.shape[0], *self.input_shape)

    def __call__(self, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Reconstruction logits, mean and log-variance, with z = mean + exp(logvar / 2) * eps."""
        mean, logvar = self.encode(x)
        return self.decode(mean + jnp.exp(0.5 * logvar) * eps), mean, logvar


class CondVAE(nn.Module):
    """BI-R's replay-through-feedback model (van de Ven et al. 2020; reference ``models/cond_vae.py``).

    The classifier is the encoder plus a softmax head on the last hidden layer; the prior is a Gaussian
    mixture with one mode per class (means and log-variances trained, initialised N(0, 1)); with
    ``gate_size > 0`` the decoder's hidden layers are multiplied by fixed random binary gates, one mask row
    per class or context, each unit gated off with probability ``gate_prop``. The masks live in the ``gates``
    collection: made once at ``init``, never trained.
    """

    input_shape: tuple[int, ...]
    n_classes: int
    hidden: Sequence[int] = (400, 400)
    z_dim: int = 100
    gate_size: int = 0
    gate_prop: float = 0.0

    def setup(self) -> None:
        self.encoder = [Linear(w) for w in self.hidden]
        self.head = Linear(self.n_classes)
        self.to_mean = Linear(self.z_dim)
        self.to_logvar = Linear(self.z_dim, use_bias=False)  # the reference has no bias here
        widths = list(reversed(self.hidden))
        self.decoder = [Linear(w) for w in widths]
        self.to_pixels = Linear(_pixels(self.input_shape))
        normal = nn.initializers.normal(1.0)
        self.prior_means = self.param("prior_means", normal, (self.n_classes, self.z_dim))
        self.prior_logvars = self.param("prior_logvars", normal, (self.n_classes, self.z_dim))
        if self.gated:
            self.gate_masks = [
                self.variable(
                    "gates",
                    f"layer{i}",
                    lambda w=w: jax.random.bernoulli(
                        self.make_rng("params"), 1.0 - self.gate_prop, (self.gate_size, w)
                    ).astype(jnp.float32),
                )
                for i, w in enumerate(widths)
            ]

    @property
    def gated(self) -> bool:
        return self.gate_size > 0 and self.gate_prop > 0

    def features(self, x: jax.Array) -> jax.Array:
        """The last hidden layer of the encoder (shared by classifier and q(z|x))."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.encoder:
            h = nn.relu(layer(h))
        return h

    def classify(self, x: jax.Array) -> jax.Array:
        """Class logits."""
        return self.head(self.features(x))

    def decode(self, z: jax.Array, gate: jax.Array | None = None) -> jax.Array:
        """Pixel logits; ``gate`` (B, gate_size) is a one-hot or probability vector over the gate rows."""
        h = z
        for i, layer in enumerate(self.decoder):
            pre = layer(h)
            if self.gated:
                pre = pre * (gate @ self.gate_masks[i].value)
            h = nn.relu(pre)
        return self.to_pixels(h).reshape(z.shape[0], *self.input_shape)

    def prior_sample(self, classes: jax.Array, eps: jax.Array) -> jax.Array:
        """z from the prior modes of ``classes`` (B,)."""
        return self.prior_means[classes] + jnp.exp(0.5 * self.prior_logvars[classes]) * eps

    def prior_log_prob(self, z: jax.Array, class_probs: jax.Array) -> jax.Array:
        """log sum_k class_probs_k N(z; mode_k) per sample (the reference's ``calculate_log_p_z``)."""
        return mixture_log_prob(z, self.prior_means, self.prior_logvars, class_probs)

    def __call__(
        self, x: jax.Array, eps: jax.Array, gate: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """Class logits, reconstruction logits, mean, log-variance and the sampled z."""
        h = self.features(x)
        mean, logvar = self.to_mean(h), self.to_logvar(h)
        z = mean + jnp.exp(0.5 * logvar) * eps
        return self.head(h), self.decode(z, gate), mean, logvar, z


class MLPGenerator(nn.Module):
    """GAN generator: z -> 400 -> 400 -> pixels, leaky ReLU 0.2, tanh output in [-1, 1] (DCGAN's conventions,
    Radford et al. 2016; images are (output + 1) / 2)."""

    input_shape: tuple[int, ...]
    hidden: Sequence[int] = (400, 400)

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for w in self.hidden:
            h = nn.leaky_relu(Linear(w)(h), 0.2)
        return jnp.tanh(Linear(_pixels(self.input_shape))(h)).reshape(z.shape[0], *self.input_shape)


class MLPDiscriminator(nn.Module):
    """GAN discriminator on inputs in [-1, 1]: pixels -> 400 -> 400 -> 1 logit, leaky ReLU 0.2.

    Each hidden layer is followed by the batch's mean feature standard deviation as one extra feature
    (minibatch standard deviation, Karras et al. 2018): it lets the discriminator see a collapsed batch, which
    without it happens within a few hundred iterations on MNIST.
    """

    hidden: Sequence[int] = (400, 400)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for w in self.hidden:
            h = nn.leaky_relu(Linear(w)(h), 0.2)
            spread = jnp.sqrt(jnp.var(h, axis=0) + 1e-8).mean()
            h = jnp.concatenate([h, jnp.broadcast_to(spread, (h.shape[0], 1))], axis=1)
        return Linear(1)(h)[:, 0]


# ----------------------------------------------------------------------------------------------- losses


def reconstruction_loss(recon_logits: jax.Array, x: jax.Array) -> jax.Array:
    """Binary cross-entropy per sample, averaged over pixels (the reference's ``average=True``).

    Written as max(l, 0) - x l + log(1 + exp(-|l|)): the same value as BCE(sigmoid(l), x), but one exp and one
    log per pixel (several times faster on a CPU than a log-sigmoid of l and of -l).
    """
    bce = jnp.maximum(recon_logits, 0) - x * recon_logits + jnp.log1p(jnp.exp(-jnp.abs(recon_logits)))
    return bce.reshape(bce.shape[0], -1).mean(axis=1)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over z."""
    return -0.5 * jnp.sum(1.0 + logvar - mean**2 - jnp.exp(logvar), axis=-1)


def log_normal_diag(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, diag exp(logvar)) summed over the last axis, without the 2*pi constant.

    As in the reference, where the constant cancels between log p(z) and log q(z|x).
    """
    return -0.5 * jnp.sum(logvar + (z - mean) ** 2 / jnp.exp(logvar), axis=-1)


def mixture_log_prob(z: jax.Array, means: jax.Array, logvars: jax.Array, probs: jax.Array) -> jax.Array:
    """log sum_k probs_k N(z; means_k, exp(logvars_k)) for z (B, Z), modes (K, Z), probs (B, K)."""
    per_mode = log_normal_diag(z[:, None, :], means[None], logvars[None])
    return jax.nn.logsumexp(per_mode, axis=1, b=probs)


def vae_loss(recon_logits: jax.Array, x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """The reference's VAE loss per sample: pixel-averaged BCE + KL / number of pixels."""
    return reconstruction_loss(recon_logits, x) + gaussian_kl(mean, logvar) / _pixels(x.shape[1:])


# ------------------------------------------------------------------------------------------- generators


class GeneratorState(flax.struct.PyTreeNode):
    """A generator's trainable params and its optimizer state."""

    params: Any
    opt_state: Any


class Generator(NamedTuple):
    """Pure functions of a generator used for replay.

    init(key) -> GeneratorState
    sample(params, key, n) -> float images (n, H, W, C) in [0, 1]
    loss_and_grads(params, x, weights, key) -> (loss, grads)   weights (B,): the loss is sum_i w_i l_i
    apply_gradients(state, grads) -> state
    """

    name: str
    init: Callable[[jax.Array], GeneratorState]
    sample: Callable[[Any, jax.Array, int], jax.Array]
    loss_and_grads: Callable[[Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]
    apply_gradients: Callable[[GeneratorState, Any], GeneratorState]


def _apply(optimizer: optax.GradientTransformation):
    def apply_gradients(state: GeneratorState, grads: Any) -> GeneratorState:
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)

    return apply_gradients


def vae_generator(
    input_shape: tuple[int, ...], hidden: Sequence[int] = (400, 400), z_dim: int = 100, lr: float = VAE_LR
) -> Generator:
    """The reference DGR generator: a VAE with prior N(0, I), own Adam (0.9, 0.999) at ``lr``."""
    model = VAE(tuple(input_shape), tuple(hidden), z_dim)
    optimizer = optim.adam(lr, b1=0.9, b2=0.999)

    def init(key):
        x = jnp.zeros((1, *input_shape), jnp.float32)
        params = model.init(key, x, jnp.zeros((1, z_dim), jnp.float32))
        return GeneratorState(params=params, opt_state=optimizer.init(params))

    def sample(params, key, n):
        z = jax.random.normal(key, (n, z_dim))
        return nn.sigmoid(model.apply(params, z, method=VAE.decode))

    def loss_and_grads(params, x, weights, key):
        eps = jax.random.normal(key, (x.shape[0], z_dim))

        def loss_fn(p):
            recon, mean, logvar = model.apply(p, x, eps)
            return jnp.sum(weights * vae_loss(recon, x, mean, logvar))

        return jax.value_and_grad(loss_fn)(params)

    return Generator("vae", init, sample, loss_and_grads, _apply(optimizer))


def gan_generator(
    input_shape: tuple[int, ...], hidden: Sequence[int] = (400, 400), z_dim: int = 100, lr: float = GAN_LR
) -> Generator:
    """An MLP GAN with the non-saturating loss (Goodfellow et al. 2014), G and D updated in the same step.

    Shin et al. (2017) used WGAN-GP, which needs several critic steps and a double backward pass per
    generator step; the plain non-saturating GAN costs one forward/backward of each network, so it fits the
    single fused step. DCGAN's conventions (inputs centred to [-1, 1], tanh output, leaky ReLU, Adam(lr,
    beta1 = 0.5)) and a minibatch-standard-deviation feature in D keep it from collapsing to one image.
    ``weights`` weigh the real samples in the discriminator's loss (current vs replayed data); the
    generator's loss is an unweighted mean. Expect noisier samples than the VAE's at 2000 iterations.
    """
    gen, disc = MLPGenerator(tuple(input_shape), tuple(hidden)), MLPDiscriminator(tuple(hidden))
    optimizer = optim.adam(lr, b1=GAN_BETA1, b2=0.999)

    def init(key):
        kg, kd = jax.random.split(key)
        params = {
            "g": gen.init(kg, jnp.zeros((1, z_dim), jnp.float32)),
            "d": disc.init(kd, jnp.zeros((1, *input_shape), jnp.float32)),
        }
        return GeneratorState(params=params, opt_state=optimizer.init(params))

    def sample(params, key, n):
        return (gen.apply(params["g"], jax.random.normal(key, (n, z_dim))) + 1.0) / 2.0

    def loss_and_grads(params, x, weights, key):
        x = 2.0 * x - 1.0  # the networks work in [-1, 1]
        z = jax.random.normal(key, (x.shape[0], z_dim))

        def d_loss(pd, fake):
            real_term = jnp.sum(weights * jax.nn.softplus(-disc.apply(pd, x)))
            return real_term + jnp.mean(jax.nn.softplus(disc.apply(pd, fake)))

        def g_loss(pg):
            return jnp.mean(jax.nn.softplus(-disc.apply(params["d"], gen.apply(pg, z))))

        fake = jax.lax.stop_gradient(gen.apply(params["g"], z))
        ld, gd = jax.value_and_grad(d_loss)(params["d"], fake)
        lg, gg = jax.value_and_grad(g_loss)(params["g"])
        return ld + lg, {"g": gg, "d": gd}

    return Generator("gan", init, sample, loss_and_grads, _apply(optimizer))


# ------------------------------------------------------------------------------ the convolutional VAE


class ConvVAE(nn.Module):
    """The reference's VAE for CIFAR (``models/vae.py``, ``define_vae(depth=5)``; NMI-2022 split CIFAR-100).

    Encoder: the frozen pre-trained conv layers (``convE``, loaded and frozen as the classifier's: the caller
    applies them, :func:`cljax.features.frozen_features`, so this module takes their output), flattened, fc
    ``hidden`` with ReLU (``fcE``: 1024-2000-2000), then z's mean and log-variance (``toZ``; no bias for the
    log-variance). Decoder: fc ``reversed(hidden)`` with ReLU (``fromZ``, ``fcD``), fc back to the conv
    output's units with ReLU (``fcD``'s output is "normal" when there are conv layers), reshaped to the conv
    output's shape, then :class:`DeconvLayers` to the image, with no output non-linearity: the images are
    normalised (the reference's ``network_output="none"``). No batch norm in the fc layers (``--fc-bn no``).
    """

    image_shape: tuple[int, ...]  # (H, W, C) of the images
    feature_shape: tuple[int, ...]  # (h, w, c) of the frozen conv layers' output
    hidden: Sequence[int] = (2000, 2000)
    z_dim: int = 100
    channels: Sequence[int] = CHANNELS

    def setup(self) -> None:
        self.encoder = [Linear(w) for w in self.hidden]
        self.to_mean = Linear(self.z_dim)
        self.to_logvar = Linear(self.z_dim, use_bias=False)
        self.decoder = [Linear(w) for w in reversed(self.hidden)]
        self.to_features = Linear(_pixels(self.feature_shape))
        self.deconv = DeconvLayers(self.image_shape[-1], tuple(self.channels))

    def encode(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """q(z|x) from the frozen conv layers' output: mean and log-variance."""
        h = features.reshape(features.shape[0], -1)
        for layer in self.encoder:
            h = nn.relu(layer(h))
        return self.to_mean(h), self.to_logvar(h)

    def decode(self, z: jax.Array, train: bool = False, parts: Sequence[int] | None = None) -> jax.Array:
        """p(x|z): images (B, H, W, C) in the normalised input space; ``train``: the decoder's batch norm on
        the statistics of each of the batch's ``parts`` (updating ``batch_stats``), else on its running
        averages (:class:`cljax.models.conv_layers.PartBatchNorm`)."""
        h = z
        for layer in self.decoder:
            h = nn.relu(layer(h))
        h = nn.relu(self.to_features(h)).reshape(z.shape[0], *self.feature_shape)
        return self.deconv(h, train, parts)

    def __call__(
        self,
        features: jax.Array,
        eps: jax.Array,
        train: bool = False,
        parts: Sequence[int] | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Reconstruction, mean and log-variance, with z = mean + exp(logvar / 2) * eps."""
        mean, logvar = self.encode(features)
        return self.decode(mean + jnp.exp(0.5 * logvar) * eps, train, parts), mean, logvar


def mse_reconstruction_loss(recon: jax.Array, x: jax.Array) -> jax.Array:
    """The reference's ``--recon-loss MSE`` per sample: -log N(x; recon, I) without its constant, averaged
    over the pixels, i.e. the mean of 0.5 (x - recon)^2 (``calculate_recon_loss`` with ``average=True``)."""
    sq = 0.5 * (x - recon) ** 2
    return sq.reshape(sq.shape[0], -1).mean(axis=1)


def conv_vae_loss(recon: jax.Array, x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """The reference's VAE loss on normalised images, per sample: pixel-averaged MSE + KL / pixels."""
    return mse_reconstruction_loss(recon, x) + gaussian_kl(mean, logvar) / _pixels(x.shape[1:])


class ConvGenerator(NamedTuple):
    """Pure functions of :class:`ConvVAE` for replay. Its decoder has batch norm, so its state's ``params``
    are the module's variables ``{"params", "batch_stats"}`` and training also returns new running averages.

    init(key) -> GeneratorState
    sample(variables, key, n) -> images (n, H, W, C) in the normalised input space, decoded from z ~ N(0, I)
        with batch norm on the running averages (the reference samples in ``eval()`` mode)
    loss_and_grads(variables, features, images, weights, key, parts) -> (loss, grads, batch_stats)
        features: the frozen conv layers' output for the (float, normalised) images; weights (B,): the
        loss is sum_i w_i l_i; parts: the counts of the batch's consecutive parts, each normalised by its
        own statistics in the decoder (:class:`cljax.models.conv_layers.PartBatchNorm`)
    apply_gradients(state, grads, batch_stats) -> state
    """

    init: Callable[[jax.Array], GeneratorState]
    sample: Callable[[Any, jax.Array, int], jax.Array]
    loss_and_grads: Callable[..., tuple[jax.Array, Any, Any]]
    apply_gradients: Callable[[GeneratorState, Any, Any], GeneratorState]


def conv_vae_generator(
    image_shape: tuple[int, ...],
    feature_shape: tuple[int, ...],
    hidden: Sequence[int] = (2000, 2000),
    z_dim: int = 100,
    lr: float | jax.Array = CONV_VAE_LR,
) -> ConvGenerator:
    """DGR's generator on split CIFAR-100 as the reference trains it (``train/train_task_based.py``,
    ``VAE.train_a_batch``): its own Adam (0.9, 0.999) at ``lr`` (the reference's ``lr_gen`` = the classifier's
    lr, 1e-4 there) on everything but the frozen conv layers.

    Batch norm in the decoder, as the reference runs it: in training mode while the generator trains, where
    the reference's current and replayed batches are separate forward passes, so each is normalised by its
    own statistics and the running averages are updated by the one, then the other (here one pass over both,
    ``parts``, computing the same); in evaluation mode, on the running averages, whenever it samples
    (``VAE.sample`` calls ``self.eval()``, and the previous generator that replays is a
    ``deepcopy(generator).eval()``), so a replayed image does not depend on the others drawn with it.
    """
    model = ConvVAE(tuple(image_shape), tuple(feature_shape), tuple(hidden), z_dim)
    optimizer = optim.adam(lr, b1=0.9, b2=0.999)

    def init(key):
        features = jnp.zeros((1, *feature_shape), jnp.float32)
        variables = model.init(key, features, jnp.zeros((1, z_dim), jnp.float32))
        variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        return GeneratorState(params=variables, opt_state=optimizer.init(variables["params"]))

    def sample(variables, key, n):
        z = jax.random.normal(key, (n, z_dim))
        return model.apply(variables, z, method=ConvVAE.decode)

    def loss_and_grads(variables, features, images, weights, key, parts=None):
        eps = jax.random.normal(key, (features.shape[0], z_dim))

        def loss_fn(params):
            (recon, mean, logvar), updates = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                features,
                eps,
                True,
                parts,
                mutable=["batch_stats"],
            )
            return jnp.sum(weights * conv_vae_loss(recon, images, mean, logvar)), updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return loss, grads, stats

    def apply_gradients(state, grads, batch_stats):
        params = state.params["params"]
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        variables = {"params": optax.apply_updates(params, updates), "batch_stats": batch_stats}
        return state.replace(params=variables, opt_state=opt_state)

    return ConvGenerator(init, sample, loss_and_grads, apply_gradients)


def make_generator(
    name: str,
    input_shape: tuple[int, ...],
    hidden: Sequence[int] = (400, 400),
    z_dim: int = 100,
    lr: float | None = None,
) -> Generator:
    """The generator called ``name`` ("vae" or "gan"); ``lr=None`` takes its published learning rate."""
    if name == "vae":
        return vae_generator(input_shape, hidden, z_dim, VAE_LR if lr is None else lr)
    if name == "gan":
        return gan_generator(input_shape, hidden, z_dim, GAN_LR if lr is None else lr)
    raise ValueError(f"generator: unknown value {name!r}; choose one of: {', '.join(GENERATORS)}")
