"""Benchmarks: published protocols and a user's own, as named, validated descriptions of a stream.

Every built-in number comes from shared/PROTOCOL.md, i.e. from van de Ven, Tuytelaars & Tolias,
"Three types of incremental learning" (NMI 2022) and its reference code (GMvandeVen/continual-learning).
A user's protocol is a :class:`Benchmark` too: ``Benchmark(name="mine", n_contexts=4, classes_per_context=3)``
takes split MNIST's training settings for everything it does not name, and ``register_benchmark`` makes
it available by name (``cljax run --benchmark mine`` after ``--import``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SCENARIOS: tuple[str, ...] = ("task", "domain", "class")
SCENARIO_NAMES = {"task": "Task-IL", "domain": "Domain-IL", "class": "Class-IL"}

# Training settings a Benchmark takes when it names none: split MNIST's (NMI-2022 / 3S-2019).
DEFAULT_CONTEXTS, DEFAULT_CLASSES_PER_CONTEXT = 5, 2


@dataclass(frozen=True)
class Benchmark:
    """A stream of contexts built from one dataset, with the protocol's training settings.

    ``dataset``: a dataset cljax can load by name (mnist, fashion_mnist, cifar10, cifar100), a function
    returning a :class:`cljax.Dataset`, or None when the data are passed to ``cljax.run(dataset=...)``.
    ``class_order``: the dataset classes of each context, e.g. ``((0, 1, 2), (3, 4, 5))``; it fixes
    ``n_contexts`` and ``classes_per_context`` and is the same for every seed. Without it, seed 0 keeps
    the natural class order and every other seed shuffles it (the reference's rule).
    """

    name: str
    dataset: str | Callable[[], Any] | None = None
    n_contexts: int | None = None
    classes_per_context: int | None = None
    permuted: bool = False  # True: every context holds all classes under its own pixel permutation
    pad_to: int | None = None  # pad square images to this side (permuted MNIST: 32)
    model: Any = "mlp"  # a registered model name, a Flax module or a factory n_out -> module
    iters: int = 2000
    lr: float = 1e-3
    batch_size: int = 128
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # per-channel (mean, std), [0, 1]
    source: str = ""
    class_order: tuple[tuple[int, ...], ...] | None = None
    # The dataset the frozen conv layers were pre-trained on (cljax.pretrain; NMI-2022's CIFAR-100: "cifar10")
    # and for how many epochs: each seed's set turns the images into features once per run (cljax.features)
    pretrained: str | None = None
    pretrained_epochs: int = 100

    def __post_init__(self) -> None:
        check_benchmark(self)

    @property
    def n_classes(self) -> int:
        """Classes of the dataset the stream uses (permuted: each context holds them all)."""
        return self.classes_per_context * (1 if self.permuted else self.n_contexts)

    @property
    def used_classes(self) -> tuple[int, ...]:
        """The dataset classes the stream draws from."""
        if self.class_order is not None:
            return tuple(c for ctx in self.class_order for c in ctx)
        return tuple(range(self.n_classes))

    def describe(self) -> dict[str, Any]:
        """The protocol as JSON-ready values, so a result records what actually ran."""
        dataset = (
            self.dataset if self.dataset is None or isinstance(self.dataset, str) else _name(self.dataset)
        )
        return {
            "name": self.name,
            "dataset": dataset,
            "n_contexts": self.n_contexts,
            "classes_per_context": self.classes_per_context,
            "permuted": self.permuted,
            "pad_to": self.pad_to,
            "model": self.model if isinstance(self.model, str) else _name(self.model),
            "iters": self.iters,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "normalize": [list(v) for v in self.normalize] if self.normalize is not None else None,
            "class_order": [list(c) for c in self.class_order] if self.class_order is not None else None,
            # only where set: a protocol without pre-trained layers reads as it did before they existed, so
            # its earlier checkpoints and results still match
            **(
                {"pretrained": self.pretrained, "pretrained_epochs": self.pretrained_epochs}
                if self.pretrained is not None
                else {}
            ),
        }


def _name(obj: Any) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def _positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Benchmark {field}: must be a positive integer, got {value!r}")


def check_benchmark(bench: Benchmark) -> None:
    """Fill the counts a class order implies, then check every field; a ValueError names the first bad one."""
    if not isinstance(bench.name, str) or not bench.name.strip() or "," in bench.name:
        raise ValueError(f"Benchmark name: must be a non-empty string without commas, got {bench.name!r}")
    if bench.class_order is not None:
        order = _check_class_order(bench.class_order)
        for field, implied in (("n_contexts", len(order)), ("classes_per_context", len(order[0]))):
            given = getattr(bench, field)
            if given is not None and given != implied:
                raise ValueError(
                    f"Benchmark {field}: {given} disagrees with class_order ({implied}); give one or the "
                    "other"
                )
            object.__setattr__(bench, field, implied)
        object.__setattr__(bench, "class_order", order)
        if bench.permuted:
            raise ValueError("Benchmark class_order: a permuted benchmark holds every class in every context")
    if bench.n_contexts is None:
        object.__setattr__(bench, "n_contexts", DEFAULT_CONTEXTS)
    if bench.classes_per_context is None:
        object.__setattr__(bench, "classes_per_context", DEFAULT_CLASSES_PER_CONTEXT)
    for field in ("n_contexts", "classes_per_context", "iters", "batch_size"):
        _positive_int(field, getattr(bench, field))
    if bench.pad_to is not None:
        _positive_int("pad_to", bench.pad_to)
    if bench.permuted and bench.pad_to is None:
        raise ValueError("Benchmark pad_to: a permuted benchmark needs the side its images are padded to")
    lr = bench.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"Benchmark lr: must be a finite number > 0, got {lr!r}")
    if not (bench.dataset is None or isinstance(bench.dataset, str) or callable(bench.dataset)):
        raise ValueError(
            f"Benchmark dataset: a dataset name, a function returning a cljax.Dataset or None, "
            f"got {type(bench.dataset).__name__}"
        )
    if bench.normalize is not None:
        mean, std = bench.normalize
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError("Benchmark normalize: (mean, std) per channel, of equal length, std > 0")
    if bench.pretrained is not None:
        if bench.pretrained != "cifar10":
            raise ValueError(
                f"Benchmark pretrained: conv layers are pre-trained on 'cifar10' (cljax pretrain), "
                f"got {bench.pretrained!r}"
            )
        _positive_int("pretrained_epochs", bench.pretrained_epochs)


def _check_class_order(order: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    try:
        rows = tuple(tuple(int(c) for c in ctx) for ctx in order)
    except (TypeError, ValueError):
        raise ValueError(
            f"Benchmark class_order: a sequence of contexts, each a sequence of class labels, got {order!r}"
        ) from None
    if not rows or not rows[0]:
        raise ValueError("Benchmark class_order: needs at least one context with at least one class")
    if len({len(r) for r in rows}) != 1:
        raise ValueError(
            "Benchmark class_order: every context needs the same number of classes, got "
            f"{[len(r) for r in rows]}"
        )
    flat = [c for r in rows for c in r]
    if min(flat) < 0 or len(set(flat)) != len(flat):
        raise ValueError(f"Benchmark class_order: classes must be distinct labels >= 0, got {rows}")
    return rows


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(bench: Benchmark, *, overwrite: bool = False) -> Benchmark:
    """Make ``bench`` available by name (``cljax run --benchmark NAME``, ``RunConfig(benchmark=NAME)``)."""
    if not isinstance(bench, Benchmark):
        raise TypeError(f"register_benchmark: expected a cljax.Benchmark, got {type(bench).__name__}")
    if bench.name in BENCHMARKS and not overwrite:
        raise ValueError(
            f"register_benchmark: {bench.name!r} is already registered; pass overwrite=True to replace it"
        )
    BENCHMARKS[bench.name] = bench
    return bench


def get_benchmark(spec: str | Benchmark) -> Benchmark:
    """A Benchmark as given, or the registered one called ``spec``; an unknown name lists the valid ones."""
    if isinstance(spec, Benchmark):
        return spec
    if not isinstance(spec, str) or spec not in BENCHMARKS:
        raise ValueError(f"benchmark: unknown value {spec!r}; choose one of: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[spec]


_SPLIT_CIFAR100 = Benchmark(
    name="split-cifar100",
    dataset="cifar100",
    n_contexts=10,
    classes_per_context=10,
    permuted=False,
    pad_to=None,
    model="mlp-2000",
    iters=5000,
    lr=1e-4,
    batch_size=256,
    normalize=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    source="NMI-2022 split CIFAR-100: 10 x 10 classes, 5 conv layers pre-trained on CIFAR-10 and frozen "
    "(cljax pretrain; features computed once), fc 2000-2000, Adam lr 1e-4, batch 256, 5000 iters",
    pretrained="cifar10",
)

for _bench in (
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
    _SPLIT_CIFAR100,
    dataclasses.replace(
        _SPLIT_CIFAR100,
        name="split-cifar100-scratch",
        model="convnet",
        pretrained=None,
        source="split CIFAR-100 with NMI-2022's training settings, the conv layers trained from scratch "
        "with the fc layers (not NMI-2022's protocol, which pre-trains them: use split-cifar100)",
    ),
):
    register_benchmark(_bench)
