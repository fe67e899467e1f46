"""WPL on the ENAS supernet: penalty, Fisher and anchor on an arch's edges.

docs/method.md §2: only the per-edge matrices W^h[i→j], W^c[i→j] of the edges
the *currently sampled* architecture uses are penalised; the embedding,
node-0 weights and batch-norm never are. The architecture is data, so the
set of edges is computed from the `Arch` arrays inside the jitted step:
every function here gathers the N−1 used edges by `edge_ids(arch)` (each
node has exactly one incoming edge, so the rows are distinct), which is
the same sum as masking the stacked `[E, H, H]` leaves with
`edge_mask(arch)[:, None, None]` but touches N−1 matrices instead of E.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from wpl_jax import fisher as fisher_lib
from wpl_jax import loss as loss_lib
from wpl_jax.enas import search_space
from wpl_jax.enas.search_space import Arch
from wpl_jax.types import Array, Params, PRNGKey, PyTree

EDGE_KEYS = ("edge_h", "edge_c")


def edge_params(params: Params) -> dict[str, Array]:
  """The stacked edge matrices `{"edge_h", "edge_c"}: [E, H, H]` of params."""
  return {k: params["cell"][k] for k in EDGE_KEYS}


def with_edges(params: Params, edges: dict[str, Array]) -> Params:
  """`params` with its stacked edge matrices replaced by `edges`."""
  return {**params, "cell": {**params["cell"], **edges}}


def init_state(params: Params) -> fisher_lib.FisherState:
  """Zero Fisher over the edge matrices, anchored at their current values."""
  return fisher_lib.init_state(edge_params(params))


def arch_edge_mask(arch: Arch, num_edges: int) -> dict[str, Array]:
  """Mask tree over the edge leaves: bool[E, 1, 1] per leaf (broadcasts)."""
  m = search_space.edge_mask(arch, None)
  if m.shape != (num_edges,):
    raise ValueError(f"edge mask has shape {m.shape}, expected ({num_edges},)")
  return {k: m[:, None, None] for k in EDGE_KEYS}


def _gather(tree: dict[str, Array], ids: Array) -> dict[str, Array]:
  return {k: v[ids] for k, v in tree.items()}


def edge_penalty(
  params: Params,
  state: fisher_lib.FisherState,
  arch: Arch,
  *,
  alpha: Array | float,
) -> Array:
  """`alpha/2 · Σ_{e ∈ arch} Σ F_e ⊙ (W_e − Ŵ_e)²` over W^h and W^c.

  In ``reference`` mode pass `alpha=1` (α is folded into the stored F);
  in ``clean`` mode pass α.

  Returns:
    A float32 scalar.
  """
  ids = search_space.edge_ids(arch)
  return loss_lib.wpl_penalty(
    _gather(edge_params(params), ids),
    _gather(state.anchor, ids),
    _gather(state.fisher, ids),
    alpha=alpha,
  )


def estimate_fisher(
  loss_fn: Callable[[Params, PyTree], Array] | None,
  params: Params,
  arch: Arch,
  batch: PyTree,
  *,
  estimator: str,
  key: PRNGKey | None = None,
  logits_fn: Callable[[Params, PyTree], Array] | None = None,
  chunk_size: int | None = None,
) -> dict[str, Array]:
  """Diagonal Fisher of the edge matrices an architecture uses.

  Gradients are taken with respect to the N−1 gathered matrices only (the
  rest of the params are constants), so a per-example estimator holds
  `[chunk, N−1, H, H]`, not `[chunk, E, H, H]`.

  Args:
    loss_fn: `(params, batch) -> scalar` mean loss of the full params (the
      architecture is closed over by the caller); see `fisher_diagonal`.
    params: the supernet params.
    arch: the architecture whose edges are estimated.
    batch: example-major pytree (leading axis = sequences).
    estimator: as in `wpl_jax.fisher.fisher_diagonal`.
    key: for ``sampled``.
    logits_fn: `(params, batch) -> logits [B, ..., V]` for ``sampled``.
    chunk_size: examples per chunk for per-example estimators.

  Returns:
    `{"edge_h", "edge_c"}`: float32 [E, H, H], zero outside the arch's edges.
  """
  ids = search_space.edge_ids(arch)
  full = jax.tree.map(jax.lax.stop_gradient, edge_params(params))

  def lift(fn):
    if fn is None:
      return None

    def on_sub(sub, b):
      edges = {k: full[k].at[ids].set(sub[k]) for k in EDGE_KEYS}
      return fn(with_edges(params, edges), b)

    return on_sub

  f_sub = fisher_lib.fisher_diagonal(
    lift(loss_fn),
    _gather(full, ids),
    batch,
    estimator=estimator,
    key=key,
    logits_fn=lift(logits_fn),
    chunk_size=chunk_size,
  )
  return {
    k: jnp.zeros(full[k].shape, jnp.float32).at[ids].set(f_sub[k])
    for k in EDGE_KEYS
  }


def update_after_arch(
  state: fisher_lib.FisherState,
  params: Params,
  new_fisher: dict[str, Array],
  arch: Arch,
  *,
  mode: str,
  alpha: Array | float,
  decay: float,
  clip: float | None,
) -> fisher_lib.FisherState:
  """End of one architecture's turn (docs/method.md §2).

  The running Fisher is updated on the arch's edges only (per-matrix
  Frobenius clip; in ``reference`` mode α is folded in and the other
  edges' F is reset to 0), then ALL edge matrices are re-anchored at
  their current values. The update itself touches only the N−1 gathered
  matrices (`fisher.update_fisher` on them, then one scatter), never a
  dense pass over all E: the same values as `update_fisher` with the
  arch's edge mask (tests/enas_search_test.py).

  Args:
    state: running Fisher/anchor over the edge leaves, [E, H, H] each.
    params: the supernet params after the arch's training batches.
    new_fisher: the arch's Fisher estimate `{"edge_h", "edge_c"}`: either
      [E, H, H] (as `estimate_fisher` returns; rows outside the arch are
      ignored) or [N−1, H, H], rows in `search_space.edge_ids(arch)` order
      (`edge_fisher.enas_edge_fisher(..., dense=False)`).
    arch: the architecture.
    mode: ``reference`` or ``clean``.
    alpha: α(epoch), used in ``reference`` mode only.
    decay: weight of the new estimate (0.9 in the reference).
    clip: per-matrix Frobenius bound (10 in the reference) or None.

  Returns:
    The new state, [E, H, H] leaves; donate `state` to update in place.
  """
  ids = search_space.edge_ids(arch)
  num_edges = state.fisher["edge_h"].shape[0]
  sub_new = {}
  for k in EDGE_KEYS:
    rows = new_fisher[k].shape[0]
    if rows == num_edges:
      sub_new[k] = new_fisher[k][ids]
    elif rows == ids.shape[0]:
      sub_new[k] = new_fisher[k]
    else:
      raise ValueError(
        f"new_fisher[{k!r}] has {rows} rows: want {num_edges} (all edges) "
        f"or {ids.shape[0]} (the arch's edges)"
      )
  sub = fisher_lib.update_fisher(
    fisher_lib.FisherState(fisher=_gather(state.fisher, ids), anchor=None),
    sub_new,
    mode=mode,
    decay=decay,
    clip=clip,
    alpha=alpha if mode == "reference" else 1.0,
    norm_axes=(-2, -1),
    reset_unmasked=False,
  )
  # The reference resets F on the edges this arch does not use.
  base = (
    {k: jnp.zeros_like(v) for k, v in state.fisher.items()}
    if mode == "reference"
    else state.fisher
  )
  fisher = {k: base[k].at[ids].set(sub.fisher[k]) for k in EDGE_KEYS}
  # Copies (as `fisher.reanchor`): donating params later stays safe.
  anchor = {k: jnp.copy(v) for k, v in edge_params(params).items()}
  return fisher_lib.FisherState(fisher=fisher, anchor=anchor)
