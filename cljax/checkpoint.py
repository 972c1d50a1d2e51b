"""Checkpoints at context boundaries with orbax: the whole state of every seed plus the results so far.

Orbax writes each step into a temporary folder and renames it when complete, so a crash during a save
leaves the previous checkpoint loadable. Step k holds the state after k contexts.

Orbax refuses arrays of zero size, yet states hold them (a replay buffer that stores no logits keeps them
with a last axis of 0). Such leaves are saved as empty nodes (``None``) and rebuilt on restore from the
template state: they carry no data, only a shape, a dtype and a sharding, all of which the template has.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cljax.config import ConfigError

# Config fields that may differ between a run and its resumption.
RESUMABLE_DIFFERENCES = ("data_dir", "download")


def is_empty(leaf: Any) -> bool:
    """Whether a state leaf holds no elements (orbax cannot save it)."""
    return int(np.prod(np.shape(leaf))) == 0


def without_empty_leaves(state: Any) -> Any:
    """``state`` with every zero-size leaf replaced by ``None``, which orbax saves as an empty node."""
    return jax.tree.map(lambda leaf: None if is_empty(leaf) else leaf, state)


def empty_like(like: jax.ShapeDtypeStruct) -> jax.Array:
    """A zero-size array of ``like``'s shape and dtype, on its sharding (if it has one)."""
    return jnp.zeros(like.shape, like.dtype, device=like.sharding)


def with_empty_leaves(abstract: Any, restored: Any) -> Any:
    """The restored state with its empty nodes rebuilt as zero-size arrays from ``abstract``."""
    return jax.tree.map(lambda like, value: empty_like(like) if value is None else value, abstract, restored)


def missing_leaves(abstract: Any, restored: Any) -> list[str]:
    """Paths where the template expects data but the checkpoint has an empty node: a state of another
    layout, which orbax restores as ``None`` without complaint."""
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    values = jax.tree_util.tree_structure(abstract).flatten_up_to(restored)
    return [
        jax.tree_util.keystr(path)
        for (path, like), value in zip(flat, values, strict=True)
        if value is None and not is_empty(like)
    ]


class Checkpoints:
    """Save and restore ``(state, progress)`` after each context in one folder."""

    def __init__(self, directory: str | os.PathLike, config: dict[str, Any], resume: bool) -> None:
        self.directory = Path(directory).absolute()
        self.config = {k: v for k, v in config.items() if k not in RESUMABLE_DIFFERENCES}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"checkpoint_dir: cannot create {self.directory}: {err.strerror}") from err
        if not os.access(self.directory, os.W_OK):
            raise ConfigError(f"checkpoint_dir: {self.directory} is not writable")
        options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        if self.manager.latest_step() is not None and not resume:
            raise ConfigError(
                f"checkpoint_dir: {self.directory} already holds a run (after context "
                f"{self.manager.latest_step()}); pass --resume to continue it, or choose an empty folder"
            )

    def save(self, contexts_done: int, state: Any, progress: dict[str, Any]) -> None:
        payload = {"config": self.config, **progress}
        try:
            self.manager.save(
                contexts_done,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(without_empty_leaves(state)),
                    progress=ocp.args.JsonSave(payload),
                ),
            )
            self.manager.wait_until_finished()
        except OSError as err:
            raise OSError(f"could not write the checkpoint to {self.directory}: {err}") from err

    def restore(self, state_like: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """The latest checkpoint as (contexts done, state, progress), or None if there is none.

        The config is compared before the state is read, so a checkpoint of other settings is named as such;
        a state of another layout (from an earlier cljax, say) is a ConfigError, not an orbax traceback.
        Zero-size leaves, saved as empty nodes, come back as zero-size arrays shaped like ``state_like``'s.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        progress = dict(
            self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]
        )
        saved_config = with_later_defaults(progress.pop("config"))
        if saved_config != with_later_defaults(self.config):
            now = with_later_defaults(self.config)
            changed = sorted(k for k in set(saved_config) | set(now) if saved_config.get(k) != now.get(k))
            shown = [f"{k}: {saved_config.get(k)!r} -> {now.get(k)!r}" for k in changed if k != "sweep"]
            shown += ["sweep: other configurations"] if "sweep" in changed else []
            raise ConfigError(
                f"resume: the checkpoint in {self.directory} was made with a different config "
                f"({', '.join(shown)}); rerun with the same settings or use another --checkpoint-dir"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except ValueError as err:  # orbax: the saved tree and this state differ in names or shapes
            raise self._layout_error(str(err).splitlines()[0].rstrip(":")) from err
        missing = missing_leaves(abstract, restored["state"])
        if missing:
            raise self._layout_error(f"nothing saved for {', '.join(missing)}")
        return step, with_empty_leaves(abstract, restored["state"]), progress

    def _layout_error(self, detail: str) -> ConfigError:
        """The error for a saved state that does not fit this version's."""
        return ConfigError(
            f"resume: the state saved in {self.directory} does not fit this version's ({detail}); it was "
            "probably saved by another cljax version: start the run again in a new --checkpoint-dir"
        )

    def close(self) -> None:
        self.manager.close()


def with_later_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a saved ``RunConfig.to_dict()``) with every field a later cljax added at its default,
    so that a checkpoint made before the field existed still resumes (and each of a sweep's entries)."""
    import dataclasses

    from cljax.config import RunConfig

    fields = dataclasses.fields(RunConfig)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    out = {**{k: v for k, v in defaults.items() if k not in config}, **config}
    if isinstance(out.get("sweep"), list):
        out["sweep"] = [with_later_defaults(c) if isinstance(c, dict) else c for c in out["sweep"]]
    return out
