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
updated by pure functions (`wpl_jax.fisher_state`, re-exported here). None
of these functions jit themselves; all run under `jax.jit` (pass
`estimator`, `mode` and the other strings statically),
and eagerly they are slow (one dispatch per op): close over the loss, e.g.
`jax.jit(lambda p, b: fisher_diagonal(loss_fn, p, b))(params, batch)`. A
well-trained model's empirical Fisher is small (1e-9 to 1e-6 per weight on
the digits examples), so α must be large, or F scaled (e.g. to mean 1 over
the shared leaves, as the two-model study does) before α reads as a strength.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from wpl_jax import _checks

# The running state, re-exported: `fisher.FisherState`, `fisher.update_fisher`.
from wpl_jax.fisher_state import (  # noqa: F401
  MODES,
  RULES,
  FisherState,
  check_fisher,
  clip_by_frobenius,
  consolidate,
  init_state,
  reanchor,
  reset,
  update_fisher,
)
from wpl_jax.types import Array, PRNGKey, PyTree

ESTIMATORS = ("per_example", "batch_grad_squared", "sampled")
METHODS = ("auto", "vmap", "taps")
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
