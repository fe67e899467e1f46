"""Preemption-safe, verified checkpoints of training-state pytrees (orbax).

Each saved step gets a SHA-256 of its files (`checksums.json` inside the
step's folder); `restore` verifies it and falls back to the newest intact
step, moving a damaged one aside to `<checkpoints>.skipped/` (nothing is
deleted). A step without its checksums (a kill between orbax's commit and
the checksum write) counts as incomplete and is set aside the same way. An
intact step that does not fit the state it is restored into (other shapes,
dtypes or leaves: another vocabulary, another config) is not damage:
`restore` moves nothing and raises `CheckpointMismatch` naming what
differs. `save` refuses a state with a NaN or infinity, so a diverged run
never replaces its last good checkpoint (`NonFiniteError`).

Sharded states: `save` writes each array's global value whatever its
sharding, and `restore` places every array with the sharding of the
matching `like` leaf, so a state saved on 4 devices restores on 1 and
vice versa (place `like` on the current mesh first, e.g. with
`wpl_jax.runtime.sharding.put`). Several processes (`jax.distributed`): all of
them call `save`/`restore` on one shared directory; process 0 alone writes
the checksums and sets damaged steps aside.
"""

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from wpl_jax.types import PyTree


class _QuietOrbax(logging.Filter):
  """Drops orbax's INFO chatter (a dozen lines per save) from absl's log."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


absl_logging.get_absl_handler().addFilter(_QuietOrbax())


class NonFiniteError(ValueError):
  """A training state or metric holds NaN or infinity."""


class SaveError(OSError):
  """A checkpoint could not be saved (the run must end at once)."""


class CheckpointMismatch(ValueError):  # noqa: N818 (a ValueError to users)
  """An intact checkpoint does not fit the state restored into it.

  Attributes:
    step: the checkpoint's step.
    differences: `(leaf name, shape and dtype saved, now)` per differing
      leaf (`None` where the leaf is absent on that side); may be empty when
      only orbax could tell.
  """

  def __init__(self, message: str, step: int, differences: list):
    super().__init__(message)
    self.step = step
    self.differences = differences


def all_finite(tree: PyTree) -> bool:
  """Whether every floating-point leaf of `tree` is finite (one host sync)."""
  leaves = [
    x
    for x in jax.tree.leaves(tree)
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  if not leaves:
    return True
  ok = jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()
  return bool(ok)


def first_nonfinite(values) -> int | None:
  """Index of the first non-finite entry of `values` [N], or None."""
  arr = np.asarray(jax.device_get(values), dtype=np.float64).reshape(-1)
  bad = np.flatnonzero(~np.isfinite(arr))
  return int(bad[0]) if bad.size else None


_CHECKSUMS = "checksums.json"


def _primary() -> bool:
  """Whether this process writes the shared files (process 0)."""
  return jax.process_index() == 0


def _sync(name: str) -> None:
  """A barrier of all processes (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _digest(step_dir: pathlib.Path) -> dict[str, str]:
  """SHA-256 of every file under `step_dir` (but the checksum file)."""
  out = {}
  for path in sorted(step_dir.rglob("*")):
    rel = path.relative_to(step_dir).as_posix()
    if path.is_file() and rel != _CHECKSUMS:
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda f=f: f.read(1 << 20), b""):
          h.update(block)
      out[rel] = h.hexdigest()
  return out


_SAVE_CONCURRENT_GB = 1


class Checkpointer:
  """Saves `(state pytree, JSON metadata)` per step; restores the latest.

  Orbax writes each step to a temporary folder and renames it when
  complete, so a run killed mid-save leaves the previous step intact; a
  restarted run resumes from the newest intact step.

  Example:
    ckpt = Checkpointer(workdir / "checkpoints")
    if ckpt.latest_step() is not None:
      state, meta = ckpt.restore(state)   # `state` gives shapes/dtypes
    ...
    ckpt.save(epoch, state, {"archs": [...]})
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self.skipped_dir = self.directory.with_name(
      self.directory.name + ".skipped"
    )
    self._options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=self._options,
      item_handlers={
        # At most 1 GB of the state is staged in host memory at a time
        # (orbax's default, 96 GB, copies all of it at once): an ENAS
        # search at paper size saves 1.6 GB of params, Fisher and anchor,
        # and its peak memory was the save (WORKSPACE §6.3).
        "state": ocp.StandardCheckpointHandler(
          save_concurrent_gb=_SAVE_CONCURRENT_GB
        ),
        "meta": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    """The last completely saved step (not yet verified), or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
    """Saves `state` and `meta` as `step`, waits, and records a checksum.

    Raises:
      NonFiniteError: `state` has a NaN or infinity (nothing is saved, so
        the older checkpoints stay).
      SaveError (an OSError): the save failed (one line naming the step
        and folder).
    """
    if not all_finite(state):
      raise NonFiniteError(
        f"refusing to checkpoint step {step}: the state has NaN or infinity"
      )
    # Orbax cannot save an empty array, and a save that fails inside it can
    # leave a background thread that blocks the interpreter's exit: refuse
    # before it starts.
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    for path, leaf in flat:
      if getattr(leaf, "size", 1) == 0:
        raise SaveError(
          f"saving checkpoint step {step} in {self.directory} failed: "
          f"{jax.tree_util.keystr(path)} has zero size {tuple(leaf.shape)}"
        )
    # What orbax and tensorstore print while saving goes to a file: replayed
    # after a good save, kept aside after a failed one (a full disk made
    # ~600 lines and 49 tracebacks before the one line that matters). The
    # file is named: a process that dies mid-save leaves it behind.
    failure = None
    with _stderr_captured() as captured:
      try:
        self._manager.save(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
          ),
        )
        self._manager.wait_until_finished()
      except BaseException as e:  # noqa: BLE001 (any failure ends the run)
        failure = e
        self._abandon()
    if failure is not None:
      kept = captured.keep()
      if not isinstance(failure, Exception):  # KeyboardInterrupt, SystemExit
        raise failure
      where = f"; orbax's output: {kept}" if kept else ""
      raise SaveError(
        f"saving checkpoint step {step} in {self.directory} failed: "
        f"{type(failure).__name__}: "
        f"{str(failure).splitlines()[0] if str(failure) else ''}{where}"
      ) from failure
    step_dir = self.directory / str(step)
    if _primary():
      tmp = step_dir / (_CHECKSUMS + ".tmp")
      text = json.dumps(_digest(step_dir), indent=0)
      tmp.write_text(text, encoding="utf-8")
      tmp.replace(step_dir / _CHECKSUMS)
    _sync(f"checksums of {step_dir}")
    captured.replay()  # after the checksums: a closed stderr cannot cost them

  def verify(self, step: int) -> str | None:
    """None if `step`'s files match its checksum, else what is wrong.

    A step without checksums.json is incomplete: the process that saved it
    stopped between orbax's commit and the checksum write, so nothing
    vouches for its files.
    """
    step_dir = self.directory / str(step)
    path = step_dir / _CHECKSUMS
    if not path.exists():
      return f"incomplete: no {_CHECKSUMS} (the save was interrupted)"
    try:
      want = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
      return f"{path.name} is unreadable"
    have = _digest(step_dir)
    for rel in sorted(set(want) | set(have)):
      if rel not in have:
        return f"{rel} is missing"
      if rel not in want:
        return f"{rel} was not in the saved checkpoint"
      if want[rel] != have[rel]:
        return f"{rel} does not match its checksum"
    return None

  def restore(
    self, like: PyTree, step: int | None = None
  ) -> tuple[PyTree, dict[str, Any]]:
    """Restores `(state, meta)` of the newest intact step (or of `step`).

    Each step is verified against its checksum; a damaged or incomplete
    step is logged in one line, moved to `skipped_dir` and the next older
    one is tried. A verified step whose leaves differ from `like` (names,
    shapes, dtypes) raises `CheckpointMismatch` at once: it is intact, so
    nothing is moved and no older step is tried.

    Args:
      like: a pytree with the structure, shapes and dtypes of the state;
        its `jax.Array` leaves also give the shardings the restored
        arrays are placed with (the saving run's mesh does not matter).
      step: restore exactly this step (no fallback); None = the newest
        intact one.

    Returns:
      The restored state (same structure as `like`) and the metadata.

    Raises:
      FileNotFoundError: no checkpoint at all.
      CheckpointMismatch (a ValueError): the newest intact step does not
        fit `like` (one line naming the first differences).
      ValueError: no intact checkpoint (one line listing what was wrong).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if step is not None:
      steps = [step]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    # Steps saved before checksums existed (none in the folder has one):
    # restored unverified, a failed restore counting as damage, as then.
    legacy = not any(
      (self.directory / str(s) / _CHECKSUMS).exists()
      for s in self._manager.all_steps()
    )
    problems = []
    for s in steps:
      problem = None if legacy else self.verify(s)
      if problem is None:
        differences = self._differences(s, like)
        if differences:
          raise self._mismatch(s, differences)
        try:
          out = self._manager.restore(
            s,
            args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              meta=ocp.args.JsonRestore(),
            ),
          )
          return out.state, out.meta
        except Exception as e:  # noqa: BLE001
          text = str(e).strip().splitlines()
          detail = f"{type(e).__name__}: {text[0] if text else ''}"[:200]
          if legacy:
            problem = detail  # unverified files: damage, try the older
          elif _is_mismatch(e):
            # The files are as saved (checksums): the state does not fit.
            raise self._mismatch(s, [], detail) from None
          else:
            raise  # out of memory, I/O, permissions: the cause itself
      problems.append(f"step {s}: {problem}")
      absl_logging.warning(
        "checkpoint step %d in %s skipped (%s); moved to %s",
        s,
        self.directory,
        problem,
        self.skipped_dir,
      )
      self._set_aside(s)
    raise ValueError(
      f"no intact checkpoint in {self.directory} ({'; '.join(problems)}); "
      f"the damaged ones are in {self.skipped_dir}"
    )

  def check_fits(self, like: PyTree) -> None:
    """Raises `CheckpointMismatch` if the newest step does not fit `like`.

    Reads the step's metadata only (no arrays, nothing moved), so a run can
    refuse another vocabulary or config before it writes anything. `like`
    may hold `jax.ShapeDtypeStruct`s (`jax.eval_shape` of the state).
    """
    step = self.latest_step()
    if step is None:
      return
    differences = self._differences(step, like)
    if differences:
      raise self._mismatch(step, differences)

  def _differences(self, step: int, like: PyTree) -> list:
    """`CheckpointMismatch.differences` of `step` against `like`, by name."""
    try:
      tree = self._manager.item_metadata(step).state.tree
    except Exception:  # noqa: BLE001 (no metadata: the restore will tell)
      return []
    saved = {
      m.name: (tuple(m.shape), str(np.dtype(m.dtype)))
      for m in jax.tree.leaves(
        tree, is_leaf=lambda x: hasattr(x, "name") and hasattr(x, "shape")
      )
      if hasattr(m, "name") and hasattr(m, "shape")
    }
    now = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]:
      try:  # arrays, shape structs and Python scalars alike
        dtype = getattr(leaf, "dtype", None) or np.asarray(leaf).dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
          return []  # stored as raw key data: leave it to the restore
        shape = getattr(leaf, "shape", None)
        shape = np.shape(leaf) if shape is None else shape
        now[_leaf_name(path)] = (tuple(shape), str(np.dtype(dtype)))
      except (TypeError, ValueError):
        return []
    if not saved or not now or not set(saved) & set(now):
      return []  # other naming conventions: leave it to the restore
    return [
      (name, saved.get(name), now.get(name))
      for name in sorted(set(saved) | set(now))
      if saved.get(name) != now.get(name)
    ]

  def _mismatch(
    self, step: int, differences: list, detail: str = ""
  ) -> CheckpointMismatch:
    def side(v):
      return "absent" if v is None else f"{v[0]} {v[1]}"

    shown = "; ".join(
      f"{name}: {side(saved)} in the checkpoint, {side(now)} now"
      for name, saved, now in differences[:3]
    )
    more = f" (+{len(differences) - 3} more)" if len(differences) > 3 else ""
    return CheckpointMismatch(
      f"checkpoint step {step} in {self.directory} is intact but does not "
      f"fit this run ({shown or detail}{more}): a different config or data? "
      "Nothing was moved; rerun with the original settings or use a new "
      "--workdir",
      step,
      differences,
    )

  def _set_aside(self, step: int) -> None:
    """Moves a damaged step out of the manager's sight (never deletes)."""
    if _primary():
      self.skipped_dir.mkdir(parents=True, exist_ok=True)
      dest = self.skipped_dir / str(step)
      n = 1
      while dest.exists():
        dest, n = self.skipped_dir / f"{step}.{n}", n + 1
      shutil.move(str(self.directory / str(step)), str(dest))
    _sync(f"set aside {self.directory / str(step)}")
    self._manager.reload()

  def _abandon(self) -> None:
    """Stops the manager after a failed save so the process can exit."""
    try:
      self._manager.close()
    except Exception:  # noqa: BLE001, S110 (already failing; keep the cause)
      pass

  def keep_only_latest(self) -> None:
    """Deletes every step but the latest (e.g. once a phase is finished)."""
    latest = self.latest_step()
    for s in self._manager.all_steps():
      if s != latest:
        self._manager.delete(s)

  def close(self) -> None:
    """Releases the manager's resources."""
    self._manager.close()


def _is_mismatch(error: Exception) -> bool:
  """Whether a failed restore of intact files says the state does not fit."""
  text = str(error).lower()
  return any(
    word in text for word in ("shape", "structure", "dtype", "tree", "key")
  )


class _Captured:
  """Output written to file descriptor 2 while a save ran (a named file)."""

  def __init__(self, path: str | None):
    self.path = path

  def _read(self) -> bytes:
    if self.path is None:
      return b""
    try:
      with open(self.path, "rb") as f:
        return f.read()
    except OSError:
      return b""

  def _remove(self) -> None:
    if self.path is not None:
      with contextlib.suppress(OSError):
        os.unlink(self.path)

  def replay(self) -> None:
    """Writes the output to stderr (best effort) and removes the file."""
    data = self._read()
    self._remove()
    if data:
      with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        view = memoryview(data)
        while view:
          view = view[os.write(2, view) :]

  def keep(self) -> str | None:
    """The file's path if it holds anything (else it is removed)."""
    if self._read():
      return self.path
    self._remove()
    return None


@contextlib.contextmanager
def _stderr_captured():
  """Redirects file descriptor 2 (Python's and C++'s output) to a file."""
  with contextlib.suppress(ValueError, OSError):
    sys.stderr.flush()
  try:
    fd, path = tempfile.mkstemp(prefix="wpl_jax_save_", suffix=".log")
  except OSError:  # no temp space: leave stderr alone
    yield _Captured(None)
    return
  try:
    saved = os.dup(2)
  except OSError:
    os.close(fd)
    yield _Captured(path)
    return
  os.dup2(fd, 2)
  os.close(fd)
  try:
    yield _Captured(path)
  finally:
    with contextlib.suppress(ValueError, OSError):
      sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def _leaf_name(path) -> str:
  """A key path as orbax names the leaf: its keys joined with dots."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return ".".join(parts)


class Interrupted(Exception):  # noqa: N818 (not an error: a requested stop)
  """A run stopped at a signal after saving its checkpoint.

  Attributes:
    signum: the signal's number (the exit status is 128 + signum).
  """

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


class StopOnSignal:
  """Turns SIGTERM/SIGINT into a request that the loop answers at a safe point.

  The loop polls `requested` at its checkpoint boundaries, saves and raises
  `Interrupted`; a second signal of the same kind acts as usual (kills).
  Outside the main thread it installs nothing (signals cannot be caught).

  Example:
    with StopOnSignal() as stop:
      for chunk in ...:
        ...
        if stop.requested:
          ckpt.save(...); raise stop.interrupted("two_models at B step 300")
  """

  def __init__(self):
    self.requested: int | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.requested is not None:  # the second one: the usual behaviour
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
      return
    self.requested = signum
    absl_logging.warning(
      "%s received: saving a checkpoint at the next safe point",
      signal.Signals(signum).name,
    )

  def interrupted(self, where: str) -> Interrupted:
    """The exception to raise once the checkpoint `where` is saved."""
    name = signal.Signals(self.requested).name
    return Interrupted(
      self.requested,
      f"stopped by {name} at {where}, checkpoint saved; rerun the same "
      "command to resume",
    )

  def __enter__(self) -> "StopOnSignal":
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
