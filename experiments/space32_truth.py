"""Merges ground-truth runs (one seed each) into the stored ground truth.

  python experiments/space32_truth.py \
      --runs=workdir/truth_s0,workdir/truth_s1,workdir/truth_s2 \
      --out=experiments/results/space32_truth.json

Each run is the workdir of `main.py --config=experiments/space32.py:truth
--config.seed=S`; its truth.json holds the cells' validation perplexities
(of one seed, or of K seeds trained side by side with
--config.truth.num_seeds=K: each counts as K runs).
The runs must list the same cells under the same config (seed aside). The
output has `archs`, `seeds`, `valid_ppl` [seed][arch], `config`, `command`
and `commit` (the commits the runs were made at), and the seed-to-seed
agreement (`ceiling`: Kendall τ and Spearman ρ over seed pairs), which
this prints with the ranking.
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

_RUNS = flags.DEFINE_list("runs", None, "Ground-truth workdirs, one per seed.")
_OUT = flags.DEFINE_string("out", None, "Output JSON path.")
# Config fields that differ between seeds of one ground truth.
_PER_RUN = ("seed", "data_dir")
# What the ground truth reads: the runs must agree on these sections (the
# shared space32 config also holds the searches' settings, which may move
# between commits without touching the truth).
_TRUTH_SECTIONS = ("experiment", "model", "data", "truth")
# Fields added after a stored seed ran, with the value that reproduces the
# earlier behaviour (truth.eval_tokens = 0: every validation token).
_ADDED_DEFAULTS = {
  "truth": {"eval_tokens": 0},
  "model": {"cell_output": "leaves"},
}
# Fields that may differ between merged runs although in a truth section:
# how many seeds a run trained side by side.
_SKIP = {"truth": ("num_seeds",)}


def _truth_config(config: dict) -> dict:
  """The part of a run's config that determines its ground truth."""
  out = {}
  for k in _TRUTH_SECTIONS:
    if k not in config:
      continue
    v = config[k]
    if isinstance(v, dict):
      v = {**_ADDED_DEFAULTS.get(k, {}), **v}
      v = {f: x for f, x in v.items() if f not in _SKIP.get(k, ())}
    out[k] = v
  return out


def split_seeds(truth: dict) -> list[dict]:
  """One run's truth.json as one dict per seed (the one-seed format).

  A run of K > 1 seeds (`seeds`, `valid_ppl` [K][S], history entries
  [K][S]) becomes K dicts with `seed`, `valid_ppl` [S] and its history.
  """
  if "seeds" not in truth:
    return [truth]
  out = []
  for k, seed in enumerate(truth["seeds"]):
    d = dict(truth, seed=seed, valid_ppl=truth["valid_ppl"][k])
    del d["seeds"]
    d["history"] = [
      dict(h, valid_ppl=h["valid_ppl"][k]) for h in truth.get("history", [])
    ]
    out.append(d)
  return out


def merge(runs: list[pathlib.Path]) -> dict:
  """The stored ground truth of `runs` (see the module docstring).

  Raises:
    ValueError: a run is unfinished or unreadable, or the runs disagree.
  """
  loaded, names, platforms = [], [], []
  for run in runs:
    path = run / "truth.json"
    try:
      if (run / "run.json").exists():  # where it ran (runs since issue 24)
        platforms.append(
          json.loads((run / "run.json").read_text()).get("platform")
        )
      per_seed = split_seeds(json.loads(path.read_text()))
    except FileNotFoundError:
      raise ValueError(f"{path} not found: is the run finished?") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path} is unreadable: {e}") from None
    loaded += per_seed
    names += [run] * len(per_seed)
  runs = names
  first = loaded[0]
  config = _truth_config(first["config"])
  for run, d in zip(runs, loaded, strict=True):
    if d["archs"] != first["archs"]:
      raise ValueError(f"{run} lists other cells than {runs[0]}")
    other = _truth_config(d["config"])
    if other != config:
      diff = sorted(
        k for k in set(config) | set(other) if config.get(k) != other.get(k)
      )
      raise ValueError(f"{run} has another config than {runs[0]}: {diff}")
  seeds = [d["seed"] for d in loaded]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"duplicate seeds {seeds}")
  valid = np.asarray([d["valid_ppl"] for d in loaded], np.float64)
  out = {
    "archs": first["archs"],
    "seeds": seeds,
    "valid_ppl": valid.tolist(),
    "valid_tokens": first.get("valid_tokens"),
    "seconds": [d.get("seconds") for d in loaded],
    "config": config,
    "command": (
      "python main.py --config=experiments/space32.py:truth "
      "--data_dir=../shared/data/ptb --workdir=WORKDIR --config.seed=SEED; "
      "python experiments/space32_truth.py --runs=... --out=..."
    ),
    "commit": sorted({d.get("commit", "") for d in loaded}),
  }
  if any(platforms):
    out["platform"] = [p for p in platforms if p]
  if len(seeds) >= 2:
    out["ceiling"] = ranking.seed_ceiling(valid)
  # Has the ranking settled? τ of each earlier evaluation with the final one.
  out["settling"] = [
    {
      "seed": d["seed"],
      "steps": [h["step"] for h in d.get("history", [])],
      "tau_to_final": [
        ranking.kendall_tau(h["valid_ppl"], d["valid_ppl"])
        for h in d.get("history", [])
      ],
    }
    for d in loaded
  ]
  return out


def report(truth: dict) -> str:
  """Markdown: the ranking (mean ± std over seeds) and the ceiling."""
  ppl = np.asarray(truth["valid_ppl"])
  mean, std = ppl.mean(0), ppl.std(0)
  order = np.argsort(mean)
  rows = [
    {
      "rank": r + 1,
      "cell": truth["archs"][i],
      "ppl": f"{mean[i]:.2f} ± {std[i]:.2f}",
      "per_seed": " / ".join(f"{v:.2f}" for v in ppl[:, i]),
    }
    for r, i in enumerate(order)
  ]
  lines = [
    f"ground truth: {len(truth['archs'])} cells, seeds {truth['seeds']}",
    "",
    metrics_lib.markdown_table(
      rows,
      [
        ("rank", "rank"),
        ("cell", "cell"),
        ("ppl", "valid ppl (mean ± std)"),
        ("per_seed", "per seed"),
      ],
    ),
    "",
  ]
  for st in truth.get("settling", []):
    pairs = ", ".join(
      f"step {n}: {t:.3f}"
      for n, t in zip(st["steps"], st["tau_to_final"], strict=True)
    )
    lines.append(
      f"seed {st['seed']}: Kendall τ to the final ranking at {pairs}"
    )
  c = truth.get("ceiling")
  if c:
    lines += [
      "",
      f"seed-to-seed ceiling over {c['pairs']} pairs: Kendall τ "
      f"{c['tau_mean']:.3f} (min {c['tau_min']:.3f}, max {c['tau_max']:.3f}), "
      f"Spearman ρ {c['rho_mean']:.3f} (min {c['rho_min']:.3f}, max "
      f"{c['rho_max']:.3f})",
    ]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not _RUNS.value or not _OUT.value:
    print("error: give --runs=DIR[,DIR...] and --out=FILE", file=sys.stderr)
    sys.exit(1)
  try:
    truth = merge([pathlib.Path(r) for r in _RUNS.value])
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  metrics_lib.write_json(out, truth)
  print(report(truth))


if __name__ == "__main__":
  app.run(main)
