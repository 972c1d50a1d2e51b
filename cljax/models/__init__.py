"""Flax modules: the reference classifiers (and, with the generative strategies, generators)."""

from cljax.models.classifiers import MLP, MODELS, ConvNet, TutorialCNN, make_classifier
from cljax.models.generators import GENERATORS, VAE, CondVAE, Generator, GeneratorState, make_generator  # noqa: F401
from cljax.models.layers import Conv, Linear, torch_uniform

__all__ = ["MLP", "MODELS", "ConvNet", "TutorialCNN", "make_classifier", "Conv", "Linear", "torch_uniform"]
