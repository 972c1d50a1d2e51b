"""Checkpoints at context boundaries with orbax: the whole state of every seed plus the results so far.

Orbax writes each step into a temporary folder and renames it when complete, so a crash during a save
leaves the previous checkpoint loadable. Step k holds the state after k contexts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from cljax.config import ConfigError

# Config fields that may differ between a run and its resumption.
RESUMABLE_DIFFERENCES = ("data_dir", "download")


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
                    state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(payload)
                ),
            )
            self.manager.wait_until_finished()
        except OSError as err:
            raise OSError(f"could not write the checkpoint to {self.directory}: {err}") from err

    def restore(self, state_like: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """The latest checkpoint as (contexts done, state, progress), or None if there is none.

        The config is compared before the state is read, so a checkpoint of other settings is named as such;
        a state of another layout (from an earlier cljax, say) is a ConfigError, not an orbax traceback.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        progress = dict(
            self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]
        )
        saved_config = progress.pop("config")
        if saved_config != self.config:
            changed = sorted(
                k for k in set(saved_config) | set(self.config) if saved_config.get(k) != self.config.get(k)
            )
            raise ConfigError(
                f"resume: the checkpoint in {self.directory} was made with a different config "
                f"({', '.join(f'{k}: {saved_config.get(k)!r} -> {self.config.get(k)!r}' for k in changed)}); "
                "rerun with the same settings or use another --checkpoint-dir"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except ValueError as err:  # orbax: the saved tree and this state differ in names or shapes
            detail = str(err).splitlines()[0].rstrip(":")
            raise ConfigError(
                f"resume: the state saved in {self.directory} does not fit this version's ({detail}); it was "
                "probably saved by another cljax version: start the run again in a new --checkpoint-dir"
            ) from err
        return step, restored["state"], progress

    def close(self) -> None:
        self.manager.close()
