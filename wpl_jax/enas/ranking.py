"""Rankings of a small ENAS space against its ground truth (docs/method.md §5).

Pure NumPy/SciPy on per-architecture values (lower perplexity = better):
Kendall τ and Spearman ρ between two rankings, whether the true best cell
is in the top k of the other ranking, and the regret of picking that
ranking's top-1. The ground truth is read from the JSON file that
`experiments/space32_truth.py` writes.

The published order of the same 32 cells (Yu et al., ICLR 2020; stored in
experiments/results/space32_published.json) is read by `load_published`.
`published_ranks` turns it into per-cell values for `kendall_tau`;
`id_sequence_tau` is the statistic the public code of that paper logs,
which is a correlation of genotype-id sequences, not of ranks.
"""

import itertools
import json
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

from wpl_jax.enas import search_space


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
  """Kendall τ-b between per-architecture values `a` and `b` (ties allowed).

  `a`, `b`: [K] values (perplexities), entry k for architecture k.

  `scipy.stats.kendalltau` on the values themselves (a true rank
  correlation, docs/method.md §5); 1 = same order, -1 = reversed, 0 = unrelated.
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


# Activation order of the public genotype ids: DARTS's PRIMITIVES without
# "none". It differs from search_space.ACTIVATIONS (identity and sigmoid
# are swapped).
PUBLIC_OPS = ("tanh", "relu", "sigmoid", "identity")


class PublishedOrder(NamedTuple):
  """A published ranking of cells, best first.

  Attributes:
    archs: K codec strings (`search_space.to_string`), best first.
    genotype_ids: int64[K], the id the public code gives `archs[k]`
      (`public_genotype_id`); the published ranking is this sequence.
    valid_ppl: float64[K] perplexities in the same order, or None where
      none were published.
  """

  archs: list[str]
  genotype_ids: np.ndarray
  valid_ppl: np.ndarray | None = None


def public_genotype_id(name: str) -> int:
  """The genotype id the public code of Yu et al. (2020) gives a cell.

  The cell "tanh|0:a1|p2:a2|..." is the DARTS genotype [(a1, 0), (a2, p2),
  ...]; its id is the mixed-radix number whose digit for node j >= 1 is
  4·parent_j + op_j (radix 4j), most significant digit first, with op_j
  indexed in `PUBLIC_OPS`. For 3 nodes: 8·op_1 + 4·p_2 + op_2, in
  [0, 32). Node 0 is DARTS's fixed tanh node and takes no digit.

  Raises:
    ValueError: `name` does not parse, or node 0 is not tanh.
  """
  arch = search_space.from_string(name)
  acts = np.asarray(arch.activations)
  pars = np.asarray(arch.parents)
  if search_space.ACTIVATIONS[acts[0]] != "tanh":
    raise ValueError(f"{name!r}: node 0 must be tanh in the public space")
  gid = 0
  for j in range(1, len(acts)):
    op = PUBLIC_OPS.index(search_space.ACTIVATIONS[acts[j]])
    gid = gid * (4 * j) + 4 * int(pars[j]) + op
  return gid


def load_published(path: str | pathlib.Path) -> PublishedOrder:
  """Reads a published order (experiments/results/space32_published.json).

  Raises:
    ValueError: one line naming the file and the problem (cells or ids
      repeated, lengths that differ, non-finite perplexities).
  """
  path = pathlib.Path(path)
  try:
    d = json.loads(path.read_text())
    archs = [str(a) for a in d["archs"]]
    ids = np.asarray(d["genotype_ids"], np.int64)
    ppl = d.get("valid_ppl")
    ppl = None if ppl is None else np.asarray(ppl, np.float64)
  except FileNotFoundError:
    raise ValueError(f"published order {path} not found") from None
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"published order {path} is unreadable: {e!r}") from None
  k = len(archs)
  if len(set(archs)) != k or ids.shape != (k,) or len(set(ids.tolist())) != k:
    raise ValueError(
      f"published order {path}: need {k} distinct cells and {k} distinct "
      f"genotype ids, got {len(set(archs))} cells and ids {ids.shape}"
    )
  if ppl is not None and (ppl.shape != (k,) or not np.all(np.isfinite(ppl))):
    raise ValueError(
      f"published order {path}: valid_ppl must be {k} finite values"
    )
  return PublishedOrder(archs, ids, ppl)


def published_ranks(
  published: PublishedOrder, names: Sequence[str]
) -> np.ndarray:
  """float64[K]: the published rank of `names[k]` (0 = best).

  `kendall_tau(shared, published_ranks(p, names))` is a true rank
  correlation of K shared-weight perplexities with the published order.

  Raises:
    ValueError: `names` are not exactly the published cells.
  """
  pos = _positions(published, names)
  return np.asarray([pos[n] for n in names], np.float64)


def id_sequence_tau(
  shared: Sequence[float], names: Sequence[str], published: PublishedOrder
) -> float:
  """The Kendall τ that the public code of Yu et al. (2020) reports.

  `shared`: [K] perplexities (lower = better), entry k for cell `names[k]`;
  `names` must be exactly the published cells, in any order.

  The public code sorts the cells by (perplexity, genotype id), ascending,
  and takes their genotype ids: a sequence w_0..w_{K-1}, best first. The
  published order is another such sequence g_0..g_{K-1}. It returns the
  Kendall τ of the K pairs (g_p, w_p) over positions p: pair (p, q) is
  concordant when g_p - g_q and w_p - w_q have the same sign (ids are
  distinct, so τ-a = τ-b). This is not a rank correlation of the
  architectures: it is 1 only when the two orders agree exactly, but
  otherwise its value depends on how ids are assigned to cells (the
  reversed order does not give -1), and relabelling the ids changes it.
  Use `kendall_tau(shared, published_ranks(published, names))` for the
  rank correlation.

  Raises:
    ValueError: `names` are not exactly the published cells, or `shared`
      has another length or non-finite entries.
  """
  shared = np.asarray(shared, np.float64)
  if shared.shape != (len(names),) or not np.all(np.isfinite(shared)):
    raise ValueError(
      f"need {len(names)} finite perplexities, got shape {shared.shape}"
    )
  pos = _positions(published, names)
  ids = np.asarray([published.genotype_ids[pos[n]] for n in names])
  ws_ids = ids[np.lexsort((ids, shared))]  # by ppl, ties by id
  tau = stats.kendalltau(published.genotype_ids, ws_ids).statistic
  return float(tau)


def as_order(ppl: Sequence[float], names: Sequence[str]) -> PublishedOrder:
  """A ranking by perplexity as a `PublishedOrder`, with the public ids.

  `ppl`: [K] perplexities (lower = better) of the cells `names` (codec
  strings). Sorted best first, ties by genotype id (`public_genotype_id`),
  as the public code sorts: so `id_sequence_tau(shared, names,
  as_order(truth_ppl, names))` is the public code's statistic against a
  ground truth of our own. `valid_ppl` holds the sorted perplexities.
  """
  ppl = np.asarray(ppl, np.float64)
  if ppl.shape != (len(names),):
    raise ValueError(f"need {len(names)} perplexities, got {ppl.shape}")
  ids = np.asarray([public_genotype_id(n) for n in names], np.int64)
  order = np.lexsort((ids, ppl))
  return PublishedOrder([names[i] for i in order], ids[order], ppl[order])


def _positions(published: PublishedOrder, names: Sequence[str]) -> dict:
  pos = {n: i for i, n in enumerate(published.archs)}
  missing = [n for n in names if n not in pos]
  if missing or len(set(names)) != len(names) or len(names) != len(pos):
    raise ValueError(
      f"names must be exactly the {len(pos)} published cells (e.g. "
      f"{(missing or list(names) or published.archs)[0]!r})"
    )
  return pos


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size < 2:
    raise ValueError(
      f"need two 1-D arrays of the same length >= 2, got {a.shape}, {b.shape}"
    )
  return a, b
