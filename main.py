"""Entry point: python main.py --config=FILE.py[:arg] --workdir=DIR."""

import os
import sys

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

from wpl_jax.runtime import launch  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT = os.path.join(_HERE, "experiments", "two_models.py")

try:
  _CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT, "Config file[:arg].", lock_config=True
  )
except (AttributeError, KeyError) as _error:
  # With no --config, ml_collections applies --config.x overrides to the
  # default config while the flag is defined: a mistyped field fails here.
  launch.fail(_error)
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


def _parse(argv: list[str]) -> list[str]:
  """Parses flags; a bad flag or config ends with one line, no traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, OSError) as e:
    launch.fail(e)


def main(argv: list[str]) -> None:
  if _DISTRIBUTED.value:
    launch.initialize_distributed()
  try:
    config = _CONFIG.value  # a proxy: a missing file shows up on first use
    config.experiment  # noqa: B018
  except (flags.Error, ValueError, OSError) as e:
    launch.fail(e)
  if len(argv) > 1:
    launch.fail(f"unexpected arguments {argv[1:]}")
  launch.run(
    config,
    workdir=_WORKDIR.value,
    data_dir=_DATA_DIR.value,
    download=_DOWNLOAD.value,
    allow_data_change=_ALLOW_DATA_CHANGE.value,
  )


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
