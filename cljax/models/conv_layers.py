"""NMI-2022's convolutional feature extractor for CIFAR, as the reference builds it.

GMvandeVen/continual-learning, ``models/conv/nets.py`` ``ConvLayers`` and ``models/conv/layers.py``
``conv_layer`` with the CIFAR defaults of ``params/param_values.py`` (depth 5, 16 start channels, the last 4
layers reducing): 3x3 convolutions with bias, each followed by batch norm and ReLU; the first keeps the
image size and 16 channels, each later one halves the size (stride 2) and doubles the channels, so a
32x32 image becomes 256 channels of 2x2 (1024 features; the reference's label ``C3-5x16-bn``).

Batch norm follows ``torch.nn.BatchNorm2d`` (eps 1e-5, running averages updated with momentum 0.1, i.e.
flax's 0.9); with ``train=False`` it uses the running averages, which is how the frozen layers run in the
continual phase, so they are a pure function of their params.

:class:`DeconvLayers` is their mirror image, which the reference's convolutional VAE decodes with
(``models/conv/nets.py`` ``DeconvLayers``, ``models/conv/layers.py`` ``deconv_layer``; ``deconv_type``
"standard").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.models.classifiers import MLP
from cljax.models.fast_conv import conv_general_dilated
from cljax.models.layers import Conv, torch_uniform

CHANNELS = (16, 32, 64, 128, 256)
LABEL = "C3-5x16-bn"  # the reference's name for these layers (ConvLayers.label)


class ConvLayers(nn.Module):
    """The reference's 5 conv layers (``C3-5x16-bn``): conv 3x3 + batch norm + ReLU, NHWC in and out."""

    channels: Sequence[int] = CHANNELS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = x
        for i, ch in enumerate(self.channels):
            h = Conv(ch, 3, stride=1 if i == 0 else 2, padding=1)(h)
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(h)
            h = nn.relu(h)
        return h


class ConvClassifier(nn.Module):
    """Conv layers and an MLP head: the network ``main_pretrain.py`` trains (fc 2000-2000-out on CIFAR)."""

    n_out: int
    channels: Sequence[int] = CHANNELS
    hidden: Sequence[int] = (2000, 2000)

    def setup(self) -> None:
        self.conv = ConvLayers(self.channels)
        self.fc = MLP(self.n_out, self.hidden)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.fc(self.conv(x, train))


class FrozenConvMLP(MLP):
    """An MLP behind frozen conv layers (``conv``: their ``{"params", "batch_stats"}``, constants of the
    program): the frozen layers run inside every step. Its params are exactly those of an
    ``MLP(n_out, hidden)`` on the conv features, so it trains what the features-once path trains."""

    conv: Any = None

    def features(self, x: jax.Array) -> jax.Array:
        h = ConvLayers(parent=None).apply(self.conv, x)
        return super().features(jax.lax.stop_gradient(h))


def transposed_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """``torch.nn.functional.conv_transpose2d`` in NHWC with a ``(k, k, in, out)`` kernel, for ``k - 2 padding
    == stride`` (the output is exactly ``stride`` times the input's size).

    Written as ``stride**2`` ordinary convolutions, one per output phase (row and column position modulo the
    stride), interleaved: output ``s m + a`` takes the kernel taps ``t`` with ``t = a + padding (mod s)``
    from inputs ``m + (a + padding - t) / s``. Ordinary convolutions get the hand-written gradients XLA:CPU
    runs fast inside a scan (:mod:`cljax.models.fast_conv`); a transposed convolution's gradients there take
    the slow path (the 4 decoder layers' gradients at batch 128: 6.2 s per step against 0.11 s this way).
    """
    k = kernel.shape[0]
    if k - 2 * padding != stride:
        raise ValueError(f"transposed_conv: needs kernel - 2 padding == stride, got {k}, {padding}, {stride}")
    phases = []  # per phase: its first tap (the taps are every stride-th one down from it) and the padding
    for a in range(stride):
        taps = [t for t in range(k - 1, -1, -1) if (a + padding - t) % stride == 0]
        offsets = [(a + padding - t) // stride for t in taps]  # ascending, one apart
        phases.append((taps[0], (-offsets[0], offsets[-1])))
    rows = [
        jnp.stack(
            [
                conv_general_dilated(
                    x, kernel[ta::-stride, tb::-stride], (1, 1), (pa, pb), dimension_numbers=_NHWC
                )
                for tb, pb in phases
            ],
            axis=3,
        )
        for ta, pa in phases
    ]  # each (B, H, W, s, C): one output row phase, its column phases side by side
    y = jnp.stack(rows, axis=2)  # (B, H, s, W, s, C)
    b, h, _, w, _, c = y.shape
    return y.reshape(b, h * stride, w * stride, c)


_NHWC = ("NHWC", "HWIO", "NHWC")


def flat(init: Callable) -> Callable:
    """``init`` drawing a (k, k, in, out) kernel as a matrix (k k in, out), reshaped: the same distribution,
    and XLA:CPU compiles the draw of a matrix 2-3x faster than that of a 4-D array (about 0.4 s against
    1 s for 4x4x256x128)."""

    def draw(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return init(key, (math.prod(shape[:-1]), shape[-1]), dtype).reshape(shape)

    return draw


class Deconv(nn.Module):
    """``torch.nn.ConvTranspose2d`` with bias and torch's initialisation (U(+-1/sqrt(fan_in)) with torch's
    fan_in of a transposed convolution's weight: out channels x k x k). The reference's ``deconv_layer``:
    kernel 4, stride 2, padding 1 when it doubles the size, else kernel 3, stride 1, padding 1."""

    features: int
    upsample: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, stride = (4, 2) if self.upsample else (3, 1)
        init = torch_uniform(self.features * k * k)
        kernel = self.param("kernel", flat(init), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", init, (self.features,))
        return transposed_conv(x, kernel, stride, 1) + bias


class PartBatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` (eps 1e-5, running averages with momentum 0.1) for a batch made of ``parts``.

    In training mode each part (consecutive samples, ``parts`` their counts) is normalised by its own
    statistics and the running averages are updated with one part's, then the next's: what separate forward
    passes of the parts compute (the reference trains its VAE on the current and the replayed batch in two
    passes), with the layers around it run once on the whole batch. Otherwise it uses the running averages.
    Variables are named as flax's ``BatchNorm``'s; running variances are of the biased batch variance (as
    flax's; torch's use the unbiased one, n / (n - 1) times larger, n >= 8 x 16 values per channel here).
    """

    epsilon: float = 1e-5
    momentum: float = 0.9  # flax's convention: the weight of the old running average

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, parts: Sequence[int] | None = None) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (c,))
        if not train:
            return (x - running_mean.value) * jax.lax.rsqrt(running_var.value + self.epsilon) * scale + bias
        parts = tuple(parts) if parts is not None else (x.shape[0],)
        if sum(parts) != x.shape[0]:
            raise ValueError(f"PartBatchNorm: parts {parts} do not add up to the batch of {x.shape[0]}")
        axes = tuple(range(x.ndim - 1))
        out, start, mean_avg, var_avg = [], 0, running_mean.value, running_var.value
        for n in parts:
            part = x[start : start + n]
            start += n
            mean, var = part.mean(axis=axes), part.var(axis=axes)
            out.append((part - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias)
            mean_avg = self.momentum * mean_avg + (1 - self.momentum) * mean
            var_avg = self.momentum * var_avg + (1 - self.momentum) * var
        if not self.is_initializing():
            running_mean.value, running_var.value = mean_avg, var_avg
        return jnp.concatenate(out) if len(out) > 1 else out[0]


class DeconvLayers(nn.Module):
    """The reference's ``DeconvLayers`` mirroring :class:`ConvLayers`: one transposed convolution per conv
    layer, in reverse; all but the last double the size and halve the channels (256 -> 128 -> 64 -> 32 -> 16
    from 2x2 to 32x32), each followed by batch norm and ReLU; the last (3x3, stride 1) maps to the image's
    channels with neither (the reference's ``output="none"`` for normalised images). ``train``: batch norm on
    the statistics of each of the batch's ``parts``, updating the running averages in ``batch_stats``
    (:class:`PartBatchNorm`); else on those averages."""

    image_channels: int
    channels: Sequence[int] = CHANNELS

    @nn.compact
    def __call__(self, h: jax.Array, train: bool = False, parts: Sequence[int] | None = None) -> jax.Array:
        for ch in tuple(self.channels)[-2::-1]:
            h = Deconv(ch, upsample=True)(h)
            h = nn.relu(PartBatchNorm()(h, train, parts))
        return Deconv(self.image_channels, upsample=False)(h)
