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

Example:
  state = workdir.inspect(path, config, resumable=("search.epochs",))
  if state == "finished": ...  # print results.md, exit 0
  workdir.claim(path, config)  # before the first write
  ...
  workdir.finish(path)
"""

import json
import os
import pathlib
import time
from typing import Any, Literal

import ml_collections

from wpl_jax import metrics as metrics_lib

RECORD = "run.json"
# Fields that never make two runs different experiments.
# Where the data lives and how many devices run it may change on resume:
# checkpoints restore onto the current mesh (tests/sharding_test.py).
ALWAYS_RESUMABLE = ("data_dir", "num_devices", "model.shard_edges")

# Fields added to the configs after runs were recorded, with the value that
# reproduces what those runs did: a record without the field compares as
# if it held this value.
ADDED_DEFAULTS = {"precision": "float32"}

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
    "new" (absent or empty), "resume" (the same experiment and config, not
    finished, or finished under other values of `resumable` fields) or
    "finished" (the same experiment and config, finished).

  Raises:
    ValueError: the workdir holds files but no run record, another
      experiment, or this experiment under another config (one line naming
      up to 4 differing fields).
  """
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f"workdir {workdir} is a file, not a folder")
  if not workdir.exists() or not any(workdir.iterdir()):
    return "new"
  record = _read(workdir)
  if record is None:
    raise ValueError(
      f"workdir {workdir} is not empty and holds no run of wpl_jax "
      f"(no {RECORD}); choose a new --workdir"
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
    if not _differences(now, record["config"], ALWAYS_RESUMABLE):
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

  Returns:
    What `inspect` returned before the record was written.
  """
  workdir = pathlib.Path(workdir)
  state = inspect(workdir, config, resumable=resumable)
  workdir.mkdir(parents=True, exist_ok=True)
  old = _read(workdir) or {}
  record = {
    "experiment": config.experiment,
    "config": config_dict(config),
    "status": "finished" if state == "finished" else "running",
    "started": old.get("started", time.strftime("%Y-%m-%d %H:%M:%S")),
    # The allocator setting this process started with (main.py sets it).
    "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    **(extra or {}),
  }
  _write(workdir, record)
  return state


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
  tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
  tmp.replace(workdir / RECORD)  # atomic: a kill leaves the old or the new
