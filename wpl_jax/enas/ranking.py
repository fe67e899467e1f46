"""Rankings of a small ENAS space against its ground truth (REFERENCE.md §5).

Pure NumPy/SciPy on per-architecture values (lower perplexity = better):
Kendall τ and Spearman ρ between two rankings, whether the true best cell
is in the top k of the other ranking, and the regret of picking that
ranking's top-1. The ground truth is read from the JSON file that
`experiments/space32_truth.py` writes.
"""

import itertools
import json
import pathlib
from collections.abc import Sequence

import numpy as np
from scipy import stats


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
  """Kendall τ-b between per-architecture values `a` and `b` (ties allowed).

  `a`, `b`: [K] values (perplexities), entry k for architecture k.

  `scipy.stats.kendalltau` on the values themselves (a true rank
  correlation, REFERENCE.md §5); 1 = same order, -1 = reversed, ~0 = unrelated.
  NaN if either input is constant.
  """
  a, b = _pair(a, b)
  return float(stats.kendalltau(a, b).statistic)


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
  """Spearman ρ of [K] values `a`, `b` (Pearson of ranks; ties: mean)."""
  a, b = _pair(a, b)
  return float(stats.spearmanr(a, b).statistic)


def top_k_hit(shared: Sequence[float], truth: Sequence[float], k: int) -> bool:
  """Whether the true best cell (lowest `truth`) is in `shared`'s k lowest.

  `shared`, `truth`: [K] perplexities, entry k for architecture k.

  Ties in `truth`: any cell sharing the lowest true value counts. Ties in
  `shared` at the k-th place are resolved by index (stable sort).
  """
  shared, truth = _pair(shared, truth)
  if not 1 <= k <= len(shared):
    raise ValueError(f"k must be in [1, {len(shared)}], got {k}")
  top = np.argsort(shared, kind="stable")[:k]
  best = np.flatnonzero(truth == truth.min())
  return bool(np.intersect1d(top, best).size)


def regret(shared: Sequence[float], truth: Sequence[float]) -> float:
  """True value of `shared`'s top-1 minus the true best (>= 0, ppl units).

  `shared`, `truth`: [K] perplexities, entry k for architecture k.

  Ties for `shared`'s top-1 are resolved by index (the first).
  """
  shared, truth = _pair(shared, truth)
  return float(truth[int(np.argmin(shared))] - truth.min())


def ranking_stats(
  shared: Sequence[float], truth: Sequence[float], *, k: int = 3
) -> dict[str, float]:
  """τ, ρ, top-k hit (0/1) and regret of [K] `shared` against [K] `truth`."""
  return {
    "tau": kendall_tau(shared, truth),
    "rho": spearman_rho(shared, truth),
    f"top{k}_hit": float(top_k_hit(shared, truth, k)),
    "regret": regret(shared, truth),
  }


def seed_ceiling(values_SxA: np.ndarray) -> dict[str, float]:
  """Agreement of the ground truth with itself across seeds.

  Args:
    values_SxA: float[S, A], one row of per-architecture values per seed
      (S >= 2).

  Returns:
    Mean, min and max over the S(S-1)/2 seed pairs of Kendall τ and
    Spearman ρ ("tau_mean", "tau_min", ..., "rho_max"), and "pairs".
  """
  v = np.asarray(values_SxA, np.float64)
  if v.ndim != 2 or v.shape[0] < 2:
    raise ValueError(f"need [S >= 2, A] values, got shape {v.shape}")
  taus, rhos = [], []
  for i, j in itertools.combinations(range(v.shape[0]), 2):
    taus.append(kendall_tau(v[i], v[j]))
    rhos.append(spearman_rho(v[i], v[j]))
  out = {"pairs": len(taus)}
  for name, xs in (("tau", taus), ("rho", rhos)):
    out.update(
      {
        f"{name}_mean": float(np.mean(xs)),
        f"{name}_min": float(np.min(xs)),
        f"{name}_max": float(np.max(xs)),
      }
    )
  return out


def load_truth(path: str | pathlib.Path) -> tuple[list[str], np.ndarray]:
  """Reads a stored ground truth.

  Returns:
    `(archs, ppl)`: the codec strings and float64[A], the validation
    perplexity of each cell averaged over the stored seeds.

  Raises:
    ValueError: one line naming the file and the problem.
  """
  path = pathlib.Path(path)
  try:
    d = json.loads(path.read_text())
    archs = list(d["archs"])
    ppl = np.asarray(d["valid_ppl"], np.float64)
  except FileNotFoundError:
    raise ValueError(f"ground truth {path} not found") from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"ground truth {path} is unreadable: {e!r}") from None
  if ppl.ndim != 2 or ppl.shape[1] != len(archs):
    raise ValueError(
      f"ground truth {path}: valid_ppl must be [seeds, {len(archs)}], got "
      f"{ppl.shape}"
    )
  if not np.all(np.isfinite(ppl)):
    raise ValueError(f"ground truth {path} holds non-finite perplexities")
  return archs, ppl.mean(axis=0)


def truth_for(path: str | pathlib.Path, names: Sequence[str]) -> np.ndarray:
  """The stored ground truth's mean perplexities, in the order of `names`.

  Raises:
    ValueError: the file does not list exactly the cells `names`.
  """
  stored, ppl = load_truth(path)
  order = {n: i for i, n in enumerate(stored)}
  missing = [n for n in names if n not in order]
  if missing or len(stored) != len(names):
    raise ValueError(
      f"ground truth {path} does not list the space's {len(names)} cells "
      f"(e.g. {(missing or stored)[0]!r})"
    )
  return ppl[[order[n] for n in names]]


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size < 2:
    raise ValueError(
      f"need two 1-D arrays of the same length >= 2, got {a.shape}, {b.shape}"
    )
  return a, b
