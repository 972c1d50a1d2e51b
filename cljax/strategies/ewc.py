"""Elastic weight consolidation: EWC (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018).

After each context the diagonal Fisher information F and the parameters theta* are stored; training on
later contexts adds ``lambda/2 * sum_i F_i (theta_i - theta*_i)^2`` to the loss, as the reference's
``ewc_loss`` computes it (GMvandeVen/continual-learning, models/cl/continual_learner.py).

- ``ewc``: one penalty per earlier context (the reference's "offline" EWC). Fisher and anchor are kept in a
  fixed stack of n_contexts - 1 slots, filled at the end of each context and masked by a count, so shapes
  never change. The last context's Fisher is never used and is not computed (as in the reference). A sum
  of quadratics is one quadratic, so ``end_context`` also merges the filled slots into a single precision,
  mean and constant (:func:`cljax.regularizers.merge_quadratic_penalties`): the step then pays for one
  penalty, not one per context, with the same value and gradient.
- ``online-ewc``: one running Fisher F <- gamma F + F_new and the latest parameters as the anchor; the
  penalty is ``lambda/2 * sum gamma F (theta - theta*)^2`` (the reference multiplies by gamma again there).

The Fisher is computed over the context's training data on the units active in that context
(:func:`cljax.fisher.context_fisher`), in the compiled ``end_context``.

On a task-free stream (``cljax run --stream ...``) both consolidate every ``update_every`` iterations
(default 100, as the reference's other consolidating methods) instead of at context ends, with the Fisher
over the training samples the stream showed since the last consolidation (:func:`cljax.fisher.seen_fisher`;
the learner marks each sample it trains on) and one (Fisher, anchor) slot per consolidation for ``ewc``.
The reference has no task-free EWC (its ``params/options.py``: "currently the only supported param reg
option is SI"), so the stream keeps the scenario's published lambda. An ``academic-setting`` stream that
consolidates once per context and sees every sample of each context trains what the context-by-context
run trains.

Options (defaults: NMI-2022 for ``ewc``, 3S-2019 for ``online-ewc``, shared/PROTOCOL.md):

- ``protocol``: ``nmi2022`` or ``3s2019``; picks the published value of every option left at its default.
- ``lambda``: penalty strength. EWC, NMI-2022: 1e5 / 1e10 / 1e9 (Task / Domain / Class);
  3S-2019: 1e7 / 1e6 / 1e8. Online EWC, 3S-2019: 1e8 / 1e8 / 1e9 (none published in NMI-2022).
  Permuted MNIST, NMI-2022: 100 in every scenario, with the Fisher from 1000 samples.
- ``gamma`` (online EWC): decay of the running Fisher, in (0, 1]; 3S-2019: 0.8 / 0.7 / 0.8.
- ``fisher_labels``: ``all`` (exact Fisher, labels weighted by predicted probabilities: NMI-2022),
  ``pred`` (the predicted label: 3S-2019), ``sample`` or ``true`` (empirical Fisher).
- ``fisher_n``: samples for the Fisher, drawn without replacement; ``None`` = every sample of the context.

Hyperparameters (inputs of the compiled programs, :mod:`cljax.hyper`): ``lambda`` and, for online EWC,
``gamma``. Static: ``protocol``, ``fisher_labels`` (which Fisher is computed) and ``fisher_n`` (a shape).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cljax.batching import sample_context
from cljax.fisher import FISHER_LABELS, context_fisher, seen_fisher
from cljax.regularizers import (
    check_choice,
    check_range,
    merge_quadratic_penalties,
    protocol_resolver,
    published,
    quadratic_penalty,
    resolve_protocol,
    set_slot,
    stack_slots,
)
from cljax.scenarios import ScenarioInfo
from cljax.strategies.base import (
    ClassifierState,
    Setup,
    Strategy,
    StrategySpec,
    apply_gradients,
    context_steps,
    init_classifier,
)
from cljax.strategies.finetune import classification_loss

EWC_PUBLISHED = {
    "nmi2022": {
        "task": {"lambda": 1e5, "fisher_labels": "all"},
        "domain": {"lambda": 1e10, "fisher_labels": "all"},
        "class": {"lambda": 1e9, "fisher_labels": "all"},
    },
    "3s2019": {
        "task": {"lambda": 1e7, "fisher_labels": "pred"},
        "domain": {"lambda": 1e6, "fisher_labels": "pred"},
        "class": {"lambda": 1e8, "fisher_labels": "pred"},
    },
}

# NMI-2022 on permuted MNIST (shared/PROTOCOL.md): lambda 100 in every scenario, Fisher from 1000 samples.
_PERM_MNIST_EWC = {"lambda": 100.0, "fisher_labels": "all", "fisher_n": 1000}
EWC_PUBLISHED_BY_BENCHMARK = {
    "perm-mnist": {"nmi2022": {s: dict(_PERM_MNIST_EWC) for s in ("task", "domain", "class")}},
    # the reference's CIFAR-100 values (params/param_values.py lines 121-136 at e6d795a)
    "split-cifar100": {
        "nmi2022": {
            "task": {"lambda": 1e3, "fisher_labels": "all"},
            "domain": {"lambda": 1e3, "fisher_labels": "all"},
            "class": {"lambda": 100.0, "fisher_labels": "all"},
        }
    },
}

# NMI-2022 publishes no online-EWC values: there only its Fisher labels differ from 3S-2019.
ONLINE_EWC_PUBLISHED = {
    "nmi2022": {s: {"fisher_labels": "all"} for s in ("task", "domain", "class")},
    "3s2019": {
        "task": {"lambda": 1e8, "gamma": 0.8, "fisher_labels": "pred"},
        "domain": {"lambda": 1e8, "gamma": 0.7, "fisher_labels": "pred"},
        "class": {"lambda": 1e9, "gamma": 0.8, "fisher_labels": "pred"},
    },
}


class EWCState(flax.struct.PyTreeNode):
    """EWC: the classifier, one (Fisher, anchor) slot per finished context and their merged quadratic."""

    classifier: ClassifierState
    fisher: Any  # (S, ...) per-context Fisher
    anchor: Any  # (S, ...) parameters at the end of each context
    count: jax.Array  # int32: slots filled
    precision: Any  # merged: sum_s F_s
    mean: Any  # merged: Fisher-weighted mean of the anchors
    offset: jax.Array  # merged: the constant that makes the merged value exact


class OnlineEWCState(flax.struct.PyTreeNode):
    """Online EWC: the classifier, the running Fisher and the parameters at the end of the last context."""

    classifier: ClassifierState
    fisher: Any
    anchor: Any


class StreamEWCState(EWCState):
    """EWC on a task-free stream: as :class:`EWCState`, with the samples seen since the last consolidation."""

    seen: jax.Array  # bool (C, N_max): by context and position in stream.train_idx


class StreamOnlineEWCState(OnlineEWCState):
    """Online EWC on a task-free stream: as :class:`OnlineEWCState`, with the samples seen since the last
    consolidation."""

    seen: jax.Array


def _fields(state: flax.struct.PyTreeNode) -> dict[str, Any]:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def _settings(options: Mapping[str, Any], info: ScenarioInfo, online: bool) -> dict[str, Any]:
    if online:
        opts = resolve_protocol(options, ONLINE_EWC_PUBLISHED, info.scenario)
    else:
        opts = resolve_protocol(
            options, EWC_PUBLISHED, info.scenario, info.benchmark, EWC_PUBLISHED_BY_BENCHMARK
        )
    fisher_n = opts.get("fisher_n")
    if fisher_n is not None and (isinstance(fisher_n, bool) or not isinstance(fisher_n, int) or fisher_n < 1):
        raise ValueError(
            f"option 'fisher_n' must be a positive integer or None (all samples); got {fisher_n!r}"
        )
    settings = {
        "lambda": check_range("lambda", opts["lambda"], 0.0),
        "fisher_labels": check_choice("fisher_labels", opts["fisher_labels"], FISHER_LABELS),
        "fisher_n": fisher_n,
    }
    if online:
        settings["gamma"] = check_range("gamma", opts["gamma"], 0.0, 1.0, low_open=True, high_open=False)
    return settings


def _ewc(setup: Setup, options: Mapping[str, Any], online: bool) -> Strategy:
    info = setup.info
    settings = _settings(options, info, online)
    lam, gamma = settings["lambda"], settings.get("gamma", 1.0)
    if setup.task_free:
        n_slots = info.n_contexts * setup.iters // (setup.update_every or setup.iters)
    else:
        n_slots = max(info.n_contexts - 1, 1)

    def penalty(params, state) -> jax.Array:
        if online:
            return gamma * quadratic_penalty(params, state.anchor, state.fisher)
        return quadratic_penalty(params, state.mean, state.precision) + state.offset

    def init(key, images, stream):
        del images
        classifier = init_classifier(setup, key)
        zeros = jax.tree.map(jnp.zeros_like, classifier.params)
        if online:
            state = OnlineEWCState(classifier, zeros, zeros)
        else:
            slots = stack_slots(zeros, n_slots)
            state = EWCState(classifier, slots, slots, jnp.zeros((), jnp.int32), zeros, zeros, jnp.zeros(()))
        if not setup.task_free:
            return state
        seen = jnp.zeros(stream.train_idx.shape, bool)
        return (StreamOnlineEWCState if online else StreamEWCState)(**_fields(state), seen=seen)

    def step(state, images, stream, context, key):
        batch = sample_context(info, images, stream, context, key, setup.batch_size)
        return learn_batch(state, batch)

    def learn_batch(state, batch):
        def loss_fn(params):
            current = classification_loss(setup, params, batch)
            reg = penalty(params, state)
            return current + 0.5 * lam * reg, (current, reg)

        (loss, (current, reg)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.classifier.params)
        classifier = apply_gradients(setup, state.classifier, grads)
        return state.replace(classifier=classifier), {"loss": loss, "loss_current": current, "penalty": reg}

    def consolidate(state, images, stream, context, key):
        params = state.classifier.params
        new = context_fisher(
            info, setup.model, params, images, stream, context, key,
            settings["fisher_labels"], settings["fisher_n"],
        )  # fmt: skip
        return add_fisher(state, new)

    def add_fisher(state, new):
        params = state.classifier.params
        if online:
            fisher = jax.tree.map(lambda old, f: gamma * old + f, state.fisher, new)
            return state.replace(fisher=fisher, anchor=params)
        fisher = set_slot(state.fisher, state.count, new)
        anchor = set_slot(state.anchor, state.count, params)
        count = state.count + 1
        precision, mean, offset = merge_quadratic_penalties(anchor, fisher, count)
        return state.replace(
            fisher=fisher, anchor=anchor, count=count, precision=precision, mean=mean, offset=offset
        )

    def end_context(state, images, stream, context, key):
        # The reference estimates no Fisher after the last context: nothing would ever use it.
        return jax.lax.cond(
            context < info.n_contexts - 1,
            lambda s: consolidate(s, images, stream, context, key),
            lambda s: s,
            state,
        )

    def predict(state, x):
        return setup.model.apply(state.classifier.params, x)

    if not setup.task_free:
        return Strategy(init=init, step=step, end_context=end_context, predict=predict)

    def learn(state, images, stream, batch, key):
        del images, stream, key
        state, metrics = learn_batch(state, batch)
        return state.replace(seen=state.seen.at[batch.context, batch.slot].set(True)), metrics

    def consolidate_seen(state, images, stream, key):
        new = seen_fisher(
            info, setup.model, state.classifier.params, images, stream, state.seen, key,
            settings["fisher_labels"], settings["fisher_n"],
        )  # fmt: skip
        return add_fisher(state, new).replace(seen=jnp.zeros_like(state.seen))

    step, end_context = context_steps(setup, learn, consolidate_seen)
    return Strategy(init, step, end_context, predict, learn=learn, consolidate=consolidate_seen)


def ewc(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """EWC with one penalty per earlier context (see the module docstring for the options)."""
    return _ewc(setup, {**ewc_defaults(setup.info.scenario), **dict(options or {})}, online=False)


def online_ewc(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Online EWC: one running Fisher with decay gamma (see the module docstring for the options)."""
    return _ewc(setup, {**online_ewc_defaults(setup.info.scenario), **dict(options or {})}, online=True)


def ewc_defaults(scenario: str) -> dict[str, Any]:
    """NMI-2022 split-MNIST settings (shared/PROTOCOL.md); ``protocol="3s2019"`` swaps in 3S-2019's."""
    values = EWC_PUBLISHED["nmi2022"][scenario]
    return {
        "protocol": "nmi2022",
        "lambda": published(values["lambda"]),
        "fisher_labels": published(values["fisher_labels"]),
        "fisher_n": None,
    }


def online_ewc_defaults(scenario: str) -> dict[str, Any]:
    """3S-2019 split-MNIST settings (shared/PROTOCOL.md), the only published online-EWC values."""
    values = ONLINE_EWC_PUBLISHED["3s2019"][scenario]
    return {
        "protocol": "3s2019",
        "lambda": published(values["lambda"]),
        "gamma": published(values["gamma"]),
        "fisher_labels": published(values["fisher_labels"]),
        "fisher_n": None,
    }


SPECS = (
    StrategySpec(
        "ewc",
        ewc,
        "EWC, one Fisher penalty per context (NMI-2022 lambda 1e5/1e10/1e9, exact Fisher)",
        defaults=ewc_defaults,
        resolve=protocol_resolver(EWC_PUBLISHED, EWC_PUBLISHED_BY_BENCHMARK),
        hyperparameters=("lambda",),
        task_free=True,
    ),
    StrategySpec(
        "online-ewc",
        online_ewc,
        "online EWC, one running Fisher (3S-2019 lambda 1e8/1e8/1e9, gamma 0.8/0.7/0.8)",
        defaults=online_ewc_defaults,
        resolve=protocol_resolver(ONLINE_EWC_PUBLISHED),
        hyperparameters=("lambda", "gamma"),
        task_free=True,
    ),
)
