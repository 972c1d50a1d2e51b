"""Learning from a task-free stream: no context boundaries given, consolidation every N iterations.

The stream runs as the context-by-context protocol does, in segments of ``iters`` iterations (one per
context, so that the accuracy matrix has the usual grid: row s is the accuracy on every context's test set
after s + 1 segments), each segment one compiled program used for all of them. Inside a segment a scan
runs over chunks of ``update_every`` iterations; every iteration draws each sample's context from the label
stream's row for that iteration (:mod:`cljax.label_streams`) and a sample of that context's training data,
and calls the strategy's ``learn``; after each chunk the strategy's ``consolidate`` runs, in place of the
boundary the learner is not told about. Task-IL keeps each sample on its own context's output units (the
reference gives the context label with each sample); Domain- and Class-IL train every unit.

Following the reference (GMvandeVen/continual-learning, ``train/train_stream.py``), the learner never sees
the stream's context labels outside Task-IL, and what a method keeps between consolidations (a teacher, an
importance estimate, a replay buffer) comes only from what the stream has shown it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.batching import gather
from cljax.label_streams import check_label_stream, context_probabilities, draw_contexts
from cljax.scenarios import Images, ScenarioInfo, Stream
from cljax.strategies.base import Strategy


def stream_probabilities(kind: str, info: ScenarioInfo, iters: int, fuzziness: int) -> np.ndarray:
    """(n_contexts * iters, n_contexts): the label stream's probabilities over the whole stream."""
    return context_probabilities(kind, info.n_contexts, iters, fuzziness)


def check_chunks(iters: int, update_every: int) -> None:
    """A segment of ``iters`` iterations must hold whole chunks of ``update_every``."""
    if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
        raise ValueError(f"update_every: must be an integer >= 1 (iterations), got {update_every!r}")
    if iters % update_every:
        divisors = [d for d in (1, 10, 50, 100, 200, 500, 1000) if iters % d == 0]
        raise ValueError(
            f"update_every: {update_every} does not divide the {iters} iterations per context; "
            f"choose a divisor such as {', '.join(map(str, divisors))}"
        )


def train_segment(
    strategy: Strategy,
    info: ScenarioInfo,
    probabilities: jax.Array,
    iters: int,
    update_every: int,
    batch_size: int,
    per_batch: bool,
    state: Any,
    images: Images,
    stream: Stream,
    segment: jax.Array,
    key: jax.Array,
) -> tuple[Any, dict[str, jax.Array]]:
    """One seed's ``segment``-th stretch of ``iters`` iterations: chunks of ``update_every`` learning
    steps, each followed by ``consolidate``.

    The keys are split as the context-by-context engine splits them (``cljax.engine.train_context``), and
    a sample's position in its context is drawn with the step's key exactly as ``sample_context`` draws it:
    an ``academic-setting`` stream consolidating once per context trains what that engine trains.
    """
    n_chunks = iters // update_every
    step_key, end_key = jax.random.split(key)
    step_keys = jax.random.split(step_key, iters).reshape(n_chunks, update_every)
    end_keys = end_key[None] if n_chunks == 1 else jax.random.split(end_key, n_chunks)
    first = segment * iters

    def one_step(state, xs):
        t, k = xs
        contexts = draw_contexts(probabilities[t], jax.random.fold_in(k, 1), batch_size, per_batch)
        slots = jax.random.randint(k, (batch_size,), 0, stream.train_n[contexts])
        return strategy.learn(state, images, stream, gather(info, images, stream, contexts, slots), k)

    def one_chunk(state, xs):
        chunk, keys, k_end = xs
        steps = first + chunk * update_every + jnp.arange(update_every)
        state, metrics = jax.lax.scan(one_step, state, (steps, keys))
        return strategy.consolidate(state, images, stream, k_end), metrics

    state, metrics = jax.lax.scan(one_chunk, state, (jnp.arange(n_chunks), step_keys, end_keys))
    return state, jax.tree.map(lambda m: m.reshape(iters, *m.shape[2:]), metrics)


def check_stream(kind: str, info: ScenarioInfo, iters: int, fuzziness: int, update_every: int) -> None:
    """Every setting of a task-free run, checked before anything compiles (ValueError with the fix)."""
    check_label_stream(kind, info.n_contexts, iters, fuzziness)
    check_chunks(iters, update_every)
