"""The device-resident buffer: counts per class, no unfilled slot sampled, reservoir and herding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.memory import Candidates, Items, class_balanced, herding, herding_order, reservoir, truncate
from cljax.memory import sample as eager_sample

# jitted once per shape: far fewer compilations than running the functions op by op
sample = jax.jit(eager_sample, static_argnums=2)


def offer(buffer, state, ids, key):
    """Offer samples whose slot is their id (ids start at 1, so 0 marks an unfilled slot)."""
    ids = jnp.asarray(ids, jnp.int32)
    logits = jnp.stack([ids, -ids], axis=1).astype(jnp.float32)[:, : buffer.n_logits]
    return jax.jit(buffer.add)(state, Items(jnp.zeros_like(ids), ids, logits), key)


def candidates(groups_of_samples, groups, features=None):
    """Candidates whose slot is 100 + their index, one entry per sample (-1: padding)."""
    g = jnp.asarray(groups_of_samples, jnp.int32)
    return Candidates(
        context=jnp.int32(0),
        slot=100 + jnp.arange(g.shape[0], dtype=jnp.int32),
        group=jnp.maximum(g, 0),
        valid=g >= 0,
        groups=jnp.asarray(groups, jnp.int32),
        features=features,
    )


# ---------------------------------------------------------------- reservoir


def test_reservoir_fills_in_order_then_stays_full():
    buffer = reservoir(capacity=10, n_logits=2)
    state = offer(buffer, buffer.init(), np.arange(1, 7), jax.random.key(0))
    assert int(state.count[0]) == 6 and int(state.seen) == 6
    np.testing.assert_array_equal(state.slot[0, :6], np.arange(1, 7))
    np.testing.assert_array_equal(state.logits[0, :6, 1], -np.arange(1, 7))
    draw = sample(state, jax.random.key(1), 500)
    assert bool(draw.valid.all())
    assert set(np.asarray(draw.slot).tolist()) == set(range(1, 7))  # never an unfilled slot
    np.testing.assert_array_equal(draw.logits[:, 0], draw.slot)  # logits travel with their sample
    state = offer(buffer, state, np.arange(7, 40), jax.random.key(2))
    assert int(state.count[0]) == 10 and int(state.seen) == 39
    assert np.all(np.asarray(state.slot) >= 1)


def test_reservoir_batch_equals_offering_one_by_one():
    """The batched update is algorithm R run sequentially with the same random slot choices."""
    capacity, b = 4, 16
    buffer = reservoir(capacity)
    state = offer(buffer, buffer.init(), np.arange(1, 5), jax.random.key(0))
    key = jax.random.key(7)
    ids = np.arange(5, 5 + b)
    batched = offer(buffer, state, ids, key)
    index = 4 + np.arange(b)
    targets = np.asarray(jax.random.randint(key, (b,), 0, jnp.asarray(index) + 1))
    expected = np.arange(1, 5)
    for item, j in zip(ids, targets, strict=True):
        if j < capacity:
            expected[j] = item
    np.testing.assert_array_equal(batched.slot[0], expected)


def test_reservoir_keeps_every_sample_with_equal_probability():
    capacity, n_items, batch, runs = 10, 96, 8, 4000
    buffer = reservoir(capacity)

    def run(key):
        state = buffer.init()
        for start, k in zip(range(0, n_items, batch), jax.random.split(key, n_items // batch), strict=True):
            state = offer(buffer, state, np.arange(start + 1, start + batch + 1), k)
        return state.slot[0]

    kept = np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), runs)))
    assert np.all(np.sort(kept, axis=1)[:, 1:] != np.sort(kept, axis=1)[:, :-1])  # no duplicates
    freq = np.bincount(kept.ravel(), minlength=n_items + 1)[1:] / runs
    expected = capacity / n_items
    sigma = np.sqrt(expected * (1 - expected) / runs)
    assert np.abs(freq - expected).max() < 5 * sigma
    chi2 = np.sum((freq - expected) ** 2 / sigma**2)
    assert chi2 < n_items + 5 * np.sqrt(2 * n_items)  # chi-square with ~n_items degrees of freedom
    # the first and last batches are not favoured
    assert abs(freq[:batch].mean() - freq[-batch:].mean()) < 4 * sigma


def test_empty_buffer_draws_are_invalid():
    buffer = reservoir(5)
    draw = sample(buffer.init(), jax.random.key(0), 8)
    assert not bool(draw.valid.any())


# ---------------------------------------------------------------- class-balanced


def test_class_balanced_keeps_quota_per_class_chosen_at_random():
    buffer = class_balanced(groups=4, per_group=10)
    groups = [2] * 30 + [3] * 5 + [1] * 7 + [-1] * 8  # class 3 has fewer samples than the budget
    cand = candidates(groups, [2, 3])
    state = jax.jit(buffer.add)(buffer.init(), cand, jax.random.key(0))
    np.testing.assert_array_equal(state.count, [0, 0, 10, 5])
    for g, lo, hi in ((2, 100, 130), (3, 130, 135)):
        stored = np.asarray(state.slot[g, : state.count[g]])
        assert len(set(stored)) == len(stored)  # without replacement
        assert np.all((stored >= lo) & (stored < hi))  # only the class's own samples
    draw = sample(state, jax.random.key(1), 2000)
    slots = np.asarray(draw.slot)
    assert np.all(slots >= 100) and np.all(slots < 135)  # never an unfilled slot, never padding
    # uniform over the 15 stored samples
    counts = np.bincount(slots - 100, minlength=35)[np.r_[np.asarray(state.slot[2, :10]) - 100, 30:35]]
    assert counts.min() > 2000 / 15 * 0.6 and counts.max() < 2000 / 15 * 1.4

    picked = jax.jit(jax.vmap(lambda k: buffer.add(buffer.init(), cand, k).slot[2]))(
        jax.random.split(jax.random.key(2), 3000)
    )
    freq = np.bincount(np.asarray(picked).ravel() - 100, minlength=30)[:30] / 3000
    np.testing.assert_allclose(freq, 10 / 30, atol=0.05)  # every sample of the class equally likely


def test_quota_and_truncate_share_a_total_budget():
    buffer = class_balanced(groups=4, per_group=6)
    add = jax.jit(buffer.add)
    state = add(buffer.init(), candidates([0] * 9 + [1] * 9, [0, 1]), jax.random.key(0), 6)
    first = np.asarray(state.slot[:2, :3])
    state = truncate(state, 3)
    second = candidates([2] * 9 + [3] * 9, [2, 3])._replace(context=jnp.int32(1))
    state = add(state, second, jax.random.key(1), 3)
    np.testing.assert_array_equal(state.count, [3, 3, 3, 3])
    np.testing.assert_array_equal(state.slot[:2, :3], first)  # truncation keeps the first ones
    np.testing.assert_array_equal(state.context[:, 0], [0, 0, 1, 1])


def test_sample_can_be_restricted_to_groups():
    buffer = class_balanced(groups=4, per_group=5)
    state = jax.jit(buffer.add)(
        buffer.init(), candidates([0] * 5 + [1] * 5 + [2] * 5 + [3] * 5, [0, 1, 2, 3]), jax.random.key(0)
    )
    allowed = jnp.zeros((300, 4), bool).at[:150, 1].set(True).at[150:, 3].set(True)
    draw = sample(state, jax.random.key(3), 300, allowed)
    assert set(np.asarray(draw.group[:150]).tolist()) == {1}
    assert set(np.asarray(draw.group[150:]).tolist()) == {3}
    assert np.all(np.asarray(draw.position) < 5)


# ---------------------------------------------------------------- herding


def test_herding_picks_the_known_order():
    # members: (1, 0), (0, 1), (0.8, 0.6); a non-member on the class mean's direction; padding.
    f = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.747, 0.664], [0.0, 0.0]])
    member = jnp.array([True, True, True, False, False])
    # class mean ~ (0.747, 0.664): (0.8, 0.6) is closest; then (0, 1) (mean of picks (0.4, 0.8), 0.37
    # away) beats (1, 0) (mean (0.9, 0.3), 0.39 away); then (1, 0).
    np.testing.assert_array_equal(herding_order(f, member, jnp.int32(3), 4)[:3], [2, 1, 0])
    np.testing.assert_array_equal(herding_order(f, member, jnp.int32(2), 4), [2, 1, 0, 0])


def test_herding_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 6))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    member = rng.random(40) < 0.7
    mu = f[member].mean(0)
    mu /= np.linalg.norm(mu)
    picks, total = [], np.zeros(6)
    for k in range(10):
        dist = np.linalg.norm((total + f) / (k + 1) - mu, axis=1)
        dist[~member | np.isin(np.arange(40), picks)] = np.inf
        picks.append(int(np.argmin(dist)))
        total += f[picks[-1]]
    got = herding_order(jnp.asarray(f, jnp.float32), jnp.asarray(member), jnp.int32(10), 10)
    np.testing.assert_array_equal(got, picks)


def test_herding_buffer_fills_each_class():
    f = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    buffer = herding(groups=2, per_group=2)
    cand = candidates([0, 0, 0, 1, 1, 1], [0, 1], features=f)
    state = jax.jit(buffer.add)(buffer.init(), cand, jax.random.key(0))
    np.testing.assert_array_equal(state.count, [2, 2])
    assert int(state.slot[0, 0]) == 102  # (0.8, 0.6) is closest to class 0's mean
    assert int(state.slot[1, 0]) == 103  # (0.6, 0.8) is closest to class 1's mean
    with pytest.raises(ValueError, match="features"):
        buffer.add(buffer.init(), cand._replace(features=None), None)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: reservoir(0), "capacity"),
        (lambda: reservoir(10, n_logits=-1), "n_logits"),
        (lambda: class_balanced(0, 5), "groups"),
        (lambda: class_balanced(4, 2.5), "per_group"),
        (lambda: herding(4, True), "per_group"),
    ],
)
def test_bad_buffer_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()
