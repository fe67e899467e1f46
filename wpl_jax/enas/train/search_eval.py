"""ENAS search: scoring sampled cells with the shared weights.

The forgetting statistics (err2 − err1), the perplexities of many cells in
vmapped chunks of a fixed size, the derived cell (the best of M controller
samples) and the ranking of the whole space on the held-out split
(`Ranker`).
"""

import jax
import numpy as np

from wpl_jax.enas import ranking, search_space
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.runtime import sharding


def forgetting_stats(err1: np.ndarray, err2: np.ndarray) -> dict[str, float]:
  """Mean, best-5 (mean of 5 largest) and max of err2 − err1 ([K] ppl)."""
  diff = np.asarray(err2, np.float64) - np.asarray(err1, np.float64)
  top = np.sort(diff)[::-1][:5]
  return {
    "diff_mean": float(diff.mean()),
    "diff_best5": float(top.mean()),
    "diff_max": float(diff.max()),
  }


class Ranker:
  """Scores every cell of the space with the shared weights (held-out split).

  Logs the shared-weight perplexity of each cell, the shared ranking's best
  cell, the search policy's exact entropy over the space
  (`policy_entropy`, nats; `uniform_entropy` = log S beside it) and, with a
  stored ground truth (`search.truth_path`), Kendall τ,
  Spearman ρ, top-3 hit and regret against it (`wpl_jax.enas.ranking`).
  With a `mesh` of D devices and D | S the S cells are split S / D per
  device (as `enas_truth` does), else every device scores all of them.
  With `seeds` = K > 0 the shared and controller states carry a seed axis
  [K] (one device): each seed's shared weights score every cell.
  """

  def __init__(self, config, steps, heldout, mesh=None, seeds=0):
    if heldout is None:
      raise ValueError("config.search.rank_every needs search.heldout_tokens")
    self.archs = enas_setup.space_archs(config)
    self.names = [
      search_space.to_string(a) for a in search_space.unstack(self.archs)
    ]
    self.x, self.y, self.mask = heldout
    self.count = float(self.mask.sum())
    self.seeds = seeds
    self.fn = jax.jit(steps.eval_archs_windows)
    self.entropy = jax.jit(steps.policy_entropy)
    if seeds:
      self.fn = jax.jit(
        jax.vmap(steps.eval_archs_windows, in_axes=(0, None, None, None, None))
      )
      self.entropy = jax.jit(jax.vmap(steps.policy_entropy, in_axes=(0, None)))
    elif mesh is not None:
      self.fn = _split_cells(steps.eval_archs_windows, mesh, len(self.names))
    self.truth = None
    path = config.search.get("truth_path", "")
    if path:
      self.truth = ranking.truth_for(path, self.names)

  def __call__(self, shared, ctrl_params=None, skip=()) -> list[dict]:
    """The records' ranking fields, one dict per seed (a list of one
    without a seed axis); `ctrl_params` for the policy entropy; seeds in
    `skip` (diverged) get {}."""
    nll = np.asarray(self.fn(shared, self.archs, self.x, self.y, self.mask))
    # A cell whose shared weights blew up scores inf: the worst rank,
    # which the ranking statistics take as such (no overflow warning).
    with np.errstate(over="ignore"):
      ppl = np.exp(nll / self.count).reshape(-1, len(self.names))
    entropy = None
    if ctrl_params is not None:
      entropy = np.asarray(self.entropy(ctrl_params, self.archs)).reshape(-1)
    outs = []
    for i, ppl_i in enumerate(ppl):
      if i in skip:
        outs.append({})
        continue
      out = {
        "rank_shared_ppl": ppl_i.tolist(),
        "rank_best": self.names[int(np.argmin(ppl_i))],
      }
      if entropy is not None:
        out["policy_entropy"] = float(entropy[i])
        out["uniform_entropy"] = float(np.log(len(self.names)))
      if self.truth is not None:
        stats = ranking.ranking_stats(ppl_i, self.truth, k=3)
        out.update({f"rank_{k}": v for k, v in stats.items()})
      outs.append(out)
    return outs


def _split_cells(fn, mesh, s):
  """jit of `fn(shared, archs[S], *batch) -> [S]`, S split over the mesh."""
  d = sharding.num_shards(mesh)
  rep = sharding.replicated(mesh)
  if d == 1 or s % d:
    return jax.jit(fn, out_shardings=rep)
  spec = sharding.batch_sharding(mesh, 0)

  def split(shared, archs, *batch):
    def one_device(part):
      return fn(shared, part, *batch)

    parts = jax.tree.map(
      lambda a: jax.lax.with_sharding_constraint(
        a.reshape((d, s // d) + a.shape[1:]), spec
      ),
      archs,
    )
    return jax.vmap(one_device)(parts).reshape(s)

  return jax.jit(split, out_shardings=rep)


def eval_chunked(
  eval_fn, shared, archs, x, y, hidden, chunk, *, arch_sharding=None
):
  """Perplexities of K archs in vmapped chunks of a fixed size (1 compile).

  With `arch_sharding` (`sharding.batch_sharding(mesh, 0)`) each chunk's
  arch axis is split over the devices: D devices score chunk / D archs
  each on the whole (replicated) batch.
  """
  k = archs.activations.shape[0]
  pad = (-k) % chunk
  if pad:
    archs = jax.tree.map(
      lambda a: np.concatenate([a, np.repeat(a[-1:], pad, 0)]), archs
    )
  out = []
  for i in range(0, k + pad, chunk):
    part = jax.tree.map(lambda a, i=i: a[i : i + chunk], archs)
    if arch_sharding is not None:
      part = sharding.put(jax.device_get(part), arch_sharding)
    out.append(np.asarray(eval_fn(shared, part, x, y, hidden)))
  return np.concatenate(out)[:k]


def one_arch(arch):
  return jax.tree.map(lambda x: x[None], arch)


def derive(
  config,
  state,
  sample,
  eval_archs,
  key,
  x,
  y,
  hidden,
  *,
  arch_sharding=None,
  seeds=0,
):
  """Best of M controller samples by validation perplexity on one batch.

  Returns [(arch string, its perplexity)], one per seed (a list of one
  without a seed axis; with `seeds` > 0, `sample` and `eval_archs` are
  the seed-vmapped steps of `setup.jit_steps`).
  """
  m = config.search.derive_samples
  archs = jax.device_get(sample(state["controller"].params, key=key, k=m))
  if seeds:  # [S, M] -> [M, S]: the chunks split the samples
    archs = jax.tree.map(lambda a: np.swapaxes(a, 0, 1), archs)
  ppl = eval_chunked(
    eval_archs,
    state["shared"],
    archs,
    x,
    y,
    hidden,
    config.search.eval_chunk,
    arch_sharding=arch_sharding,
  ).reshape(m, -1)  # [M, S]
  out = []
  for i in range(ppl.shape[1]):
    best = int(np.argmin(ppl[:, i]))
    arch = jax.tree.map(
      lambda a, best=best, i=i: a[best, i] if seeds else a[best], archs
    )
    out.append((search_space.to_string(arch), float(ppl[best, i])))
  return out
