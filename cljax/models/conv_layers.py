"""NMI-2022's convolutional feature extractor for CIFAR, as the reference builds it.

GMvandeVen/continual-learning, ``models/conv/nets.py`` ``ConvLayers`` and ``models/conv/layers.py``
``conv_layer`` with the CIFAR defaults of ``params/param_values.py`` (depth 5, 16 start channels, the last 4
layers reducing): 3x3 convolutions with bias, each followed by batch norm and ReLU; the first keeps the
image size and 16 channels, each later one halves the size (stride 2) and doubles the channels, so a
32x32 image becomes 256 channels of 2x2 (1024 features; the reference's label ``C3-5x16-bn``).

Batch norm follows ``torch.nn.BatchNorm2d`` (eps 1e-5, running averages updated with momentum 0.1, i.e.
flax's 0.9); with ``train=False`` it uses the running averages, which is how the frozen layers run in the
continual phase, so they are a pure function of their params.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from cljax.models.classifiers import MLP
from cljax.models.layers import Conv

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
