"""Synaptic intelligence (Zenke, Poole & Ganguli 2017), as the reference implements it.

Every step adds each parameter's contribution to the drop in loss to a running path integral,
``W += -g * (theta_new - theta_old)``, inside the compiled step. At the end of a context the importance
grows by ``Omega += W / (delta^2 + damping)``, delta being the parameter's change over the context; the
anchor becomes the current parameters and W restarts at zero. Training adds
``c * sum_i Omega_i (theta_i - theta*_i)^2`` to the loss (no 1/2: the reference's ``surrogate_loss``).

Options (defaults: NMI-2022, shared/PROTOCOL.md):

- ``protocol``: ``nmi2022`` or ``3s2019``; picks the published value of every option left at its default.
- ``c``: penalty strength. NMI-2022: 10 / 5e4 / 5e3 (Task / Domain / Class); 3S-2019: 50 / 500 / 0.5;
  permuted MNIST, NMI-2022: 10 / 10 / 5.
- ``damping``: the reference's epsilon, 0.1 in both papers.
- ``path_gradient``: which gradient g enters the path integral. ``total`` (default): the gradient the
  optimizer receives, penalty included, which is what the reference reads from ``p.grad`` after
  ``loss_total.backward()`` (models/cl/continual_learner.py ``update_importance_estimates``);
  ``current``: the current context's loss alone, as Zenke et al. describe it.

Hyperparameters (inputs of the compiled programs, :mod:`cljax.hyper`): ``c`` and ``damping``. Static:
``protocol`` and ``path_gradient`` (which gradient the program accumulates).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cljax.regularizers import (
    check_choice,
    check_range,
    protocol_resolver,
    published,
    quadratic_penalty,
    resolve_protocol,
)
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

SI_PUBLISHED = {
    "nmi2022": {"task": {"c": 10.0}, "domain": {"c": 5e4}, "class": {"c": 5e3}},
    "3s2019": {"task": {"c": 50.0}, "domain": {"c": 500.0}, "class": {"c": 0.5}},
}
# NMI-2022 on permuted MNIST (shared/PROTOCOL.md).
SI_PUBLISHED_BY_BENCHMARK = {
    "perm-mnist": {"nmi2022": {"task": {"c": 10.0}, "domain": {"c": 10.0}, "class": {"c": 5.0}}},
    # the reference's CIFAR-100 values (params/param_values.py lines 121-136 at e6d795a)
    "split-cifar100": {"nmi2022": {"task": {"c": 100.0}, "domain": {"c": 500.0}, "class": {"c": 5.0}}},
}
PATH_GRADIENTS = ("total", "current")
# On a task-free stream the reference uses c = 10 in every scenario (params/param_values.py lines 118-119,
# `if no_boundaries: args.si_c = 10.`; all_results.sh passes --c=10. to compare_task_free.py), consolidating
# every --update-every 100 iterations.
SI_TASK_FREE = {"c": 10.0}


class SIState(flax.struct.PyTreeNode):
    """Classifier, running path integral W, importance Omega and the anchor (parameters at context start)."""

    classifier: ClassifierState
    path_integral: Any
    importance: Any
    anchor: Any


def path_integral_update(path_integral: Any, grads: Any, old: Any, new: Any) -> Any:
    """W - g * (new - old): one step's contribution to the drop in loss, per parameter."""
    return jax.tree.map(lambda w, g, p0, p1: w - g * (p1 - p0), path_integral, grads, old, new)


def importance_update(importance: Any, path_integral: Any, start: Any, end: Any, damping: float) -> Any:
    """Omega + W / ((end - start)^2 + damping)."""
    return jax.tree.map(
        lambda o, w, p0, p1: o + w / (jnp.square(p1 - p0) + damping), importance, path_integral, start, end
    )


def si(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Synaptic intelligence (see the module docstring for the options)."""
    info = setup.info
    opts = resolve_protocol(
        {**si_defaults(info.scenario), **dict(options or {})},
        SI_PUBLISHED,
        info.scenario,
        info.benchmark,
        SI_PUBLISHED_BY_BENCHMARK,
    )
    c = check_range("c", opts["c"], 0.0)
    damping = check_range("damping", opts["damping"], 0.0, low_open=True)
    total_gradient = check_choice("path_gradient", opts["path_gradient"], PATH_GRADIENTS) == "total"

    def init(key, images, stream):
        del images, stream
        classifier = init_classifier(setup, key)
        zeros = jax.tree.map(jnp.zeros_like, classifier.params)
        return SIState(classifier, zeros, zeros, classifier.params)

    def learn(state: SIState, images, stream, batch, key):
        del images, stream, key
        params = state.classifier.params
        current, grads_current = jax.value_and_grad(lambda p: classification_loss(setup, p, batch))(params)
        # d/dtheta of c * sum Omega (theta - theta*)^2, written out so that XLA fuses it into the update
        grads = jax.tree.map(
            lambda g, p, a, o: g + 2.0 * c * o * (p - a),
            grads_current,
            params,
            state.anchor,
            state.importance,
        )
        classifier = apply_gradients(setup, state.classifier, grads)
        path_integral = path_integral_update(
            state.path_integral, grads if total_gradient else grads_current, params, classifier.params
        )
        reg = quadratic_penalty(params, state.anchor, state.importance)
        metrics = {"loss": current + c * reg, "loss_current": current, "penalty": reg}
        return state.replace(classifier=classifier, path_integral=path_integral), metrics

    def consolidate(state: SIState, images, stream, key):
        del images, stream, key
        params = state.classifier.params
        importance = importance_update(state.importance, state.path_integral, state.anchor, params, damping)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return state.replace(path_integral=zeros, importance=importance, anchor=params)

    step, end_context = context_steps(setup, learn, consolidate)

    def predict(state: SIState, x):
        return setup.model.apply(state.classifier.params, x)

    return Strategy(
        init=init,
        step=step,
        end_context=end_context,
        predict=predict,
        learn=learn,
        consolidate=consolidate,
    )


def si_defaults(scenario: str) -> dict[str, Any]:
    """NMI-2022 split-MNIST settings (shared/PROTOCOL.md); ``protocol="3s2019"`` swaps in 3S-2019's."""
    return {
        "protocol": "nmi2022",
        "c": published(SI_PUBLISHED["nmi2022"][scenario]["c"]),
        "damping": 0.1,
        "path_gradient": "total",
    }


SPECS = (
    StrategySpec(
        "si",
        si,
        "synaptic intelligence, path-integral importance (NMI-2022 c 10/5e4/5e3, damping 0.1)",
        defaults=si_defaults,
        resolve=protocol_resolver(SI_PUBLISHED, SI_PUBLISHED_BY_BENCHMARK),
        hyperparameters=("c", "damping"),
        task_free=True,
        stream_defaults=lambda scenario: dict(SI_TASK_FREE),
    ),
)
