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
    context_steps,
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
    if setup.task_free:
        return stream_lwf(setup, temperature, kd, t_squared)

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


class StreamLwFState(flax.struct.PyTreeNode):
    """Classifier, the teacher (the model at the last consolidation), the contexts seen in Task-IL."""

    classifier: ClassifierState
    teacher: Any
    has_teacher: jax.Array  # bool ()
    seen: jax.Array  # float32 (n_contexts,): samples of each context so far (Task-IL context labels)
    teacher_seen: jax.Array  # float32 (n_contexts,): the same, at the last consolidation


def stream_lwf(setup: Setup, temperature: Any, kd: str, t_squared: bool) -> Strategy:
    """LwF on a task-free stream, as the reference's ``replay='current'`` with soft targets
    (``train/train_stream.py``, ``models/classifier_stream.py``): from the first consolidation on, the
    current batch is also distilled from the model as it was at the last one, ``0.5 L_current + 0.5
    L_distill`` over all units; in Task-IL each sample is distilled on the units of a context drawn from
    the context labels seen up to that consolidation, in proportion to how often each was seen."""
    info = setup.info

    def init(key, images, stream):
        del images, stream
        classifier = init_classifier(setup, key)
        counts = jnp.zeros((info.n_contexts,), jnp.float32)
        return StreamLwFState(classifier, classifier.params, jnp.asarray(False), counts, counts)

    def learn(state: StreamLwFState, images, stream, batch, key):
        if info.task_il:
            drawn = jax.random.categorical(
                jax.random.fold_in(key, 2),
                jnp.log(jnp.maximum(state.teacher_seen, 1e-30)),
                shape=batch.y.shape,
            )
            replay_mask = stream.active[drawn]
        else:
            replay_mask = batch.mask
        teacher = setup.model.apply(state.teacher, batch.x)

        def loss_fn(params):
            student = setup.model.apply(params, batch.x)
            current = cross_entropy(student, batch.y, batch.mask)
            replay = soft_target_loss(student, teacher, replay_mask, replay_mask, temperature, kd, t_squared)
            replay = jnp.where(state.has_teacher, replay, 0.0)
            total = jnp.where(state.has_teacher, 0.5 * current + 0.5 * replay, current)
            return total, (current, replay)

        (loss, (current, replay)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.classifier.params)
        seen = state.seen + jnp.zeros_like(state.seen).at[batch.context].add(1.0)
        return state.replace(classifier=apply_gradients(setup, state.classifier, grads), seen=seen), {
            "loss": loss,
            "loss_current": current,
            "distill": replay,
        }

    def consolidate(state: StreamLwFState, images, stream, key):
        del images, stream, key
        return state.replace(
            teacher=state.classifier.params, has_teacher=jnp.asarray(True), teacher_seen=state.seen
        )

    step, end_context = context_steps(setup, learn, consolidate)

    def predict(state: StreamLwFState, x):
        return setup.model.apply(state.classifier.params, x)

    return Strategy(init, step, end_context, predict, learn=learn, consolidate=consolidate)


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
        task_free=True,  # every --update-every 100 iterations the teacher is replaced (the reference's)
    ),
)
