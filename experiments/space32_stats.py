"""The pre-registered analysis of the published-cell searches (issue 22).

  python experiments/space32_stats.py --out=workdir/s32stats

WORKSPACE.md §7.10 fixed the plan before the runs: arms {ENAS, uniform} ×
{WPL off, reference} on the published cell (`:concentrate`), paired by
seed; primary metric: Kendall τ of the shared-weight ranking against the
H = 128 published ground truth (--truth), mean over each run's last 4
epochs; the four paired comparisons (ENAS − uniform per WPL mode,
reference − off per policy) by the two-sided Wilcoxon signed-rank test,
Holm-corrected over the four. Its addendum adds what a diverged run
counts for: divergence is an outcome (counts per arm; per policy, an
exact sign test on the seeds where exactly one of reference and off
diverged), the τ tests use complete cases (both runs of a pair finished),
and a sensitivity analysis repeats them with a diverged run's τ set to −1.

Reads the runs that `space32_runs.py` stores (--runs: folders of
POLICY_WPL_sSEED.json, or the files; any subset of arms and seeds), and
prints (and writes to --out, table.md and stats.json):

1. per arm: runs, diverged runs, and mean ± sd (ddof = 1) over the finished
   runs of the primary metric, last-epoch τ, τ within each family of cells
   (node 2 reads node 0: "fan", node 1: "chain"), the public code's
   id-sequence statistic against the published order, top-3 hit, regret,
   policy entropy at the last epoch, and forgetting (err2 − err1's mean,
   best-5 and max, each averaged over the epochs from WPL's start on; and
   the median over seeds of the mean); then one row per run;
2. the four comparisons: pairs, mean difference, Wilcoxon p and Holm p,
   for the primary metric and (a secondary line) last-epoch τ; complete
   cases, then the −1 sensitivity analysis;
3. divergence per arm and the sign tests;
4. the seed pairs that 80 % power would need, from the observed
   differences;
5. each arm's seed-mean shared-weight ranking at the last epoch against
   every ground truth (--truth, --other_truths; a published order, a file
   with "genotype_ids", gives the rank τ and the id-sequence statistic);
6. each arm's primary τ against a random ranking (τ = 0): mean with a
   95 % t-interval (ddof = 1) and a percentile bootstrap interval, and a
   two-sided one-sample signed-rank test, Holm over the arms. Not in the
   plan of §7.10: added 2026-12-05, after 20 of the 48 runs, because the
   issue's first question ("better than a random ranking?") needs it.

The ranking statistics are recomputed from each epoch's logged
shared-weight perplexities (`space32_report.load_runs`).
"""

import glob
import json
import math
import pathlib
import re
import sys
import warnings

import numpy as np
from absl import app, flags
from scipy import stats as scipy_stats

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from experiments import space32_ladder, space32_report  # noqa: E402
from wpl_jax.enas import ranking  # noqa: E402
from wpl_jax.runtime import metrics as metrics_lib  # noqa: E402

_RESULTS = _ROOT / "experiments" / "results"
FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line (only when run as a script: the tests import this
  file beside others that define --runs)."""
  flags.DEFINE_list(
    "runs",
    [str(_RESULTS / "space32_runs_published_concentrate")],
    "Folders of stored runs (POLICY_WPL_sSEED.json), files or globs.",
  )
  flags.DEFINE_string(
    "truth",
    str(_RESULTS / "space32_truth_published_h128.json"),
    "The primary ground truth (the plan's).",
  )
  flags.DEFINE_list(
    "other_truths",
    [
      str(_RESULTS / "space32_truth_published_h256.json"),
      str(_RESULTS / "space32_truth.json"),
      str(_RESULTS / "space32_published.json"),
    ],
    "Further ground truths or published orders for section 5.",
  )
  flags.DEFINE_string("out", None, "Output folder (table.md, stats.json).")


ARMS = [
  ("enas", "off"),
  ("random", "off"),
  ("enas", "reference"),
  ("random", "reference"),
]
_POLICY = {"enas": "ENAS", "random": "uniform"}
COMPARISONS = [
  ("WPL off: ENAS − uniform", ("enas", "off"), ("random", "off")),
  (
    "WPL reference: ENAS − uniform",
    ("enas", "reference"),
    ("random", "reference"),
  ),
  ("ENAS: reference − off", ("enas", "reference"), ("enas", "off")),
  ("uniform: reference − off", ("random", "reference"), ("random", "off")),
]
PRIMARY = "tau_last4"
SECONDARY = "tau_last"
# With n pairs and no ties the smallest two-sided exact p of the signed-rank
# test is 2 / 2^n: 0.0625 at n = 5, so fewer than 6 pairs cannot reach 0.05.
MIN_PAIRS = 6
WORST_TAU = -1.0  # the addendum's value for a diverged run
ALPHA = 0.05
POWER = 0.8
# Asymptotic relative efficiency of the signed-rank test to the t-test
# for normal differences (3/π).
WILCOXON_ARE = 0.955
_NAME = re.compile(r"^(?P<policy>[a-z]+)_(?P<wpl>[a-z]+)_s(?P<seed>\d+)$")


def arm_label(arm: tuple[str, str]) -> str:
  return f"{_POLICY.get(arm[0], arm[0])} / WPL {arm[1]}"


# ---------------------------------------------------------------- loading


def _paths(patterns: list[str]) -> list[pathlib.Path]:
  """The JSON files of folders, globs and files in `patterns`."""
  paths = set()
  for pat in patterns:
    if pathlib.Path(pat).is_dir():
      paths.update(pathlib.Path(pat).glob("*.json"))
    else:
      paths.update(pathlib.Path(p) for p in glob.glob(pat) or [pat])
  return sorted(paths)


def load_runs(
  patterns: list[str], names: list[str], truth: np.ndarray
) -> list[dict]:
  """The stored runs, each {"policy", "wpl", "seed", "diverged", "records",
  "path", "commit", "seconds"}; records re-scored against `truth`.

  "diverged" is the stored error line, or None for a finished run. A
  diverged run keeps the records it has (possibly none).

  Raises:
    ValueError: a file that is misnamed, unreadable, or a duplicate run.
  """
  runs, seen = [], {}
  for path in _paths(patterns):
    m = _NAME.match(path.stem)
    if not path.is_file():
      raise ValueError(f"{path} not found")
    if not m:
      raise ValueError(f"{path}: not named POLICY_WPL_sSEED.json")
    try:
      stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: {type(e).__name__}: {e}") from None
    diverged = stored.get("diverged") if isinstance(stored, dict) else None
    try:
      groups = space32_report.load_runs([str(path)], (names, truth))
      ((key, (records,)),) = groups.items()
    except ValueError:
      if not diverged:
        raise
      key, records = None, []
    run = {
      "policy": m["policy"],
      "wpl": m["wpl"],
      "seed": int(m["seed"]),
      "diverged": diverged or None,
      "records": records,
      "path": str(path),
      "commit": stored.get("commit"),
      "seconds": stored.get("seconds"),
    }
    if key is not None and key != (run["policy"], run["wpl"]):
      raise ValueError(f"{path}: its records are of {key}, not its name's")
    ident = (run["policy"], run["wpl"], run["seed"])
    if ident in seen:
      raise ValueError(f"{path} and {seen[ident]} are the same run")
    seen[ident] = path
    runs.append(run)
  if not runs:
    raise ValueError(f"no stored runs in {', '.join(patterns)}")
  return runs


def load_reference(path) -> tuple[str, object]:
  """("truth", float[32] ppl in space order) or ("published", the order)."""
  path = pathlib.Path(path)
  try:
    d = json.loads(path.read_text())
  except FileNotFoundError:
    raise ValueError(f"{path} not found") from None
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: {type(e).__name__}: {e}") from None
  if isinstance(d, dict) and "genotype_ids" in d:
    return "published", ranking.load_published(path)
  return "truth", space32_report.load_truth(path)[1]


# ------------------------------------------------------------- statistics


def shared_ppl(record: dict) -> np.ndarray:
  """float64[32]: a record's shared-weight perplexities.

  The stored runs write an overflowed perplexity as the string "inf"; it
  ranks last.
  """
  return np.asarray(record["rank_shared_ppl"], np.float64)


def run_metrics(
  records: list[dict],
  names: list[str] | None = None,
  truth: np.ndarray | None = None,
  published: ranking.PublishedOrder | None = None,
) -> dict:
  """One finished run's statistics (records already scored against truth)."""
  last, tail = records[-1], records[-space32_report.LAST_K :]
  out = {
    "epochs": last["epoch"] + 1,
    PRIMARY: float(np.mean([r["rank_tau"] for r in tail])),
    SECONDARY: float(last["rank_tau"]),
    "top3": float(last["rank_top3_hit"]),
    "regret": float(last["rank_regret"]),
    "entropy": last.get("policy_entropy"),
    "uniform_entropy": last.get("uniform_entropy"),
  }
  start = records[0].get("wpl_start_epoch", 0)
  for stat in ("mean", "best5", "max"):  # err2 − err1, averaged over epochs
    forget = [
      r[f"diff_{stat}"]
      for r in records
      if r["epoch"] >= start and r.get(f"diff_{stat}") is not None
    ]
    out[f"forget_{stat}"] = float(np.mean(forget)) if forget else None
  if names is not None and published is not None:
    # Ranks instead of perplexities: the same order and ties, and finite
    # where a cell's perplexity overflowed.
    out["idseq"] = ranking.id_sequence_tau(
      scipy_stats.rankdata(shared_ppl(last)), names, published
    )
  if names is not None and truth is not None:
    # The public code's statistic against our truth (not pre-registered).
    out["idseq_truth"] = ranking.id_sequence_tau(
      scipy_stats.rankdata(shared_ppl(last)),
      names,
      ranking.as_order(truth, names),
    )
    fam = np.asarray([space32_ladder.family(n) for n in names])
    for f in ("fan", "chain"):
      mask = fam == f
      out[f"tau_{f}"] = float(
        np.mean(
          [ranking.kendall_tau(shared_ppl(r)[mask], truth[mask]) for r in tail]
        )
      )
  return out


def mean_sd(values) -> dict:
  """{"n", "mean", "sd"} of the non-None values (sd: ddof = 1)."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  return {
    "n": int(v.size),
    "mean": float(v.mean()) if v.size else None,
    "sd": float(v.std(ddof=1)) if v.size > 1 else None,
  }


def holm(pvalues: list[float | None]) -> list[float | None]:
  """Holm's step-down adjusted p-values over the whole family.

  The family's size is len(pvalues) whatever is missing: a None (no test
  possible) is ranked as p = 1, which keeps the others' correction as
  strict as the full family's. None stays None.
  """
  m = len(pvalues)
  filled = [1.0 if p is None else float(p) for p in pvalues]
  order = sorted(range(m), key=lambda i: filled[i])
  adjusted, running = [0.0] * m, 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * filled[i]))
    adjusted[i] = running
  return [
    None if p is None else a for p, a in zip(pvalues, adjusted, strict=True)
  ]


def wilcoxon_p(diffs) -> float | None:
  """Two-sided signed-rank p of paired differences (None without pairs)."""
  d = np.asarray(diffs, np.float64)
  if d.size == 0:
    return None
  if not np.any(d != 0):
    return 1.0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    p = float(scipy_stats.wilcoxon(d, alternative="two-sided").pvalue)
  return None if math.isnan(p) else p


def pairs_for_power(diffs, alpha: float = ALPHA, power: float = POWER):
  """Seed pairs for `power` at two-sided `alpha`, from observed differences.

  Normal approximation for a paired t-test, n = ((z_{1−α/2} + z_power) ·
  sd / mean)², divided by the signed-rank test's efficiency (0.955),
  rounded up. None with fewer than 3 pairs or a zero sd or mean.
  """
  d = np.asarray(diffs, np.float64)
  if d.size < 3:
    return None
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  if np.all(d == d[0]) or mean == 0:  # sd 0 (std's rounding aside)
    return None
  z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
  return math.ceil((z * sd / mean) ** 2 / WILCOXON_ARE - 1e-9)


def paired(
  runs: list[dict], a, b, key: str, worst: float | None = None
) -> dict:
  """Differences a − b of `key` per seed that both arms ran.

  worst=None: complete cases (both runs finished). Otherwise a diverged
  run counts with the value `worst` (the sensitivity analysis).
  Returns {"seeds", "diffs", "dropped" (seeds lost to divergence),
  "substituted" (pairs holding a diverged run)}.
  """

  def by_seed(arm):
    return {r["seed"]: r for r in runs if (r["policy"], r["wpl"]) == arm}

  ra, rb = by_seed(a), by_seed(b)
  seeds, diffs, dropped, substituted = [], [], [], 0
  for s in sorted(set(ra) & set(rb)):
    x, y = ra[s], rb[s]
    if (x["diverged"] or y["diverged"]) and worst is None:
      dropped.append(s)
      continue
    substituted += bool(x["diverged"] or y["diverged"])
    vx = worst if x["diverged"] else x["metrics"][key]
    vy = worst if y["diverged"] else y["metrics"][key]
    seeds.append(s)
    diffs.append(float(vx - vy))
  return {
    "seeds": seeds,
    "diffs": diffs,
    "dropped": dropped,
    "substituted": substituted,
  }


def compare(runs: list[dict], key: str, worst: float | None = None):
  """The four pre-registered comparisons of `key`, Holm over the four."""
  rows = []
  for label, a, b in COMPARISONS:
    pr = paired(runs, a, b, key, worst)
    d = np.asarray(pr["diffs"])
    rows.append(
      {
        "comparison": label,
        "metric": key,
        "analysis": "complete cases"
        if worst is None
        else f"diverged = {worst:g}",
        **pr,
        "n": len(pr["seeds"]),
        **{f"diff_{k}": v for k, v in mean_sd(d).items() if k != "n"},
        "p": wilcoxon_p(d),
        "too_few": len(d) < MIN_PAIRS,
        "pairs_80": pairs_for_power(d),
      }
    )
  for row, p in zip(rows, holm([r["p"] for r in rows]), strict=True):
    row["p_holm"] = p
  return rows


def _diverged_epoch(run: dict) -> int:
  m = re.search(r"diverged at epoch (\d+)", run["diverged"] or "")
  return int(m.group(1)) if m else run.get("epochs_done", 0)


def divergence(runs: list[dict]) -> dict:
  """Diverged runs per arm, and per policy the sign test of reference vs
  off on the discordant seeds (exactly one of the two diverged)."""
  arms = []
  for arm in _arms(runs):
    rs = [r for r in runs if (r["policy"], r["wpl"]) == arm]
    div = [r for r in rs if r["diverged"]]
    arms.append(
      {
        "arm": arm_label(arm),
        "runs": len(rs),
        "diverged": len(div),
        "where": ", ".join(
          f"s{r['seed']} (epoch {_diverged_epoch(r)})"
          for r in sorted(div, key=lambda r: r["seed"])
        ),
      }
    )
  tests = []
  for policy in ("enas", "random"):
    ref = {
      r["seed"]: r
      for r in runs
      if (r["policy"], r["wpl"]) == (policy, "reference")
    }
    off = {
      r["seed"]: r for r in runs if (r["policy"], r["wpl"]) == (policy, "off")
    }
    seeds = sorted(set(ref) & set(off))
    only_ref = sum(
      bool(ref[s]["diverged"] and not off[s]["diverged"]) for s in seeds
    )
    only_off = sum(
      bool(off[s]["diverged"] and not ref[s]["diverged"]) for s in seeds
    )
    both = sum(bool(ref[s]["diverged"] and off[s]["diverged"]) for s in seeds)
    k = only_ref + only_off
    tests.append(
      {
        "comparison": f"{_POLICY[policy]}: reference vs off",
        "pairs": len(seeds),
        "only_reference": only_ref,
        "only_off": only_off,
        "both": both,
        "p": (
          float(scipy_stats.binomtest(only_ref, k, 0.5).pvalue) if k else None
        ),
      }
    )
  return {"arms": arms, "sign_tests": tests}


def _arms(runs) -> list[tuple[str, str]]:
  found = {(r["policy"], r["wpl"]) for r in runs}
  return [a for a in ARMS if a in found] + sorted(found - set(ARMS))


ARM_KEYS = [
  PRIMARY,
  SECONDARY,
  "tau_fan",
  "tau_chain",
  "idseq",
  "idseq_truth",
  "top3",
  "regret",
  "entropy",
  "uniform_entropy",
  "forget_mean",
  "forget_best5",
  "forget_max",
]


def arm_summary(runs: list[dict]) -> list[dict]:
  """Per arm: runs, diverged, and mean_sd of ARM_KEYS over finished runs."""
  rows = []
  for arm in _arms(runs):
    rs = [r for r in runs if (r["policy"], r["wpl"]) == arm]
    fin = [r for r in rs if not r["diverged"]]
    row = {
      "arm": arm_label(arm),
      "runs": len(rs),
      "diverged": len(rs) - len(fin),
      "seeds": sorted(r["seed"] for r in rs),
      "epochs": sorted({r["metrics"]["epochs"] for r in fin}),
    }
    for k in ARM_KEYS:
      row[k] = mean_sd([r["metrics"].get(k) for r in fin])
    # A cell that blew up makes one seed's forgetting ±1e28: the median
    # over seeds says what a typical seed saw.
    vals = [r["metrics"]["forget_mean"] for r in fin]
    vals = [v for v in vals if v is not None]
    row["forget_median"] = float(np.median(vals)) if vals else None
    rows.append(row)
  return rows


def seed_mean_ranks(runs: list[dict], arm) -> tuple[np.ndarray | None, int]:
  """The mean over an arm's finished runs of each cell's last-epoch rank
  of shared-weight perplexity (1 = best), and the number of runs."""
  fin = [
    r for r in runs if (r["policy"], r["wpl"]) == arm and not r["diverged"]
  ]
  if not fin:
    return None, 0
  ranks = [scipy_stats.rankdata(shared_ppl(r["records"][-1])) for r in fin]
  return np.mean(ranks, axis=0), len(fin)


def against_truths(
  runs: list[dict], names: list[str], references: list[tuple]
) -> list[dict]:
  """Per arm, τ of its seed-mean ranking against each (label, kind, value)
  reference; a published order also gives the id-sequence statistic."""
  rows = []
  for arm in _arms(runs):
    mean, n = seed_mean_ranks(runs, arm)
    row = {"arm": arm_label(arm), "runs": n}
    for label, kind, ref in references:
      if mean is None:
        continue
      if kind == "published":
        row[label] = ranking.kendall_tau(
          mean, ranking.published_ranks(ref, names)
        )
        row[f"{label} id-seq"] = ranking.id_sequence_tau(mean, names, ref)
      else:
        row[label] = ranking.kendall_tau(mean, ref)
        row[f"{label} id-seq"] = ranking.id_sequence_tau(
          mean, names, ranking.as_order(ref, names)
        )
    rows.append(row)
  return rows


BOOTSTRAP = 10_000


def versus_random(runs: list[dict], key: str = PRIMARY) -> list[dict]:
  """Per arm: `key` over finished runs against 0 (a random ranking).

  {"arm", "n", "mean", "ci_t" (95 % t-interval, ddof = 1), "ci_boot"
  (percentile interval of the mean over BOOTSTRAP resamples of the seeds,
  fixed seed), "p" (two-sided one-sample signed-rank), "p_holm" (Holm
  over the arms)}; intervals need 2 runs, p 1.
  """
  rows = []
  rng = np.random.default_rng(0)
  for arm in _arms(runs):
    v = np.asarray(
      [
        r["metrics"][key]
        for r in runs
        if (r["policy"], r["wpl"]) == arm
        and not r["diverged"]
        and r["metrics"].get(key) is not None
      ],
      np.float64,
    )
    row = {"arm": arm_label(arm), "n": int(v.size), "mean": None}
    row.update(ci_t=None, ci_boot=None, p=wilcoxon_p(v))
    if v.size:
      row["mean"] = float(v.mean())
    if v.size > 1:
      half = scipy_stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1)
      half /= math.sqrt(v.size)
      row["ci_t"] = [row["mean"] - half, row["mean"] + half]
      means = rng.choice(v, (BOOTSTRAP, v.size)).mean(axis=1)
      row["ci_boot"] = [float(x) for x in np.percentile(means, [2.5, 97.5])]
    rows.append(row)
  for row, q in zip(rows, holm([r["p"] for r in rows]), strict=True):
    row["p_holm"] = q
  return rows


def analyse(
  runs: list[dict],
  names: list[str],
  truth: np.ndarray,
  references: list[tuple],
) -> dict:
  """Everything the tables show; `runs` as `load_runs` returns them."""
  published = next((r for _, k, r in references if k == "published"), None)
  for r in runs:
    r["epochs_done"] = len(r["records"])
    r["metrics"] = (
      None
      if r["diverged"] or not r["records"]
      else run_metrics(r["records"], names, truth, published)
    )
  runs = [r for r in runs if r["diverged"] or r["metrics"] is not None]
  comparisons = {
    "complete": compare(runs, PRIMARY) + compare(runs, SECONDARY),
    "sensitivity": compare(runs, PRIMARY, WORST_TAU)
    + compare(runs, SECONDARY, WORST_TAU),
  }
  return {
    "arms": arm_summary(runs),
    "runs": [
      {k: v for k, v in r.items() if k != "records"}
      for r in sorted(
        runs,
        key=lambda r: (_arms(runs).index((r["policy"], r["wpl"])), r["seed"]),
      )
    ],
    "comparisons": comparisons,
    "divergence": divergence(runs),
    "truths": against_truths(runs, names, references),
    "versus_random": versus_random(runs),
  }


# -------------------------------------------------------------- rendering


def _f(x, digits=3) -> str:
  """`x` with `digits` decimals; 3 significant digits beyond 10⁵."""
  if x is None:
    return "-"
  return f"{x:.3g}" if abs(x) >= 1e5 else f"{x:.{digits}f}"


def _p(p) -> str:
  return "-" if p is None else f"{p:.3g}"


def _ms(s: dict, digits=3) -> str:
  if not s["n"]:
    return "-"
  if s["sd"] is None:
    return _f(s["mean"], digits)
  return f"{_f(s['mean'], digits)} ± {_f(s['sd'], digits)}"


def _seeds(seeds) -> str:
  return ",".join(str(s) for s in seeds) or "-"


ARM_COLUMNS = [
  ("arm", "policy / WPL"),
  ("runs", "runs"),
  ("diverged", "diverged"),
  ("seeds", "seeds"),
  ("epochs", "epochs"),
  (PRIMARY, "τ, last 4 epochs (primary)"),
  (SECONDARY, "τ, last epoch"),
  ("tau_fan", "τ fan, last 4"),
  ("tau_chain", "τ chain, last 4"),
  ("idseq", "id-seq vs published"),
  ("idseq_truth", "id-seq vs truth"),
  ("top3", "top-3 hit"),
  ("regret", "regret (ppl)"),
  ("entropy", "policy entropy (nats)"),
  ("uniform_entropy", "uniform's"),
  ("forget_mean", "forget mean (ppl)"),
  ("forget_median", "forget mean, median over seeds"),
  ("forget_best5", "forget best-5"),
  ("forget_max", "forget max"),
]
RUN_COLUMNS = [
  ("arm", "policy / WPL"),
  ("seed", "seed"),
  ("status", "status"),
  ("epochs", "epochs"),
  (PRIMARY, "τ, last 4"),
  (SECONDARY, "τ, last"),
  ("idseq", "id-seq vs published"),
  ("idseq_truth", "id-seq vs truth"),
  ("top3", "top-3"),
  ("regret", "regret"),
  ("entropy", "entropy"),
  ("forget_mean", "forget mean"),
]
COMPARE_COLUMNS = [
  ("comparison", "comparison (a − b, same seed)"),
  ("metric", "metric"),
  ("n", "pairs"),
  ("seeds", "seeds"),
  ("excluded", "left out / substituted"),
  ("diff", "mean Δ ± sd"),
  ("p", "Wilcoxon p"),
  ("p_holm", "Holm p (4)"),
  ("note", "note"),
]
POWER_COLUMNS = [
  ("comparison", "comparison"),
  ("metric", "metric"),
  ("n", "pairs"),
  ("diff", "mean Δ ± sd"),
  ("pairs_80", "pairs for 80 % power ¹"),
]


def _compare_rows(rows, sensitivity: bool) -> list[dict]:
  out = []
  for r in rows:
    out.append(
      {
        "comparison": r["comparison"],
        "metric": "primary" if r["metric"] == PRIMARY else "last epoch",
        "n": r["n"],
        "seeds": _seeds(r["seeds"]),
        "excluded": (
          f"{r['substituted']} substituted"
          if sensitivity
          else f"{len(r['dropped'])} left out"
          + (f" (s{_seeds(r['dropped'])})" if r["dropped"] else "")
        ),
        "diff": _ms({"n": r["n"], "mean": r["diff_mean"], "sd": r["diff_sd"]}),
        "p": _p(r["p"]),
        "p_holm": _p(r["p_holm"]),
        "note": (
          "no pairs"
          if not r["n"]
          else f"too few pairs (n < {MIN_PAIRS})"
          if r["too_few"]
          else ""
        ),
      }
    )
  return out


def render(result: dict, header: str) -> str:
  parts = [header]
  parts.append(
    "## 1. Per arm (finished runs; mean ± sd over seeds, ddof = 1)\n\n"
    + metrics_lib.markdown_table(
      [
        {
          **row,
          "seeds": _seeds(row["seeds"]),
          "epochs": ",".join(str(e) for e in row["epochs"]) or "-",
          **{k: _ms(row[k]) for k in ARM_KEYS},
          "forget_median": _f(row["forget_median"], 1),
        }
        for row in result["arms"]
      ],
      ARM_COLUMNS,
    )
  )
  run_rows = []
  for r in result["runs"]:
    m = r["metrics"] or {}
    run_rows.append(
      {
        "arm": arm_label((r["policy"], r["wpl"])),
        "seed": r["seed"],
        "status": (
          f"diverged at epoch {_diverged_epoch(r)}"
          if r["diverged"]
          else "finished"
        ),
        "epochs": r["epochs_done"],
        **{
          k: _f(m.get(k), 1 if k in ("regret", "forget_mean") else 3)
          for k in (PRIMARY, SECONDARY, "idseq", "idseq_truth", "top3")
          + ("regret",)
          + ("entropy", "forget_mean")
        },
      }
    )
  parts.append(
    "### Per run\n\n" + metrics_lib.markdown_table(run_rows, RUN_COLUMNS)
  )
  c = result["comparisons"]
  parts.append(
    "## 2. Paired comparisons (by seed; two-sided Wilcoxon signed-rank, "
    "Holm over the four of each metric)\n\n"
    "Complete cases (both runs of a pair finished):\n\n"
    + metrics_lib.markdown_table(
      _compare_rows(c["complete"], False), COMPARE_COLUMNS
    )
    + f"\n\nSensitivity (a diverged run's τ set to {WORST_TAU:g}, pairs "
    "re-formed):\n\n"
    + metrics_lib.markdown_table(
      _compare_rows(c["sensitivity"], True), COMPARE_COLUMNS
    )
  )
  d = result["divergence"]
  parts.append(
    "## 3. Divergence\n\n"
    + metrics_lib.markdown_table(
      d["arms"],
      [
        ("arm", "policy / WPL"),
        ("runs", "runs"),
        ("diverged", "diverged"),
        ("where", "which (epoch)"),
      ],
    )
    + "\n\nExact sign test (two-sided) on the discordant seeds:\n\n"
    + metrics_lib.markdown_table(
      [{**t, "p": _p(t["p"])} for t in d["sign_tests"]],
      [
        ("comparison", "comparison"),
        ("pairs", "seed pairs"),
        ("only_reference", "only reference diverged"),
        ("only_off", "only off diverged"),
        ("both", "both"),
        ("p", "sign-test p"),
      ],
    )
  )
  parts.append(
    "## 4. Power (complete cases)\n\n"
    + metrics_lib.markdown_table(
      [
        {
          "comparison": r["comparison"],
          "metric": "primary" if r["metric"] == PRIMARY else "last epoch",
          "n": r["n"],
          "diff": _ms(
            {"n": r["n"], "mean": r["diff_mean"], "sd": r["diff_sd"]}
          ),
          "pairs_80": "n/a" if r["pairs_80"] is None else r["pairs_80"],
        }
        for r in c["complete"]
      ],
      POWER_COLUMNS,
    )
    + "\n\n¹ Seed pairs for 80 % power at two-sided α = 0.05 if the true "
    "mean difference and sd were the observed ones: n = ((z₀.₉₇₅ + z₀.₈) · "
    "sd / mean)² (normal approximation for a paired t-test), times 1/0.955 "
    "(the signed-rank test's asymptotic relative efficiency), rounded up; "
    "n/a with fewer than 3 pairs or a zero sd."
  )
  truth_rows = result["truths"]
  labels = [
    k for k in (truth_rows[0] if truth_rows else {}) if k not in ("arm", "runs")
  ]
  parts.append(
    "## 5. Seed-mean ranking (last epoch) against each truth\n\n"
    + metrics_lib.markdown_table(
      [{**r, **{k: _f(r.get(k)) for k in labels}} for r in truth_rows],
      [("arm", "policy / WPL"), ("runs", "finished runs")]
      + [(k, f"τ vs {k}" if not k.endswith("id-seq") else k) for k in labels],
    )
    + "\n\nThe seed-mean ranking orders the cells by their mean rank over "
    "the arm's finished runs (rank of the last epoch's shared-weight "
    "perplexity); τ is Kendall's τ-b of that against the truth's mean "
    "perplexity, or against the published rank; id-seq is the public "
    "code's id-sequence statistic (`ranking.id_sequence_tau`)."
  )
  ci = lambda c: "-" if c is None else f"[{c[0]:.3f}, {c[1]:.3f}]"  # noqa: E731
  parts.append(
    "## 6. Primary τ against a random ranking (τ = 0; not pre-registered)"
    "\n\n"
    + metrics_lib.markdown_table(
      [
        {
          **r,
          "mean": _f(r["mean"]),
          "ci_t": ci(r["ci_t"]),
          "ci_boot": ci(r["ci_boot"]),
          "p": _p(r["p"]),
          "p_holm": _p(r["p_holm"]),
        }
        for r in result["versus_random"]
      ],
      [
        ("arm", "policy / WPL"),
        ("n", "finished runs"),
        ("mean", "mean τ"),
        ("ci_t", "95 % CI (t)"),
        ("ci_boot", "95 % CI (bootstrap)"),
        ("p", "signed-rank p vs 0"),
        ("p_holm", f"Holm p ({len(result['versus_random'])} arms)"),
      ],
    )
    + "\n\nA perfect ranking would not score 1 here: the truth is a "
    "3-seed mean whose own seeds agree at the seed-to-seed τ in the header."
  )
  parts.append(
    "Notes: τ is recomputed from the logged shared-weight perplexities "
    "against the primary truth. The signed-rank p is scipy's (exact "
    f"without ties or zeros); with n < {MIN_PAIRS} pairs no p can reach "
    '0.05 (the smallest is 2/2ⁿ), hence "too few pairs". Holm\'s family '
    "is always the four comparisons of a metric; one without pairs counts "
    "as p = 1."
  )
  return "\n\n".join(parts)


def _rel(path) -> str:
  """`path` relative to the project root where it lies inside it."""
  try:
    return str(pathlib.Path(path).resolve().relative_to(_ROOT))
  except ValueError:
    return str(path)


def main(argv):
  del argv
  try:
    names = space32_report.space_names()
    truth = space32_report.load_truth(FLAGS.truth)[1]
    references = [
      (pathlib.Path(FLAGS.truth).stem + " (primary)", "truth", truth)
    ]
    for path in FLAGS.other_truths:
      kind, ref = load_reference(path)
      references.append((pathlib.Path(path).stem, kind, ref))
    runs = load_runs(FLAGS.runs, names, truth)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  result = analyse(runs, names, truth, references)
  ceiling = (
    json.loads(pathlib.Path(FLAGS.truth).read_text()).get("ceiling") or {}
  )
  commits = sorted({r["commit"] for r in runs if r["commit"]})
  header = (
    "# Published-cell searches: the pre-registered analysis "
    "(WORKSPACE §7.10)\n\n"
    f"{len(runs)} runs from {', '.join(map(_rel, FLAGS.runs))} (commits "
    f"{', '.join(c[:7] for c in commits) or '-'}); primary truth "
    f"{_rel(FLAGS.truth)}"
    + (
      f" (seed-to-seed τ {ceiling['tau_mean']:.3f} over {ceiling['pairs']} "
      "pairs)"
      if ceiling
      else ""
    )
    + "."
  )
  table = render(result, header)
  print(table)
  if FLAGS.out:
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    inputs = {
      "runs": [_rel(p) for p in FLAGS.runs],
      "truth": _rel(FLAGS.truth),
      "other_truths": [_rel(p) for p in FLAGS.other_truths],
      "commits": commits,
    }
    metrics_lib.write_json(out / "stats.json", {"inputs": inputs, **result})


if __name__ == "__main__":
  _define_flags()
  app.run(main)
