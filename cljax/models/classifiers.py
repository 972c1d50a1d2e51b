"""Classifiers of the published protocols, registered through the public :func:`register_model`."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from cljax.models.layers import Conv, Linear
from cljax.models.registry import MODELS, make_classifier, register_model


class MLP(nn.Module):
    """The reference fully connected classifier (split MNIST: 784-400-400-out, ReLU)."""

    n_out: int
    hidden: Sequence[int] = (400, 400)

    def setup(self) -> None:
        self.layers = [Linear(width) for width in self.hidden]
        self.head = Linear(self.n_out)

    def features(self, x: jax.Array) -> jax.Array:
        """The last hidden layer (used by herding, nearest-mean classification and internal replay)."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = nn.relu(layer(h))
        return h

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


class TutorialCNN(nn.Module):
    """The seed tutorial's CNN: conv 1->10 k5, pool, ReLU, conv 10->20 k5, pool, ReLU, fc 320-50-out."""

    n_out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.max_pool(Conv(10, 5)(x), (2, 2), (2, 2)))
        h = nn.relu(nn.max_pool(Conv(20, 5)(h), (2, 2), (2, 2)))
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(Linear(50)(h))
        return Linear(self.n_out, name="head")(h)


class ConvNet(nn.Module):
    """NMI-2022's CIFAR network shape: 5 conv layers (16 channels, doubling, stride 2), fc 2000-2000-out.

    The reference pre-trains the conv layers on CIFAR-10 with batch norm and freezes them; here they are
    trained with the classifier and have no batch norm, so the network stays a pure function of its params.
    """

    n_out: int
    channels: Sequence[int] = (16, 32, 64, 128, 256)
    hidden: Sequence[int] = (2000, 2000)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for i, ch in enumerate(self.channels):
            h = nn.relu(Conv(ch, 3, stride=1 if i == 0 else 2, padding=1)(h))
        h = h.reshape(h.shape[0], -1)
        for width in self.hidden:
            h = nn.relu(Linear(width)(h))
        return Linear(self.n_out, name="head")(h)


register_model("mlp", lambda n_out: MLP(n_out, (400, 400)), summary="MLP 400-400 (split MNIST)")
register_model("mlp-1000", lambda n_out: MLP(n_out, (1000, 1000)), summary="MLP 1000-1000 (perm. MNIST)")
register_model(
    "mlp-2000", lambda n_out: MLP(n_out, (2000, 2000)), summary="MLP 2000-2000 (NMI-2022 CIFAR fc layers)"
)
register_model("cnn", TutorialCNN, summary="the seed tutorial's CNN: 2 conv, fc 50")
register_model("convnet", ConvNet, summary="NMI-2022's CIFAR network: 5 conv, fc 2000-2000")

__all__ = ["MLP", "MODELS", "ConvNet", "TutorialCNN", "make_classifier", "register_model"]
