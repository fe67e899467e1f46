"""Preemption-safe checkpoints of training-state pytrees with orbax."""

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from wpl_jax.types import PyTree


class _QuietOrbax(logging.Filter):
  """Drops orbax's INFO chatter (a dozen lines per save) from absl's log."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


absl_logging.get_absl_handler().addFilter(_QuietOrbax())


class Checkpointer:
  """Saves `(state pytree, JSON metadata)` per step; restores the latest.

  Orbax writes each step to a temporary folder and renames it when
  complete, so a run killed mid-save leaves the previous step intact; a
  restarted run resumes from `latest_step()`.

  Example:
    ckpt = Checkpointer(workdir / "checkpoints")
    if ckpt.latest_step() is not None:
      state, meta = ckpt.restore(state)   # `state` gives shapes/dtypes
    ...
    ckpt.save(epoch, state, {"archs": [...]})
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep),
    )

  def latest_step(self) -> int | None:
    """The last completely saved step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    """Saves `state` and `meta` as `step` and waits until it is on disk."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
      ),
    )
    self._manager.wait_until_finished()

  def restore(
    self, like: PyTree, step: int | None = None
  ) -> tuple[PyTree, dict[str, Any]]:
    """Restores `(state, meta)` of `step` (default: latest).

    Args:
      like: a pytree with the structure, shapes and dtypes of the state.
      step: which step; None = `latest_step()`.

    Returns:
      The restored state (same structure as `like`) and the metadata.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return out.state, out.meta

  def close(self) -> None:
    """Releases the manager's resources."""
    self._manager.close()
