"""The running Fisher and anchor of WPL: `FisherState` and its updates.

Pure functions on a `FisherState` (a NamedTuple of two pytrees shaped like
the params): `init_state`, `update_fisher` (the running EMA or sum over
models, docs/method.md §2), `reanchor`, `reset`, `consolidate`, and the
checks and the clip they use. The estimators that produce a new Fisher
are in `wpl_jax.fisher`, which re-exports everything here. None of these
functions jit themselves.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from wpl_jax import _checks, _trees
from wpl_jax.partition import resolve_mask
from wpl_jax.types import PyTree

MODES = ("clean", "reference")
RULES = ("ema", "sum")  # how `update_fisher` accumulates models


class FisherState(NamedTuple):
  """Running Fisher and anchor of WPL, both shaped like the params.

  Attributes:
    fisher: the stored diagonal Fisher F (in ``reference`` mode it already
      includes α, docs/method.md §2).
    anchor: θ̂, the weights as the earlier model(s) left them.
  """

  fisher: PyTree
  anchor: PyTree


def init_state(params: PyTree) -> FisherState:
  """A state with zero Fisher (no penalty yet) anchored at a copy of `params`.

  Both fields are pytrees shaped like `params`: `fisher` float32 zeros,
  `anchor` in the params' dtypes.

  The anchor is a copy, so donating `params` to a jitted step later does not
  delete it.
  """
  return FisherState(
    fisher=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params),
    anchor=jax.tree.map(jnp.copy, params),
  )


def clip_by_frobenius(
  tree: PyTree,
  max_norm: chex.Numeric,
  *,
  norm_axes: tuple[int, ...] | None = None,
) -> PyTree:
  """Rescales each leaf (or each matrix of a leaf) to norm ≤ `max_norm`.

  Args:
    tree: pytree of arrays.
    max_norm: the largest Frobenius norm kept; larger ones are scaled down to
      exactly `max_norm`, smaller ones are unchanged.
    norm_axes: None = one norm per leaf. A tuple such as `(-2, -1)` = one
      norm per slice over those axes (per matrix of a stacked `[E, H, H]`
      leaf); leaves with fewer dims than `len(norm_axes)` use one norm.

  Returns:
    The clipped tree.
  """

  def clip(x):
    axes = None
    if norm_axes is not None and x.ndim >= len(norm_axes):
      axes = tuple(norm_axes)
    norm = jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=axes is not None))
    scale = jnp.where(norm > max_norm, max_norm / jnp.maximum(norm, 1e-30), 1)
    return x * scale

  return jax.tree.map(clip, tree)


def update_fisher(
  state: FisherState,
  new_fisher: PyTree,
  *,
  mode: str = "clean",
  decay: float = 0.9,
  clip: float | None = None,
  alpha: chex.Numeric = 1.0,
  mask: PyTree | None = None,
  norm_axes: tuple[int, ...] | None = None,
  reset_unmasked: bool | None = None,
  rule: str = "ema",
) -> FisherState:
  """Accumulates a new Fisher estimate into the running one, within `mask`.

  Two accumulation rules for a sequence of models 1..k (F_j: the Fisher of
  model j at its final weights θ_j, d = `decay`):

  `rule="ema"` (the reference code's, docs/method.md §2):
    `clean`:      F ← clip((1 − decay)·F + decay·F_new)
    `reference`:  F ← α · clip_fro((1 − decay)·F + decay·F_new, clip)
    so from F = 0, after k models F = Σ_j d·(1 − d)^(k−j)·F_j: old models
    fade geometrically.
  `rule="sum"` (the paper's posterior recursion: each Laplace factor adds
  its precision, EWC-style), clean mode only, `decay` unused:
    F ← clip(F + F_new), so after k models F = Σ_j F_j, with one moving
    anchor θ̂ = θ_k (`consolidate` re-anchors): the penalty for model k+1 is
    α/2 Σ_i (Σ_j F_j,i)(θ_i − θ_k,i)².

  Example (three models, summed):
    state = init_state(params)
    for theta_j, f_j in finished_models:
      state = consolidate(state, theta_j, f_j, rule="sum")
    penalty = wpl_penalty(params, state.anchor, state.fisher, alpha=a)

  In ``reference`` mode α multiplies the stored state (docs/method.md §2), so
  it compounds: under repeated updates every touched matrix saturates at
  ‖F‖_F = α·clip exactly. In ``clean`` mode `alpha` must be left at 1 and α
  belongs in the loss (`wpl_penalty(..., alpha=α)`).

  Args:
    state: the current `FisherState`.
    new_fisher: a fresh estimate shaped like the params (`fisher_diagonal`),
      real, finite and >= 0. A concrete one (an eager call) is checked where
      `mask` is True; a traced one (inside `jit`) cannot be and is not: use
      `check_fisher` under `checkify` for that.
    mode: ``clean`` or ``reference``.
    decay: weight of the new estimate (0.9 in the reference code).
    clip: Frobenius-norm bound per leaf or per matrix (see `norm_axes`);
      None = no clipping.
    alpha: folded into F in ``reference`` mode.
    mask: which leaves (or matrices, via broadcastable bool arrays) this
      update touches, or a callable `fisher -> mask`; None = all. Leaves
      must be bool (Python bools or bool arrays): float or integer ones are
      refused, also under `jit`.
    norm_axes: see `clip_by_frobenius`.
    reset_unmasked: set F to zero outside `mask` (the reference resets the
      Fisher of matrices that got no gradient); default True in
      ``reference`` mode, False (keep) in ``clean`` mode.
    rule: ``ema`` or ``sum`` (see above).

  Returns:
    The new state (the anchor is unchanged; see `reanchor`).

  Raises:
    ValueError: a bad setting, or a concrete `new_fisher` that is negative,
      NaN or infinite where `mask` is True (naming the leaf).
    TypeError: a complex `new_fisher` or a non-bool mask leaf (naming it).
  """
  if mode not in MODES:
    raise ValueError(f"unknown WPL mode {mode!r}; choose one of {MODES}")
  _checks.scalar("decay", decay, min=0.0, max=1.0)
  if clip is not None:
    _checks.scalar("clip", clip, min=0.0, open_min=True)
  _checks.scalar("alpha", alpha, min=0.0)
  if mode == "clean":
    a = _checks.concrete_float(alpha)
    if a is not None and a != 1.0:
      raise ValueError(
        f"clean mode keeps α in the loss: leave alpha=1 here (got {a})"
      )
  if rule not in RULES:
    raise ValueError(
      f"unknown accumulation rule {rule!r}; choose one of {RULES}"
    )
  if rule == "sum" and mode != "clean":
    raise ValueError(
      "rule='sum' is the clean posterior recursion: use mode='clean' (the "
      "reference mode implements the reference code's EMA)"
    )
  if reset_unmasked is None:
    reset_unmasked = mode == "reference"
  for path, g in jax.tree_util.tree_flatten_with_path(new_fisher)[0]:
    _trees.check_real("new_fisher", path, g)  # before casting it below
  if rule == "sum":
    mixed = jax.tree.map(
      lambda f, g: f + jnp.asarray(g, f.dtype), state.fisher, new_fisher
    )
  else:
    mixed = jax.tree.map(
      lambda f, g: (1.0 - decay) * f + decay * jnp.asarray(g, f.dtype),
      state.fisher,
      new_fisher,
    )
  # The mask is resolved on the mixed Fisher, as `_select` always did.
  mask = resolve_mask(mask, mixed)
  _fisher_leaves(new_fisher, mask, "new_fisher")
  if clip is not None:
    mixed = clip_by_frobenius(mixed, clip, norm_axes=norm_axes)
  if mode == "reference":
    mixed = jax.tree.map(lambda f: alpha * f, mixed)
  fallback = (
    jax.tree.map(jnp.zeros_like, state.fisher)
    if reset_unmasked
    else state.fisher
  )
  fisher = _select(mask, mixed, fallback)
  return state._replace(fisher=fisher)


_MASK = frozenset({"mask"})


def check_fisher(
  fisher: PyTree,
  *,
  mask: PyTree | None = None,
  name: str = "fisher",
) -> None:
  """Checks that a Fisher is finite and >= 0 (where `mask` is True).

  `wpl_penalty`, `add_wpl` and `update_fisher` (so `consolidate`) run this
  check on every concrete Fisher they get. A traced one (an argument of a
  jitted step) has no values at trace time, so they skip it and a negative
  F would silently push θ away from the anchor. This function is the
  checked mode for that case: call it inside the jitted function and run
  that under `jax.experimental.checkify`::

    def step(params, fisher):
      check_fisher(fisher)
      return wpl_penalty(params, anchor, fisher, alpha=1.0)

    from jax.experimental import checkify
    err, out = checkify.checkify(jax.jit(step))(params, fisher)
    err.throw()  # raises checkify.JaxRuntimeError naming the leaf

  (Traced, it must run under `checkify.checkify`: plain `jit` refuses an
  unfunctionalized check.)

  Args:
    fisher: a pytree of real arrays.
    mask: None (every entry), or a bool tree like `fisher` (leaves may
      broadcast) or a callable `fisher -> mask`: only True entries count.
    name: the tree's name in the message.

  Raises:
    ValueError: a concrete leaf with a negative, NaN or infinite entry, e.g.
      "fisher['w']: negative entries; a Fisher must be finite and >= 0".
    TypeError: a complex leaf, or a non-bool mask leaf.
  """
  leaves, masks = _fisher_leaves(fisher, mask, name)
  from jax.experimental import checkify  # noqa: PLC0415

  for i, f in enumerate(leaves):
    m = None if masks is None else masks[i]
    if m is False or not (
      isinstance(f, jax.core.Tracer) or isinstance(m, jax.core.Tracer)
    ):
      continue  # skipped by the mask, or checked above
    f = jnp.asarray(f)
    ok = jnp.isfinite(f) & (f >= 0)
    if m is not None and m is not True:
      ok = ok | ~jnp.broadcast_to(m, f.shape)
    path = _trees.path_str(name, _trees.leaf_path(fisher, i))
    msg = f"{path}: negative, NaN or infinite entries; a Fisher must be "
    msg += "finite and >= 0"
    checkify.check(jnp.all(ok), msg.replace("{", "{{").replace("}", "}}"))


def _fisher_leaves(fisher: PyTree, mask, name: str):
  """`(leaves, mask leaves or None)`, after the eager value check."""
  mask = resolve_mask(mask, fisher)
  others = {} if mask is None else {"mask": mask}
  leaves, _, o = _trees.flatten_like(
    fisher, broadcast=_MASK, boolean=_MASK, **others
  )
  masks = o.get("mask")
  _checks.fisher_values(name, fisher, leaves, masks)
  return leaves, masks


def _select(mask, on_true: PyTree, on_false: PyTree) -> PyTree:
  """`where(mask, on_true, on_false)` leafwise; mask leaves may broadcast."""
  mask = resolve_mask(mask, on_true)
  if mask is None:
    return on_true
  t_leaves, treedef, o = _trees.flatten_like(
    on_true, broadcast=_MASK, boolean=_MASK, other=on_false, mask=mask
  )
  out = []
  for t, f, m in zip(t_leaves, o["other"], o["mask"], strict=True):
    if m is True:
      out.append(t)
    elif m is False:
      out.append(f)
    else:
      out.append(jnp.where(jnp.broadcast_to(m, jnp.shape(t)), t, f))
  return jax.tree.unflatten(treedef, out)


def reset(state: FisherState, mask: PyTree | None = None) -> FisherState:
  """Zeroes the Fisher (where `mask`: a bool tree like params, or None = all).

  The reference does this every 2 epochs. Shapes are unchanged.
  """
  zeros = jax.tree.map(jnp.zeros_like, state.fisher)
  return state._replace(fisher=_select(mask, zeros, state.fisher))


def reanchor(
  state: FisherState, params: PyTree, mask: PyTree | None = None
) -> FisherState:
  """Sets the anchor θ̂ ← θ where `mask` (the reference re-anchors all edges).

  `params` and `mask` (bool, or None = every leaf) are trees shaped like
  `state.anchor`.

  The anchor gets copies of `params` (also under `jax.jit`, which would
  otherwise forward the same buffers), so donating `params` afterwards is
  safe.
  """
  params = jax.tree.map(jnp.copy, params)
  return state._replace(anchor=_select(mask, params, state.anchor))


def consolidate(
  state: FisherState, params: PyTree, new_fisher: PyTree, **update_kwargs
) -> FisherState:
  """Ends one model's turn: `update_fisher(...)` then `reanchor(params)`.

  Args:
    state: the current state.
    params: the weights the finished model leaves behind (new anchor), a
      pytree shaped like `state.anchor`.
    new_fisher: its Fisher estimate, a pytree shaped like `state.fisher`
      (checked as in `update_fisher`: finite and >= 0 when concrete).
    **update_kwargs: passed to `update_fisher` (mode, decay, clip, ...).

  Returns:
    The new state.
  """
  return reanchor(update_fisher(state, new_fisher, **update_kwargs), params)
