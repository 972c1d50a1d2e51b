"""cljax's Adam: torch.optim.Adam's arithmetic, optax.adam's state, the same trajectory as both."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import optim

LR, STEPS = 1e-3, 30


def problem(seed: int = 0):
    """Params and a gradient sequence of mixed scales, as a network's layers have."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(7, 5)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32)}

    def gradient(shape):
        return (rng.normal(size=shape) * 10.0 ** rng.integers(-6, 1)).astype(np.float32)

    grads = [{k: gradient(v.shape) for k, v in params.items()} for _ in range(STEPS)]
    return params, grads


def trajectory(optimizer: optax.GradientTransformation, params, grads):
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    out = []
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out, state


def test_follows_optax_adam_and_keeps_its_state_layout():
    params, grads = problem()
    ours, our_state = trajectory(optim.adam(LR), params, grads)
    theirs, their_state = trajectory(optax.adam(LR), params, grads)
    assert jax.tree.structure(our_state) == jax.tree.structure(their_state)
    for a, b in zip(ours, theirs, strict=True):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # the moments are computed the same way, so they agree to the last bit
    same = jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), our_state, their_state)
    assert all(jax.tree.leaves(same))


def test_an_optax_adam_state_continues_under_it():
    """A checkpoint written while optax.adam was the optimizer restores into this one's state."""
    params, grads = problem(1)
    state = optax.adam(LR).init(params)
    updates, state = optim.adam(LR).update(grads[0], state, params)
    assert int(state[0].count) == 1
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


def test_matches_torch_adam():
    torch = pytest.importorskip("torch")
    params, grads = problem(2)
    ours, _ = trajectory(optim.adam(LR, b1=0.5, b2=0.999, eps=1e-8), params, grads)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.Adam(list(tensors.values()), lr=LR, betas=(0.5, 0.999), eps=1e-8)
    for step, g in enumerate(grads):
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        opt.step()
        for k, t in tensors.items():
            np.testing.assert_allclose(ours[step][k], t.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_first_step_moves_every_parameter_by_the_learning_rate():
    """Adam's signature: with bias correction, the first update is lr * sign(g) (up to eps)."""
    params, grads = problem(3)
    updates, _ = optim.adam(LR).update(grads[0], optim.adam(LR).init(params), params)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads[0]), strict=True):
        big = np.abs(g) > 1e-4
        np.testing.assert_allclose(u[big], -LR * np.sign(g[big]), rtol=1e-3)
