"""Two-model study: train A, then B on A's first layers, with or without WPL.

The entry point, `train_and_evaluate` (dispatched by main.py). Its parts:
`two_models_config` (checks of the config and data, the runs),
`two_models_steps` (losses, optimiser step, Fisher of A), `two_models_train`
(training A and B) and `two_models_report` (summary, results files, figure);
their public names are re-exported here.
"""

import pathlib
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from wpl_jax import data as data_lib
from wpl_jax.data import fingerprint
from wpl_jax.runtime import checkpoint as checkpoint_lib
from wpl_jax.runtime import metrics as metrics_lib
from wpl_jax.runtime import platform_defaults
from wpl_jax.runtime import workdir as workdir_lib
from wpl_jax.two_models.config import (
  A_SETTINGS,
  VARIANTS,
  Run,
  check_data,
  headline_runs,
  make_runs,
  validate,
)
from wpl_jax.two_models.report import (
  COLUMNS,
  plot_figure,
  results_from_metrics,
  summarize,
  write_outputs,
)
from wpl_jax.two_models.steps import (
  Penalty,
  TrainState,
  cross_entropy,
  fisher_of_a,
  loss_a,
  loss_b,
  make_optimizer,
  train_step,
)
from wpl_jax.two_models.train import train_a, train_b

__all__ = [
  "A_SETTINGS",
  "RESUMABLE",
  "VARIANTS",
  "Penalty",
  "Run",
  "TrainState",
  "check_data",
  "cross_entropy",
  "fisher_of_a",
  "loss_a",
  "loss_b",
  "make_optimizer",
  "make_runs",
  "plot_figure",
  "redraw",
  "results_from_metrics",
  "summarize",
  "train_a",
  "train_and_evaluate",
  "train_b",
  "train_step",
  "validate",
  "write_outputs",
]

RESUMABLE = ()  # a rerun in the same workdir must match the config exactly


def redraw(config, records: list[dict], out: pathlib.Path) -> None:
  """A's and B's accuracy curves from metrics.jsonl (`wpl_jax.runtime.plots`;
  a running job shows the evaluations written so far)."""
  plot_figure(config, results_from_metrics(config, records), out)


def _load_data(config: ml_collections.ConfigDict):
  """The ClassificationData named by `config.data.name`."""
  if config.data.name == "mnist":
    return data_lib.load_mnist(config.data_dir)
  return data_lib.load_digits(
    test_fraction=config.data.test_fraction, seed=config.data.split_seed
  )


@platform_defaults.with_precision
def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Runs the whole study and writes its outputs to `workdir`.

  Writes metrics.jsonl (one line per run and evaluation), results.md,
  results.json and figure.png.

  Returns:
    {"rows": summary rows (see `summarize`), "workdir": str}.

  Raises:
    ValueError: inconsistent config (before anything is written).
    wpl_jax.data.DataError: missing or corrupt data files (likewise).
  """
  given = config
  config, platform = platform_defaults.resolve(config)  # sets the precision
  validate(config)
  data = _load_data(config)
  check_data(config, data)
  logging.info("JAX devices: %s; workdir %s", jax.devices(), workdir)
  workdir = pathlib.Path(workdir)
  if config.data.name == "mnist":
    data_fp = fingerprint.mnist(config.data_dir)
  else:
    data_fp = fingerprint.digits()
  workdir_lib.claim(  # the first write; refuses a resume on other data
    workdir,
    given,
    resumable=RESUMABLE,
    extra={"platform": platform, "data": data_fp},
  )
  seeds = [config.seed + s for s in range(config.num_seeds)]
  t0 = time.time()
  ckpt_root = workdir / "checkpoints"
  results = {}
  with checkpoint_lib.StopOnSignal() as stop:
    params_a = train_a(config, data, seeds, ckpt_dir=ckpt_root / "a", stop=stop)
    cache = {}
    for k in config.protocol.shared_layers:
      for setting in config.protocol.a_settings:
        results[(k, setting)] = train_b(
          config,
          data,
          params_a[setting],
          seeds,
          k=k,
          setting=setting,
          log_path=workdir / "metrics.jsonl",
          cache=cache,
          ckpt_root=ckpt_root,
          stop=stop,
        )
  order = lambda key: (A_SETTINGS.index(key[1]), key[0])
  results = {key: results[key] for key in sorted(results, key=order)}
  rows = summarize(results, config.protocol.early_step)
  write_outputs(config, workdir, results, rows)
  logging.info("Done in %.0f s; results in %s", time.time() - t0, workdir)
  heads = set(headline_runs(config).values())
  table = metrics_lib.markdown_table(
    [r for r in rows if r["run"] in heads], COLUMNS
  )
  print(table, flush=True)
  return {"rows": rows, "workdir": str(workdir)}
