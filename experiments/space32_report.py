"""Weight-shared rankings of the 32-cell space against the ground truth.

  python experiments/space32_report.py --runs='workdir/s32_*' \
      --out=workdir/s32_report

Reads each search run's metrics.jsonl (`main.py
--config=experiments/space32.py:POLICY,WPL`; or the JSON that
`space32_runs.py` stores in experiments/results/space32_runs/), groups
runs by policy × WPL mode (the labels its records carry), and writes
figure.png (Kendall τ against epochs, one line per group with a mean ± std
band over seeds, and the three forgetting panels) and table.md, which it
prints: final τ, ρ, top-3 hit rate, regret, and forgetting (mean / best-5
/ max of err2 − err1, averaged over the epochs from WPL's start epoch on),
mean ± std over seeds, next to the ground truth's seed-to-seed τ. The
ranking statistics are recomputed from each epoch's logged shared-weight
perplexities against --truth (so seeds added to the ground truth later
count).
"""

import collections
import glob
import json
import pathlib
import re
import sys

import numpy as np
from absl import app, flags
from scipy import stats as scipy_stats

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from wpl_jax.enas import ranking  # noqa: E402
from wpl_jax.runtime import metrics as metrics_lib  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line (only when run as a script: space32_stats.py and the
  tests import this file beside others that define --runs)."""
  flags.DEFINE_list("runs", None, "Run workdirs or glob patterns.")
  flags.DEFINE_string("out", None, "Output folder (figure, table).")
  flags.DEFINE_string(
    "truth",
    str(_ROOT / "experiments" / "results" / "space32_truth.json"),
    "Stored ground truth (for the ceiling row).",
  )


FORGETTING = ("diff_mean", "diff_best5", "diff_max")
LAST_K = 4
ORDER = [
  (p, w) for p in ("enas", "random") for w in ("off", "reference", "clean")
]


def load_runs(
  patterns: list[str], truth: tuple[list[str], np.ndarray] | None = None
) -> dict[tuple[str, str], list[list[dict]]]:
  """{(policy, wpl): [records of each run]}, statistics against `truth`."""
  groups = collections.defaultdict(list)
  paths = sorted({p for pat in patterns for p in glob.glob(pat)} or patterns)
  for run in paths:
    run = pathlib.Path(run)
    if run.suffix == ".json":  # stored by space32_runs.py
      path = run
      try:
        records = json.loads(run.read_text())["records"]
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
          f"{run} is not a stored run (a JSON object with 'records'): "
          f"{type(e).__name__}: {e}"
        ) from None
    else:
      path = run / "metrics.jsonl"
      if not path.exists():
        raise ValueError(f"{path} not found")
      records = metrics_lib.read_jsonl(path)
    records = [r for r in records if "rank_shared_ppl" in r]
    if not records:
      raise ValueError(f"{path} has no ranking records (rank_shared_ppl)")
    if truth is not None:
      records = [_restat(r, *truth) for r in records]
    elif "rank_tau" not in records[0]:
      raise ValueError(f"{path} was run without a ground truth: pass --truth")
    # A run's folder ends in _sN (the driver's names), or is seed_N (one
    # seed of a search over seeds in one program, search.num_seeds).
    seed = re.search(
      r"(?:_s|^seed_)(\d+)$", run.stem if run.suffix else run.name
    )
    for r in records:
      r.setdefault("seed", int(seed.group(1)) if seed else None)
    groups[(records[0]["policy"], records[0]["wpl"])].append(records)
  return dict(groups)


def space_names() -> list[str]:
  """The 32 cells in the order the searches log `rank_shared_ppl`."""
  from experiments import space32  # noqa: PLC0415
  from wpl_jax.enas import search_space  # noqa: PLC0415
  from wpl_jax.enas.train import truth as enas_truth  # noqa: PLC0415

  archs = enas_truth.space_archs(space32.get_config("enas"))
  return [search_space.to_string(a) for a in search_space.unstack(archs)]


def load_truth(path) -> tuple[list[str], np.ndarray]:
  """(names, mean ppl) of the stored ground truth, in `space_names()` order."""
  names = space_names()
  return names, ranking.truth_for(path, names)


def _restat(record: dict, names: list[str], truth: np.ndarray) -> dict:
  """The record with its ranking statistics recomputed against `truth`.

  The searches log τ against the ground truth they were started with;
  recomputing from the logged shared-weight perplexities keeps the table
  right when seeds are added to the ground truth later.
  """
  shared = np.asarray(record["rank_shared_ppl"], np.float64)
  if shared.shape != truth.shape:
    raise ValueError(
      f"rank_shared_ppl has {shared.size} cells, not {truth.size}"
    )
  stats = ranking.ranking_stats(shared, truth, k=3)
  stats["tau_p"] = float(scipy_stats.kendalltau(shared, truth).pvalue)
  return {**record, **{f"rank_{k}": v for k, v in stats.items()}}


def _ms(values) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  return metrics_lib.format_mean_std(values, digits=3)


def summarize(groups) -> list[dict]:
  """One row per group: final ranking stats and forgetting, mean ± std."""
  rows = []
  for key in sorted(groups, key=lambda k: ORDER.index(k) if k in ORDER else 99):
    runs = groups[key]
    row = {"group": f"{key[0]} / WPL {key[1]}", "seeds": len(runs)}
    last = [r[-1] for r in runs]
    row["epochs"] = ",".join(sorted({str(r["epoch"] + 1) for r in last}))
    for k in ("rank_tau", "rank_rho", "rank_top3_hit", "rank_regret"):
      row[k] = _ms([r[k] for r in last])
    # One epoch's τ is noisy (it swings by ±0.5 between epochs here): the
    # mean over the last LAST_K epochs of each run is steadier.
    row["tau_last"] = _ms(
      [float(np.mean([r["rank_tau"] for r in recs[-LAST_K:]])) for recs in runs]
    )
    # The policy's exact entropy over the space at the last epoch (runs
    # recorded before it was logged show "-"); uniform sampling: log S.
    ent = [r["policy_entropy"] for r in last if "policy_entropy" in r]
    row["policy_entropy"] = _ms(ent) if len(ent) == len(last) else "-"
    for k in FORGETTING:
      per_run = []
      for recs in runs:
        start = recs[0].get("wpl_start_epoch", 0)
        vals = [r[k] for r in recs if r["epoch"] >= start]
        per_run.append(float(np.mean(vals)) if vals else None)
      row[k] = _ms(per_run)
    row["best"] = ", ".join(
      f"{b} ({n})"
      for b, n in collections.Counter(r["rank_best"] for r in last).most_common(
        2
      )
    )
    rows.append(row)
  return rows


COLUMNS = [
  ("group", "policy / WPL"),
  ("seeds", "seeds"),
  ("epochs", "epochs"),
  ("rank_tau", "Kendall τ"),
  ("tau_last", "τ, mean of last 4 epochs"),
  ("rank_rho", "Spearman ρ"),
  ("rank_top3_hit", "top-3 hit"),
  ("rank_regret", "regret (ppl)"),
  ("policy_entropy", "policy entropy (nats)"),
  ("diff_mean", "forget mean"),
  ("diff_best5", "forget best-5"),
  ("diff_max", "forget max"),
  ("best", "shared top-1 (runs)"),
]


def _last_k_tau(recs) -> float:
  return float(np.mean([r["rank_tau"] for r in recs[-LAST_K:]]))


def per_run(groups) -> list[dict]:
  """One row per run: its seed, last-epoch τ with its p-value, last-4 τ."""
  rows = []
  for key in sorted(groups, key=lambda k: ORDER.index(k) if k in ORDER else 99):
    for recs in sorted(groups[key], key=lambda r: r[0]["seed"] or 0):
      last = recs[-1]
      rows.append(
        {
          "group": f"{key[0]} / WPL {key[1]}",
          "seed": last["seed"],
          "tau": f"{last['rank_tau']:.3f}",
          "p": f"{last['rank_tau_p']:.2g}" if "rank_tau_p" in last else "-",
          "tau_last": f"{_last_k_tau(recs):.3f}",
          "best": last["rank_best"],
          "regret": f"{last['rank_regret']:.1f}",
        }
      )
  return rows


PER_RUN_COLUMNS = [
  ("group", "policy / WPL"),
  ("seed", "seed"),
  ("tau", "τ (last epoch)"),
  ("p", "p (τ = 0)"),
  ("tau_last", "τ, mean of last 4"),
  ("best", "shared top-1"),
  ("regret", "regret (ppl)"),
]


def paired(groups) -> list[dict]:
  """Differences within a seed: each WPL mode minus off, ENAS minus random.

  Runs of one seed share the initial weights and data order, so the
  per-seed difference removes part of the seed-to-seed spread.
  """

  def by_seed(key):
    return {recs[0]["seed"]: recs for recs in groups.get(key, [])}

  rows = []
  pairs = [
    ((p, w), (p, "off"), f"{p}: WPL {w} − off")
    for p in ("enas", "random")
    for w in ("reference", "clean")
  ] + [
    (("enas", w), ("random", w), f"WPL {w}: ENAS − random")
    for w in ("off", "reference", "clean")
  ]
  for a, b, label in pairs:
    ra, rb = by_seed(a), by_seed(b)
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
      continue
    d_last = [ra[s][-1]["rank_tau"] - rb[s][-1]["rank_tau"] for s in seeds]
    d_k = [_last_k_tau(ra[s]) - _last_k_tau(rb[s]) for s in seeds]
    rows.append(
      {
        "pair": label,
        "seeds": len(seeds),
        "d_last": _ms(d_last),
        "d_k": _ms(d_k),
        "wins": f"{sum(d > 0 for d in d_k)}/{len(seeds)}",
      }
    )
  return rows


PAIRED_COLUMNS = [
  ("pair", "comparison (same seed)"),
  ("seeds", "seeds"),
  ("d_last", "Δτ, last epoch"),
  ("d_k", "Δτ, mean of last 4"),
  ("wins", "seeds with Δτ(last 4) > 0"),
]


# Kendall τ of a random ranking of 32 items: mean 0, standard deviation
# sqrt(2(2n + 5) / (9n(n − 1))) = 0.124; |τ| > 1.96 · 0.124 = 0.24 is
# unlikely (p < 0.05) for a ranking unrelated to the truth.
NULL_TAU_95 = 1.96 * float(np.sqrt(2 * (2 * 32 + 5) / (9 * 32 * 31)))
_COLORS = {"off": "tab:blue", "reference": "tab:orange", "clean": "tab:green"}


def _curve(runs, key, label, color, linestyle, start=0):
  n = min(len(r) for r in runs)
  x = [r["epoch"] for r in runs[0][start:n]]
  vals = np.asarray([[rec[key] for rec in r[start:n]] for r in runs], float)
  return {
    "label": label,
    "x": x,
    "mean": vals.mean(0),
    "std": vals.std(0),
    "color": color,
    "linestyle": linestyle,
  }


def plot(groups, path: pathlib.Path, ceiling: float | None = None) -> None:
  """τ per policy (with the ceiling and the random-ranking band) and
  forgetting from epoch 1 on (epoch 0's fresh weights dwarf the rest)."""
  order = sorted(groups, key=lambda k: ORDER.index(k) if k in ORDER else 99)
  hlines = [(0.0, "random ranking (τ = 0)", "-")]
  hlines += [
    (NULL_TAU_95, "95% band of a random ranking", ":"),
    (-NULL_TAU_95, None, ":"),
  ]
  if ceiling is not None:
    hlines.append((ceiling, "ground-truth seed-to-seed τ", "--"))
  panels = []
  for policy, title in (("enas", "ENAS controller"), ("random", "uniform")):
    curves = [
      _curve(groups[g], "rank_tau", f"WPL {g[1]}", _COLORS.get(g[1]), "-")
      for g in order
      if g[0] == policy
    ]
    if curves:
      panels.append(
        {
          "title": f"Kendall τ, {title} sampling",
          "curves": curves,
          "hlines": hlines,
        }
      )
  for key in ("diff_mean", "diff_max"):
    curves = [
      _curve(
        groups[g],
        key,
        f"{g[0]} / {g[1]}",
        _COLORS.get(g[1]),
        "-" if g[0] == "enas" else "--",
        start=1,
      )
      for g in order
    ]
    name = key.replace("diff_", "forgetting ")
    panels.append({"title": f"{name} (ppl), epochs 1+", "curves": curves})
  metrics_lib.plot_panels(
    panels, path, xlabel="epoch", ylabel="", ncols=4, ylim=None
  )


def main(argv):
  del argv
  if not FLAGS.runs or not FLAGS.out:
    print("error: give --runs=DIR|GLOB[,...] and --out=DIR", file=sys.stderr)
    sys.exit(1)
  truth_path = pathlib.Path(FLAGS.truth)
  try:
    truth = load_truth(truth_path) if truth_path.exists() else None
    groups = load_runs(FLAGS.runs, truth)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  table = metrics_lib.markdown_table(summarize(groups), COLUMNS)
  if truth is not None:
    c = json.loads(truth_path.read_text()).get("ceiling")
    if c:
      table += (
        f"\n\nground truth seed-to-seed ({c['pairs']} pairs): Kendall τ "
        f"{c['tau_mean']:.3f} [{c['tau_min']:.3f}, {c['tau_max']:.3f}], "
        f"Spearman ρ {c['rho_mean']:.3f}"
      )
  table += "\n\n" + metrics_lib.markdown_table(per_run(groups), PER_RUN_COLUMNS)
  table += "\n\n" + metrics_lib.markdown_table(paired(groups), PAIRED_COLUMNS)
  (out / "table.md").write_text(table + "\n")
  ceiling = None
  if truth is not None:
    ceiling = (json.loads(truth_path.read_text()).get("ceiling") or {}).get(
      "tau_mean"
    )
  plot(groups, out / "figure.png", ceiling)
  print(table)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
