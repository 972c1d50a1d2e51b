"""Pre-training the CIFAR conv layers on CIFAR-10, as NMI-2022 did, and finding a saved set again.

The reference (GMvandeVen/continual-learning, ``main_pretrain.py``; ``all_results.sh`` lines 42-52:
``--experiment=CIFAR10 --epochs=100 --augment --seed-to-stag``, one set per seed) trains its standard CIFAR
classifier, the 5 conv layers of :class:`cljax.models.conv_layers.ConvLayers` and fc 2000-2000-10, on
CIFAR-10 with Adam (lr 1e-4, betas 0.9 / 0.999), batch 256 (the last incomplete batch of each epoch
dropped), inputs normalised per channel with CIFAR-10's statistics and augmented with a random 32x32 crop
of the image padded by 4 pixels (symmetric padding) and a random horizontal flip. Its conv layers are
kept; split CIFAR-100 then runs on them frozen.

Here each epoch is one compiled program (a scan over its batches; the shuffle and the augmentation are
drawn on the device). The conv layers' params and batch-norm averages are written with orbax to
``<cache>/pretrained/<name>/`` beside ``record.json``: how they were made (seed, epochs, settings), their
CIFAR-10 test and training accuracy, a SHA-256 of the saved values and the time it took.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from cljax import optim
from cljax.data import cache_dir, load_dataset
from cljax.models.conv_layers import LABEL, ConvClassifier, ConvLayers
from cljax.models.fast_conv import fast_convolutions

# CIFAR-10's per-channel mean and std (the reference's data/available.py)
CIFAR10_NORMALIZE = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
EPOCHS = 100
BATCH_SIZE = 256
LR = 1e-4
CROP_PADDING = 4
EVAL_CHUNK = 1000
IMAGE_SHAPE = (32, 32, 3)  # what the conv layers are pre-trained on, and so take
CHECKPOINT_EVERY = 5  # epochs; a checkpoint of the 100-epoch run is about 85 MB


@dataclass(frozen=True)
class PretrainRecord:
    """How a set of conv layers was made and how good it is (``record.json``)."""

    name: str
    dataset: str
    seed: int
    epochs: int
    batch_size: int
    lr: float
    augment: bool
    test_accuracy: float  # %, CIFAR-10 test set, batch norm on its running averages
    train_accuracy: float  # %, the unaugmented training set
    sha256: str  # of the saved conv params and batch-norm averages, in tree order
    train_seconds: float
    layers: str = LABEL
    seeds_trained_together: int = 1  # sets trained in one program (train_seconds is the group's)
    reference: str = "GMvandeVen/continual-learning main_pretrain.py --epochs=100 --augment"


class PretrainState(flax.struct.PyTreeNode):
    params: Any
    batch_stats: Any
    opt_state: Any


class EpochCheckpoints:
    """The training state every few epochs (orbax), to continue an interrupted pre-training."""

    def __init__(self, directory: Path, settings: dict[str, Any], every: int) -> None:
        self.directory, self.settings, self.every = directory.absolute(), settings, every
        options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def restore(self, state: PretrainState) -> tuple[int, PretrainState, float]:
        """(epochs done, state, training seconds so far); (0, ``state``, 0.0) without a checkpoint."""
        step = self.manager.latest_step()
        if step is None:
            return 0, state, 0.0
        progress = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
        progress = dict(progress["progress"])
        if progress["settings"] != self.settings:
            raise ValueError(
                f"pretrain: {self.directory} holds an interrupted pre-training with other settings "
                f"({progress['settings']}); rerun with those or delete the folder"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return step, restored["state"], float(progress["seconds"])

    def save(self, epochs_done: int, state: PretrainState, seconds: float, final: bool) -> None:
        if final or epochs_done % self.every:
            return
        progress = {"settings": self.settings, "seconds": seconds}
        self.manager.save(
            epochs_done,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)),
        )
        self.manager.wait_until_finished()

    def remove(self) -> None:
        self.manager.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def set_name(seed: int, epochs: int, dataset: str = "cifar10") -> str:
    """The folder name of a set: the reference's ``C3-5x16-bn-e100-s<seed>``, with the dataset first."""
    return f"{dataset}-{LABEL}-e{epochs}-s{seed}"


def pretrained_dir() -> Path:
    """Where pre-trained sets live: ``<cache>/pretrained``."""
    return cache_dir() / "pretrained"


def normalize(x: jax.Array, stats=CIFAR10_NORMALIZE) -> jax.Array:
    """uint8 (B, H, W, C) -> float32, per channel (x / 255 - mean) / std."""
    mean, std = (jnp.asarray(v, jnp.float32) for v in stats)
    return (x.astype(jnp.float32) / 255.0 - mean) / std


def augment(x: jax.Array, key: jax.Array, padding: int = CROP_PADDING) -> jax.Array:
    """torchvision's RandomCrop(size, padding, padding_mode='symmetric') and RandomHorizontalFlip, each
    sample its own."""
    b, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="symmetric")
    k_row, k_col, k_flip = jax.random.split(key, 3)
    rows = jax.random.randint(k_row, (b,), 0, 2 * padding + 1)
    cols = jax.random.randint(k_col, (b,), 0, 2 * padding + 1)
    crops = jax.vmap(lambda img, r, c: jax.lax.dynamic_slice(img, (r, c, 0), (h, w, img.shape[-1])))(
        padded, rows, cols
    )
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


def tree_sha256(tree: Any) -> str:
    """SHA-256 of a pytree's arrays, in tree order (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        arr = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{arr.shape}{arr.dtype}".encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _programs(n_classes: int, lr: float, batch_size: int, aug: bool, several_seeds: bool):
    """The compiled epoch, accuracy and initialisation programs, kept per setting so that pre-training
    several sets in one process compiles once; ``several_seeds``: mapped over a leading seed axis of the
    state and the keys (the data are shared), so that one program trains every seed's network."""
    model = ConvClassifier(n_classes)
    optimizer = optim.adam(lr, b1=0.9, b2=0.999)

    def loss_fn(params, batch_stats, x, y):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates["batch_stats"]

    def epoch(state: PretrainState, train_x, train_y, key):
        n_batches = train_x.shape[0] // batch_size
        k_perm, k_aug = jax.random.split(key)
        order = jax.random.permutation(k_perm, train_x.shape[0])[: n_batches * batch_size]

        def step(state, xs):
            idx, k = xs
            x = normalize(train_x[idx])
            if aug:
                x = augment(x, k)
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, state.batch_stats, x, train_y[idx]
            )
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return PretrainState(params, stats, opt_state), loss

        keys = jax.random.split(k_aug, n_batches)
        return jax.lax.scan(step, state, (order.reshape(n_batches, batch_size), keys))

    def correct(state: PretrainState, x, y):
        def chunk(c):
            xs, ys = c
            logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, normalize(xs))
            return jnp.sum(jnp.argmax(logits, -1) == ys)

        return jax.lax.map(chunk, (x, y)).sum()

    def init(key):
        variables = model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))
        params = variables["params"]
        return PretrainState(params, variables["batch_stats"], optimizer.init(params))

    if several_seeds:
        epoch = jax.vmap(epoch, in_axes=(0, None, None, 0))
        correct, init = jax.vmap(correct, in_axes=(0, None, None)), jax.vmap(init)
    return jax.jit(epoch, donate_argnums=0), jax.jit(correct), jax.jit(init)


def _with_fast_convolutions(program: Callable) -> Callable:
    """``program`` traced under :func:`fast_convolutions`: without it, the conv gradients inside the epoch's
    scan run on XLA:CPU's slow generic path (5.6 s a step instead of 0.23 s on this project's CPU)."""

    def run(*args):
        with fast_convolutions():
            return program(*args)

    return run


def _accuracy(correct: Callable, state: PretrainState, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Accuracy in % (per seed when the state has a seed axis)."""
    n = (x.shape[0] // EVAL_CHUNK) * EVAL_CHUNK or x.shape[0]
    chunk = min(EVAL_CHUNK, n)
    hits = correct(state, x[:n].reshape(-1, chunk, *x.shape[1:]), y[:n].reshape(-1, chunk))
    return 100.0 * np.atleast_1d(np.asarray(hits)) / n


def pretrain(
    seed: int = 1,
    epochs: int = EPOCHS,
    data_dir: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    augment_data: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    dataset: Any = None,
    log: Callable[[str], None] | None = print,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> PretrainRecord:
    """Pre-train the conv layers on CIFAR-10 for one seed and save them (see the module docstring).

    ``out``: the folder to write (default ``<cache>/pretrained/<set_name>``); an existing set is kept
    unless ``overwrite``. ``dataset``: a :class:`cljax.Dataset` to use instead of loading CIFAR-10 (tests).
    Every ``checkpoint_every`` epochs the training state is saved beside ``out`` (``<out>.training``), so an
    interrupted pre-training continues where it stopped, with the same numbers; the folder goes once the
    set is written.
    """
    _check_seed(seed)
    folder = Path(out) if out is not None else pretrained_dir() / set_name(seed, epochs)
    settings = dict(epochs=epochs, data_dir=data_dir, batch_size=batch_size, lr=lr, augment_data=augment_data)
    training = folder.with_name(folder.name + ".training")
    common = dict(overwrite=overwrite, dataset=dataset, log=log, checkpoint_every=checkpoint_every)
    return _pretrain([seed], [folder], training, **settings, **common)[0]


def pretrain_seeds(
    seeds: Sequence[int],
    epochs: int = EPOCHS,
    data_dir: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    augment_data: bool = True,
    overwrite: bool = False,
    dataset: Any = None,
    log: Callable[[str], None] | None = print,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> list[PretrainRecord]:
    """Pre-train one set per seed in one program (the networks on a leading seed axis, the data shared),
    each saved as :func:`pretrain` saves it; what a GPU does at almost the cost of one set.

    Each seed draws its initialisation, shuffles and augmentation as :func:`pretrain` does for it alone,
    so a set equals its solo run up to float rounding of the mapped program. Checkpoints of the group go
    to ``<cache>/pretrained/<dataset>-<layers>-e<epochs>-s<seed>-<seed>....training``.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("pretrain: give at least one seed")
    for seed in seeds:
        _check_seed(seed)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"pretrain: seeds must differ, got {seeds}")
    settings = dict(epochs=epochs, data_dir=data_dir, batch_size=batch_size, lr=lr, augment_data=augment_data)
    common = dict(overwrite=overwrite, dataset=dataset, log=log, checkpoint_every=checkpoint_every)
    if len(seeds) == 1:
        return [pretrain(seeds[0], **settings, **common)]
    folders = [pretrained_dir() / set_name(s, epochs) for s in seeds]
    training = pretrained_dir() / f"{set_name(seeds[0], epochs)}-{'-'.join(map(str, seeds[1:]))}.training"
    return _pretrain(seeds, folders, training, **settings, **common)


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"pretrain: seed must be a non-negative integer, got {seed!r}")


def _pretrain(
    seeds: list[int],
    folders: list[Path],
    training: Path,
    epochs: int,
    data_dir: str | Path | None,
    batch_size: int,
    lr: float,
    augment_data: bool,
    overwrite: bool,
    dataset: Any,
    log: Callable[[str], None] | None,
    checkpoint_every: int,
) -> list[PretrainRecord]:
    """Train ``seeds`` (one: unmapped; several: on a seed axis) and write each set to its folder."""
    for name, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("checkpoint_every", checkpoint_every),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"pretrain: {name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"pretrain: lr must be a positive number, got {lr!r}")
    existing = [str(f) for f in folders if (f / "record.json").exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"pretrain: {', '.join(existing)} already hold{'s' if len(existing) == 1 else ''} a pre-trained "
            "set; pass overwrite=True (--overwrite) to replace it"
        )
    data = dataset if dataset is not None else load_dataset("cifar10", data_dir)
    if data.train_x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"pretrain: expected 32x32 RGB images, got {data.train_x.shape[1:]}")
    if data.train_x.shape[0] < batch_size:
        raise ValueError(f"pretrain: {data.train_x.shape[0]} training images are fewer than one batch")

    several = len(seeds) > 1
    programs = _programs(int(data.num_classes), float(lr), batch_size, bool(augment_data), several)
    epoch, correct, init = (_with_fast_convolutions(f) for f in programs)
    keys = [jax.random.split(jax.random.key(s)) for s in seeds]  # (init, train) per seed
    k_init, k_train = (jnp.stack([k[i] for k in keys]) if several else keys[0][i] for i in (0, 1))
    state = init(k_init)
    train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
    settings = {
        "dataset": getattr(data, "name", "cifar10"),
        "seed": seeds if several else seeds[0],
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": float(lr),
        "augment": bool(augment_data),
    }
    progress = EpochCheckpoints(training, settings, checkpoint_every)
    done, state, seconds = progress.restore(state)
    if done and log is not None:
        log(f"continuing from epoch {done} ({progress.directory})")

    fold_in = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if several else jax.random.fold_in
    for e in range(done, epochs):
        start = time.perf_counter()
        state, losses = epoch(state, train_x, train_y, fold_in(k_train, e))
        loss = np.atleast_1d(np.asarray(losses.mean(axis=-1)))
        seconds += time.perf_counter() - start
        if not np.isfinite(loss).all():
            raise FloatingPointError(f"pretrain: the loss became {loss} in epoch {e + 1}; try a lower lr")
        if log is not None:
            log(f"epoch {e + 1}/{epochs}: loss {', '.join(f'{v:.4f}' for v in loss)}")
        progress.save(e + 1, state, seconds, final=e + 1 == epochs)
    test_acc = _accuracy(correct, state, data.test_x, data.test_y)
    train_acc = _accuracy(correct, state, data.train_x, data.train_y)

    records = []
    for i, (seed, folder) in enumerate(zip(seeds, folders, strict=True)):
        own = jax.tree.map(lambda a: a[i], state) if several else state  # noqa: B023
        conv = {"params": own.params["conv"], "batch_stats": own.batch_stats["conv"]}
        record = PretrainRecord(
            name=set_name(seed, epochs),
            dataset="cifar10" if dataset is None else getattr(data, "name", "cifar10"),
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=float(lr),
            augment=bool(augment_data),
            test_accuracy=round(float(test_acc[i]), 2),
            train_accuracy=round(float(train_acc[i]), 2),
            sha256=tree_sha256(conv),
            train_seconds=round(seconds, 1),
            seeds_trained_together=len(seeds),
        )
        save_pretrained(folder, conv, record)
        records.append(record)
        if log is not None:
            log(
                f"seed {seed}: CIFAR-10 test accuracy {test_acc[i]:.2f} % (train {train_acc[i]:.2f} %), "
                f"{seconds:.0f} s; wrote {folder}"
            )
    progress.remove()
    return records


def save_pretrained(folder: Path, conv: Any, record: PretrainRecord) -> None:
    """Write to a fresh folder beside ``folder`` and move it into place, so a failure keeps any old set."""
    from cljax.trained import save_tree

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tree(tmp.resolve() / "conv", jax.device_get(conv))
    (tmp / "record.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def abstract_conv() -> Any:
    """The shapes and dtypes of a saved set's tree."""
    variables = jax.eval_shape(
        lambda: ConvLayers().init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))
    )
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def load_pretrained(seed: int, epochs: int = EPOCHS, folder: str | Path | None = None) -> tuple[Any, dict]:
    """The conv layers pre-trained for ``seed`` (``{"params", "batch_stats"}``) and their record.

    A missing set is a FileNotFoundError that says how to make it; a set whose values do not match its
    record's hash is a ValueError (a corrupt or edited file).
    """
    from cljax.trained import restore_tree

    folder = Path(folder) if folder is not None else pretrained_dir() / set_name(seed, epochs)
    if not (folder / "record.json").exists():
        raise FileNotFoundError(
            f"no conv layers pre-trained on CIFAR-10 for seed {seed} ({epochs} epochs) in {folder}; make "
            f"them with `cljax pretrain --benchmark cifar10 --seed {seed} --epochs {epochs}` (the "
            "reference's main_pretrain.py; about 80 minutes per seed on 2 CPU cores, minutes on a GPU)"
        )
    record = json.loads((folder / "record.json").read_text())
    conv = restore_tree((folder / "conv").resolve(), abstract_conv())
    if tree_sha256(conv) != record.get("sha256"):
        raise ValueError(
            f"{folder}: the saved conv layers do not match the hash in record.json (a corrupt or edited "
            f"file); make them again with `cljax pretrain --benchmark cifar10 --seed {seed} --overwrite`"
        )
    return conv, record
