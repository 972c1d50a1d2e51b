"""Split MNIST on the device: the whole training set is one uint8 tensor, batches are drawn by index.

The contexts, class order and targets follow shared/PROTOCOL.md and match cljax's ``split-mnist``
stream: context c holds the classes whose network label is 2c or 2c + 1 (seed 0: the natural order 0/1,
2/3, ...; any other seed shuffles the classes with ``numpy.random.RandomState(seed)``). Task-IL trains
and tests each context on its own two output units, Domain-IL has two output units (target = label mod
2), Class-IL one head over all ten classes with every unit active from the first context (NMI-2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCENARIOS: tuple[str, ...] = ("task", "domain", "class")
N_CONTEXTS = 5
CLASSES_PER_CONTEXT = 2
N_CLASSES = N_CONTEXTS * CLASSES_PER_CONTEXT
N_PIXELS = 28 * 28


def class_order(seed: int, n_classes: int = N_CLASSES) -> np.ndarray:
    """Network label of each dataset class: the identity for seed 0, a permutation for other seeds."""
    if seed == 0:
        return np.arange(n_classes)
    return np.random.RandomState(seed).permutation(n_classes)


@dataclass
class SplitMNIST:
    """One seed's split-MNIST stream with every image on ``device``."""

    scenario: str
    device: torch.device
    train_x: torch.Tensor  # uint8 (N, 784)
    train_y: torch.Tensor  # int64 (N,): the scenario's target (Class-IL: 0..9, else 0..1)
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_rows: list[torch.Tensor]  # per context: int64 rows of train_x
    test_rows: list[torch.Tensor]

    @classmethod
    def build(cls, dataset, scenario: str, seed: int, device: torch.device) -> SplitMNIST:
        """From a ``cljax.data.Dataset`` (uint8 (N, 28, 28, 1) images, integer labels)."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
        order = class_order(seed)

        def split(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
            label = order[np.asarray(y, np.int64)]
            context = label // CLASSES_PER_CONTEXT
            target = label if scenario == "class" else label % CLASSES_PER_CONTEXT
            rows = [torch.as_tensor(np.flatnonzero(context == c), device=device) for c in range(N_CONTEXTS)]
            images = torch.tensor(np.reshape(x, (len(x), -1)), dtype=torch.uint8, device=device)
            return images, torch.as_tensor(target, device=device), rows

        train_x, train_y, train_rows = split(dataset.train_x, dataset.train_y)
        test_x, test_y, test_rows = split(dataset.test_x, dataset.test_y)
        return cls(scenario, device, train_x, train_y, test_x, test_y, train_rows, test_rows)

    @property
    def n_out(self) -> int:
        """Output units: one per class (Task- and Class-IL) or one per class of a context (Domain-IL)."""
        return CLASSES_PER_CONTEXT if self.scenario == "domain" else N_CLASSES

    def units(self, context: int) -> slice:
        """The output units trained in (and, Task-IL, evaluated on) ``context``."""
        if self.scenario == "task":
            return slice(CLASSES_PER_CONTEXT * context, CLASSES_PER_CONTEXT * (context + 1))
        return slice(None)

    def images(self, rows: torch.Tensor, train: bool = True) -> torch.Tensor:
        """float32 (B, 784) in [0, 1] for the given rows."""
        return (self.train_x if train else self.test_x)[rows].float().div_(255.0)

    def batch(self, context: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` training samples of ``context``, uniform with replacement, and their targets."""
        pool = self.train_rows[context]
        rows = pool[torch.randint(len(pool), (n,), device=self.device, generator=generator)]
        return self.images(rows), self.train_y[rows]

    def test_set(self, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every test sample of ``context`` and its targets."""
        rows = self.test_rows[context]
        return self.images(rows, train=False), self.test_y[rows]
