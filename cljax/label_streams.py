"""Label streams: from which context each training sample of a task-free stream is drawn.

In the academic protocol the learner is told "context 3 starts now". A task-free stream announces
nothing: at every iteration each sample (or, with ``per_batch``, the whole batch) is drawn from a context
that a label stream picks, and the learner never sees that choice (Task-IL gives the context with each
sample, as the reference does). The three kinds are the reference's (GMvandeVen/continual-learning,
``data/labelstream.py``, used by ``main_task_free.py``):

- ``academic-setting``: sharp boundaries, ``iters`` iterations per context, one context per batch;
- ``fuzzy-boundaries`` (the reference's default, ``--fuzziness 500``): around each boundary the
  probability of the old context falls linearly to 0 over ``2 * fuzziness`` iterations while that of the
  new one rises to 1; the stream starts half-way into context 0, whose second half returns at the end;
- ``random``: every context equally likely at every iteration (the reference's "joint" baseline).

The probabilities are a small (iterations, contexts) table made once on the host; the draws happen on the
device, inside the compiled program, from the iteration's row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LABEL_STREAMS = ("fuzzy-boundaries", "academic-setting", "random")
DEFAULT_FUZZINESS = 500  # iterations; the reference's `--fuzziness` (params/options.py)


class LabelStreamError(ValueError):
    """A label stream that cannot be built with the settings given."""


def check_label_stream(kind: str, n_contexts: int, iters: int, fuzziness: int) -> None:
    """Refuse an unknown kind or settings the reference refuses, with what to change."""
    if kind not in LABEL_STREAMS:
        raise LabelStreamError(
            f"stream: unknown label stream {kind!r}; choose one of {', '.join(LABEL_STREAMS)}"
        )
    if n_contexts < 1 or iters < 1:
        raise LabelStreamError(
            f"stream: needs at least one context and one iteration, got {n_contexts}, {iters}"
        )
    if kind == "fuzzy-boundaries":
        if isinstance(fuzziness, bool) or not isinstance(fuzziness, int) or fuzziness < 1:
            raise LabelStreamError(f"fuzziness: must be an integer >= 1 (iterations), got {fuzziness!r}")
        if 2 * fuzziness > iters:
            raise LabelStreamError(
                f"fuzziness: {fuzziness} iterations is more than half of the {iters} iterations per context; "
                f"use --fuzziness {iters // 2} or less"
            )


def _ramp(length: int, up: bool) -> np.ndarray:
    """The reference's linear ramp over ``length`` iterations, sampled at the middle of each."""
    rising = (np.arange(length) + 0.5) / length
    return rising if up else 1.0 - rising


def context_probabilities(
    kind: str, n_contexts: int, iters: int, fuzziness: int = DEFAULT_FUZZINESS
) -> np.ndarray:
    """(n_contexts * iters, n_contexts) float32: the probability of each context at each iteration.

    Every row sums to 1.
    """
    check_label_stream(kind, n_contexts, iters, fuzziness)
    total = n_contexts * iters
    if kind == "academic-setting":
        return np.eye(n_contexts, dtype=np.float32)[np.arange(total) // iters]
    if kind == "random":
        return np.full((total, n_contexts), 1.0 / n_contexts, np.float32)
    probs = np.zeros((n_contexts, total), np.float64)
    half, f = iters // 2, fuzziness
    for c in range(n_contexts):
        if c == 0:
            probs[0, : half - f] = 1.0
            probs[0, half - f : half + f] = _ramp(2 * f, up=False)
            back = half + (n_contexts - 1) * iters  # context 0's second half, at the end of the stream
            probs[0, back - f : back + f] = _ramp(2 * f, up=True)
            probs[0, back + f :] = 1.0
        else:
            start, end = half + (c - 1) * iters, half + c * iters
            probs[c, start - f : start + f] = _ramp(2 * f, up=True)
            probs[c, start + f : end - f] = 1.0
            probs[c, end - f : end + f] = _ramp(2 * f, up=False)
    return probs.T.astype(np.float32)


def draw_contexts(
    probabilities: jax.Array, key: jax.Array, batch_size: int, per_batch: bool = False
) -> jax.Array:
    """(batch_size,) int32 contexts for one iteration, drawn from its row of :func:`context_probabilities`.

    ``per_batch``: one draw for the whole batch (the reference's ``--labels-per-batch``); otherwise one
    per sample (its default).
    """
    logits = jnp.log(probabilities)
    if per_batch:
        return jnp.full((batch_size,), jax.random.categorical(key, logits), jnp.int32)
    return jax.random.categorical(key, logits, shape=(batch_size,)).astype(jnp.int32)
