"""How settled is a 32-cell ground truth? Its ladder of evaluation points.

  python experiments/space32_ladder.py \
      --runs=workdir/truth_h32,workdir/truth_h128 --out=workdir/ladder

Each run is the workdir of a multi-seed ground truth (`main.py
--config=experiments/space32.py:truth,...,ladder`, or any run with
`truth.num_seeds` >= 2); finished or not, its metrics.jsonl holds the
perplexity of every cell and seed at every epoch end. For every run and
epoch end this prints (and writes to OUT/ladder.json, OUT/table.md and
OUT/figure.png):

* the seed-to-seed Kendall τ (mean over seed pairs), overall and within
  each family (node 2 reads node 0: "fan"; node 2 reads node 1: "chain"),
  and each seed against the mean of the others (leave-one-out);
* the seed mean against the published order (experiments/results/
  space32_published.json, Yu et al. 2020): the rank τ and the public
  code's id-sequence statistic (`ranking.id_sequence_tau`), and the mean
  of the single seeds' rank τ;
* the seed mean against a stored ground truth (--truth; by default the
  CPU ground truth of the ENAS cell, experiments/results/space32_truth.json);
* the families' mean rank in the seed mean (1 = best, 16.5 = no split).
"""

import json
import pathlib
import sys

import numpy as np
from absl import app, flags

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from wpl_jax.enas import ranking  # noqa: E402
from wpl_jax.runtime import metrics as metrics_lib  # noqa: E402

_RESULTS = _ROOT / "experiments" / "results"
FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line (only when run as a script: tests import this file
  beside others that define --runs)."""
  flags.DEFINE_list("runs", None, "Multi-seed ground-truth workdirs.")
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_string(
    "truth",
    str(_RESULTS / "space32_truth.json"),
    "A stored ground truth to compare the seed mean with ('' = none).",
  )
  flags.DEFINE_string(
    "published",
    str(_RESULTS / "space32_published.json"),
    "The published order of the 32 cells.",
  )


def family(name: str) -> str:
  """ "fan" when node 2 reads node 0, "chain" when it reads node 1."""
  return "fan" if name.split("|")[2].startswith("0:") else "chain"


def point_stats(
  names: list[str],
  ppl_KxS: np.ndarray,
  published: ranking.PublishedOrder,
  truth: np.ndarray | None = None,
) -> dict:
  """The statistics of one evaluation point (see the module docstring).

  Args:
    names: the S cells.
    ppl_KxS: float[K, S] validation perplexities, K >= 2 seeds.
    published: the published order.
    truth: float[S] perplexities of a stored ground truth, or None.
  """
  ppl = np.asarray(ppl_KxS, np.float64)
  k = ppl.shape[0]
  mean = ppl.mean(0)
  fam = np.asarray([family(n) for n in names])
  out = {"seed_tau": ranking.seed_ceiling(ppl)["tau_mean"]}
  for f in ("fan", "chain"):
    out[f"seed_tau_{f}"] = ranking.seed_ceiling(ppl[:, fam == f])["tau_mean"]
  out["loo_tau"] = float(
    np.mean(
      [
        ranking.kendall_tau(ppl[i], np.delete(ppl, i, 0).mean(0))
        for i in range(k)
      ]
    )
  )
  pub = ranking.published_ranks(published, names)
  out["published_tau"] = ranking.kendall_tau(mean, pub)
  out["published_tau_single"] = float(
    np.mean([ranking.kendall_tau(p, pub) for p in ppl])
  )
  out["published_idseq"] = ranking.id_sequence_tau(mean, names, published)
  if truth is not None:
    out["truth_tau"] = ranking.kendall_tau(mean, truth)
  ranks = np.argsort(np.argsort(mean)) + 1.0
  for f in ("fan", "chain"):
    out[f"rank_{f}"] = float(ranks[fam == f].mean())
  out["best"] = names[int(np.argmin(mean))]
  out["best_ppl"] = float(mean.min())
  out["median_ppl"] = float(np.median(mean))
  return out


def ladder(
  run: pathlib.Path, published: ranking.PublishedOrder, truth_path: str
) -> dict:
  """The run's config summary and `point_stats` at every epoch end."""
  record = json.loads((run / "run.json").read_text())
  config = record["config"]
  names = _space_names(config)
  truth = ranking.truth_for(truth_path, names) if truth_path else None
  rows = []
  for r in metrics_lib.read_jsonl(run / "metrics.jsonl"):
    if not r.get("end_of_epoch") or "seeds" not in r:
      continue
    rows.append(
      {"epoch": r["epoch"] + 1, "step": r["step"]}
      | point_stats(names, np.asarray(r["valid_ppl"]), published, truth)
    )
  if not rows:
    raise ValueError(f"{run}: no multi-seed epoch-end evaluation")
  t = config["truth"]
  return {
    "run": run.name,
    "hidden": config["model"]["hidden"],
    "epochs": t["epochs"],
    "lr": t["lr"],
    "seeds": t["num_seeds"],
    "finished": record.get("status") == "finished",
    "platform": record.get("platform", {}).get("device_kind", ""),
    "points": rows,
  }


def _space_names(config: dict) -> list[str]:
  import ml_collections  # noqa: PLC0415

  from wpl_jax.enas import search_space  # noqa: PLC0415
  from wpl_jax.enas.train import setup as enas_setup  # noqa: PLC0415

  archs = enas_setup.space_archs(ml_collections.ConfigDict(config))
  return [search_space.to_string(a) for a in search_space.unstack(archs)]


_COLS = [
  ("run", "run"),
  ("epoch", "epoch"),
  ("seed_tau", "seed-to-seed τ"),
  ("seed_tau_fan", "τ fan"),
  ("seed_tau_chain", "τ chain"),
  ("loo_tau", "seed vs rest"),
  ("published_tau", "mean vs published (rank τ)"),
  ("published_idseq", "mean vs published (id-seq)"),
  ("published_tau_single", "single seed vs published"),
  ("truth_tau", "mean vs CPU truth"),
  ("rank_fan", "fan mean rank"),
  ("median_ppl", "median ppl"),
]


def table(ladders: list[dict]) -> str:
  """Markdown: one row per run and epoch end."""
  rows = []
  for lad in ladders:
    label = f"H={lad['hidden']} {lad['epochs']} ep lr {lad['lr']:g}" + (
      "" if lad["finished"] else " (cut)"
    )
    for p in lad["points"]:
      row = {"run": label, "epoch": p["epoch"]}
      for key, _ in _COLS[2:]:
        v = p.get(key)
        row[key] = (
          "" if v is None else f"{v:.3f}" if key != "rank_fan" else (f"{v:.1f}")
        )
      row["median_ppl"] = f"{p['median_ppl']:.1f}"
      rows.append(row)
  return metrics_lib.markdown_table(rows, _COLS)


def figure(ladders: list[dict], path: pathlib.Path) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
  panels = (
    ("seed_tau", "seed-to-seed Kendall τ"),
    ("published_tau", "seed mean vs published (rank τ)"),
    ("published_idseq", "seed mean vs published (id-sequence)"),
  )
  for ax, (key, title) in zip(axes, panels, strict=True):
    for lad in ladders:
      xs = [p["epoch"] for p in lad["points"]]
      ys = [p[key] for p in lad["points"]]
      style = "-o" if lad["finished"] else "--o"
      ax.plot(xs, ys, style, ms=3, label=f"H={lad['hidden']}, lr {lad['lr']:g}")
    ax.axhline(0.0, color="gray", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch")
  axes[0].axhline(0.8, color="gray", lw=0.5, ls=":")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  if not FLAGS.runs or not FLAGS.out:
    print("error: give --runs=DIR[,DIR...] and --out=DIR", file=sys.stderr)
    sys.exit(1)
  try:
    published = ranking.load_published(FLAGS.published)
    ladders = [
      ladder(pathlib.Path(r), published, FLAGS.truth) for r in FLAGS.runs
    ]
  except (OSError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  metrics_lib.write_json(out / "ladder.json", ladders)
  md = table(ladders)
  (out / "table.md").write_text(md + "\n")
  figure(ladders, out / "figure.png")
  print(md)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
