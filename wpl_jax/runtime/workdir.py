"""One experiment per workdir: refuse others, resume it, keep it once finished.

Every run records what it is in `WORKDIR/run.json` before it writes anything
else:

  {"experiment": "enas_ptb", "config": {...}, "status": "running" | "finished",
   "started": "...", "finished": "...", "glibc_tunables": "..." | null}

`inspect` (no writes) tells main.py whether a workdir is new, a run to resume
or a finished run, and refuses a workdir that holds another experiment or
the same experiment under another config, naming the difference. `claim`
writes the record (experiments call it once their config and data are
validated, right before their first write); `finish` marks it finished, so
that rerunning the command reports the results instead of rewriting them.

One process per workdir: `lock` (main.py calls it before `inspect`) holds
`WORKDIR/run.lock` for the life of the process; a second process is refused
with "workdir DIR is in use by pid P on HOST since T". The lock is an
`fcntl.flock` on that file, which the kernel drops when its process dies
(kill -9 included), plus the file's content {"pid", "host", "started"}
naming the holder, whose mtime the holder refreshes every `HEARTBEAT_S`.
A lock file left by a dead process is taken over: on this host as soon
as no process holds its flock; one naming another host once its mtime is
`STALE_S` old, because a flock taken on one host is not seen from another
on NFS mounts without working locks (`nolock`, `local_lock=flock`). On
filesystems where flock fails outright (ENOLCK), the content alone
decides: a live pid on this host holds it. Multi-host runs: only process
0 takes the lock (the others share its workdir). The file is removed at
exit (`release`); `inspect` ignores it and a leftover `run.json.tmp`.

The data a run reads is recorded too: claim's `extra={"data": {file name:
{"bytes": N, "sha256": "..."}}}` (`wpl_jax.data.fingerprint`). Resuming on
other data is refused naming the file, unless the environment has
`WPL_ALLOW_DATA_CHANGE=1` (main.py's `--allow_data_change` sets it); a
record without "data" (older runs) resumes and records it then.

Example:
  workdir.lock(path)  # before anything else touches the workdir
  state = workdir.inspect(path, config, resumable=("search.epochs",))
  if state == "finished": ...  # print results.md, exit 0
  workdir.claim(path, config, extra={"data": ...})  # before the first write
  ...
  workdir.finish(path)
"""

import atexit
import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import threading
import time
from typing import Any, Literal

import ml_collections

from wpl_jax.runtime import metrics as metrics_lib
from wpl_jax.runtime import platform_defaults

RECORD = "run.json"
LOCK = "run.lock"
# Files a workdir may hold and still count as new: the lock, and the
# temporary record a kill or a full disk can leave behind (`_write`).
_LEFTOVERS = (LOCK, RECORD + ".tmp")
# How often the lock's holder touches the lock file, and after how long
# without a touch a lock naming another host is taken over.
HEARTBEAT_S = 30.0
STALE_S = 120.0
# main.py's --allow_data_change sets it: resume on data that differs from
# the record's fingerprint.
ALLOW_DATA_CHANGE_ENV = "WPL_ALLOW_DATA_CHANGE"
# Fields that never make two runs different experiments.
# Where the data lives and how many devices run it may change on resume:
# checkpoints restore onto the current mesh (tests/sharding_test.py).
ALWAYS_RESUMABLE = ("data_dir", "num_devices", "model.shard_edges")

# Fields added to the configs after runs were recorded, with the value that
# reproduces what those runs did: a record without the field compares as
# if it held this value.
ADDED_DEFAULTS = {
  "precision": "float32",
  "model.cell_output": "leaves",
  "truth.num_seeds": 1,
  "search.num_seeds": 1,
  "search.log_seconds": 10.0,
  "model.matmul_dtype": "float32",
  # Removed since (now `search.grad_after_scan_from`): a run recorded with
  # its value False is a run the code does today.
  "model.tapped_grad": False,
  # Runs recorded before the field existed used one reward per cell.
  "controller.reward_form": "sequence",
}

State = Literal["new", "resume", "finished"]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  """A nested dict as {"dotted.path": leaf value}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as JSON values (tuples become lists), as run.json stores it."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def _differences(now: dict, old: dict, skip: tuple[str, ...]) -> list[str]:
  now = {**ADDED_DEFAULTS, **flatten(now)}
  old = {**ADDED_DEFAULTS, **flatten(old)}

  def skipped(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in skip)

  return sorted(
    k
    for k in set(now) | set(old)
    if not skipped(k) and now.get(k, "<absent>") != old.get(k, "<absent>")
  )


def _read(workdir: pathlib.Path) -> dict[str, Any] | None:
  path = workdir / RECORD
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
    if not {"experiment", "config"} <= set(record):
      raise KeyError("experiment or config")
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
      f"{path} is unreadable ({e}); choose a new --workdir"
    ) from None
  return record


def inspect(
  workdir: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  *,
  resumable: tuple[str, ...] = (),
) -> State:
  """What `workdir` holds for this config; writes nothing.

  Args:
    workdir: the output folder (need not exist).
    config: the config about to run (`config.experiment` names it).
    resumable: dotted fields (or whole sections) that a resumed run may
      change, e.g. more epochs; `data_dir` always may.

  Returns:
    "new" (absent, empty, or holding only the lock file or a run.json.tmp
    left by a kill or a full disk, which `claim` overwrites), "resume"
    (the same experiment and config, not finished, or finished under
    other values of `resumable` fields) or
    "finished" (the same experiment and config, finished).

  Raises:
    ValueError: the workdir holds files but no run record, another
      experiment, or this experiment under another config (one line naming
      up to 4 differing fields).
  """
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f"workdir {workdir} is a file, not a folder")
  if not workdir.exists():
    return "new"
  files = sorted(p.name for p in workdir.iterdir() if p.name not in _LEFTOVERS)
  if not files:  # empty, or only a lock or a run.json.tmp left behind
    return "new"
  record = _read(workdir)
  if record is None:
    shown = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
    raise ValueError(
      f"workdir {workdir} is not empty ({shown}) and holds no run of "
      f"wpl_jax (no {RECORD}); choose a new --workdir"
    )
  if record["experiment"] != config.experiment:
    raise ValueError(
      f"workdir {workdir} holds a {record['experiment']} run, not "
      f"{config.experiment}; choose a new --workdir"
    )
  now = config_dict(config)
  skip = ALWAYS_RESUMABLE + tuple(resumable)
  diff = _differences(now, record["config"], skip)
  if diff:
    shown = ", ".join(diff[:4]) + (" ..." if len(diff) > 4 else "")
    raise ValueError(
      f"workdir {workdir} holds a {config.experiment} run with a different "
      f"config ({shown}); choose a new --workdir"
    )
  if record.get("status") == "finished":
    # A field of platform_defaults changes speed, not results: a run that
    # finished under its older fixed value (or on another platform) is
    # still this run, reported rather than redone.
    same = ALWAYS_RESUMABLE + tuple(platform_defaults.DEFAULTS)
    if not _differences(now, record["config"], same):
      return "finished"
  return "resume"


def claim(
  workdir: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  *,
  resumable: tuple[str, ...] = (),
  extra: dict[str, Any] | None = None,
) -> State:
  """Checks `workdir` as `inspect` does, creates it and records this run.

  Call it after validating the config and data and before the first write.
  A resumed run's record keeps its start time and takes the new config
  (e.g. more epochs); its status becomes "running" again. `extra` (JSON
  values) is stored in the record too, e.g. the platform and the values
  "auto" fields resolved to (`platform_defaults.resolve`).

  `extra["data"]` is the data's fingerprint ({file name: {"bytes",
  "sha256"}}, `wpl_jax.data.fingerprint`): a resume whose data differs
  from the record's is refused naming the file, unless the environment
  has WPL_ALLOW_DATA_CHANGE=1; the change is then recorded under
  "data_changes". A record without "data" takes this one.

  Returns:
    What `inspect` returned before the record was written.

  Raises:
    ValueError: as `inspect`; another process holds the workdir's lock;
      the data changed since the run started.
  """
  workdir = pathlib.Path(workdir)
  state = inspect(workdir, config, resumable=resumable)
  _check_not_locked(workdir)
  old = _read(workdir) or {}
  extra = dict(extra or {})
  changes = list(old.get("data_changes", []))
  if state != "new" and "data" in old and "data" in extra:
    changed = data_differences(old["data"], extra["data"])
    if changed:
      if os.environ.get(ALLOW_DATA_CHANGE_ENV, "") not in ("", "0"):
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        before = {k: old["data"].get(k) for k in changed}
        changes.append({"at": now, "files": changed, "before": before})
      else:
        raise ValueError(_data_message(workdir, changed, old, extra))
  workdir.mkdir(parents=True, exist_ok=True)
  record = {
    "experiment": config.experiment,
    "config": config_dict(config),
    "status": "finished" if state == "finished" else "running",
    "started": old.get("started", time.strftime("%Y-%m-%d %H:%M:%S")),
    # The allocator setting this process started with (main.py sets it).
    "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    **({"data": old["data"]} if "data" in old else {}),
    **({"data_changes": changes} if changes else {}),
    **extra,
  }
  _write(workdir, record)
  return state


def data_differences(old: dict, now: dict) -> list[str]:
  """The file names whose fingerprints differ (or exist on one side only)."""
  return sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))


def _data_message(
  workdir: pathlib.Path, changed: list[str], old: dict, extra: dict
) -> str:
  name = changed[0]
  was, now = old["data"].get(name), extra["data"].get(name)

  def describe(fp: Any) -> str:
    if not isinstance(fp, dict):
      return "absent" if fp is None else str(fp)
    return f"{fp.get('bytes', '?')} bytes, sha256 {fp.get('sha256', '?')[:12]}"

  more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
  return (
    f"workdir {workdir}: data file {name}{more} changed since the run "
    f"started (was {describe(was)}, now {describe(now)}); restore it, or "
    f"resume on it with --allow_data_change ({ALLOW_DATA_CHANGE_ENV}=1), "
    "or choose a new --workdir"
  )


def finish(workdir: str | pathlib.Path) -> None:
  """Marks the run in `workdir` finished (a rerun then only reports it)."""
  workdir = pathlib.Path(workdir)
  record = _read(workdir)
  if record is None:
    return
  record["status"] = "finished"
  record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
  _write(workdir, record)


def _write(workdir: pathlib.Path, record: dict[str, Any]) -> None:
  if not metrics_lib.is_primary():  # multi-host: process 0 keeps the record
    return
  tmp = workdir / (RECORD + ".tmp")
  try:
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
  except OSError as e:  # e.g. a full disk: leave no partial file behind
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)
    raise OSError(e.errno, f"cannot write {tmp}: {e.strerror}") from None
  tmp.replace(workdir / RECORD)  # atomic: a kill leaves the old or the new


# ---------------------------------------------------------------- the lock


class WorkdirLocked(ValueError):
  """Another process holds the workdir (one line naming it)."""


class _Held:
  """A lock this process holds: its open file, heartbeat and created dirs."""

  def __init__(self, path: pathlib.Path, fd: int, created: list[pathlib.Path]):
    self.path, self.fd, self.created = path, fd, created
    self.stop = threading.Event()
    self.thread = threading.Thread(
      target=self._beat, name=f"lock {path}", daemon=True
    )
    self.thread.start()

  def _beat(self) -> None:
    while not self.stop.wait(HEARTBEAT_S):
      with contextlib.suppress(OSError):
        os.utime(self.fd)  # the fd: a file removed by hand is left alone


# Locks held by this process, by absolute workdir path; released at exit
# (the kernel drops a flock anyway when the process dies).
_HELD: dict[str, _Held] = {}
_REGISTRY_LOCK = threading.Lock()
_HOST = socket.gethostname()
# flock errors that mean "this filesystem does not lock", not "held".
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _flock(fd: int) -> bool | None:
  """True: locked; None: the filesystem does not lock; raises if held."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in _NO_FLOCK:
      return None
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise BlockingIOError from None
    raise
  return True


def _holder(fd: int) -> dict[str, Any]:
  """The lock file's {"pid", "host", "started"} ({} if empty or garbled)."""
  try:
    text = os.pread(fd, 4096, 0).decode("utf-8")
    holder = json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _alive(pid: Any) -> bool:
  """Whether `pid` names a live process on this host."""
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def _in_use(workdir: pathlib.Path, holder: dict[str, Any], hint: str) -> str:
  return (
    f"workdir {workdir} is in use by pid {holder.get('pid', '?')} on "
    f"{holder.get('host', '?')} since {holder.get('started', '?')}{hint}; "
    "wait for it to end or choose another --workdir"
  )


def _refusal(
  workdir: pathlib.Path, fd: int, flocked: bool | None
) -> str | None:
  """Why a lock file whose flock we could take is still held, or None.

  On this host the flock decides (a dead holder's is gone), or without
  flock whether the named pid lives; a holder on another host counts until
  its heartbeat is `STALE_S` old.
  """
  holder = _holder(fd)
  if not holder.get("pid"):
    return None
  if holder.get("host") == _HOST:
    if flocked or holder["pid"] == os.getpid() or not _alive(holder["pid"]):
      return None
    return _in_use(workdir, holder, "")
  age = time.time() - os.fstat(fd).st_mtime
  if age > STALE_S:
    return None
  return _in_use(
    workdir,
    holder,
    f" (last seen {age:.0f} s ago: taken over once unseen for "
    f"{STALE_S:.0f} s, or remove {workdir / LOCK} if it is gone)",
  )


def _same_file(fd: int, path: pathlib.Path) -> bool:
  """Whether `path` is still the file open as `fd` (not removed since)."""
  try:
    st = path.stat()
  except OSError:
    return False
  fst = os.fstat(fd)
  return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def lock(workdir: str | pathlib.Path) -> None:
  """Takes `workdir`'s lock for the life of this process (creating it).

  Call it before anything reads or writes the workdir (main.py does); a
  second call for the same workdir does nothing. Only process 0 of a
  multi-host run locks. The lock file is removed, and the folders this
  call created if they are still empty, by `release` or at exit.

  Raises:
    WorkdirLocked: another live process holds it ("workdir DIR is in use
      by pid P on HOST since T").
    ValueError: `workdir` is a file.
  """
  if not metrics_lib.is_primary():
    return
  workdir = pathlib.Path(workdir)
  key = os.path.realpath(workdir)
  with _REGISTRY_LOCK:
    if key in _HELD:
      return
    if workdir.exists() and not workdir.is_dir():
      raise ValueError(f"workdir {workdir} is a file, not a folder")
    created = [p for p in (workdir, *workdir.parents) if not p.exists()]
    path = workdir / LOCK
    try:
      for _ in range(20):  # retried while holders remove the file under us
        workdir.mkdir(parents=True, exist_ok=True)
        try:
          fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed meanwhile
          continue
        try:
          flocked = _flock(fd)
          if flocked and not _same_file(fd, path):
            os.close(fd)
            continue
          refusal = _refusal(workdir, fd, flocked)
        except BlockingIOError:
          refusal = _in_use(workdir, _holder(fd), "")
        except BaseException:
          os.close(fd)
          raise
        if refusal:
          os.close(fd)
          raise WorkdirLocked(refusal)
        holder = {
          "pid": os.getpid(),
          "host": _HOST,
          "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        data = (json.dumps(holder) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        with contextlib.suppress(OSError):
          os.fsync(fd)
        _HELD[key] = _Held(path, fd, created)
        return
      raise WorkdirLocked(f"workdir {workdir}: cannot take {path}")
    except BaseException:
      _remove_empty(created)
      raise


def _remove_empty(dirs: list[pathlib.Path]) -> None:
  for d in dirs:  # deepest first
    try:
      d.rmdir()
    except OSError:
      return


def release(workdir: str | pathlib.Path) -> None:
  """Gives up `workdir`'s lock, if this process holds it."""
  with _REGISTRY_LOCK:
    held = _HELD.pop(os.path.realpath(workdir), None)
  if held is None:
    return
  held.stop.set()
  with contextlib.suppress(OSError):
    if _same_file(held.fd, held.path):  # remove it before unlocking it
      held.path.unlink()
  os.close(held.fd)
  _remove_empty(held.created)


@atexit.register
def _release_all() -> None:
  for key in list(_HELD):
    release(key)


def _check_not_locked(workdir: pathlib.Path) -> None:
  """Raises WorkdirLocked if another process holds `workdir`'s lock.

  `claim` calls it: a library user who did not `lock` still cannot write
  into a workdir that a running main.py holds.
  """
  path = workdir / LOCK
  if not metrics_lib.is_primary() or os.path.realpath(workdir) in _HELD:
    return
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    try:
      refusal = _refusal(workdir, fd, _flock(fd))
    except BlockingIOError:
      refusal = _in_use(workdir, _holder(fd), "")
  finally:
    os.close(fd)  # drops the flock this check took
  if refusal:
    raise WorkdirLocked(refusal)
