"""The generative classifier: one VAE per class, the reference's importance-sampled likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cljax
from cljax import engine
from cljax.config import ConfigError
from cljax.models import MLP
from cljax.models.generators import VAE
from cljax.scenarios import make_stream, scenario_info
from cljax.strategies import Setup, get_strategy
from cljax.strategies.gen_classifier import log_likelihoods

from .test_generative import TINY, synthetic_images

TINY_RUN = dict(benchmark="split-mnist", scenario="class", iters=32, batch_size=16, seeds=2, quiet=True)


def test_the_likelihood_is_the_references_importance_estimate():
    model = VAE((2, 2, 1), (3,), 2)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2)))
    x = jax.random.uniform(jax.random.key(1), (4, 2, 2, 1))
    eps = jax.random.normal(jax.random.key(2), (3, 4, 2))
    got = np.asarray(log_likelihoods(model, params, x, eps))

    mean, logvar = (np.asarray(a, np.float64) for a in model.apply(params, x, method=VAE.encode))
    flat = np.asarray(x, np.float64).reshape(4, -1)
    terms = []
    for e in np.asarray(eps, np.float64):
        z = mean + np.exp(logvar / 2) * e
        logits = model.apply(params, jnp.asarray(z, jnp.float32), method=VAE.decode)
        recon = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
        log_p_x_z = -0.5 * ((flat - recon.reshape(4, -1)) ** 2).sum(1)  # unit-variance Gaussian, no 2 pi
        log_p_z = -0.5 * (z**2).sum(1)
        log_q = -0.5 * (logvar + (z - mean) ** 2 / np.exp(logvar)).sum(1)
        terms.append(log_p_x_z + log_p_z - log_q)
    terms = np.stack(terms)
    expected = terms.max(0) + np.log(np.exp(terms - terms.max(0)).mean(0))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_every_kth_step_trains_the_contexts_vaes_each_on_its_own_class():
    images = synthetic_images()
    info = scenario_info(TINY, "class", tuple(images.train_x.shape[1:]))
    stream = make_stream(TINY, "class", np.asarray(images.train_y), np.asarray(images.train_y), 0)
    setup = Setup(info, MLP(info.n_out, (8,)), optax.adam(1e-3), 16, 4)
    strategy = get_strategy("gen-classifier").build(setup, {"gen_units": 8, "eval_s": 4})
    state = strategy.init(jax.random.key(0), images, stream)
    state = strategy.end_context(state, images, stream, jnp.int32(0), jax.random.key(9))  # now context 1
    step, bias = jax.jit(strategy.step), lambda tree: np.asarray(tree["params"]["to_mean"]["bias"])
    start = bias(state.current)
    np.testing.assert_array_equal(start, bias(state.params)[2:4])  # context 1's VAEs: units 2 and 3
    first, _ = step(state, images, stream, jnp.int32(1), jax.random.key(1))
    second, _ = step(first, images, stream, jnp.int32(1), jax.random.key(2))
    assert all(not np.array_equal(a, b) for a, b in zip(bias(first.current), start, strict=True))
    np.testing.assert_array_equal(bias(second.current), bias(first.current))  # 2 classes: every 2nd step
    ended = strategy.end_context(second, images, stream, jnp.int32(1), jax.random.key(3))
    np.testing.assert_array_equal(bias(ended.params)[2:4], bias(second.current))
    np.testing.assert_array_equal(bias(ended.params)[4:], bias(state.params)[4:])
    assert np.asarray(ended.trained).tolist() == [True, True, True, True, False, False]
    labels = np.asarray(stream.label_map)[1, np.asarray(images.train_y)[np.asarray(stream.train_idx[1])]]
    n, slots = np.asarray(state.class_n[1]), np.asarray(state.class_slots[1])
    assert set(labels[slots[0, : n[0]]]) == {2} and set(labels[slots[1, : n[1]]]) == {3}
    assert n.tolist() == [20, 20]


def test_it_learns_class_by_class_and_never_predicts_an_untrained_class(tiny_data):
    before = engine.programs_compiled()
    result = cljax.run(strategy="gen-classifier", dataset=tiny_data, **TINY_RUN)
    assert engine.programs_compiled() - before == 3  # init, one program for every context, evaluate
    acc = np.asarray(result.acc_matrix)  # (seeds, after context, on context)
    assert (acc[:, np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0).all()  # unseen classes: never
    assert acc[:, -1].mean() > 80  # nothing forgotten (fine-tuning: 20): each class keeps its own VAE
    assert result.config["options"] == {"gen_units": 85, "gen_layers": 3, "z_dim": 5, "gen_lr": 0.001,
                                        "eval_s": 50}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(scenario="task"), "gen-classifier"),
        (dict(options={"eval_s": 0}), "eval_s: must be a positive integer"),
        (dict(options={"gen_layers": 1}), "2 fc layers or more"),
    ],
)
def test_bad_settings_stop_before_compiling(changes, message, tiny_data):
    before = engine.programs_compiled()
    with pytest.raises((ConfigError, ValueError), match=message):
        cljax.run(**{**TINY_RUN, "strategy": "gen-classifier", "dataset": tiny_data, **changes})
    assert engine.programs_compiled() == before
