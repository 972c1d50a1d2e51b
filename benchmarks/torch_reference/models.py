"""The protocol's networks in plain PyTorch, with PyTorch's default ``nn.Linear`` initialisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import N_PIXELS


def mlp(n_out: int, hidden: Sequence[int] = (400, 400), n_in: int = N_PIXELS) -> nn.Sequential:
    """The split-MNIST classifier: 784-400-400-``n_out``, ReLU."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, n_out))


class VAE(nn.Module):
    """The reference's symmetric VAE: encoder 784-400-400, z 100, decoder 100-400-400-784 (sigmoid).

    The decoder returns logits (``sigmoid`` of them is the image), so the binary cross-entropy can use
    the numerically stable ``binary_cross_entropy_with_logits``. As in the reference code, the
    log-variance layer has no bias.
    """

    def __init__(self, hidden: Sequence[int] = (400, 400), z_dim: int = 100, n_pixels: int = N_PIXELS):
        super().__init__()
        self.z_dim = z_dim
        enc: list[nn.Module] = []
        n_in = n_pixels
        for width in hidden:
            enc += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        self.encoder = nn.Sequential(*enc)
        self.to_mean = nn.Linear(n_in, z_dim)
        self.to_logvar = nn.Linear(n_in, z_dim, bias=False)
        dec: list[nn.Module] = []
        n_in = z_dim
        for width in reversed(hidden):
            dec += [nn.Linear(n_in, width), nn.ReLU()]
            n_in = width
        self.decoder = nn.Sequential(*dec, nn.Linear(n_in, n_pixels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B,): pixel-averaged binary cross-entropy + KL(q(z|x) || N(0, I)) / pixels."""
        h = self.encoder(x)
        mean, logvar = self.to_mean(h), self.to_logvar(h)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").mean(dim=1)
        kl = -0.5 * torch.sum(1.0 + logvar - mean.pow(2) - logvar.exp(), dim=1)
        return recon + kl / x.shape[1]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images (n, 784) in [0, 1] decoded from z ~ N(0, I)."""
        z = torch.randn(n, self.z_dim, device=self.to_mean.weight.device, generator=generator)
        return torch.sigmoid(self.decoder(z))
