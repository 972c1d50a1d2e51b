"""Frozen pre-trained conv layers computed once equal running them inside every step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cljax
from cljax import engine
from cljax.config import ConfigError
from cljax.models import MLP
from cljax.models.conv_layers import FrozenConvMLP
from cljax.presets import Benchmark, get_benchmark
from cljax.pretrain import load_pretrained, pretrain

from .test_pretrain import tiny_cifar

CIFAR100_NORMALIZE = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
FEATURES_ONCE = Benchmark(
    name="tiny-pretrained",
    n_contexts=2,
    classes_per_context=2,
    model=lambda n_out: MLP(n_out, (16,)),
    iters=8,
    lr=1e-3,
    batch_size=8,
    normalize=CIFAR100_NORMALIZE,
    pretrained="cifar10",
    pretrained_epochs=1,
)
RUN = dict(strategy="none", scenario="class", quiet=True)


@pytest.fixture(scope="module")
def conv_sets(tmp_path_factory):
    """Conv layers 'pre-trained' for one epoch on tiny images, for seeds 0 and 1, in a cache of their own."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLJAX_CACHE_DIR", str(cache))
        for seed in (0, 1):
            pretrain(seed=seed, epochs=1, batch_size=16, dataset=tiny_cifar(seed=seed), log=None)
        yield {seed: load_pretrained(seed, 1)[0] for seed in (0, 1)}, cache


def frozen_inside(conv) -> Benchmark:
    """The same protocol with the frozen layers run inside every step, on the images."""
    model = lambda n_out: FrozenConvMLP(n_out, (16,), conv=conv)  # noqa: E731
    return dataclasses.replace(FEATURES_ONCE, name="tiny-frozen-inside", pretrained=None, model=model)


def test_features_once_train_what_the_frozen_layers_in_every_step_train(conv_sets, monkeypatch, tmp_path):
    convs, cache = conv_sets
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(cache))
    data = tiny_cifar()
    once = cljax.run(benchmark=FEATURES_ONCE, dataset=data, seeds=2, **RUN)
    named = once.environment["pretrained"]  # the result names the conv layers it rests on
    assert [n["seed"] for n in named] == [0, 1]
    assert named[1]["sha256"] == load_pretrained(1, 1)[1]["sha256"] != named[0]["sha256"]
    for seed in (1,):  # the second seed: its features sit at shifted rows, the part that can go wrong
        inside = cljax.run(benchmark=frozen_inside(convs[seed]), dataset=data, first_seed=seed, **RUN)
        np.testing.assert_allclose(once.context_loss[seed], inside.context_loss[0], rtol=1e-5)
        np.testing.assert_allclose(once.acc_matrix[seed], inside.acc_matrix[0], atol=1e-4)
        # the trained model takes images, as the frozen layers did: the same predictions
        own_seed = once.model.seeds[seed]
        assert inside.model.seeds == [own_seed]
        predicted = once.model.predict(data.test_x, seed=own_seed)
        np.testing.assert_array_equal(predicted, inside.model.predict(data.test_x))
        loaded = cljax.load_model(once.model.save(tmp_path / "model"), model=FEATURES_ONCE.model)
        np.testing.assert_array_equal(loaded.predict(data.test_x, seed=own_seed), predicted)
    assert once.config["protocol"]["pretrained"] == "cifar10"
    # protocols without pre-trained layers describe themselves as before, so their checkpoints still resume
    assert "pretrained" not in get_benchmark("split-mnist").describe()
    assert not np.allclose(once.context_loss[0], once.context_loss[1])  # each seed its own conv layers


def test_a_missing_pretrained_set_says_how_to_make_it_before_compiling(conv_sets, monkeypatch):
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(conv_sets[1]))
    before = engine.programs_compiled()
    with pytest.raises(ConfigError, match=r"seed\(s\) 2 have none; make them with `cljax pretrain"):
        cljax.run(benchmark=FEATURES_ONCE, dataset=tiny_cifar(), seeds=3, **RUN)
    assert engine.programs_compiled() == before


def test_the_generative_classifier_models_the_features(conv_sets, monkeypatch):
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(conv_sets[1]))
    options = {"gen_units": 16, "eval_s": 4}
    result = cljax.run(**{**RUN, "strategy": "gen-classifier"}, benchmark=FEATURES_ONCE, dataset=tiny_cifar(),
                       options=options)  # fmt: skip
    assert result.config["options"]["gen_layers"] == 2 and result.config["options"]["z_dim"] == 20  # CIFAR's
    assert np.isfinite(result.context_loss).all()
    assert np.asarray(result.acc_matrix)[0, 0, 1] == 0  # classes not yet trained are never predicted


def test_brain_inspired_replay_replays_the_features(conv_sets, monkeypatch):
    from cljax.config import RunConfig
    from cljax.strategies.bir import feature_reconstruction_loss

    monkeypatch.setenv("CLJAX_CACHE_DIR", str(conv_sets[1]))
    options = {"units": (16,), "z_dim": 4, "replay_batch": 8}
    result = cljax.run(**{**RUN, "strategy": "bir"}, benchmark=FEATURES_ONCE, dataset=tiny_cifar(),
                       options=options)  # fmt: skip
    assert np.isfinite(result.context_loss).all() and result.context_loss[0][1] > 0
    x = jax.numpy.asarray([[[[3.0, -1.0]]]])
    assert float(feature_reconstruction_loss(x + 2.0, x)[0]) == 2.0  # mean 0.5 (x - recon)^2, unsquashed
    dg = [RunConfig(benchmark="split-cifar100", strategy="bir", scenario=s).resolved().options["dg_prop"]
          for s in ("task", "domain", "class")]  # fmt: skip
    assert dg == [0.0, 0.5, 0.7]  # the reference's CIFAR gate proportions


# ------------------------------------------------------------------ DGR: pixel-level replay, conv VAE

DGR = {**RUN, "strategy": "dgr", "options": {"gen_units": 16, "z_dim": 4, "replay_batch": 8}}


@pytest.fixture
def unoptimized():
    """The conv VAE's tiny programs run for milliseconds: compile them without most of XLA's optimisations."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_dgr_replays_images_through_a_convolutional_vae(conv_sets, monkeypatch, unoptimized, tmp_path):
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(conv_sets[1]))
    result = cljax.run(**DGR, benchmark=FEATURES_ONCE, dataset=tiny_cifar(), seeds=2)
    acc = np.asarray(result.acc_matrix)
    assert acc.shape == (2, 2, 2) and np.isfinite(acc).all() and np.isfinite(result.context_loss).all()
    assert not np.allclose(result.context_loss[0], result.context_loss[1])  # each seed its own conv layers
    state = result.model.state(1)
    assert set(state.generator.params) == {"params", "batch_stats"}  # the decoder's batch norm
    layers = {
        "encoder_0",
        "encoder_1",
        "to_mean",
        "to_logvar",
        "decoder_0",
        "decoder_1",
        "to_features",
        "deconv",
    }
    assert set(state.generator.params["params"]) == layers  # the frozen conv layers are the run's data
    saved = cljax.load_model(result.model.save(tmp_path / "model"), model=FEATURES_ONCE.model)
    assert saved.info == result.model.info and saved.info.pixel_shape == (32, 32, 3)
    assert jax.tree.all(jax.tree.map(np.array_equal, saved.states, result.model.states))


def test_dgr_labels_replayed_images_by_the_previous_classifier_through_the_runs_conv_layers(
    conv_sets, monkeypatch, unoptimized
):
    from cljax.features import frozen_features
    from cljax.strategies.dgr import build_conv_generator, hard_target_loss, heads_loss, replay_heads

    convs, cache = conv_sets
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(cache))
    config = cljax.RunConfig(benchmark=FEATURES_ONCE, seeds=2, strategy="dgr", options=DGR["options"])
    exp = cljax.prepare(config, dataset=tiny_cifar())
    stream = jax.tree.map(lambda a: a[1], exp.streams)  # the second seed's run
    assert jax.tree.all(jax.tree.map(np.array_equal, stream.conv, convs[1]))
    strategy, images, setup = exp.strategy, exp.images, exp.setup
    init = jax.jit(strategy.init)
    state = init(jax.random.key(0), images, stream)

    def sharp(params):  # confident networks, whose losses tell inputs apart
        return jax.tree.map(lambda p: 8 * p, params)

    other = init(jax.random.key(5), images, stream)  # a frozen classifier unlike the one trained
    previous = sharp(other.classifier.params)
    state = state.replace(prev_classifier=previous)
    state = state.replace(classifier=state.classifier.replace(params=sharp(state.classifier.params)))
    key = jax.random.key(7)
    new, metrics = jax.jit(strategy.step)(state, images, stream, jnp.int32(1), key)

    generator = build_conv_generator(setup, exp.config.resolved().options, "dgr")
    sample = jax.jit(generator.sample, static_argnums=2)
    x = sample(state.prev_generator, jax.random.split(key, 3)[1], 8)  # the step's replay key
    assert x.shape == (8, 32, 32, 3)

    @jax.jit
    def replay_loss(conv):
        f = frozen_features(conv, x)
        student, teacher = setup.model.apply(state.classifier.params, f), setup.model.apply(previous, f)
        return heads_loss(hard_target_loss, student, teacher, replay_heads(exp.info, stream, jnp.int32(1)))

    np.testing.assert_allclose(metrics["replay_loss"], replay_loss(convs[1]), rtol=1e-4)
    assert not np.isclose(metrics["replay_loss"], replay_loss(convs[0]), rtol=1e-3)  # another seed's layers
    before, after = state.generator.params["batch_stats"], new.generator.params["batch_stats"]
    assert not jax.tree.all(jax.tree.map(np.allclose, before, after))  # trained in training mode
    pictures = jax.jit(strategy.sample, static_argnums=2)(new, key, 4)  # what --save-samples draws
    assert pictures.shape == (4, 32, 32, 3) and 0 <= float(pictures.min()) <= float(pictures.max()) <= 1


def test_dgr_refuses_what_it_cannot_run_before_compiling(conv_sets, monkeypatch):
    monkeypatch.setenv("CLJAX_CACHE_DIR", str(conv_sets[1]))
    before = engine.programs_compiled()
    data = tiny_cifar()
    with pytest.raises(ConfigError, match="generator: dgr on tiny-pretrained replays images through the "
                                          "reference's convolutional VAE; 'gan' is"):  # fmt: skip
        cljax.run(**{**DGR, "options": {"generator": "gan"}}, benchmark=FEATURES_ONCE, dataset=data)
    no_layers = dataclasses.replace(FEATURES_ONCE, name="tiny-normalised", pretrained=None)
    with pytest.raises(
        ConfigError, match=r"normalises its inputs and has no frozen pre-trained conv layers \(DGR"
    ):
        cljax.run(**DGR, benchmark=no_layers, dataset=data)
    with pytest.raises(ConfigError, match="z_dim: must be a positive integer, got 0"):
        cljax.run(**{**DGR, "options": {"z_dim": 0}}, benchmark=FEATURES_ONCE, dataset=data)
    with pytest.raises(ConfigError, match="tutorial: tiny-pretrained trains on the features"):
        cljax.run(**{**RUN, "strategy": "tutorial"}, benchmark=FEATURES_ONCE, dataset=data)
    assert engine.programs_compiled() == before
    reference = cljax.RunConfig(benchmark="split-cifar100", strategy="dgr").resolved().options
    assert (reference["gen_lr"], reference["replay_batch"], reference["z_dim"]) == (1e-4, 256, 100)
    mine = cljax.RunConfig(benchmark="split-cifar100", strategy="dgr", options={"replay_batch": 128})
    assert mine.resolved().options["replay_batch"] == 128
    mnist = cljax.RunConfig(benchmark="split-mnist", strategy="dgr").resolved().options
    assert (mnist["gen_lr"], mnist["replay_batch"]) == (1e-3, 128)
