"""The exact per-example Fisher of an ENAS child's edge matrices (taps).

The ENAS-specific glue of `wpl_jax.fisher_fast`, which itself knows no
model: an eval-mode child forward of `enas_rnn.SharedRNN` written against
the tap protocol (`enas_forward`), and the per-example Fisher of the
architecture's edges (`enas_edge_fisher`), used by the search's Fisher step.
"""

import jax
import jax.numpy as jnp

from wpl_jax.enas import search_space
from wpl_jax.enas.search_space import Arch
from wpl_jax.fisher_fast import PLAIN, Tap, per_example_fisher
from wpl_jax.models import enas_rnn
from wpl_jax.types import Array, PyTree

_EDGE_KEYS = ("edge_h", "edge_c")

# The cell's node update is the model's own (one source of the ENAS math).
_highway = enas_rnn._highway  # noqa: SLF001


def enas_forward(
  model,
  variables: PyTree,
  arch: Arch,
  inputs_TxB: Array,
  hidden_BxH: Array,
  tap: Tap = PLAIN,
  *,
  edges: dict[str, Array] | None = None,
) -> tuple[Array, Array]:
  """Eval-mode child forward of `enas_rnn.SharedRNN`, with taps.

  The same function as `model.apply(variables, inputs, hidden, arch,
  train=False)` (dropout off, running batch-norm statistics), written
  against the tap protocol, with the model's scans: node 0's input
  projection ("node0_x", examples on axis 1); in the time scan ("time")
  node 0's recurrent matmul ("node0_h") and the scan over nodes 1..N-1
  ("nodes"), whose step's edge matmul ("edge") reads that node's slice of
  the gathered edge matrices (tapped when `edges` holds params leaves).

  Args:
    model: the `SharedRNN` (its attributes are read, its code is not run).
    variables: `{"params", "batch_stats"}` of the model.
    arch: one `Arch` with int32[N] fields.
    inputs_TxB: int32[T, B] tokens.
    hidden_BxH: float32[B, H] initial hidden state.
    tap: the tap (`PLAIN` for an ordinary forward).
    edges: None to gather the arch's edge matrices from the params, or
      `{"edge_h", "edge_c"}`: [N-1, H, H] each, row j-1 the matrix node j
      reads (as `wpl_jax.enas.wpl` gathers them).

  Returns:
    `(logits, new_hidden)`: float32[T, B, V] and float32[B, H].
  """
  p = variables["params"]
  n = model.num_nodes
  if edges is None:
    ids = search_space.edge_ids(arch)
    edges = {k: p["cell"][k][ids] for k in _EDGE_KEYS}
  w0 = p["node0"]
  x_TxBxH = p["embedding"][inputs_TxB]
  xz_TxBx2H = tap.dense(
    "node0_x",
    x_TxBxH,
    (w0["w_xc"], w0["w_xh"]),
    (w0["b_xc"], w0["b_xh"]),
    batch_axis=1,
  )
  acts, parents = arch.activations, arch.parents
  leaf = search_space.leaf_mask(arch).astype(jnp.float32)
  leaf_w = leaf / jnp.sum(leaf)
  if model.use_batch_norm:
    bn, stats = p["batch_norm"], variables["batch_stats"]["batch_norm"]
    inv_std = jax.lax.rsqrt(stats["var"] + model.bn_epsilon)

  def node_step(nodes_NxBxH, xs):
    # Node j reads node parents[j] through edge (parents[j] -> j).
    j, w_c, w_h, act, parent = xs
    h_in = jax.lax.dynamic_index_in_dim(nodes_NxBxH, parent, keepdims=False)
    h_j = _highway(tap.dense("edge", h_in, (w_c, w_h)), h_in, act)
    return jax.lax.dynamic_update_index_in_dim(nodes_NxBxH, h_j, j, 0), None

  def step(h_prev, xz_Bx2H):
    z = xz_Bx2H + tap.dense("node0_h", h_prev, (w0["w_hc"], w0["w_hh"]))
    nodes = jnp.zeros((n,) + h_prev.shape, h_prev.dtype)
    nodes = nodes.at[0].set(_highway(z, h_prev, acts[0]))
    nodes, _ = tap.scan(
      "nodes",
      node_step,
      nodes,
      (
        jnp.arange(1, n),
        edges["edge_c"],
        edges["edge_h"],
        acts[1:],
        parents[1:],
      ),
      unroll=getattr(model, "node_unroll", 1),
    )
    leaf_mean = jnp.sum(nodes * leaf_w[:, None, None], axis=0)
    out = leaf_mean
    if model.use_batch_norm:
      out = (out - stats["mean"][None]) * inv_std[None]
      out = out * bn["scale"][None] + bn["bias"][None]
    new_h = nodes[n - 1] if model.hidden_source == "last" else leaf_mean
    # The per-example norm clip's factor is a constant for autodiff.
    norm = jnp.linalg.norm(new_h, axis=-1, keepdims=True)
    factor = jnp.where(
      norm > model.clip_norm, model.clip_norm / jnp.maximum(norm, 1e-12), 1.0
    )
    return new_h * jax.lax.stop_gradient(factor), out

  new_hidden, out_TxBxH = tap.scan("time", step, hidden_BxH, xz_TxBx2H)
  logits = jnp.einsum("tbh,vh->tbv", out_TxBxH, p["embedding"])
  return logits + p["decoder_bias"][None, None], new_hidden


def enas_edge_fisher(
  model,
  variables: PyTree,
  arch: Arch,
  batch: dict[str, Array],
  *,
  chunk_size: int | None = None,
) -> dict[str, Array]:
  """Per-example Fisher of the edge matrices an architecture uses.

  Equals `wpl_jax.enas.wpl.estimate_fisher(loss, params, arch, batch,
  estimator="per_example")` for the eval-mode mean token loss, at about
  the cost of one backward pass (see the module docstring).

  Args:
    model: the `SharedRNN`.
    variables: its `{"params", "batch_stats"}` (eval mode: batch-norm on
      running statistics keeps the sequences separable).
    arch: one `Arch` with int32[N] fields.
    batch: example-major `{"inputs", "targets"}`: int32[B, T] and
      `"hidden"`: float32[B, H]. One example is one sequence; its loss is
      the mean over its T tokens.
    chunk_size: sequences per chunk of the per-example sums.

  Returns:
    `{"edge_h", "edge_c"}`: float32[E, H, H], zero outside the arch's edges.
  """
  ids = search_space.edge_ids(arch)
  cell = variables["params"]["cell"]
  sub = {k: cell[k][ids] for k in _EDGE_KEYS}

  def loss(edges, b, tap):
    logits, _ = enas_forward(
      model, variables, arch, b["inputs"].T, b["hidden"], tap, edges=edges
    )
    return enas_rnn.cross_entropy(logits, b["targets"].T)

  f = per_example_fisher(loss, sub, batch, chunk_size=chunk_size)
  return {
    k: jnp.zeros(cell[k].shape, jnp.float32).at[ids].set(f[k])
    for k in _EDGE_KEYS
  }
