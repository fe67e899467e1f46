"""Diagonal Fisher estimators and the running Fisher/anchor state of WPL.

Three estimators, by name, all returning a pytree shaped like `params`:

* ``per_example``: the empirical Fisher, mean over examples of the squared
  per-example gradient, `F = 1/B Σ_b (∇ℓ_b)²`.
* ``batch_grad_squared``: the square of the batch-mean gradient,
  `F = (1/B Σ_b ∇ℓ_b)²`. This is what the reference code uses (docs/method.md
  §2); it is cheaper and biased (cross-example terms do not vanish).
* ``sampled``: the true Fisher,
  `F = 1/B Σ_b E_{y~p_θ(·|x_b)} (∇ log p_θ(y|x_b))²`, with one
  (or `num_samples`) label(s) drawn from the model's own predictive
  distribution per example.

*One example* is one slice along the leading axis of every leaf of `batch`.
`loss_fn(params, batch)` must be separable across examples (no batch
statistics), since per-example estimators call it on batches of one, and
declare what it returns (the per-example contract, `reduction`): ``mean``
(default) the mean of the per-example losses ℓ_b over the batch, ``sum``
their sum, ``none`` the vector [B] of them. All three give the same F on
every path. A token-masked mean over the whole batch (Σ m·ℓ / Σ m, the usual
padded LM loss) is none of these: return each example's own masked mean
with ``none``. For a sequence model an example is a whole sequence and ℓ_b
its loss as `loss_fn` reduces it: put the batch axis first.

Flax Linen models with `batch_stats` (batch-norm): run the loss in eval mode
(`use_running_average=True`, `mutable=False`) inside `loss_fn`. In training
mode a batch of one normalises each example by its own statistics, so the
per-example gradients of every layer before the batch-norm are about 0 and F
comes out ≈ 0 there without any error. WPL pulls parameters only: the
running statistics themselves are not protected (model A evaluated after B
uses the statistics B left, unless A keeps its own copy).

The running state (`FisherState`) holds the Fisher and the anchor, and is
updated by pure functions. None of these functions jit themselves; all run
under `jax.jit` (pass `estimator`, `mode` and the other strings statically),
and eagerly they are slow (one dispatch per op): close over the loss, e.g.
`jax.jit(lambda p, b: fisher_diagonal(loss_fn, p, b))(params, batch)`. A
well-trained model's empirical Fisher is small (1e-9 to 1e-6 per weight on
the digits examples), so α must be large, or F scaled (e.g. to mean 1 over
the shared leaves, as the two-model study does) before α reads as a strength.
"""

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from wpl_jax import _checks, _trees
from wpl_jax.partition import resolve_mask
from wpl_jax.types import Array, PRNGKey, PyTree

ESTIMATORS = ("per_example", "batch_grad_squared", "sampled")
MODES = ("clean", "reference")
METHODS = ("auto", "vmap", "taps")
RULES = ("ema", "sum")  # how `update_fisher` accumulates models
# What a loss returns (the per-example contract): the mean or the sum of the
# per-example losses over the batch, or the per-example losses [B].
REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
  """Raises ValueError unless `reduction` is one of `REDUCTIONS`."""
  if reduction not in REDUCTIONS:
    raise ValueError(
      f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}"
    )


def _reduced(loss_fn, reduction: str, to: str):
  """`loss_fn` returning its batch mean (`to="mean"`) or an example's loss.

  On a batch of one (`to="example"`) every reduction is that example's
  loss; the batch mean is the mean (divides a sum by B, averages [B]).
  """
  if reduction == "mean":

    def mean_fn(params, batch):
      out = loss_fn(params, batch)
      if jnp.shape(out) != ():  # static: free under jit
        raise ValueError(
          f"loss_fn returns shape {jnp.shape(out)}, but reduction='mean' "
          "declares the scalar batch mean (per-example losses: declare "
          "reduction='none')"
        )
      return out

    return mean_fn

  def fn(params, batch):
    out = loss_fn(params, batch)
    if to == "example":
      return jnp.sum(out)
    return jnp.sum(out) / _batch_size(batch)

  return fn


LossFn = Callable[[PyTree, PyTree], Array]


def _square(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda g: g * g, tree)


def _expand(example: PyTree) -> PyTree:
  return jax.tree.map(lambda x: x[None], example)


def _batch_size(batch: PyTree) -> int:
  return _checks.num_examples(batch, allow_empty=True)


def sum_examples(x: Array) -> Array:
  """`jnp.sum(x, axis=0)` as pairwise sums of halves: [n, ...] → [...].

  XLA's CPU reduction over a large leading axis runs far below memory
  speed (about 6× slower than these elementwise adds for [64, 128, 384],
  benchmarks/flax_bench.py); pairwise summation is also the more accurate.
  """
  while x.shape[0] > 1:
    half = x.shape[0] // 2
    head = x[:half] + x[half : 2 * half]
    x = head if x.shape[0] % 2 == 0 else jnp.concatenate([head, x[-1:]])
  return x[0] if x.shape[0] else jnp.zeros(x.shape[1:], x.dtype)


def chunked_sum(
  part: Callable[[PyTree], PyTree], xs: PyTree, chunk_size: int | None
) -> PyTree:
  """`part(xs)` computed `chunk_size` examples at a time, summed over chunks.

  `part` maps a chunk of examples (leading axis of every leaf of `xs`) to a
  pytree summed over that chunk; the chunks run in a `lax.scan`, so memory
  scales with `chunk_size`, not with the number of examples.
  """
  n = _batch_size(xs)
  if chunk_size is None or chunk_size >= n:
    return part(xs)
  n_chunks, rest = divmod(n, chunk_size)
  head = jax.tree.map(
    lambda x: x[: n_chunks * chunk_size].reshape(
      (n_chunks, chunk_size) + x.shape[1:]
    ),
    xs,
  )

  def body(acc, chunk):
    return jax.tree.map(jnp.add, acc, part(chunk)), None

  first = jax.tree.map(lambda x: x[0], head)
  zeros = jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(part, first)
  )
  total, _ = jax.lax.scan(body, zeros, head)
  if rest:
    tail = jax.tree.map(lambda x: x[n_chunks * chunk_size :], xs)
    total = jax.tree.map(jnp.add, total, part(tail))
  return total


def _sum_squared_grads(
  sq_grad_fn: Callable, xs: PyTree, chunk_size: int | None
) -> PyTree:
  """Σ over examples of `sq_grad_fn(example_xs)`, `chunk_size` at a time."""
  return chunked_sum(
    lambda c: jax.tree.map(sum_examples, jax.vmap(sq_grad_fn)(c)),
    xs,
    chunk_size,
  )


def fisher_diagonal(
  loss_fn: LossFn | None,
  params: PyTree,
  batch: PyTree,
  *,
  estimator: str = "per_example",
  key: PRNGKey | None = None,
  logits_fn: LossFn | None = None,
  chunk_size: int | None = None,
  num_samples: int = 1,
  method: str = "auto",
  reduction: str | None = None,
) -> PyTree:
  """Estimates the diagonal Fisher information at `params`.

  Args:
    loss_fn: `(params, batch) -> loss` over the leading axis of `batch`, of
      the form `reduction` declares (used by ``per_example`` and
      ``batch_grad_squared``).
    params: the parameters (any pytree of float arrays).
    batch: a pytree of arrays whose leaves share the leading example axis B.
    estimator: ``per_example``, ``batch_grad_squared`` or ``sampled``.
    key: PRNG key; required by ``sampled``.
    logits_fn: `(params, batch) -> logits [B, ..., C]` (unnormalized log
      probabilities over C classes, any number of positions per example);
      required by ``sampled``. An example's log-likelihood is the mean over
      its positions of log softmax(logits)[y].
    chunk_size: bound memory by computing per-example gradients this many
      examples at a time (``per_example`` and ``sampled``); None = all at
      once (a B × params buffer).
    num_samples: labels drawn per example by ``sampled``; the squared
      gradients are averaged over them.
    method: how ``per_example`` forms the per-example gradients: ``vmap``
      (`vmap(grad)`, any loss); ``taps`` (the loss's own exact fast path:
      `loss_fn` must have a `per_example_fisher` method, as the losses made
      by `wpl_jax.fisher_fast.tapped` do); ``auto`` (default): ``taps``
      when `loss_fn` has one, else ``vmap``. Both give the same F. Other
      estimators ignore it.
    reduction: ``mean``, ``sum`` or ``none`` (see the module docstring);
      None = the loss's own `reduction` attribute (`fisher_fast.tapped`
      sets it), else ``mean``.

  Returns:
    A pytree shaped like `params` (float32 leaves), F ≥ 0, averaged over the
    B examples (and over samples for ``sampled``).

  Raises:
    ValueError: unknown estimator or method, a missing
      `key`/`logits_fn`/`loss_fn`, a batch with 0 examples or a scalar leaf
      (no example axis), or a non-scalar loss under ``reduction='mean'``.
      All are checked on static shapes, so also under `jax.jit`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> loss = lambda p, b: jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)
    >>> batch = {"x": jnp.eye(2), "y": jnp.zeros(2)}
    >>> f = fisher_diagonal(loss, {"w": jnp.ones(2)}, batch,
    ...                     estimator="per_example")
    >>> f["w"].tolist()  # example b has gradient 2·e_b, squared 4·e_b
    [2.0, 2.0]
  """
  if estimator not in ESTIMATORS:
    raise ValueError(
      f"unknown Fisher estimator {estimator!r}; choose one of {ESTIMATORS}"
    )
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
  _checks.chunk_size(chunk_size)
  declared = getattr(loss_fn, "reduction", None)
  if reduction is None:
    reduction = declared or "mean"
  check_reduction(reduction)
  if declared is not None and declared != reduction:
    raise ValueError(
      f"reduction={reduction!r} contradicts the loss's own {declared!r}"
    )
  n = _checks.num_examples(batch)
  if estimator == "batch_grad_squared":
    if loss_fn is None:
      raise ValueError("estimator 'batch_grad_squared' needs loss_fn")
    mean_loss = _reduced(loss_fn, reduction, "mean")
    return _square(_f32(jax.grad(mean_loss)(params, batch)))

  if estimator == "per_example":
    if loss_fn is None:
      raise ValueError("estimator 'per_example' needs loss_fn")
    fast = getattr(loss_fn, "per_example_fisher", None)
    if method == "taps" and fast is None:
      raise ValueError(
        "method 'taps' needs a tap-aware loss_fn (wpl_jax.fisher_fast.tapped)"
      )
    if method != "vmap" and fast is not None:
      return fast(params, batch, chunk_size=chunk_size)

    example_loss = _reduced(loss_fn, reduction, "example")

    def sq_grad(example):
      return _square(_f32(jax.grad(example_loss)(params, _expand(example))))

    total = _sum_squared_grads(sq_grad, batch, chunk_size)
    return jax.tree.map(lambda s: s / n, total)

  # estimator == "sampled"
  if logits_fn is None:
    raise ValueError("estimator 'sampled' needs logits_fn")
  if key is None:
    raise ValueError("estimator 'sampled' needs key")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")

  def sampled_nll(p, example, k):
    logits = logits_fn(p, _expand(example))
    y = jax.random.categorical(k, jax.lax.stop_gradient(logits))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))

  def sq_grad_sampled(xs):
    example, k = xs
    keys = jax.random.split(k, num_samples)
    sq = jax.vmap(
      lambda kk: _square(_f32(jax.grad(sampled_nll)(params, example, kk)))
    )(keys)
    return jax.tree.map(lambda s: jnp.mean(s, 0), sq)

  keys = jax.random.split(key, n)
  total = _sum_squared_grads(sq_grad_sampled, (batch, keys), chunk_size)
  return jax.tree.map(lambda s: s / n, total)


def _f32(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), tree)


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
