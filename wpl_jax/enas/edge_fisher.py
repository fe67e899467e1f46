"""The exact per-example Fisher of an ENAS child's edge matrices (taps).

The ENAS-specific glue of `wpl_jax.fisher_fast`, which itself knows no
model. `supernet.SharedRNN` is written against the tap protocol, so the
Fisher runs the model's own forward (there is one ENAS forward) with the
architecture's fused edge matrices `[N-1, H, 2H]` as the only tapped
leaf: their per-example gradients come from one probed backward pass.
"""

import jax.numpy as jnp

from wpl_jax.enas import losses, search_space, supernet
from wpl_jax.enas.search_space import Arch
from wpl_jax.fisher_fast import per_example_fisher
from wpl_jax.types import Array, PyTree


def enas_edge_fisher(
  model: supernet.SharedRNN,
  variables: PyTree,
  arch: Arch,
  batch: dict[str, Array],
  *,
  chunk_size: int | None = None,
  dense: bool = True,
) -> tuple[dict[str, Array], Array]:
  """Per-example Fisher of the edge matrices an architecture uses.

  Equals `wpl_jax.enas.wpl.estimate_fisher(loss, params, arch, batch,
  estimator="per_example")` for the eval-mode mean token loss (dropout
  off, batch-norm on its running statistics, so sequences stay separable),
  at about the cost of one backward pass. Does not jit itself.

  Args:
    model: the `SharedRNN`.
    variables: its `{"params", "batch_stats"}`.
    arch: one `Arch` with int32[N] fields.
    batch: example-major `{"inputs", "targets"}`: int32[B, T] and
      `"hidden"`: float32[B, H]. One example is one sequence; its loss is
      the mean over its T tokens, and F is the mean over the B sequences of
      the squared per-sequence gradient.
    chunk_size: sequences per chunk of the per-example sums (None: all B
      at once, holding [B, N-1, H, 2H]).
    dense: return [E, H, H] leaves (zero outside the arch's edges); False:
      only the arch's [N-1, H, H], rows in `search_space.edge_ids` order
      (what `wpl.update_after_arch` reads, without a dense scatter).

  Returns:
    `(fisher, new_hidden)`: `{"edge_h", "edge_c"}` float32[E, H, H], zero
    outside the arch's edges (`dense=False`: [N-1, H, H]), and the
    float32[B, H] hidden state after the
    batch (eval mode), from the Fisher's own forward pass.
  """
  cell = variables["params"]["cell"]
  hidden = cell["edge_h"].shape[-1]

  def loss(edges, b, tap):
    logits, new_hidden = model.apply(
      variables,
      b["inputs"].T,
      b["hidden"],
      arch,
      train=False,
      tap=tap,
      edges=edges,
    )
    return losses.cross_entropy(logits, b["targets"].T), new_hidden

  f, new_hidden = per_example_fisher(
    loss,
    supernet.arch_edges(cell, arch),
    batch,
    chunk_size=chunk_size,
    has_aux=True,
  )  # f: [N-1, H, 2H], [F^c | F^h] per used edge
  fisher = {"edge_c": f[..., :hidden], "edge_h": f[..., hidden:]}
  if dense:
    ids = search_space.edge_ids(arch)
    fisher = {
      k: jnp.zeros(cell[k].shape, jnp.float32).at[ids].set(v)
      for k, v in fisher.items()
    }
  return fisher, new_hidden
