"""Exact per-example diagonal Fisher at about the cost of one backward pass.

`fisher.fisher_diagonal(estimator="per_example")` forms every example's
gradient with `vmap(grad)`: a [B × params] buffer, and inside a `lax.scan`
a per-example weight gradient carried and updated at every step. Both are
avoidable for a dense weight y = x W, whose per-example gradient is

    ∇W ℓ_b = Σ_p x_{b,p} g_{b,p}ᵀ

summed over the positions p of example b (time steps, tokens), where g is
the cotangent of y. One batch backward pass gives every g: add a zero-valued
*probe* to each matmul output (one per scan step) and differentiate the mean
loss with respect to the probes, which gives g/B. Then

* one position per example (an MLP): `F = B · (X∘X)ᵀ(Ĝ∘Ĝ)`, one matmul of
  the weight's size and no per-example tensor;
* several (a weight shared over time): per-example `Σ_p x gᵀ` as a batched
  matmul over examples, `chunk_size` examples at a time, squared and summed.

Models opt in by being written against a small *tap* protocol (`Tap`): they
call `tap.dense(name, x, w, b)` for their matmuls and `tap.scan(name, ...)`
for scans, and run unchanged with the plain tap `PLAIN`. A trace finds which
params leaves reach the loss only through taps (those get the fast path);
every other leaf the loss reads gets `vmap(grad)` (`fisher_diagonal`'s
path), so the result is exact whatever the model does outside its taps.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from wpl_jax import _checks, partition
from wpl_jax import _tap_discovery as disc
from wpl_jax import _tap_probe as probe
from wpl_jax import fisher as fisher_lib
from wpl_jax.tapped_grad import value_and_grad
from wpl_jax.taps import PLAIN, Tap
from wpl_jax.types import Array, PyTree

__all__ = [
  "PLAIN",
  "REDUCTIONS",
  "Tap",
  "TappedLoss",
  "check_reduction",
  "per_example_fisher",
  "plan",
  "tapped",
  "value_and_grad",
  "verify",
]


def plan(loss_fn, params: PyTree, batch: PyTree) -> PyTree:
  """How `per_example_fisher` will estimate each leaf (trace only).

  Args:
    loss_fn: `(params, batch, tap) -> loss`; a `TappedLoss`'s declared
      reduction is respected, any other function is taken as a mean.
    params, batch: as for `per_example_fisher`.

  Returns:
    A pytree like `params` of strings: ``"tap"`` (from the probes),
    ``"vmap"`` (the `vmap(grad)` fallback) or ``"unused"`` (the loss does
    not depend on it: zero).
  """
  p = disc.discover(
    loss_fn, params, batch, getattr(loss_fn, "reduction", "mean")
  )
  leaves, treedef = jax.tree.flatten(params)
  kinds = [
    "tap" if i in p.tapped else "vmap" if i in p.fallback else "unused"
    for i in range(len(leaves))
  ]
  return jax.tree.unflatten(treedef, kinds)


def _per_slice(x: Array, batch_axis: int, axis: int | None) -> Array:
  """[n, S, P, D]: examples, leaf slices (S = 1: whole leaf), positions."""
  if axis is None:
    x = jnp.moveaxis(x, batch_axis, 0)[:, None]
  else:
    x = jnp.moveaxis(x, (batch_axis, axis), (0, 1))
  return _upcast(x.reshape(x.shape[:2] + (-1, x.shape[-1])))


def _upcast(x: Array) -> Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _sum_sq_outer(pairs: list, n: int, chunk_size: int | None) -> list:
  """`Σ_b (Σ_p a_bsp g_bspᵀ)²`: [S, I, O] of each (a [n,S,P,I], g [n,S,P,O])."""

  def part(chunk):
    return [
      fisher_lib.sum_examples(jnp.square(jnp.einsum("bspi,bspo->bsio", a, g)))
      for a, g in chunk
    ]

  if not pairs:
    return []
  del n  # chunked_sum reads it off the leading axis.
  return fisher_lib.chunked_sum(part, pairs, chunk_size)


def _tapped_fisher(
  loss_fn,
  params,
  batch,
  p: disc.Plan,
  n: int,
  chunk_size,
  reduction="mean",
  has_aux=False,
):
  """Fisher of the tapped leaves from one probed backward pass.

  Returns `({index: F}, aux)`; aux is the loss's own (None without
  `has_aux`), from the same forward pass.
  """
  probes = probe.probe_tree(p.root, p.tapped)

  def probed(probe_tree):
    prober = probe.Prober(probe_tree)
    out = loss_fn(params, batch, prober)
    loss, aux = out if has_aux else (out, None)
    return loss, (prober.records, aux)

  try:
    loss, vjp_fn, (records, aux) = jax.vjp(probed, probes, has_aux=True)
    # Per-example losses (reduction "none") each get cotangent 1: the
    # probes then carry every example's own gradient, whatever the mix.
    (cotangents,) = vjp_fn(jnp.ones_like(loss))
  except jax.errors.UnexpectedTracerError as e:
    raise ValueError(disc.CONTEXT_HINT) from e

  weight_parts, bias_parts, conv_kernels = {}, {}, {}
  for path, site, depth in disc.walk(p.root):
    a, g = probe.lookup(records, path), probe.lookup(cotangents, path)
    if a is None:
      continue
    axis = depth + site.batch_axis
    if a.shape[axis] != n:
      raise ValueError(
        f"tap site {'/'.join(path)!r}: axis {site.batch_axis} has "
        f"{a.shape[axis]} entries, the batch has {n} examples"
      )
    if site.conv is not None:
      # A convolution is a dense map of its patches: [..., B, *out, K].
      lead = a.shape[: depth + 1]
      patches = site.conv.unfold(a.reshape((-1,) + a.shape[depth + 1 :]))
      a = patches.reshape(lead + patches.shape[1:])
      for i in site.weights:
        if i is not None:
          conv_kernels[i] = site.conv
    # Every leading axis but the examples' (and the slicing scan's, for a
    # scanned leaf) is a position within an example.
    for i, k, lo, hi in probe.spans(
      site.weights, site.weight_axes, site.widths
    ):
      if i in p.tapped:
        weight_parts.setdefault(i, []).append(
          (_per_slice(a, axis, k), _per_slice(g[..., lo:hi], axis, k))
        )
    for i, k, lo, hi in probe.spans(
      site.biases, site.bias_axes, site.bias_widths
    ):
      if i in p.tapped:
        # A bias's per-example gradient is the cotangent summed over the
        # example's positions.
        gi = _per_slice(g[..., lo:hi], axis, k)
        bias_parts.setdefault(i, []).append(jnp.sum(gi, axis=2))

  out, pending = {}, []
  for i, parts in weight_parts.items():
    if len(parts) == 1 and parts[0][0].shape[2] == 1:
      # One position per example: Σ_b (a_b g_bᵀ)² = (A∘A)ᵀ(G∘G), no
      # per-example tensor.
      a, g = parts[0][0][:, :, 0], parts[0][1][:, :, 0]
      out[i] = jnp.einsum("bsi,bso->sio", a * a, g * g)
    else:
      a = jnp.concatenate([a for a, _ in parts], axis=2)
      g = jnp.concatenate([g for _, g in parts], axis=2)
      pending.append((i, (a, g)))
  sums = _sum_sq_outer([pair for _, pair in pending], n, chunk_size)
  out.update({i: s for (i, _), s in zip(pending, sums, strict=True)})
  for i, parts in bias_parts.items():
    out[i] = fisher_lib.sum_examples(jnp.square(sum(parts)))
  shapes = [jnp.shape(v) for v in jax.tree.leaves(params)]
  # With a mean loss the probes carry d(mean)/dy = g_b / n: the per-example
  # gradient is n times the sums above, F = (1/n) Σ_b (n ·)² = n Σ_b (·)².
  # With a sum (or per-example losses) they carry g_b: F = (1/n) Σ_b (·)².
  scale = float(n) if reduction == "mean" else 1.0 / n
  for i, spec in conv_kernels.items():
    # [S, C_in·prod(window), C_out] with features (C_in, *window) → the
    # kernel's [S, *window, C_in, C_out].
    f = out[i]
    f = f.reshape((f.shape[0], -1, *spec.window, f.shape[-1]))
    out[i] = jnp.moveaxis(f, 1, -2)
  return {
    i: (scale * f).reshape(shapes[i]).astype(jnp.float32)
    for i, f in out.items()
  }, aux


def per_example_fisher(
  loss_fn: Callable[[PyTree, PyTree, Tap], Array],
  params: PyTree,
  batch: PyTree,
  *,
  chunk_size: int | None = None,
  reduction: str = "mean",
  has_aux: bool = False,
) -> PyTree | tuple[PyTree, PyTree]:
  """Empirical diagonal Fisher `F = 1/B Σ_b (∇ℓ_b)²`, exact, via taps.

  The same quantity as `fisher.fisher_diagonal(estimator="per_example")`:
  leaves reached only through `tap.dense` come from one probed backward
  pass; leaves the loss also reads elsewhere come from `vmap(grad)` with
  the tapped leaves held fixed; leaves it does not read are zero. Does not
  jit itself.

  Args:
    loss_fn: `(params, batch, tap) -> loss`, separable across examples,
      written against the tap protocol (see `Tap`); what it returns is
      declared by `reduction`.
    params: any pytree of float arrays.
    batch: pytree whose leaves share the leading example axis B (the tapped
      inputs may hold the examples on another axis: `batch_axis`).
    chunk_size: examples per chunk for the per-example sums of weights used
      at several positions (and for the fallback); None = all B at once,
      holding [B, D_in, D_out] per such weight.
    reduction: the per-example contract (see `REDUCTIONS`): ``mean``, a
      scalar `1/B Σ_b ℓ_b`; ``sum``, a scalar `Σ_b ℓ_b`; ``none``, the
      per-example losses `[B]`. A token-masked mean over the whole batch
      (Σ m·ℓ / Σ m) is none of these: return each example's own loss (e.g.
      its masked mean over its tokens) with ``none``.
    has_aux: `loss_fn` returns `(loss, aux)`; `aux` (any pytree, e.g. a
      carried RNN state) comes back from the same forward pass as the
      Fisher (one plain extra call only when no leaf is tapped).

  Returns:
    A pytree like `params` of float32 leaves: F ≥ 0, the mean over the B
    examples of the squared per-example gradient; with `has_aux`, the pair
    `(F, aux)`.

  Raises:
    ValueError: an unknown `reduction`, an output that does not fit it, a
      tap inside an unsupported transformation, or a batch with 0 examples
      or a scalar leaf (static shapes: also under `jit`).

  Examples:
    >>> import jax.numpy as jnp
    >>> def loss(p, b, tap=PLAIN):
    ...   return jnp.mean((tap.dense("w", b["x"], p["w"])[:, 0] - b["y"]) ** 2)
    >>> batch = {"x": jnp.eye(2), "y": jnp.zeros(2)}
    >>> f = per_example_fisher(loss, {"w": jnp.ones((2, 1))}, batch)
    >>> f["w"][:, 0].tolist()  # example b has gradient 2·e_b, squared 4·e_b
    [2.0, 2.0]
  """
  check_reduction(reduction)
  full_fn = loss_fn
  if has_aux:
    loss_fn = lambda q, b, tap: full_fn(q, b, tap)[0]
  n = _checks.num_examples(batch)
  p = disc.discover(loss_fn, params, batch, reduction)
  leaves, treedef = jax.tree.flatten(params)
  out = [jnp.zeros(jnp.shape(v), jnp.float32) for v in leaves]
  aux = None
  if p.tapped:
    try:
      tapped_f, aux = _tapped_fisher(
        full_fn, params, batch, p, n, chunk_size, reduction, has_aux
      )
    except jax.errors.UnexpectedTracerError as e:
      raise ValueError(disc.CONTEXT_HINT) from e
    for i, f in tapped_f.items():
      out[i] = f
  elif has_aux:
    aux = full_fn(params, batch, PLAIN)[1]
  if p.fallback:
    order = sorted(p.fallback)

    def rest_loss(rest, b):
      merged = list(leaves)
      for i, v in zip(order, rest, strict=True):
        merged[i] = v
      # On the fallback's batches of one, every reduction is ℓ_b.
      return jnp.sum(loss_fn(jax.tree.unflatten(treedef, merged), b, PLAIN))

    rest_f = fisher_lib.fisher_diagonal(
      rest_loss,
      [leaves[i] for i in order],
      batch,
      estimator="per_example",
      chunk_size=chunk_size,
      method="vmap",
    )
    for i, f in zip(order, rest_f, strict=True):
      out[i] = f
  f = jax.tree.unflatten(treedef, out)
  return (f, aux) if has_aux else f


def verify(
  loss_fn,
  params: PyTree,
  batch: PyTree,
  *,
  num_examples: int = 3,
  rtol: float = 1e-3,
) -> float:
  """Checks a tapped loss's contract on a few examples; returns the error.

  Computes the per-example Fisher of the first `num_examples` examples on
  the fast path and with `vmap(grad)` and compares them. They differ when
  the loss breaks the contract the fast path relies on: a wrong
  `reduction`, a forgotten `batch_axis` (a time-major input), examples
  that are not separable. Run it once on a new model (not inside jit).

  Args:
    loss_fn: a `TappedLoss` (from `tapped`).
    params, batch: as for `per_example_fisher`; examples on the leading
      axis of every leaf of `batch`.
    num_examples: how many leading examples to compare (≥ 2, so that the
      example axis is exercised).
    rtol: the largest accepted relative error (max |fast − vmap| over
      max |vmap|, per leaf).

  Returns:
    The largest relative error over the leaves.

  Raises:
    ValueError: the error exceeds `rtol` (naming the leaf), the loss is
      not a `TappedLoss`, `num_examples` is not an integer >= 2, or the
      batch holds fewer than 2 examples.
  """
  if not isinstance(loss_fn, TappedLoss):
    raise ValueError("verify needs a tap-aware loss (fisher_fast.tapped)")
  if (
    isinstance(num_examples, bool)
    or not isinstance(num_examples, int | np.integer)
    or num_examples < 2
  ):
    raise ValueError(
      f"verify needs num_examples >= 2 (an integer), got {num_examples!r}"
    )
  n = _checks.num_examples(batch)
  if n < 2:
    raise ValueError(
      f"verify needs a batch of at least 2 examples, it has {n} (the "
      "example axis must be exercised)"
    )
  k = min(num_examples, n)
  sub = jax.tree.map(lambda x: x[:k], batch)
  fast = loss_fn.per_example_fisher(params, sub)
  slow = fisher_lib.fisher_diagonal(
    loss_fn, params, sub, estimator="per_example", method="vmap"
  )
  worst, where = 0.0, None
  paths = partition.leaf_paths(params)
  for path, a, b in zip(
    paths, jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True
  ):
    scale = float(jnp.max(jnp.abs(b)))
    err = float(jnp.max(jnp.abs(a - b))) / max(scale, 1e-30)
    if scale == 0.0 and float(jnp.max(jnp.abs(a))) == 0.0:
      err = 0.0
    if err > worst:
      worst, where = err, path
  if worst > rtol:
    raise ValueError(
      f"the fast per-example Fisher differs from vmap(grad) at {where!r} "
      f"(relative error {worst:.3g} on {k} examples): check the loss's "
      "reduction, every tap's batch_axis, and that examples stay separable"
    )
  return worst


REDUCTIONS = fisher_lib.REDUCTIONS  # ("mean", "sum", "none")
check_reduction = fisher_lib.check_reduction


class TappedLoss:
  """A tap-aware loss that is also a plain `(params, batch) -> loss`.

  `fisher.fisher_diagonal(..., estimator="per_example")` recognises it (by
  its `per_example_fisher` method) and takes the fast exact path; its
  `reduction` tells every estimator what the loss returns.
  """

  def __init__(
    self, fn: Callable[[PyTree, PyTree, Tap], Array], reduction: str = "mean"
  ):
    check_reduction(reduction)
    self.fn = fn
    self.reduction = reduction
    functools.update_wrapper(self, fn)

  def __call__(self, params: PyTree, batch: PyTree, tap: Tap = PLAIN) -> Array:
    return self.fn(params, batch, tap)

  def per_example_fisher(
    self, params: PyTree, batch: PyTree, *, chunk_size: int | None = None
  ) -> PyTree:
    """`per_example_fisher(self.fn, ..., reduction=self.reduction)`.

    Returns a pytree like `params` of float32 leaves (the mean over the B
    examples on the leading axis of `batch`).
    """
    return per_example_fisher(
      self.fn, params, batch, chunk_size=chunk_size, reduction=self.reduction
    )


def tapped(
  fn: Callable[[PyTree, PyTree, Tap], Array] | None = None,
  *,
  reduction: str = "mean",
):
  """Marks `fn(params, batch, tap)` as tap-aware; a decorator.

  `@tapped` declares a mean loss; `@tapped(reduction="sum")` a summed one;
  `@tapped(reduction="none")` a loss returning the per-example losses [B]
  (the form for masked or weighted losses). See `per_example_fisher`.
  """
  if fn is None:
    return lambda f: TappedLoss(f, reduction)
  return TappedLoss(fn, reduction)
