"""Benchmarks as published protocols: datasets, context splits, model sizes and training settings.

Every number here comes from shared/PROTOCOL.md, i.e. from van de Ven, Tuytelaars & Tolias,
"Three types of incremental learning" (NMI 2022) and its reference code (GMvandeVen/continual-learning).
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS: tuple[str, ...] = ("task", "domain", "class")
SCENARIO_NAMES = {"task": "Task-IL", "domain": "Domain-IL", "class": "Class-IL"}


@dataclass(frozen=True)
class Benchmark:
    """A stream of contexts built from one dataset, with the protocol's training settings."""

    name: str
    dataset: str
    n_contexts: int
    classes_per_context: int
    permuted: bool  # True: every context holds all classes under its own pixel permutation
    pad_to: int | None  # pad square images to this side (permuted MNIST: 32)
    model: str
    iters: int
    lr: float
    batch_size: int
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None  # per-channel (mean, std) in [0, 1] units
    source: str

    @property
    def n_classes(self) -> int:
        return self.classes_per_context * (1 if self.permuted else self.n_contexts)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            name="split-mnist",
            dataset="mnist",
            n_contexts=5,
            classes_per_context=2,
            permuted=False,
            pad_to=None,
            model="mlp",
            iters=2000,
            lr=1e-3,
            batch_size=128,
            normalize=None,
            source="NMI-2022 / 3S-2019 split MNIST: MLP 784-400-400, Adam lr 1e-3, batch 128, 2000 iters",
        ),
        Benchmark(
            name="perm-mnist",
            dataset="mnist",
            n_contexts=10,
            classes_per_context=10,
            permuted=True,
            pad_to=32,
            model="mlp-1000",
            iters=5000,
            lr=1e-4,
            batch_size=128,
            normalize=None,
            source="NMI-2022 permuted MNIST: 32x32, MLP 1024-1000-1000, Adam lr 1e-4, batch 128, 5000 it",
        ),
        Benchmark(
            name="split-fmnist",
            dataset="fashion_mnist",
            n_contexts=5,
            classes_per_context=2,
            permuted=False,
            pad_to=None,
            model="mlp",
            iters=2000,
            lr=1e-3,
            batch_size=128,
            normalize=None,
            source="split MNIST's protocol applied to Fashion-MNIST (no published table)",
        ),
        Benchmark(
            name="split-cifar10",
            dataset="cifar10",
            n_contexts=5,
            classes_per_context=2,
            permuted=False,
            pad_to=None,
            model="convnet",
            iters=5000,
            lr=1e-4,
            batch_size=256,
            normalize=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            source="NMI-2022 CIFAR settings (Adam lr 1e-4, batch 256, 5000 it) on CIFAR-10 in 5 x 2 classes",
        ),
        Benchmark(
            name="split-cifar100",
            dataset="cifar100",
            n_contexts=10,
            classes_per_context=10,
            permuted=False,
            pad_to=None,
            model="convnet",
            iters=5000,
            lr=1e-4,
            batch_size=256,
            normalize=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
            source="NMI-2022 split CIFAR-100: 10 x 10 classes, Adam lr 1e-4, batch 256, 5000 iters "
            "(conv layers trained from scratch here, not pre-trained on CIFAR-10)",
        ),
    )
}
