"""Entry point: python main.py --config=FILE.py[:arg] --workdir=DIR."""

import importlib
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

# config.experiment -> module exposing train_and_evaluate(config, workdir).
_EXPERIMENTS = {
  "two_models": "wpl_jax.train.two_models",
  "enas_ptb": "wpl_jax.train.enas_search",
  "enas_truth": "wpl_jax.train.enas_truth",
}
_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT = os.path.join(_HERE, "experiments", "two_models.py")
_CONFIG = config_flags.DEFINE_config_file(
  "config", _DEFAULT, "Config file[:arg].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "New or empty output folder.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides config.data_dir.")
_DOWNLOAD = flags.DEFINE_bool("download", False, "Fetch MNIST into data_dir.")


def _fail(error: Exception | str) -> None:
  """Ends the program with one line on stderr and exit status 1."""
  message = (str(error).splitlines() or [type(error).__name__])[0]
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _parse(argv: list[str]) -> list[str]:
  """Parses flags; a bad flag or config ends with one line, no traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError) as e:
    _fail(e)


def main(argv: list[str]) -> None:
  config = _CONFIG.value
  if len(argv) > 1 or config.experiment not in _EXPERIMENTS:
    _fail(
      f"unexpected arguments {argv[1:]} or unknown experiment "
      f"{config.experiment!r} (known: {', '.join(_EXPERIMENTS)})"
    )
  try:
    module = importlib.import_module(_EXPERIMENTS[config.experiment])
    with config.unlocked():
      config.data_dir = _DATA_DIR.value or config.get("data_dir", "")
    workdir = _WORKDIR.value or os.path.join(
      "workdir", f"{config.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    resumable = os.path.isdir(os.path.join(workdir, "checkpoints"))
    if os.path.isdir(workdir) and os.listdir(workdir) and not resumable:
      raise ValueError(f"workdir {workdir} is not empty; choose a new one")
    if _DOWNLOAD.value:
      importlib.import_module("wpl_jax.data").download_mnist(config.data_dir)
    module.train_and_evaluate(config, workdir)
  except (ValueError, OSError) as e:  # wpl_jax.data.DataError is a ValueError.
    _fail(e)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
