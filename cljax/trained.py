"""The trained model a run returns: every seed's final state, predicting on raw images, saved and loaded.

Whatever a strategy keeps (a plain classifier, EWC's Fisher, iCaRL's exemplar means, BI-R's VAE), its
``predict(state, x)`` is what classifies, so a :class:`TrainedModel` holds the whole final state and the
strategy's functions, plus what turns raw images into the network's inputs (the training preprocessing:
scaling, padding, a permuted context's pixel order, normalisation) and output units back into dataset
classes. ``save`` writes the state with orbax and the rest as JSON; ``load`` rebuilds the strategy from
its registered name and restores the state into it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.batching import to_float
from cljax.features import pixel_info
from cljax.losses import mask_logits
from cljax.models.conv_layers import ConvLayers
from cljax.scenarios import ScenarioInfo
from cljax.strategies import Strategy

MODEL_FILE = "model.json"
STATE_FOLDER = "state"
CONV_FOLDER = "frozen_conv"
PREDICT_CHUNK = 512  # images per compiled call; the last chunk is padded, so one program serves any count

# Where strategies keep the classifier's params, tried in order when a strategy does not say.
PARAMS_PATHS = (("params",), ("classifier", "params"), ("model", "params"))


@dataclass
class TrainedModel:
    """Every seed's final state (leading axis: seeds) and what predicting on raw images needs."""

    config: dict[str, Any]  # RunConfig.to_dict() of the run
    info: ScenarioInfo
    strategy: Strategy
    states: Any
    seeds: list[int]
    image_shape: tuple[int, ...]  # (H, W, C) of the dataset's images, before padding
    active: np.ndarray  # bool (seeds, contexts, n_out): the output units of each context
    pixel_perm: np.ndarray  # int32 (seeds, contexts, H*W) or (seeds, contexts, 0)
    unit_classes: np.ndarray  # int32 (seeds, contexts, n_out): the dataset class of each unit
    shapes: dict[str, Any]  # shapes and dtypes of the run's Images and Stream, to rebuild the state on load
    # A benchmark on frozen pre-trained conv layers (split-cifar100): each seed's set (leading axis: seeds),
    # so predicting starts from images as training did (``info.pixel_shape``, ``info.pixel_normalize``)
    frozen_conv: Any = None

    def state(self, seed: int | None = None) -> Any:
        """The final state of ``seed`` (default: the run's first seed)."""
        index = self._seed_index(seed)
        return jax.tree.map(lambda a: a[index], self.states)

    def params(self, seed: int | None = None) -> Any:
        """The classifier's params of ``seed``, wherever the strategy keeps them."""
        return classifier_params(self.strategy, self.state(seed))

    def logits(self, x: Any, seed: int | None = None, context: int | None = None) -> np.ndarray:
        """Logits (N, n_out) for raw images x (as the dataset: uint8, or float in [0, 1]).

        Inactive units hold a large negative value. ``context`` (1-based, as results print contexts):
        Task-IL needs it (which head), a permuted benchmark too (which pixel order); Domain- and Class-IL
        default to the last context.
        """
        index, ctx = self._seed_index(seed), self._context(context)
        x = self._images(x)
        perm = self.pixel_perm[index, ctx]
        fn = self._program()
        state, mask = self.state(seed), jnp.asarray(self.active[index, ctx])
        conv = None if self.frozen_conv is None else jax.tree.map(lambda a: a[index], self.frozen_conv)
        out = []
        for start in range(0, len(x), PREDICT_CHUNK):
            chunk = x[start : start + PREDICT_CHUNK]
            padded = np.concatenate(
                [chunk, np.zeros((PREDICT_CHUNK - len(chunk), *chunk.shape[1:]), x.dtype)]
            )
            logits = fn(state, conv, jnp.asarray(padded), jnp.asarray(perm), mask)
            out.append(np.asarray(logits)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.info.n_out), np.float32)

    def predict(self, x: Any, seed: int | None = None, context: int | None = None) -> np.ndarray:
        """Predicted dataset classes (N,) for raw images x.

        Domain-IL without ``context`` gives the within-context label (the class's position in its context),
        which is what that scenario asks the network for.
        """
        units = self.logits(x, seed, context).argmax(axis=-1)
        if self.info.scenario == "domain" and context is None:
            return units.astype(np.int32)
        return self.unit_classes[self._seed_index(seed), self._context(context)][units]

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the model to the folder ``path`` (orbax for the state, JSON for the rest)."""
        folder = Path(path).absolute()
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            raise FileExistsError(
                f"save: {folder} is not empty; pass overwrite=True or choose another folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        save_tree(folder / STATE_FOLDER, self.states, overwrite=overwrite)
        if self.frozen_conv is not None:
            save_tree(folder / CONV_FOLDER, self.frozen_conv, overwrite=overwrite)
        meta = {
            "config": self.config,
            "info": {**self.info._asdict()},
            "seeds": self.seeds,
            "image_shape": list(self.image_shape),
            "active": self.active.tolist(),
            "pixel_perm": self.pixel_perm.tolist(),
            "unit_classes": self.unit_classes.tolist(),
            "shapes": self.shapes,
        }
        from cljax.results import write_json

        write_json(folder / MODEL_FILE, meta)
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> TrainedModel:
        """The model saved in ``path``. ``model``: the network, when the run used a module or factory rather
        than a registered model name (a Python object cannot be rebuilt from a file)."""
        from cljax.engine import build_strategy

        folder = Path(path)
        try:
            meta = json.loads((folder / MODEL_FILE).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"load: no saved model in {folder} (missing {MODEL_FILE})") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"load: {folder / MODEL_FILE} is corrupt ({err.msg})") from None
        info = _info(meta["info"])
        config = meta["config"]
        strategy = build_strategy(config, info, model)
        n = len(meta["seeds"])
        images, streams = (
            {k: jax.ShapeDtypeStruct((*lead, *s), d) for k, (s, d) in meta["shapes"][part].items()}
            for part, lead in (("images", ()), ("stream", (n,)))
        )
        from cljax.scenarios import Images, Stream

        abstract = jax.eval_shape(
            jax.vmap(strategy.init, in_axes=(0, None, 0)),
            jax.ShapeDtypeStruct((n,), jax.random.key(0).dtype),
            Images(**images),
            Stream(**streams),
        )
        states = restore_tree(folder / STATE_FOLDER, abstract)
        frozen_conv = None
        if info.features is not None:
            from cljax.pretrain import abstract_conv

            stacked = jax.tree.map(lambda a: jax.ShapeDtypeStruct((n, *a.shape), a.dtype), abstract_conv())
            frozen_conv = restore_tree(folder / CONV_FOLDER, stacked)
        return cls(
            config=config,
            info=info,
            strategy=strategy,
            states=states,
            seeds=list(meta["seeds"]),
            image_shape=tuple(meta["image_shape"]),
            active=np.asarray(meta["active"], bool),
            pixel_perm=np.asarray(meta["pixel_perm"], np.int32).reshape(n, info.n_contexts, -1),
            unit_classes=np.asarray(meta["unit_classes"], np.int32),
            shapes=meta["shapes"],
            frozen_conv=frozen_conv,
        )

    def _seed_index(self, seed: int | None) -> int:
        if seed is None:
            return 0
        if seed not in self.seeds:
            raise ValueError(f"seed: this run has seeds {self.seeds}, not {seed!r}")
        return self.seeds.index(seed)

    def _context(self, context: int | None) -> int:
        n = self.info.n_contexts
        if context is None:
            if self.info.task_il or self.info.permuted:
                need = "its head (Task-IL)" if self.info.task_il else "its pixel permutation"
                raise ValueError(f"context: give the context (1..{n}) the images belong to, for {need}")
            return n - 1
        if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or not 1 <= context <= n:
            raise ValueError(f"context: must be an integer in 1..{n}, got {context!r}")
        return int(context) - 1

    def _images(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 3 and self.image_shape[-1] == 1:
            x = x[..., None]  # (N, H, W) grayscale
        if x.ndim != 4 or x.shape[1:] != tuple(self.image_shape):
            raise ValueError(
                f"x: expected images of shape (N, {', '.join(map(str, self.image_shape))}) like the training "
                f"data, got {x.shape}"
            )
        if x.dtype == np.uint8:
            return x
        if np.issubdtype(x.dtype, np.floating):
            if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
                raise ValueError("x: float images must be finite and in [0, 1]; pass uint8 or divide by 255")
            return x.astype(np.float32)
        raise ValueError(f"x: images must be uint8 or float in [0, 1], got dtype {x.dtype}")

    def _program(self):
        if not hasattr(self, "_compiled"):
            info, strategy = self.info, self.strategy
            image_info = pixel_info(info) if self.frozen_conv is not None else None

            def run(state, conv, x, perm, mask):
                perms = jnp.broadcast_to(perm, (x.shape[0], *perm.shape))
                if conv is None:
                    inputs = to_float(info, x, perms)
                else:  # the frozen conv layers' features, as the run computed them once
                    inputs = ConvLayers().apply(conv, to_float(image_info, x, perms))
                return mask_logits(strategy.predict(state, inputs), mask)

            self._compiled = jax.jit(run)
        return self._compiled


def save_tree(folder: Path, tree: Any, overwrite: bool = False) -> None:
    """Write a state pytree with orbax (zero-size leaves as empty nodes, as checkpoints do)."""
    import orbax.checkpoint as ocp

    from cljax.checkpoint import without_empty_leaves

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(folder, without_empty_leaves(tree), force=overwrite)


def restore_tree(folder: Path, abstract: Any) -> Any:
    """Read a pytree written by :func:`save_tree` into the structure of ``abstract`` (ShapeDtypeStructs)."""
    import orbax.checkpoint as ocp

    from cljax.checkpoint import with_empty_leaves, without_empty_leaves

    with ocp.StandardCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(folder, without_empty_leaves(abstract))
        except (ValueError, FileNotFoundError) as err:
            detail = str(err).strip().split("\n")[0]
            raise ValueError(f"load: the state in {folder} does not fit this strategy's ({detail})") from None
    return with_empty_leaves(abstract, restored)


def classifier_params(strategy: Strategy, state: Any) -> Any:
    """The classifier's params in ``state``: the strategy's ``params`` function, else the usual places."""
    if strategy.params is not None:
        return strategy.params(state)
    for path in PARAMS_PATHS:
        node = state
        for name in path:
            node = getattr(node, name, None)
        if node is not None:
            return node
    raise ValueError(
        f"params: cannot find the classifier's params in a {type(state).__name__}; give the strategy a "
        "`params` function (Strategy(..., params=lambda state: ...))"
    )


def _info(raw: dict[str, Any]) -> ScenarioInfo:
    def pairs(value: Any) -> Any:
        return tuple(tuple(v) for v in value) if value is not None else None

    shape = raw.get("pixel_shape")
    return ScenarioInfo(
        **{
            **raw,
            "input_shape": tuple(raw["input_shape"]),
            "normalize": pairs(raw.get("normalize")),
            "pixel_shape": tuple(shape) if shape is not None else None,
            "pixel_normalize": pairs(raw.get("pixel_normalize")),
        }
    )


def predict(model: Any, x: Any, seed: int | None = None, context: int | None = None) -> np.ndarray:
    """Predicted dataset classes of raw images x by a :class:`TrainedModel` or a ``RunResult``."""
    trained = getattr(model, "model", model)
    if not isinstance(trained, TrainedModel):
        raise TypeError(
            f"predict: expected a TrainedModel or a RunResult from cljax.run, got {type(model).__name__}"
        )
    return trained.predict(x, seed, context)


def load_model(path: str | os.PathLike, model: Any = None) -> TrainedModel:
    """A model saved with ``TrainedModel.save`` / ``RunResult.save_model`` (see :meth:`TrainedModel.load`)."""
    return TrainedModel.load(path, model)
