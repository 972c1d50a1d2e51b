"""Adam as torch.optim.Adam computes it: the reference's optimizer, at a lower cost per parameter.

optax.adam divides every moment by its bias correction, then divides again by the denominator: one square
root and three divisions per parameter. PyTorch folds the bias corrections into two scalars (a step size
and the root of the second correction), so a parameter costs one square root and one division. On the CPU
these are the slow instructions of the update; the folded form makes a split-MNIST ``none`` step about 2 %
faster (benchmarks/README.md, "Adam's arithmetic"). Both are Adam: they differ only in rounding (within
1e-6 relative of each other and of torch.optim.Adam over 30 steps, tests/test_optim.py).

The state is optax.adam's, ``(ScaleByAdamState, EmptyState)``, so checkpoints and code that read it work
with either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def scale_by_torch_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam's direction ``m / (1 - b1^t) / (sqrt(v) / sqrt(1 - b2^t) + eps)`` with scalar bias corrections."""

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        step_size = 1.0 / (1.0 - b1**t)
        inv_root = 1.0 / jnp.sqrt(1.0 - b2**t)
        direction = jax.tree.map(lambda m, v: step_size * m / (jnp.sqrt(v) * inv_root + eps), mu, nu)
        return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(optax.scale_by_adam(b1, b2, eps).init, update_fn)


def adam(
    learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """torch.optim.Adam (no weight decay, no amsgrad) as an optax transformation; a drop-in for optax.adam."""
    return optax.chain(scale_by_torch_adam(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))
