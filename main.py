"""Entry point: python main.py --config=FILE.py[:arg] --workdir=DIR."""

import importlib
import os
import sys
import time

# XLA:CPU takes its large buffers from glibc, which maps them fresh from the
# kernel and unmaps them after every call, so each step of a wide model
# touches gigabytes of new 4 KiB pages (≈ 600k minor faults per H = 1000
# ENAS step). glibc's `hugetlb=1` tunable backs them with transparent huge
# pages: 2 MiB faults, < 1 % of the count and a faster step (WORKSPACE §6.2,
# benchmarks/RESULTS.md). glibc reads it only at process start, so main.py
# restarts itself once with it, unless GLIBC_TUNABLES is already set (set
# it, even to "", to opt out).
TUNABLES = "glibc.malloc.hugetlb=1"


def relaunch_env(
  environ: dict, platform: str, libc: tuple[str, str]
) -> dict | None:
  """The environment to restart main.py with, or None to run as is.

  Args:
    environ: the current environment.
    platform: `sys.platform`.
    libc: `platform.libc_ver()`, e.g. ("glibc", "2.36"); the tunable
      exists from glibc 2.35 on.
  """
  if platform != "linux" or "GLIBC_TUNABLES" in environ:
    return None
  name, version = libc
  try:
    major, minor = (int(v) for v in version.split(".")[:2])
  except ValueError:
    return None
  if name != "glibc" or (major, minor) < (2, 35):
    return None
  return {**environ, "GLIBC_TUNABLES": TUNABLES}


if __name__ == "__main__":
  import platform as _platform

  _env = relaunch_env(dict(os.environ), sys.platform, _platform.libc_ver())
  if _env is not None:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], _env)

from absl import app, flags  # noqa: E402 (after the restart)
from ml_collections import config_flags  # noqa: E402

from wpl_jax.runtime import experiments  # noqa: E402
from wpl_jax.runtime import workdir as workdir_lib  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT = os.path.join(_HERE, "experiments", "two_models.py")


def _message(error: BaseException | str) -> str:
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


def _fail(error: BaseException | str) -> None:
  """Ends the program with one line on stderr and exit status 1."""
  print(f"error: {_message(error)}", file=sys.stderr)
  sys.exit(1)


try:
  _CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT, "Config file[:arg].", lock_config=True
  )
except (AttributeError, KeyError) as _error:
  # With no --config, ml_collections applies --config.x overrides to the
  # default config while the flag is defined: a mistyped field fails here.
  _fail(_error)
_WORKDIR = flags.DEFINE_string("workdir", None, "New or empty output folder.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides config.data_dir.")
_DOWNLOAD = flags.DEFINE_bool("download", False, "Fetch MNIST into data_dir.")
_ALLOW_DATA_CHANGE = flags.DEFINE_bool(
  "allow_data_change",
  False,
  "Resume although a data file differs from the one the run started on "
  "(run.json records each file's size and SHA-256); same as "
  "WPL_ALLOW_DATA_CHANGE=1.",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Multi-host: call jax.distributed.initialize() first (README, Devices "
  "and hosts); every host runs the same command.",
)


def _report_finished(workdir: str) -> None:
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


def _parse(argv: list[str]) -> list[str]:
  """Parses flags; a bad flag or config ends with one line, no traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, OSError) as e:
    _fail(e)


def main(argv: list[str]) -> None:
  if _DISTRIBUTED.value:
    import jax  # noqa: PLC0415 (only here: a bad flag stays fast)

    # Coordinator, process count and id: detected on TPU pods and SLURM,
    # else from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
    env = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
    kw = {k: int(os.environ[v]) for k, v in env.items() if v in os.environ}
    jax.distributed.initialize(**kw)
  try:
    config = _CONFIG.value  # a proxy: a missing file shows up on first use
    experiment = config.experiment
  except (flags.Error, ValueError, OSError) as e:
    _fail(e)
  if len(argv) > 1 or experiment not in experiments.STUDIES:
    _fail(
      f"unexpected arguments {argv[1:]} or unknown experiment "
      f"{config.experiment!r} (known: {', '.join(experiments.STUDIES)})"
    )
  try:
    module = experiments.load(config.experiment)
    with config.unlocked():
      config.data_dir = _DATA_DIR.value or config.get("data_dir", "")
    workdir = _WORKDIR.value or os.path.join(
      "workdir", f"{config.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    resumable = getattr(module, "RESUMABLE", ())
    if _ALLOW_DATA_CHANGE.value:  # read by workdir_lib.claim
      os.environ[workdir_lib.ALLOW_DATA_CHANGE_ENV] = "1"
    workdir_lib.lock(workdir)  # one process per workdir; released at exit
    state = workdir_lib.inspect(workdir, config, resumable=resumable)
    if state == "finished":
      _report_finished(workdir)
      return
    if _DOWNLOAD.value:
      importlib.import_module("wpl_jax.data").download_mnist(config.data_dir)
    module.train_and_evaluate(config, workdir)
    workdir_lib.finish(workdir)
  except (ValueError, OSError) as e:  # DataError, NonFiniteError included
    if type(e).__name__ == "SaveError":  # wpl_jax.runtime.checkpoint.SaveError
      # A save that failed inside orbax can leave a thread that blocks the
      # interpreter's exit: say so and leave at once.
      print(f"error: {_message(e)}", file=sys.stderr, flush=True)
      sys.stdout.flush()
      os._exit(1)
    _fail(e)
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


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
