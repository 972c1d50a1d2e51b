"""Flax modules: the reference classifiers (and, with the generative strategies, generators), the model
registry and the door a user's own network comes in by (:func:`model_from`)."""

from cljax.models.classifiers import MLP, ConvNet, TutorialCNN
from cljax.models.fast_conv import conv_general_dilated, fast_convolutions
from cljax.models.generators import GENERATORS, VAE, CondVAE, Generator, GeneratorState, make_generator  # noqa: F401
from cljax.models.layers import Conv, Linear, torch_uniform
from cljax.models.registry import (
    DENSE_LAYERS,
    MODEL_SUMMARIES,
    MODELS,
    check_logits_shape,
    make_classifier,
    model_from,
    module_name,
    penultimate,
    register_model,
)

__all__ = [
    "DENSE_LAYERS",
    "MLP",
    "MODELS",
    "MODEL_SUMMARIES",
    "ConvNet",
    "TutorialCNN",
    "check_logits_shape",
    "conv_general_dilated",
    "fast_convolutions",
    "make_classifier",
    "model_from",
    "module_name",
    "penultimate",
    "register_model",
    "Conv",
    "Linear",
    "torch_uniform",
]
