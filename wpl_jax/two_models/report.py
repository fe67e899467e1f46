"""Two-model study: the summary table, the results files and the figure.

`summarize` reduces B's evaluations to mean ± std over seeds per run;
`write_outputs` writes results.md, results.json and figure.png;
`plot_figure` draws the accuracy curves, which `results_from_metrics`
rebuilds from metrics.jsonl (for `wpl_jax.runtime.plots`, also of a running
job).
"""

import pathlib

import numpy as np

from wpl_jax.runtime import metrics as metrics_lib
from wpl_jax.two_models.config import headline_runs, make_runs


def summarize(results: dict[tuple[int, str], dict], early_step: int) -> list:
  """One row per (setting, run name): mean/std over seeds of the key numbers.

  Columns: A before B, A at `early_step` iterations of B, A after, the drop
  (before − after), B final.
  """
  rows = []
  for (k, setting), res in results.items():
    steps = res["steps"]
    t_early = int(np.searchsorted(steps, early_step))
    t_early = min(t_early, len(steps) - 1)
    names = list(dict.fromkeys(r.name for r in res["runs"]))
    for name in names:
      idx = [i for i, r in enumerate(res["runs"]) if r.name == name]
      run = res["runs"][idx[0]]
      values = {
        "a_before": res["acc_a"][0, idx],
        "a_early": res["acc_a"][t_early, idx],
        "a_after": res["acc_a"][-1, idx],
        "drop": res["acc_a"][0, idx] - res["acc_a"][-1, idx],
        "b_final": res["acc_b"][-1, idx],
      }
      row = {
        "k": k,
        "a_setting": setting,
        "run": name,
        "variant": run.variant,
        "estimator": run.estimator,
        "alpha": run.alpha,
        "early_step": int(steps[t_early]),
        "seeds": [res["runs"][i].seed for i in idx],
      }
      for key, v in values.items():
        row[key] = {
          "mean": float(np.mean(v)),
          "std": float(np.std(v)),
          "values": [float(x) for x in v],
        }
        row[key + "_str"] = metrics_lib.format_mean_std(v)
      rows.append(row)
  return rows


COLUMNS = [
  ("k", "k"),
  ("a_setting", "A"),
  ("run", "B variant"),
  ("a_before_str", "A before"),
  ("a_early_str", "A @early"),
  ("a_after_str", "A after"),
  ("drop_str", "drop of A"),
  ("b_final_str", "B final"),
]


def write_outputs(config, workdir: pathlib.Path, results, rows) -> None:
  """results.md, results.json and figure.png in `workdir`."""
  early = rows[0]["early_step"] if rows else 0
  columns = [(c, h.replace("@early", f"@{early}")) for c, h in COLUMNS]
  heads = set(headline_runs(config).values())
  n_seeds = config.num_seeds
  text = [
    f"# Two-model study ({config.data.name})",
    "",
    f"Test accuracy, mean ± std over {n_seeds} seeds; B trained for "
    f"{config.protocol.b_steps} iterations ({config.opt_b.name}, lr "
    f"{config.opt_b.lr:g}, batch {config.protocol.batch_size}).",
    "",
    "## Headline runs",
    "",
    metrics_lib.markdown_table([r for r in rows if r["run"] in heads], columns),
    "",
    "## All runs",
    "",
    metrics_lib.markdown_table(rows, columns),
    "",
  ]
  if metrics_lib.is_primary():
    (workdir / "results.md").write_text("\n".join(text), encoding="utf-8")
  metrics_lib.write_json(
    workdir / "results.json", {"config": config.to_dict(), "rows": rows}
  )
  plot_figure(config, results, workdir / "figure.png")


def plot_figure(config, results, path) -> None:
  """A's and B's test accuracy against B's iterations, one panel per (k, A).

  Args:
    config: the study's config.
    results: {(k, setting): {"runs", "steps" [T], "acc_a" [T, R],
      "acc_b" [T, R]}}, as `train_b` returns or `results_from_metrics`
      rebuilds; curves are mean ± std over the seeds of each headline run.
    path: the PNG to write.
  """
  style = {
    "plain": ("--", "without WPL"),
    "l2": (":", "uniform L2"),
    "wpl": ("-", "with WPL"),
  }
  panels = []
  for (k, setting), res in results.items():
    curves = []
    for variant, name in headline_runs(config).items():
      idx = [i for i, r in enumerate(res["runs"]) if r.name == name]
      ls, label = style[variant]
      for model, color in (("a", "tab:blue"), ("b", "tab:red")):
        acc = res[f"acc_{model}"][:, idx]
        curves.append(
          {
            "label": f"{model.upper()} {label}",
            "x": res["steps"],
            "mean": acc.mean(1),
            "std": acc.std(1),
            "color": color,
            "linestyle": ls,
          }
        )
    panels.append({"title": f"k={k} shared, {setting} A", "curves": curves})
  metrics_lib.plot_panels(
    panels,
    path,
    xlabel="iterations of B",
    ylabel="test accuracy",
    ncols=len(config.protocol.shared_layers),
  )


def results_from_metrics(config, records: list[dict]) -> dict:
  """Rebuilds `train_b`'s results from metrics.jsonl records (any prefix).

  Evaluations not yet written (a running job) are left out: each
  (k, setting) keeps the steps at which every run has a record.

  Returns:
    {(k, setting): {"runs", "steps" [T], "acc_a" [T, R], "acc_b" [T, R]}}
    in the order the study runs them.
  """
  runs = make_runs(config)
  index = {(r.name, r.seed): i for i, r in enumerate(runs)}
  out = {}
  for k in config.protocol.shared_layers:
    for setting in config.protocol.a_settings:
      rows = [r for r in records if r["k"] == k and r["a_setting"] == setting]
      by_step = {}
      for r in rows:
        by_step.setdefault(r["step"], {})[index[(r["run"], r["seed"])]] = r
      steps = sorted(s for s, got in by_step.items() if len(got) == len(runs))
      if not steps:
        continue
      acc = {
        m: np.array(
          [[by_step[s][i][f"acc_{m}"] for i in range(len(runs))] for s in steps]
        )
        for m in ("a", "b")
      }
      out[(k, setting)] = {
        "runs": runs,
        "steps": np.asarray(steps),
        "acc_a": acc["a"],
        "acc_b": acc["b"],
      }
  return out
