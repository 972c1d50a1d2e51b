"""Layers initialised as PyTorch does, so published hyperparameters transfer unchanged."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def torch_uniform(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch.nn.Linear / Conv2d default for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nn.Module):
    """Dense layer with torch.nn.Linear's initialisation."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        w = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
        b = self.param("bias", torch_uniform(fan_in), (self.features,))
        return x @ w + b


class Conv(nn.Module):
    """2-D convolution (NHWC) with torch.nn.Conv2d's initialisation."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: str | int = "VALID"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1] * self.kernel_size**2
        pad = self.padding if isinstance(self.padding, str) else [(self.padding, self.padding)] * 2
        return nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=self.stride,
            padding=pad,
            kernel_init=torch_uniform(fan_in),
            bias_init=torch_uniform(fan_in),
        )(x)
