"""Compares ENAS search runs (e.g. with vs without WPL): figure and table.

Reads each run's metrics.jsonl and results.json, groups runs by label (mean
± std over the seeds of a label), draws the paper's four panels (mean,
best-5 and max of err2 − err1 per epoch, and the controller's reward) and
prints a Markdown table of peaks, end values and retrained perplexities.

Usage (from the project root):
  python experiments/enas_compare.py --out=runs/compare \
      --run=ENAS:runs/enas_cpu_s0 --run=ENAS:runs/enas_cpu_s1 \
      --run=ENAS+WPL:runs/enas_cpu_wpl_s0 --run=ENAS+WPL:runs/enas_cpu_wpl_s1
"""

import collections
import json
import pathlib
import sys

import numpy as np
from absl import app, flags

from wpl_jax.runtime import metrics as metrics_lib

_RUNS = flags.DEFINE_multi_string("run", [], "LABEL:WORKDIR, repeatable.")
_OUT = flags.DEFINE_string("out", "runs/compare", "Output folder.")
_FROM = flags.DEFINE_integer(
  "from_epoch",
  None,
  "Peaks are taken from this epoch on. Default: the runs' WPL start "
  "epoch (`wpl_start_epoch` in their records; the largest if they "
  "differ), so that a comparison with and without WPL covers only the "
  "epochs in which WPL acts.",
)


def from_epoch(groups, flag: int | None) -> int:
  """The first epoch of the comparison: `flag`, else the WPL start epoch.

  Raises:
    ValueError: no flag and a run's records carry no `wpl_start_epoch`
      (runs older than that field): pass --from_epoch.
  """
  if flag is not None:
    return flag
  starts = set()
  for runs in groups.values():
    for recs, _ in runs:
      if "wpl_start_epoch" not in recs[0]:
        raise ValueError(
          "a run's metrics carry no wpl_start_epoch: pass --from_epoch"
        )
      starts.add(int(recs[0]["wpl_start_epoch"]))
  return max(starts)


PANELS = (
  ("diff_mean", "mean diff (ppl)"),
  ("diff_best5", "best-5 diff (ppl)"),
  ("diff_max", "max diff (ppl)"),
  ("reward", "controller reward"),
)


def load_run(workdir: pathlib.Path) -> tuple[list[dict], dict]:
  """(per-epoch records, results.json or {}) of one run."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"{path}: no metrics (did the run start?)")
  records = metrics_lib.read_jsonl(path)
  results_path = workdir / "results.json"
  results = (
    json.loads(results_path.read_text()) if results_path.exists() else {}
  )
  return records, results


def summarize(
  groups: dict[str, list[tuple[list[dict], dict]]], from_epoch: int = 1
) -> list[dict]:
  """One row per label: peak/end of each panel, retrained ppl (mean ± std)."""
  rows = []
  for label, runs in groups.items():
    row = {"label": label, "seeds": len(runs)}
    for key, _ in PANELS:
      peaks = [
        max(r[key] for r in recs if r["epoch"] >= from_epoch)
        for recs, _ in runs
      ]
      ends = [recs[-1][key] for recs, _ in runs]
      row[f"{key}_peak"] = metrics_lib.format_mean_std(peaks, 2)
      row[f"{key}_end"] = metrics_lib.format_mean_std(ends, 3)
    derived = [
      next(
        (
          x
          for x in res.get("retrained", [])
          if x["name"] in ("derived", "given")
        ),
        None,
      )
      for _, res in runs
    ]
    valid = [d["valid_ppl"] for d in derived if d]
    test = [d["test_ppl"] for d in derived if d]
    row["valid_ppl"] = metrics_lib.format_mean_std(valid, 1) if valid else "-"
    row["test_ppl"] = metrics_lib.format_mean_std(test, 1) if test else "-"
    secs = [np.mean([r["epoch_seconds"] for r in recs]) for recs, _ in runs]
    row["epoch_s"] = metrics_lib.format_mean_std(secs, 0)
    rows.append(row)
  return rows


def main(argv):
  del argv
  if not _RUNS.value:
    sys.exit("error: give at least one --run=LABEL:WORKDIR")
  groups = collections.OrderedDict()
  for spec in _RUNS.value:
    if ":" not in spec:
      sys.exit(f"error: --run={spec!r} is not LABEL:WORKDIR")
    label, workdir = spec.split(":", 1)
    try:
      groups.setdefault(label, []).append(load_run(pathlib.Path(workdir)))
    except FileNotFoundError as e:
      sys.exit(f"error: {e}")
  try:
    first = from_epoch(groups, _FROM.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  panels = []
  for key, title in PANELS:
    curves = []
    for i, (label, runs) in enumerate(groups.items()):
      n = min(len(recs) for recs, _ in runs)
      f0 = min(first, n - 1)  # Same epochs as the table's peaks.
      vals = np.array([[r[key] for r in recs[f0:n]] for recs, _ in runs])
      curves.append(
        {
          "label": f"{label} (n={len(runs)})",
          "color": f"C{i}",
          "x": [r["epoch"] for r in runs[0][0][f0:n]],
          "mean": vals.mean(0).tolist(),
          "std": vals.std(0).tolist(),
        }
      )
    panels.append({"title": title, "curves": curves})
  metrics_lib.plot_panels(
    panels,
    out / "forgetting.png",
    xlabel="epoch",
    ylabel="",
    ncols=4,
    ylim=None,
  )
  rows = summarize(groups, first)
  print(f"peaks from epoch {first}")
  cols = [("label", "run"), ("seeds", "seeds")]
  for key, title in PANELS:
    cols += [(f"{key}_peak", f"{title} peak"), (f"{key}_end", f"{title} end")]
  cols += [
    ("valid_ppl", "retrained valid ppl"),
    ("test_ppl", "retrained test ppl"),
    ("epoch_s", "s/epoch"),
  ]
  table = metrics_lib.markdown_table(rows, cols)
  (out / "compare.md").write_text(table + "\n")
  metrics_lib.write_json(out / "compare.json", rows)
  print(table)


if __name__ == "__main__":
  app.run(main)
