"""What `main.py` does around a study: one-line errors, exit codes, the
finished-run report, multi-host start-up, and the run itself.

Every user error ends the program with one line on stderr (`error: ...`)
and exit status 1; an interrupt after a checkpoint exits 128 + the signal
(130 for Ctrl-C); a bug keeps its traceback.
"""

import importlib
import os
import sys
import time

import ml_collections

from wpl_jax.runtime import experiments
from wpl_jax.runtime import workdir as workdir_lib


def message(error: BaseException | str) -> str:
  """The one line of a user error that says what is wrong.

  absl and ml_collections wrap the cause: a config file's own error comes
  after "Error whilst parsing config file:" and a traceback, a missing file
  after the paths tried, so the last non-empty line is the useful one
  (without its "SomeError: " prefix). A mistyped config field arrives as
  ml_collections' KeyError/AttributeError "'field'\nDid you mean ...".
  """
  if isinstance(error, str):
    return error
  text = str(error)
  if isinstance(error, KeyError | AttributeError):
    text = text.strip("'\"").replace("\\'", "'").replace("\\n", "\n")
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    field = lines[0].strip("'") if lines else "?"
    hint = f" ({lines[-1]})" if len(lines) > 1 else ""
    return f"unknown config field {field!r}{hint}"
  lines = [x.strip() for x in text.splitlines() if x.strip()]
  if not lines:
    return type(error).__name__
  last = lines[-1]
  head, sep, rest = last.partition(": ")
  if sep and head.endswith(("Error", "Exception")) and " " not in head:
    last = rest
  if len(lines) == 1:
    return last
  return f"{lines[0].split(': ')[0]}: {last}"


def fail(error: BaseException | str) -> None:
  """Ends the program with one line on stderr and exit status 1."""
  print(f"error: {message(error)}", file=sys.stderr)
  sys.exit(1)


def report_finished(workdir: str) -> None:
  """Prints a finished run's results.md; rewrites nothing."""
  results = os.path.join(workdir, "results.md")
  if os.path.exists(results):
    with open(results, encoding="utf-8") as f:
      print(f.read(), end="")
  print(
    f"the run in {workdir} has finished; nothing was rewritten (its "
    "results are above; use a new --workdir to run again)",
    file=sys.stderr,
  )


def initialize_distributed() -> None:
  """`jax.distributed.initialize()` for a multi-host run.

  Coordinator, process count and id are detected on TPU pods and SLURM,
  else read from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID.
  """
  import jax  # noqa: PLC0415 (only here: a bad flag stays fast)

  env = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
  kw = {k: int(os.environ[v]) for k, v in env.items() if v in os.environ}
  jax.distributed.initialize(**kw)


def run(
  config: ml_collections.ConfigDict,
  *,
  workdir: str | None,
  data_dir: str | None,
  download: bool = False,
  allow_data_change: bool = False,
) -> None:
  """Runs `config.experiment`'s study in `workdir` (new, or resumed).

  The workdir is locked for this process, checked against the config it
  was started with (`workdir.inspect`), reported and left alone when
  finished, and marked finished after the study returns. Errors end the
  program as the module docstring says.
  """
  if config.experiment not in experiments.STUDIES:
    fail(
      f"unknown experiment {config.experiment!r} (known: "
      f"{', '.join(experiments.STUDIES)})"
    )
  try:
    module = experiments.load(config.experiment)
    with config.unlocked():
      config.data_dir = data_dir or config.get("data_dir", "")
    workdir = workdir or os.path.join(
      "workdir", f"{config.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    resumable = getattr(module, "RESUMABLE", ())
    if allow_data_change:  # read by workdir_lib.claim
      os.environ[workdir_lib.ALLOW_DATA_CHANGE_ENV] = "1"
    workdir_lib.lock(workdir)  # one process per workdir; released at exit
    state = workdir_lib.inspect(workdir, config, resumable=resumable)
    if state == "finished":
      report_finished(workdir)
      return
    if download:
      importlib.import_module("wpl_jax.data").download_mnist(config.data_dir)
    module.train_and_evaluate(config, workdir)
    workdir_lib.finish(workdir)
  except (ValueError, OSError) as e:  # DataError, NonFiniteError included
    if type(e).__name__ == "SaveError":  # wpl_jax.runtime.checkpoint
      # A save that failed inside orbax can leave a thread that blocks the
      # interpreter's exit: say so and leave at once.
      print(f"error: {message(e)}", file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(1)
    fail(e)
  except KeyboardInterrupt:
    print(
      "error: interrupted; rerun the same command to resume from the last "
      "checkpoint",
      file=sys.stderr,
    )
    sys.exit(130)
  except Exception as e:
    # A stop at SIGTERM/SIGINT after a checkpoint (the module is loaded by
    # then; importing it here keeps orbax out of a bad flag's start-up).
    from wpl_jax.runtime import checkpoint  # noqa: PLC0415

    if not isinstance(e, checkpoint.Interrupted):  # a bug: keep the traceback
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(128 + e.signum)
