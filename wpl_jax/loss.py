"""The weight plasticity loss (WPL): a pure penalty and its optax transform.

Paper §3 (docs/method.md §1): a Laplace approximation of the earlier model's
posterior with a diagonal Fisher gives, on the shared parameters θs only,

    L_WPL = L(θ) + α/2 Σ_i F_i (θs_i − θ̂s_i)²

where θ̂s is the anchor (the shared weights as the earlier model left them)
and F the diagonal Fisher of the earlier model at θ̂s. Private parameters
move freely; a boolean mask tree (see `wpl_jax.partition`) says which leaves
are shared.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from wpl_jax import _checks, _trees
from wpl_jax.partition import resolve_mask
from wpl_jax.types import Array, PyTree

_MASK = frozenset({"mask"})
_REAL = frozenset({"params", "updates", "anchor", "fisher"})


def _is_static_false(m) -> bool:
  return m is False or (isinstance(m, bool) and not m)


def _is_static_true(m) -> bool:
  return m is None or m is True


def wpl_penalty(
  params: PyTree,
  anchor: PyTree,
  fisher: PyTree,
  *,
  alpha: chex.Numeric,
  mask: PyTree | None = None,
) -> Array:
  """Weight plasticity penalty `alpha/2 · Σ mask·F·(θ − θ̂)²`.

  Sums over every element of every leaf (no mean), in float32 (or wider
  when the params are).

  Args:
    params: θ, any pytree of real arrays (nested dicts, Flax params, NNX
      State, tuples, dataclass pytrees).
    anchor: θ̂, same structure and shapes as `params`.
    fisher: F ≥ 0, the diagonal Fisher, same structure and shapes; finite.
      A concrete F (an eager call, or an array a jitted function closes
      over) is checked where `mask` is True, once per call (at trace time
      under `jit`). A traced F (an argument of a jitted function) has no
      values yet and is NOT checked, so a negative F there silently pushes
      θ away from θ̂: check it with `wpl_jax.fisher.check_fisher` under
      `jax.experimental.checkify` if it may be bad.
    alpha: strength α ≥ 0, a real scalar (a Python number or a traced
      scalar; a traced one's shape is checked, its value is not).
    mask: optional tree like `params` whose leaves are Python bools or bool
      arrays broadcastable to the leaf (e.g. `[E, 1, 1]` selecting matrices of
      a stacked `[E, H, H]` leaf), or a callable `params -> mask`. Leaves or
      elements where it is False contribute nothing and get zero gradient.
      None means every leaf. Float or integer leaves (even of 0s and 1s) are
      refused: convert with `m.astype(bool)`.

  Returns:
    A scalar: float32, or float64 when the params are float64.

  Raises:
    ValueError: the trees differ in structure or shape; the message names the
      first offending path, e.g. "params['a']['w']: shape (3, 4) vs anchor
      (4, 3)". Raised at trace time. Also a non-scalar `alpha` (at trace
      time), a concrete negative/NaN/inf `alpha`, or a concrete Fisher leaf
      with a negative, NaN or infinite entry (naming it).
    TypeError: `alpha` is not a real number; a complex leaf of `params`,
      `anchor` or `fisher`, or a non-bool mask leaf (naming its path; at
      trace time).

  Examples:
    >>> import jax.numpy as jnp
    >>> p = {"w": jnp.array([1.0, 2.0])}
    >>> a = {"w": jnp.array([0.0, 0.0])}
    >>> f = {"w": jnp.array([1.0, 0.5])}
    >>> float(wpl_penalty(p, a, f, alpha=2.0))  # (1·1 + 0.5·4) · 2/2
    3.0
  """
  return _penalty(params, anchor, fisher, alpha, mask, check_fisher=True)


def _penalty(params, anchor, fisher, alpha, mask, *, check_fisher: bool):
  _checks.scalar("alpha", alpha, min=0.0)
  mask = resolve_mask(mask, params)
  others = {"anchor": anchor, "fisher": fisher}
  if mask is not None:
    others["mask"] = mask
  p_leaves, _, o = _trees.flatten_like(
    params, broadcast=_MASK, boolean=_MASK, real=_REAL, **others
  )
  if check_fisher:
    _checks.fisher_values("fisher", fisher, o["fisher"], o.get("mask"))
  m_leaves = o.get("mask", [None] * len(p_leaves))
  total = jnp.zeros([], jnp.float32)
  for x, a, f, m in zip(
    p_leaves, o["anchor"], o["fisher"], m_leaves, strict=True
  ):
    if _is_static_false(m):
      continue
    dtype = jnp.promote_types(jnp.result_type(x), jnp.float32)
    d = jnp.asarray(x, dtype) - jnp.asarray(a, dtype)
    f = jnp.asarray(f, dtype)
    if not _is_static_true(m):
      # Mask the inputs, not only the output (the "double where"): masked
      # elements then get exactly zero gradient even where F is not finite.
      m = jnp.broadcast_to(m, d.shape)
      d = jnp.where(m, d, 0)
      f = jnp.where(m, f, 0)
    total = total + jnp.sum(f * d * d)
  return 0.5 * alpha * total


def l2_penalty(
  params: PyTree, *, weight: chex.Numeric, mask: PyTree | None = None
) -> Array:
  """Plain L2 term `weight/2 · Σ mask·θ²` (the paper's λ/2 (‖θs‖² + ‖θ2‖²)).

  As an optimizer step this is `optax.add_decayed_weights(weight, mask)`,
  which the reference code applies as SGD weight decay on all parameters.

  Args:
    params: any pytree of arrays.
    weight: λ.
    mask: as in `wpl_penalty`.

  Returns:
    A float32 scalar, summed over all elements.
  """
  zeros = jax.tree.map(jnp.zeros_like, params)
  ones = jax.tree.map(jnp.ones_like, params)
  # F = 1 needs no value check.
  return _penalty(params, zeros, ones, weight, mask, check_fisher=False)


class AddWPLState(NamedTuple):
  """State of `add_wpl`: the step count (for an α schedule)."""

  count: chex.Array


def add_wpl(
  alpha: float | optax.Schedule, mask: PyTree | None = None
) -> optax.GradientTransformationExtraArgs:
  """Adds the WPL gradient `alpha · mask · F · (θ − θ̂)` to the updates.

  Built like `optax.add_decayed_weights`: `params` are a side input, and the
  anchor θ̂ and Fisher F arrive as keyword-only extra arguments, so that
  re-anchoring (consolidating) between models is just passing new values:
  the transform holds no copy of them. Chain it before the optimizer::

    tx = optax.chain(add_wpl(alpha), optax.add_decayed_weights(lam),
                     optax.sgd(lr))
    updates, opt_state = tx.update(grads, opt_state, params,
                                   wpl_anchor=anchor, wpl_fisher=fisher)

  N steps of this chain equal N steps of the same optimizer on
  `loss + wpl_penalty(params, anchor, fisher, alpha=alpha, mask=mask)`.

  Args:
    alpha: WPL strength α ≥ 0 (a real scalar), or an optax schedule of the
      step count (its value is checked as `alpha` at each `update`: the
      shape always, the value when concrete).
    mask: a mask tree or callable `params -> mask` (see `wpl_penalty`:
      bool leaves only). An extra argument `wpl_mask=` given to `update`
      overrides it for that step (e.g. the edges of the architecture
      sampled in this step).

  Returns:
    A `GradientTransformationExtraArgs`; `update` requires `params`,
    `wpl_anchor` and `wpl_fisher`. `update` checks them as `wpl_penalty`
    does: a concrete `wpl_fisher` (eager `update`) must be finite and >= 0
    where the mask is True; a traced one (inside `jit`) is not checked
    (see `wpl_jax.fisher.check_fisher`); complex leaves and non-bool masks
    are refused also under `jit`.

  Raises:
    TypeError: `alpha` is neither a real number nor callable.
    ValueError: `alpha` is not a scalar, or is negative, NaN or infinite.
  """

  if not callable(alpha):
    _checks.scalar("alpha", alpha, min=0.0)

  def init_fn(params):
    del params
    return AddWPLState(count=jnp.zeros([], jnp.int32))

  def update_fn(
    updates,
    state,
    params=None,
    *,
    wpl_anchor=None,
    wpl_fisher=None,
    wpl_mask=None,
    **extra_args,
  ):
    del extra_args
    if params is None:
      raise ValueError(
        "add_wpl requires params: pass update(updates, state, params)"
      )
    if wpl_anchor is None or wpl_fisher is None:
      raise ValueError(
        "add_wpl needs extra args wpl_anchor= and wpl_fisher= in update()"
      )
    a = alpha(state.count) if callable(alpha) else alpha
    if callable(alpha):
      _checks.scalar("alpha", a, min=0.0)
    m = resolve_mask(wpl_mask if wpl_mask is not None else mask, params)
    others = {"updates": updates, "anchor": wpl_anchor, "fisher": wpl_fisher}
    if m is not None:
      others["mask"] = m
    p_leaves, treedef, o = _trees.flatten_like(
      params, broadcast=_MASK, boolean=_MASK, real=_REAL, **others
    )
    _checks.fisher_values("wpl_fisher", wpl_fisher, o["fisher"], o.get("mask"))
    m_leaves = o.get("mask", [None] * len(p_leaves))
    out = []
    for u, x, an, f, mk in zip(
      o["updates"], p_leaves, o["anchor"], o["fisher"], m_leaves, strict=True
    ):
      if _is_static_false(mk):
        out.append(u)
        continue
      # In at least float32 (as `wpl_penalty`), cast at the end: in float16
      # F = 1e-8 would underflow and α·F (reference mode, >= 600) overflow.
      dtype = jnp.promote_types(jnp.result_type(x), jnp.float32)
      d = jnp.asarray(x, dtype) - jnp.asarray(an, dtype)
      f = jnp.asarray(f, dtype)
      if not _is_static_true(mk):
        mk = jnp.broadcast_to(mk, d.shape)
        d, f = jnp.where(mk, d, 0), jnp.where(mk, f, 0)
      g = a * f * d
      out.append((jnp.asarray(u, dtype) + g).astype(u.dtype))
    new_updates = jax.tree.unflatten(treedef, out)
    return new_updates, AddWPLState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
