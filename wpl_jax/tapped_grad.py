"""The gradient of a tap-aware loss with each tapped weight's gradient
formed once, after the scans (`value_and_grad`).

The same gradient as `jax.value_and_grad` of the loss under the plain tap;
it trades autodiff's per-step accumulation inside a scan for one large
GEMM per weight afterwards. The ENAS search's shared step uses it from
hidden size `search.grad_after_scan_from` on (CPU: 800; 0.87–0.97× the
autodiff step at H = 1000 on two CPUs, WORKSPACE §6.4). `fisher_fast`
re-exports it.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from wpl_jax import _tap_discovery as disc
from wpl_jax import _tap_probe as probe
from wpl_jax.taps import Tap, row_major_t
from wpl_jax.types import Array, PyTree

__all__ = ["value_and_grad"]


def _outer_sum(a: Array, g: Array, keep: int | None) -> Array:
  """`Σ a ⊗ g` over every leading axis of a [..., I], g [..., O] but `keep`.

  Returns [I, O], or [S, I, O] with S = the size of axis `keep` (the slices
  of a leaf scanned over). One dot_general: all positions contract at once.
  """
  lead = a.ndim - 1
  idx = "abcdefghjklmnpqrstuvwxyz"[:lead]
  out = ("" if keep is None else idx[keep]) + "yz"
  return jnp.einsum(f"{idx}y,{idx}z->{out}", a, g)


def _outer_sum_low(a: Array, g: Array, keep: int | None, dtype) -> Array:
  """`_outer_sum` from operands cast to `dtype`, float32 output.

  For a `dense(..., low=...)` site: positions flattened and `a`
  transposed row-major (`row_major_t`), so each product is a plain
  [I, P] × [P, O] GEMM, the form XLA:CPU runs on bfloat16 matrix units.
  """
  a, g = a.astype(dtype), g.astype(dtype)
  if keep is None:
    a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
    return jnp.dot(row_major_t(a2), g2, preferred_element_type=jnp.float32)
  a = jnp.moveaxis(a, keep, 0)
  g = jnp.moveaxis(g, keep, 0)
  a2 = a.reshape(a.shape[0], -1, a.shape[-1])
  g2 = g.reshape(g.shape[0], -1, g.shape[-1])
  at = row_major_t(a2)  # [S, I, P]
  return jnp.stack(
    [
      jnp.dot(at[s], g2[s], preferred_element_type=jnp.float32)
      for s in range(a2.shape[0])
    ]
  )


def value_and_grad(
  loss_fn: Callable[[PyTree, PyTree, Tap], Array],
  params: PyTree,
  batch: PyTree,
  *,
  has_aux: bool = False,
) -> tuple[Array, PyTree] | tuple[tuple[Array, PyTree], PyTree]:
  """`jax.value_and_grad` of a tap-aware loss, tapped weights formed at once.

  Inside a scan, autodiff accumulates a weight's gradient step by step: at
  every step one small GEMM ([D_in, B] × [B, D_out]) and one read-modify-
  write of the whole gradient. Here the tapped weights enter the forward as
  constants, one probed backward pass gives every matmul output's
  cotangent g at every step, and each weight's gradient is then
  `Σ_positions x gᵀ`: ONE GEMM over all steps and examples ([D_in, T·B] ×
  [T·B, D_out]), for a weight scanned over (one slice per step of an inner
  `tap.scan`) one batched GEMM over its slices. Leaves the loss also reads
  outside taps take ordinary autodiff. The same gradient as
  `jax.value_and_grad(lambda p: loss_fn(p, batch, PLAIN))(params)` (tested
  to float rounding); no per-example contract (any scalar loss; examples
  may interact, e.g. training-mode batch-norm). Does not jit itself.

  Args:
    loss_fn: `(params, batch, tap) -> scalar` (or `(scalar, aux)` with
      `has_aux`), written against the tap protocol.
    params: any pytree of float arrays.
    batch: any pytree, passed through.
    has_aux: as in `jax.value_and_grad`.

  Returns:
    `(loss, grads)`, or `((loss, aux), grads)` with `has_aux`; grads is a
    pytree like `params` in the params' dtypes.
  """
  value_fn = (lambda q, b, t: loss_fn(q, b, t)[0]) if has_aux else loss_fn
  p = disc.discover(value_fn, params, batch, reduction=None)
  leaves, treedef = jax.tree.flatten(params)
  probes = probe.probe_tree(p.root, p.tapped)

  def inner(leaf_values, probe_tree):
    held = [
      jax.lax.stop_gradient(v) if i in p.tapped else v
      for i, v in enumerate(leaf_values)
    ]
    prober = probe.Prober(probe_tree, per_example=False)
    out = loss_fn(jax.tree.unflatten(treedef, held), batch, prober)
    loss, aux = out if has_aux else (out, None)
    return loss, (aux, prober.records)

  try:
    (loss, (aux, records)), (grads, cotangents) = jax.value_and_grad(
      inner, argnums=(0, 1), has_aux=True
    )(leaves, probes)
  except jax.errors.UnexpectedTracerError as e:
    raise ValueError(disc.CONTEXT_HINT) from e
  grads = list(grads)
  for path, site, depth in disc.walk(p.root):
    a, g = probe.lookup(records, path), probe.lookup(cotangents, path)
    if a is None:
      continue
    if site.conv is not None:
      lead = a.shape[: depth + 1]
      patches = site.conv.unfold(a.reshape((-1,) + a.shape[depth + 1 :]))
      a = patches.reshape(lead + patches.shape[1:])
    for i, k, lo, hi in probe.spans(
      site.weights, site.weight_axes, site.widths
    ):
      if i in p.tapped:
        if site.low_dtype is not None:
          gw = _outer_sum_low(a, g[..., lo:hi], k, site.low_dtype)
        else:
          gw = _outer_sum(a, g[..., lo:hi], k)
        if site.conv is not None:  # [S?, C_in·prod(win), C_out] → kernel
          gw = gw.reshape(gw.shape[:-2] + (-1, *site.conv.window, gw.shape[-1]))
          gw = jnp.moveaxis(gw, -len(site.conv.window) - 2, -2)
        grads[i] = grads[i] + gw.reshape(grads[i].shape).astype(grads[i].dtype)
    for i, k, lo, hi in probe.spans(
      site.biases, site.bias_axes, site.bias_widths
    ):
      if i in p.tapped:
        gb = g[..., lo:hi]
        axes = tuple(ax for ax in range(gb.ndim - 1) if ax != k)
        gb = jnp.sum(gb, axis=axes)
        grads[i] = grads[i] + gb.reshape(grads[i].shape).astype(grads[i].dtype)
  grads = jax.tree.unflatten(treedef, grads)
  return ((loss, aux), grads) if has_aux else (loss, grads)
