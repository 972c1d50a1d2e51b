"""Learning without forgetting (Li & Hoiem 2017), as the reference weighs it in each scenario.

The model as it was at the end of the previous context (the teacher, kept frozen in the state and copied
in ``end_context``) labels the current inputs with its temperature-softened outputs; the classifier is
trained on the current labels plus a distillation term towards them. With t the 1-based index of the
current context and ``KD_j`` the distillation on the units of earlier context j:

- NMI-2022 (``protocol="nmi2022"``, GMvandeVen/continual-learning master, ``lwf_weighting``):
  Task-IL ``L = L_cur + sum_{j<t} KD_j`` (= (t-1) mean_j KD_j; one term per earlier context on that
  context's units); Domain-IL ``L = L_cur + (t-1) KD``; Class-IL ``L = L_cur + KD``.
- 3S-2019 (``protocol="3s2019"``, the ``preprints`` branch): ``L = (1/t) L_cur + (1-1/t) mean_j KD_j``,
  with KD multiplied by T^2.

In Domain- and Class-IL the teacher's softmax runs over the units active in the previous context and the
student's over those active now: under NMI-2022 (all units active) both cover every unit; with
``class_il_active="seen"`` (3S-2019) the teacher covers the classes seen before, padded with zeros, as the
reference's ``loss_fn_kd`` does.

Options (defaults: NMI-2022, shared/PROTOCOL.md):

- ``protocol``: ``nmi2022`` or ``3s2019`` (the weighting above and the default of ``t_squared``).
- ``temperature``: T = 2 in both papers.
- ``kd``: ``ce`` (the reference: cross-entropy between the softened outputs,
  :func:`cljax.losses.distillation`) or ``kl`` (the seed tutorial: T^2 KL(teacher || student),
  :func:`cljax.losses.kl_distillation`).
- ``t_squared``: multiply the ``ce`` form by T^2; ``None`` = the protocol's choice (NMI-2022 no,
  3S-2019 yes). The ``kl`` form always carries T^2.

Hyperparameters (inputs of the compiled programs, :mod:`cljax.hyper`): ``temperature``. Static:
``protocol``, ``kd`` and ``t_squared`` (they choose the loss's form).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cljax.batching import sample_context
from cljax.losses import cross_entropy, distillation, kl_distillation, mask_logits
from cljax.regularizers import check_choice, check_range, protocol_resolver, resolve_protocol
from cljax.strategies.base import (
    ClassifierState,
    Setup,
    Strategy,
    StrategySpec,
    apply_gradients,
    init_classifier,
)

LWF_PUBLISHED = {
    "nmi2022": {s: {"t_squared": False} for s in ("task", "domain", "class")},
    "3s2019": {s: {"t_squared": True} for s in ("task", "domain", "class")},
}
KD_FORMS = ("ce", "kl")


class LwFState(flax.struct.PyTreeNode):
    """Classifier and the frozen parameters of the model at the end of the previous context."""

    classifier: ClassifierState
    teacher: Any


def soft_target_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    student_mask: jax.Array,
    teacher_mask: jax.Array,
    temperature: float,
    kd: str = "ce",
    t_squared: bool = False,
) -> jax.Array:
    """Distillation with the teacher's softmax over ``teacher_mask`` and the student's over ``student_mask``.

    Teacher units outside ``teacher_mask`` get probability 0 (the reference pads its targets with zeros).
    """
    teacher = jax.lax.stop_gradient(mask_logits(teacher_logits, teacher_mask))
    if kd == "kl":
        return kl_distillation(student_logits, teacher, student_mask, temperature)
    return distillation(student_logits, teacher, student_mask, temperature, t_squared)


def lwf(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Learning without forgetting (see the module docstring for the options)."""
    info = setup.info
    opts = resolve_protocol(
        {**lwf_defaults(info.scenario), **dict(options or {})}, LWF_PUBLISHED, info.scenario
    )
    temperature = check_range("temperature", opts["temperature"], 0.0, low_open=True)
    kd = check_choice("kd", opts["kd"], KD_FORMS)
    t_squared = check_choice("t_squared", opts["t_squared"], (False, True))
    nmi = opts["protocol"] == "nmi2022"

    def distillation_term(student, teacher, active, context):
        earlier = context.astype(jnp.float32)  # t - 1
        if info.task_il:
            per_context = jax.vmap(
                lambda m: soft_target_loss(student, teacher, m, m, temperature, kd, t_squared)
            )(active)
            summed = jnp.sum(jnp.where(jnp.arange(info.n_contexts) < context, per_context, 0.0))
            return summed if nmi else summed / jnp.maximum(earlier, 1.0)
        previous = active[jnp.maximum(context - 1, 0)]
        term = soft_target_loss(student, teacher, active[context], previous, temperature, kd, t_squared)
        if nmi and info.scenario == "domain":
            return earlier * term
        return jnp.where(context > 0, term, 0.0)

    def init(key, images, stream):
        del images, stream
        classifier = init_classifier(setup, key)
        return LwFState(classifier, classifier.params)

    def step(state: LwFState, images, stream, context, key):
        batch = sample_context(info, images, stream, context, key, setup.batch_size)
        teacher = setup.model.apply(state.teacher, batch.x)

        def loss_fn(params):
            student = setup.model.apply(params, batch.x)
            current = cross_entropy(student, batch.y, batch.mask)
            replay = distillation_term(student, teacher, stream.active, context)
            if nmi:
                return current + replay, (current, replay)
            weight = 1.0 / (context + 1).astype(jnp.float32)
            return weight * current + (1.0 - weight) * replay, (current, replay)

        (loss, (current, replay)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.classifier.params)
        classifier = apply_gradients(setup, state.classifier, grads)
        return state.replace(classifier=classifier), {
            "loss": loss,
            "loss_current": current,
            "distill": replay,
        }

    def end_context(state: LwFState, images, stream, context, key):
        del images, stream, context, key
        return state.replace(teacher=state.classifier.params)

    def predict(state: LwFState, x):
        return setup.model.apply(state.classifier.params, x)

    return Strategy(init=init, step=step, end_context=end_context, predict=predict)


def lwf_defaults(scenario: str) -> dict[str, Any]:
    """NMI-2022 settings (shared/PROTOCOL.md): T = 2, no T^2 factor; ``protocol="3s2019"`` for 3S-2019."""
    del scenario
    return {"protocol": "nmi2022", "temperature": 2.0, "kd": "ce", "t_squared": None}


SPECS = (
    StrategySpec(
        "lwf",
        lwf,
        "learning without forgetting, distillation from the previous model (NMI-2022 weighting, T = 2)",
        defaults=lwf_defaults,
        resolve=protocol_resolver(LWF_PUBLISHED),
        hyperparameters=("temperature",),
    ),
)
