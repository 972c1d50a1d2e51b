"""Frozen pre-trained conv layers computed once: each seed's images become conv features before training.

NMI-2022's split CIFAR-100 (the reference's ``--pre-convE --freeze-convE --seed-to-ltag``) runs its fc
layers on 5 conv layers pre-trained on CIFAR-10 (:mod:`cljax.pretrain`), one set per seed, frozen and
without augmentation. Their output for an image never changes, so here every training and test image goes
through them once per run, on the device, and the compiled context programs train and evaluate the fc
layers on the stored features: a step costs what the fc layers cost.

The features of every seed sit in one array (seed i's at rows ``i * N ..``), and each run's index tables
are shifted to its seed's rows, so the programs stay those of any other benchmark: the features are the
"images" (float, shape (2, 2, 256)), the network an MLP (``mlp-2000``), and nothing else changes.
:class:`cljax.models.conv_layers.FrozenConvMLP` runs the same frozen layers inside every step instead, for
checking that both give the same numbers (tests/test_features.py) and for timing the difference
(benchmarks/features_once.py).

A strategy that also works on the images (DGR's convolutional VAE generates and reconstructs images) declares
``StrategySpec.pixels``; the engine then keeps the training images beside the features (``Images.pixels``,
one copy for every seed: :func:`batch_pixels` finds a feature row's image) and gives each run its seed's
conv set as data (``Stream.conv``, vmapped with the runs like the rest of the stream), through which
:func:`frozen_features` turns images made inside a step into that run's features.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.batching import Batch, to_float
from cljax.models.conv_layers import ConvLayers
from cljax.scenarios import Images, ScenarioInfo, Stream

CHUNK = 500


def conv_features(conv: Any, info: ScenarioInfo, images: np.ndarray, chunk: int = CHUNK) -> jax.Array:
    """The frozen conv layers' output (N, h, w, c) for stored images (N, H, W, C), in the benchmark's
    input units (``to_float``: scaled and normalised) and in chunks of ``chunk`` images."""
    n = images.shape[0]
    padded = -(-n // chunk) * chunk
    x = jnp.asarray(np.pad(images, ((0, padded - n),) + ((0, 0),) * (images.ndim - 1)))
    perm = jnp.zeros((chunk, 0), jnp.int32)

    @jax.jit
    def run(x):
        def one(xs):
            return ConvLayers().apply(conv, to_float(info, xs, perm))

        return jax.lax.map(one, x.reshape(-1, chunk, *x.shape[1:]))

    out = run(x)
    return out.reshape(-1, *out.shape[2:])[:n]


def feature_info(info: ScenarioInfo, feature_shape: tuple[int, ...], pretrained: str) -> ScenarioInfo:
    """The stream's facts once its inputs are features: their shape, no normalisation, and where from; the
    images' shape and normalisation are kept for strategies that also work on the images."""
    return info._replace(
        input_shape=tuple(feature_shape),
        normalize=None,
        features=pretrained,
        pixel_shape=info.input_shape,
        pixel_normalize=info.normalize,
    )


def pixel_info(info: ScenarioInfo) -> ScenarioInfo:
    """The facts of the images behind a features stream (what :func:`cljax.batching.to_float` needs to make
    the frozen conv layers' input), or a ValueError if ``info`` is not a features stream's."""
    if info.features is None or info.pixel_shape is None:
        raise ValueError(
            f"{info.benchmark}: its inputs are not the features of frozen conv layers (no pixel facts)"
        )
    return info._replace(
        input_shape=info.pixel_shape,
        normalize=info.pixel_normalize,
        features=None,
        pixel_shape=None,
        pixel_normalize=None,
    )


def batch_pixels(info: ScenarioInfo, images: Images, stream: Stream, batch: Batch) -> jax.Array:
    """The images of a training batch drawn from the features, as floats in the conv layers' input units.

    Row r of the stacked features (seed s at rows ``s * N ..``, :func:`shift_to_seed_rows`) is the features
    of image ``r mod N``.
    """
    rows = stream.train_idx[batch.context, batch.slot] % images.pixels.shape[0]
    return to_float(pixel_info(info), images.pixels[rows], stream.pixel_perm)


def frozen_features(conv: Any, x: jax.Array) -> jax.Array:
    """The frozen conv layers' output (on their running averages, no gradient) for float images in their
    input units."""
    return jax.lax.stop_gradient(ConvLayers().apply(conv, x))


def with_pixels(
    images: Images, streams: Stream, convs: list[Any], pixels: np.ndarray, n_configs: int
) -> tuple[Images, Stream]:
    """Images and streams for a strategy that works on the images too: the training images beside the
    features, and each run's conv set in its stream (runs: configs x seeds, configuration-major)."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(list(convs) * n_configs))
    return images._replace(pixels=jnp.asarray(pixels)), streams._replace(conv=stacked)


def features_of_seeds(convs: list[Any], info: ScenarioInfo, dataset: Any) -> tuple[Images, tuple[int, ...]]:
    """Every seed's features, stacked seed by seed, as the runs' Images; and their feature shape."""
    train = [conv_features(c, info, np.asarray(dataset.train_x)) for c in convs]
    test = [conv_features(c, info, np.asarray(dataset.test_x)) for c in convs]
    n = len(convs)
    images = Images(
        train_x=jnp.concatenate(train),
        train_y=jnp.tile(jnp.asarray(dataset.train_y), n),
        test_x=jnp.concatenate(test),
        test_y=jnp.tile(jnp.asarray(dataset.test_y), n),
    )
    return images, tuple(train[0].shape[1:])


def shift_to_seed_rows(streams: Stream, n_seeds: int, n_train: int, n_test: int) -> Stream:
    """Each run's index tables shifted to its seed's rows of the stacked features (runs: configs x seeds,
    configuration-major, so run r has seed index r mod n_seeds)."""
    seed_index = jnp.arange(streams.train_idx.shape[0]) % n_seeds
    return streams._replace(
        train_idx=streams.train_idx + (seed_index * n_train)[:, None, None],
        test_idx=streams.test_idx + (seed_index * n_test)[:, None, None],
    )
