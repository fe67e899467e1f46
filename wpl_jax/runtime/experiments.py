"""The one registry: experiment name -> the study module that runs it.

Each study module exposes `train_and_evaluate(config, workdir)` (what
`main.py` runs) and `redraw(config, records, path)` (what
`wpl_jax.runtime.plots` calls to draw a run's figure from its metrics).
The modules are named by string and imported on use, so the runtime
imports no study.
"""

import importlib
import types

STUDIES = {
  "two_models": "wpl_jax.two_models.study",
  "enas_ptb": "wpl_jax.enas.train.search",
  "enas_truth": "wpl_jax.enas.train.truth",
}


def load(experiment: str) -> types.ModuleType:
  """The study module of `experiment` (config.experiment).

  Raises:
    ValueError: an unknown experiment (the message lists the known ones).
  """
  if experiment not in STUDIES:
    raise ValueError(
      f"unknown experiment {experiment!r} (known: {', '.join(STUDIES)})"
    )
  return importlib.import_module(STUDIES[experiment])
