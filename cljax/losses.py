"""Losses over masked output layers: inactive units are excluded, as the reference slices them off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Finite, so that distillation's 0 * log(0) terms stay 0 instead of NaN.
MASKED_LOGIT = -1e9


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Set the logits of inactive output units to a huge negative value."""
    return jnp.where(mask, logits, MASKED_LOGIT)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the active units of each sample."""
    return optax.softmax_cross_entropy_with_integer_labels(mask_logits(logits, mask), labels).mean()


def accuracy_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array, valid: jax.Array) -> jax.Array:
    """Number of valid samples whose arg-max over active units equals the label."""
    hits = jnp.argmax(mask_logits(logits, mask), axis=-1) == labels
    return jnp.sum(hits & valid)


def distillation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    temperature: float | jax.Array = 2.0,
    t_squared: bool = False,
) -> jax.Array:
    """Knowledge distillation over active units, as the reference computes it (Hinton et al. 2015).

    Cross-entropy between the teacher's and the student's temperature-softened outputs, averaged over
    the batch: it differs from KL(teacher || student) by the teacher's entropy, a constant, so the
    gradient is the same. NMI-2022 uses it as is; 3S-2019 multiplies by T^2 (``t_squared=True``).
    """
    log_student = jax.nn.log_softmax(mask_logits(student_logits, mask) / temperature, axis=-1)
    teacher = jax.nn.softmax(mask_logits(teacher_logits, mask) / temperature, axis=-1)
    loss = -(teacher * log_student).sum(axis=-1).mean()
    return loss * temperature**2 if t_squared else loss


def kl_distillation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    temperature: float | jax.Array = 2.0,
) -> jax.Array:
    """tau^2 KL(p_teacher || p_student) at temperature tau (the seed tutorial's form); 0 when they agree."""
    log_student = jax.nn.log_softmax(mask_logits(student_logits, mask) / temperature, axis=-1)
    log_teacher = jax.nn.log_softmax(mask_logits(teacher_logits, mask) / temperature, axis=-1)
    kl = (jnp.exp(log_teacher) * (log_teacher - log_student)).sum(axis=-1).mean()
    return kl * temperature**2


def replay_weight(context: jax.Array) -> jax.Array:
    """Weight of the current context's loss when replaying: 1/t for the t-th context (1-based).

    The reference's total loss is (1/t) L_current + (1 - 1/t) L_replay.
    """
    return 1.0 / (context + 1).astype(jnp.float32)
