"""Redraws the figures of a finished or running job from its logs.

  python -m wpl_jax.runtime.plots WORKDIR [WORKDIR ...]

Reads `WORKDIR/run.json` (which experiment, which config) and its JSONL
metrics, and writes `figure.png` again, as the run itself does at its end:
  * two_models: A's and B's test accuracy against B's iterations per
    (k, A setting), mean ± std over seeds (from metrics.jsonl; a running
    job shows the evaluations written so far);
  * enas_ptb: forgetting (mean / best-5 / max of err2 − err1) and the
    controller's reward per epoch (metrics.jsonl);
  * enas_truth: every cell's validation perplexity at each evaluation,
    with the best and the median (metrics.jsonl).
One line per workdir; a workdir without run.json or metrics is an error
(exit 1) that names it.
"""

import json
import pathlib
import sys

import ml_collections

from wpl_jax.runtime import experiments
from wpl_jax.runtime import metrics as metrics_lib


def redraw(workdir: str | pathlib.Path) -> pathlib.Path:
  """Writes `workdir/figure.png` from the run's logs; returns its path.

  Raises:
    ValueError: no run.json, no metrics yet, or an unknown experiment.
  """
  workdir = pathlib.Path(workdir)
  record_path = workdir / "run.json"
  if not record_path.exists():
    raise ValueError(f"{workdir} holds no wpl_jax run (no run.json)")
  record = json.loads(record_path.read_text(encoding="utf-8"))
  metrics_path = workdir / "metrics.jsonl"
  records = (
    metrics_lib.read_jsonl(metrics_path) if metrics_path.exists() else []
  )
  if not records:
    raise ValueError(f"{workdir} has no metrics yet")
  config = ml_collections.ConfigDict(record["config"])
  out = workdir / "figure.png"
  try:
    study = experiments.load(record["experiment"])
  except ValueError as e:
    raise ValueError(f"{workdir}: {e}") from None
  study.redraw(config, records, out)
  return out


def main(argv: list[str]) -> int:
  if not argv:
    print(
      "usage: python -m wpl_jax.runtime.plots WORKDIR [WORKDIR ...]",
      file=sys.stderr,
    )
    return 2
  status = 0
  for workdir in argv:
    try:
      print(redraw(workdir))
    except (ValueError, OSError) as e:
      print(f"error: {e}", file=sys.stderr)
      status = 1
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
