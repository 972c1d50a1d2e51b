"""The seed tutorial's generative replay, as one strategy: ``cljax run --strategy tutorial --model cnn``.

Its recipe, not a published protocol: a classifier (the tutorial's CNN is ``--model cnn``; any model works),
an MLP generator trained alongside it, and replay of ``replay_ratio`` x batch samples per iteration from the
frozen generator, on which the classifier matches the frozen classifier's softened outputs:

    L = CE(current batch) + lam * tau^2 KL(p_old(x_r) || p_new(x_r)),   p = softmax(logits / tau)

(:func:`cljax.losses.kl_distillation`). Defaults lam = 1, tau = 2, replay_ratio = 1 are the tutorial's
conventions, not numbers from a paper. The generator is the reference VAE by default (``generator=gan``
gives the MLP GAN); it is trained on current and replayed samples weighted (1/t, 1 - 1/t) as in DGR, so that
every context keeps an equal share of what it replays. Scenario handling (which output units are distilled)
is DGR's; see :mod:`cljax.strategies.dgr`.

Hyperparameters (inputs of the compiled programs, :mod:`cljax.hyper`): ``lam``, ``tau`` and ``gen_lr``
(``None`` resolved to the generator's published rate). Static: ``replay_ratio`` (it sets the replay batch's
size), ``generator``, ``gen_units`` and ``z_dim``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cljax.losses import kl_distillation, mask_logits
from cljax.strategies.base import Setup, Strategy, StrategySpec
from cljax.strategies.dgr import build_generator, generative_replay, positive_float, resolve_generator
from cljax.strategies.memory_replay import float_option


def tutorial(setup: Setup, options: Mapping[str, Any] | None = None) -> Strategy:
    """Generative replay with lam-weighted tau^2 KL distillation on ``replay_ratio`` x batch samples."""
    options = {**tutorial_defaults(setup.info.scenario), **dict(options or {})}
    generator = build_generator(setup, options, "tutorial")
    lam = float_option("lam", options["lam"])
    tau = positive_float("tau", options["tau"])
    replay_n = max(1, round(positive_float("replay_ratio", options["replay_ratio"]) * setup.batch_size))

    def head_loss(student, teacher, t_mask, s_mask):
        return kl_distillation(student, mask_logits(teacher, t_mask), s_mask, tau)

    def weights(context: jax.Array) -> tuple[jax.Array, jax.Array]:
        del context
        return jnp.float32(1.0), jnp.asarray(lam, jnp.float32)

    return generative_replay(setup, generator, replay_n, head_loss, weights)


def tutorial_defaults(scenario: str) -> dict[str, Any]:
    """The seed tutorial's conventions (lam 1, tau 2, replay_ratio 1) and DGR's generator settings."""
    del scenario
    return {
        "lam": 1.0,
        "tau": 2.0,
        "replay_ratio": 1.0,
        "generator": "vae",
        "gen_lr": None,
        "gen_units": None,
        "z_dim": 100,
    }


SPECS = (
    StrategySpec(
        "tutorial",
        tutorial,
        "the seed tutorial's generative replay: CE + lam tau^2 KL(p_old || p_new) on generated samples "
        "(use --model cnn for its CNN; defaults are the tutorial's, not a paper's)",
        defaults=tutorial_defaults,
        resolve=resolve_generator,
        hyperparameters=("lam", "tau", "gen_lr"),
    ),
)
