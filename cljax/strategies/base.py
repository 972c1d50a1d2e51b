"""What every strategy is made of: a few pure functions over an explicit state pytree.

A strategy is built by a factory that closes over the static pieces (network, optimizer, hyperparameters)
and returns a :class:`Strategy` of pure functions, in the spirit of ``optax.GradientTransformation``. The
engine scans ``step`` over one context's iterations, then calls ``end_context``; nothing a strategy
keeps between contexts (frozen params, buffers, Fisher) lives anywhere but in the state it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from cljax.presets import SCENARIOS
from cljax.scenarios import Images, ScenarioInfo, Stream

State = Any
Metrics = dict[str, jax.Array]


class Setup(NamedTuple):
    """The static pieces a strategy is built from."""

    info: ScenarioInfo
    model: nn.Module
    optimizer: optax.GradientTransformation
    batch_size: int
    iters: int
    task_free: bool = False  # the run learns from a task-free stream (cljax.task_free)
    update_every: int | None = None  # on a stream: iterations between consolidations


class Strategy(NamedTuple):
    """Pure functions that define a continual-learning method.

    init(key, images, stream) -> state
    step(state, images, stream, context, key) -> (state, metrics)   one training iteration
    end_context(state, images, stream, context, key) -> state        after a context's last iteration
    predict(state, x) -> logits                                      for evaluation
    sample(state, key, n) -> images                                  optional: what a generator replays,
                                                                     float (n, H, W, C) in [0, 1]
    params(state) -> classifier params                               optional: where the classifier's
                                                                     params are, when not at state.params,
                                                                     state.classifier.params or
                                                                     state.model.params
    learn(state, images, stream, batch, key) -> (state, metrics)     optional, task-free streams: one
                                                                     iteration on the batch the stream
                                                                     gives (cljax.task_free)
    consolidate(state, images, stream, key) -> state                 optional, task-free streams: every
                                                                     ``update_every`` iterations, in place
                                                                     of the context boundary
    """

    init: Callable[[jax.Array, Images, Stream], State]
    step: Callable[[State, Images, Stream, jax.Array, jax.Array], tuple[State, Metrics]]
    end_context: Callable[[State, Images, Stream, jax.Array, jax.Array], State]
    predict: Callable[[State, jax.Array], jax.Array]
    sample: Callable[[State, jax.Array, int], jax.Array] | None = None
    params: Callable[[State], Any] | None = None
    learn: Callable[[State, Images, Stream, Any, jax.Array], tuple[State, Metrics]] | None = None
    consolidate: Callable[[State, Images, Stream, jax.Array], State] | None = None


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: how to build it, where it applies and its published defaults."""

    name: str
    build: Callable[[Setup, Mapping[str, Any]], Strategy]
    summary: str
    scenarios: tuple[str, ...] = SCENARIOS
    defaults: Callable[[str], dict[str, Any]] = field(default=lambda scenario: {})
    # (options, benchmark, scenario) -> the values the strategy will use, so results record them
    resolve: Callable[[dict[str, Any], str, str], dict[str, Any]] | None = None
    # continuous options that are inputs of the compiled programs (traced, vmapped in a sweep), not constants
    hyperparameters: tuple[str, ...] = ()
    # on a task-free stream: iterations between consolidations (the reference's --update-every, 100;
    # its replay methods use --replay-update, 1), unless the run sets update_every
    update_every: int = 100
    # whether its builds give ``learn`` and ``consolidate``, so that it can learn from a task-free stream
    task_free: bool = False
    # options a task-free run uses unless set (the reference's no_boundaries defaults)
    stream_defaults: Callable[[str], dict[str, Any]] = field(default=lambda scenario: {})
    # on a benchmark whose inputs are frozen conv features (cljax.features), whether it also needs the
    # images and each run's frozen conv layers (Images.pixels, Stream.conv); other strategies never see them
    pixels: bool = False


class ClassifierState(flax.struct.PyTreeNode):
    """A classifier's trainable params and its optimizer state."""

    params: Any
    opt_state: Any


def init_classifier(setup: Setup, key: jax.Array) -> ClassifierState:
    """Initialise the network on a dummy batch and the optimizer on its params."""
    dummy = jnp.zeros((1, *setup.info.input_shape), jnp.float32)
    params = setup.model.init(key, dummy)
    return ClassifierState(params=params, opt_state=setup.optimizer.init(params))


def apply_gradients(setup: Setup, state: ClassifierState, grads: Any) -> ClassifierState:
    """One optimizer update."""
    updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def keep_state(state: State, images: Images, stream: Stream, context: jax.Array, key: jax.Array) -> State:
    """``end_context`` for strategies that carry nothing across contexts."""
    del images, stream, context, key
    return state


def keep_state_on_stream(state: State, images: Images, stream: Stream, key: jax.Array) -> State:
    """``consolidate`` for stream learners that carry nothing across consolidations."""
    del images, stream, key
    return state


PASS_AN_MLP = "pass model='mlp', 'mlp-1000' or cljax.models.MLP(n_out, hidden)"


def require_mlp(setup: Setup, why: str, fix: str) -> None:
    """Refuse a network the strategy cannot use: it builds its networks from an MLP's widths."""
    from cljax.models.classifiers import MLP
    from cljax.models.registry import module_name

    if not isinstance(setup.model, MLP):
        raise ValueError(f"model: {why}, so it cannot train {module_name(setup.model)}; {fix}")


def context_steps(setup: Setup, learn: Callable, consolidate: Callable) -> tuple[Callable, Callable]:
    """``step`` and ``end_context`` for a learner written for task-free streams (``learn``,
    ``consolidate``), run on announced contexts: a batch of the current context, and a consolidation at
    its end."""
    from cljax.batching import sample_context

    def step(state, images, stream, context, key):
        batch = sample_context(setup.info, images, stream, context, key, setup.batch_size)
        return learn(state, images, stream, batch, key)

    def end_context(state, images, stream, context, key):
        del context
        return consolidate(state, images, stream, key)

    return step, end_context
