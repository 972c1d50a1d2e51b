"""Label streams of task-free learning: the reference's probabilities, and draws that follow them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.label_streams import LabelStreamError, context_probabilities, draw_contexts

# 3 contexts of 8 iterations with fuzziness 2, worked out by hand from the reference's rule
# (data/labelstream.py): the stream starts half-way into context 0 (iteration 4 of 8), each boundary is
# a linear ramp over 2 x 2 iterations sampled at (i + 0.5) / 4, and context 0's first half returns at the end.
HAND = {
    0: [1.0, 0.0, 0.0],
    2: [0.875, 0.125, 0.0],
    3: [0.625, 0.375, 0.0],
    5: [0.125, 0.875, 0.0],
    6: [0.0, 1.0, 0.0],
    11: [0.0, 0.625, 0.375],
    14: [0.0, 0.0, 1.0],
    19: [0.375, 0.0, 0.625],
    21: [0.875, 0.0, 0.125],
    23: [1.0, 0.0, 0.0],
}


def test_fuzzy_probabilities_are_the_references():
    probs = context_probabilities("fuzzy-boundaries", n_contexts=3, iters=8, fuzziness=2)
    assert probs.shape == (24, 3)
    for t, row in HAND.items():
        np.testing.assert_allclose(probs[t], row, err_msg=f"iteration {t}")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_academic_and_random_streams():
    academic = context_probabilities("academic-setting", n_contexts=3, iters=4)
    assert academic.argmax(axis=1).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_array_equal(academic.max(axis=1), 1.0)
    np.testing.assert_allclose(context_probabilities("random", n_contexts=4, iters=3), 0.25)


def test_fuzzy_draws_follow_the_probabilities_over_the_stream():
    probs = jnp.asarray(context_probabilities("fuzzy-boundaries", n_contexts=3, iters=8, fuzziness=2))
    batch = 4096

    @jax.jit
    def stream(key):  # as the engine draws: one row per iteration, inside a scan on the device
        def one(_, xs):
            row, k = xs
            return None, draw_contexts(row, k, batch)

        return jax.lax.scan(one, None, (probs, jax.random.split(key, probs.shape[0])))[1]

    drawn = np.asarray(stream(jax.random.key(0)))
    fractions = np.stack([(drawn == c).mean(axis=1) for c in range(3)], axis=1)
    for t, row in HAND.items():
        np.testing.assert_allclose(fractions[t], row, atol=0.03, err_msg=f"iteration {t}")
    assert np.abs(fractions - np.asarray(probs)).max() < 0.035  # 4096 draws: 3 sd of 0.5 is 0.023


def test_per_batch_draws_one_context_per_batch():
    row = jnp.asarray([0.5, 0.5, 0.0])
    draws = jax.vmap(lambda k: draw_contexts(row, k, 16, per_batch=True))(
        jax.random.split(jax.random.key(1), 400)
    )
    draws = np.asarray(draws)
    assert (draws == draws[:, :1]).all() and set(np.unique(draws)) == {0, 1}
    assert abs((draws[:, 0] == 0).mean() - 0.5) < 0.1


@pytest.mark.parametrize(
    ("kind", "fuzziness", "message"),
    [
        ("fuzzy", 2, "unknown label stream 'fuzzy'"),
        ("fuzzy-boundaries", 5, "use --fuzziness 4 or less"),
        ("fuzzy-boundaries", 0, "fuzziness: must be an integer >= 1"),
    ],
)
def test_bad_streams_are_refused_with_what_to_change(kind, fuzziness, message):
    with pytest.raises(LabelStreamError, match=message):
        context_probabilities(kind, n_contexts=3, iters=8, fuzziness=fuzziness)
