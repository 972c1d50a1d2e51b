"""Dataset loading for cljax: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 as uint8 numpy arrays.

>>> from cljax.data import load_dataset
>>> ds = load_dataset("mnist", data_dir="data")   # ds.train_x: uint8 (60000, 28, 28, 1)
"""

from .dataset import DATASETS, Dataset
from .errors import CorruptDataError, DataNotFoundError
from .locate import cache_dir, load_dataset

__all__ = ["DATASETS", "CorruptDataError", "DataNotFoundError", "Dataset", "cache_dir", "load_dataset"]
