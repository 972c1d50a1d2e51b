"""An eager PyTorch implementation of the split-MNIST protocol, the yardstick for cljax's speed.

>>> from benchmarks.torch_reference import TorchConfig, run
>>> result = run(TorchConfig(strategy="er"), cljax.data.load_dataset("mnist", "../shared/data"))
"""

from .data import SplitMNIST
from .split_mnist import TorchConfig, TorchResult, run
from .strategies import STRATEGIES, Hyper

__all__ = ["STRATEGIES", "Hyper", "SplitMNIST", "TorchConfig", "TorchResult", "run"]
