"""Losses and evaluation of the ENAS supernet's children.

The cross-entropy of a child's logits, the decoder fused with the
cross-entropy in chunks of tokens (a custom VJP that never holds the
[T·B, V] logits), and eval-mode losses and perplexities of one child
(`wpl_jax.enas.supernet.SharedRNN`).
"""

import jax
import jax.numpy as jnp
import optax

from wpl_jax.enas.search_space import Arch
from wpl_jax.enas.supernet import SharedRNN
from wpl_jax.types import Array, PyTree


def cross_entropy(logits_TxBxV: Array, targets_TxB: Array) -> Array:
  """Mean next-token cross-entropy (nats) over all T·B tokens: a scalar."""
  if logits_TxBxV.shape[:-1] != targets_TxB.shape:
    raise ValueError(
      f"logits {logits_TxBxV.shape} do not match targets {targets_TxB.shape}"
    )
  return jnp.mean(
    optax.softmax_cross_entropy_with_integer_labels(logits_TxBxV, targets_TxB)
  )


def chunked_cross_entropy(
  params: PyTree,
  out_TxBxH: Array,
  targets_TxB: Array,
  *,
  chunk: int,
) -> Array:
  """Mean next-token cross-entropy (nats) over T·B tokens, decoded in chunks.

  Equals `cross_entropy(logits, targets)` for the logits of the tied
  decoder (`params["embedding"]` [V, H], `params["decoder_bias"]` [V]),
  but decodes `chunk` tokens at a time, so neither the forward nor the
  backward pass holds more than [chunk, V] logits: under differentiation
  one pass over the chunks forms the value and every gradient while each
  chunk's logits are in cache (a custom VJP; no logits are stored or
  recomputed). With V = 10k the full logits are a memory-bound 90 MB
  buffer at B·T = 64·35; chunks of 256 tokens make an ENAS training step
  0.90× as long at H = 200 and 0.85× at H = 400 on a 2-core CPU
  (WORKSPACE §6.2), and 1.2× faster at H = 32 (WORKSPACE §7).

  Args:
    params: the shared model's params (only the decoder is read).
    out_TxBxH: float32[T, B, H] decoder inputs (`apply(..., decode=False)`).
    targets_TxB: int32[T, B] next tokens.
    chunk: at most this many tokens per chunk (>= 1), as `chunked_nll_sum`.

  Returns:
    A float32 scalar, the mean over all T·B tokens.
  """
  return chunked_nll_sum(params, out_TxBxH, targets_TxB, chunk=chunk) / (
    targets_TxB.size
  )


def chunked_nll_sum(
  params: PyTree,
  out_TxBxH: Array,
  targets_TxB: Array,
  weights_TxB: Array | None = None,
  *,
  chunk: int,
) -> Array:
  """Σ weights · token NLL (nats) of the tied decoder, `chunk` tokens at a time.

  Args:
    params: the shared model's params (only the decoder is read).
    out_TxBxH: float32[T, B, H] decoder inputs (`apply(..., decode=False)`).
    targets_TxB: int32[T, B] next tokens.
    weights_TxB: float32[T, B] per-token weights (e.g. a 0/1 padding mask);
      None = all ones.
    chunk: at most this many tokens per chunk (>= 1): the T·B tokens are
      split into K = ⌈T·B / chunk⌉ equal chunks, padded by fewer than K.

  Returns:
    A float32 scalar: the weighted sum over the T·B tokens (no mean).
  """
  if out_TxBxH.shape[:-1] != targets_TxB.shape:
    raise ValueError(
      f"outputs {out_TxBxH.shape} do not match targets {targets_TxB.shape}"
    )
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  emb, bias = params["embedding"], params["decoder_bias"]
  h = out_TxBxH.shape[-1]
  n = targets_TxB.size
  # K equal chunks of at most `chunk` tokens: padding < K tokens.
  num_chunks = -(-n // chunk)
  chunk = -(-n // num_chunks)
  pad = num_chunks * chunk - n
  if weights_TxB is None:
    weights = jnp.ones((n,), out_TxBxH.dtype)
  else:
    weights = jnp.asarray(weights_TxB, out_TxBxH.dtype).reshape(n)
  out = jnp.pad(out_TxBxH.reshape(n, h), ((0, pad), (0, 0)))
  tgt = jnp.pad(targets_TxB.reshape(n), (0, pad))
  w = jnp.pad(weights, (0, pad))  # padding weighs 0

  xs = (out.reshape(-1, chunk, h), tgt.reshape(-1, chunk), w.reshape(-1, chunk))
  return _decoder_nll_sum(xs[0], emb, bias, xs[1], xs[2])


def _chunk_logits(o_CxH: Array, emb_VxH: Array, bias_V: Array) -> Array:
  return o_CxH @ emb_VxH.T + bias_V[None]


@jax.custom_vjp
def _decoder_nll_sum(
  out_KxCxH: Array, emb_VxH: Array, bias_V: Array, tgt_KxC: Array, w_KxC: Array
) -> Array:
  """Σ w · NLL over K chunks of C tokens; the value alone (no gradients)."""

  def body(total, xs):
    o, t, w = xs
    nll = optax.softmax_cross_entropy_with_integer_labels(
      _chunk_logits(o, emb_VxH, bias_V), t
    )
    return total + jnp.sum(w * nll), None

  total, _ = jax.lax.scan(
    body, jnp.zeros([], out_KxCxH.dtype), (out_KxCxH, tgt_KxC, w_KxC)
  )
  return total


def _decoder_nll_sum_fwd(out_KxCxH, emb_VxH, bias_V, tgt_KxC, w_KxC):
  """Value and the needed gradients in one pass over the chunks.

  The loss is a scalar, so its gradients are known up to the incoming
  cotangent: each chunk's [C, V] logits make the softmax, d logits =
  w · (softmax − onehot), then d out = d logits @ E and d E += d logitsᵀ @
  out, all while the chunk is in cache. No logits are kept for the
  backward pass and none are recomputed (`jax.checkpoint` would redo the
  forward GEMM). Only the gradients of perturbed inputs are formed
  (`symbolic_zeros`): a Fisher step that differentiates the edges alone
  skips the [V, H] d E GEMM. Residuals: d out [K, C, H], d E [V, H],
  d bias [V] and the per-token NLL [K, C] (the weights' gradient), each
  None when its input is not differentiated.
  """
  # Float inputs come as `CustomVJPPrimal`s (value, perturbed); the
  # integer targets as they are.
  out_KxCxH, need_out = out_KxCxH.value, out_KxCxH.perturbed
  emb_VxH, need_emb = emb_VxH.value, emb_VxH.perturbed
  bias_V, need_bias = bias_V.value, bias_V.perturbed
  w_KxC, need_w = w_KxC.value, w_KxC.perturbed
  tgt_KxC = getattr(tgt_KxC, "value", tgt_KxC)
  need_logits = need_out or need_emb or need_bias
  v = emb_VxH.shape[0]

  def body(carry, xs):
    total, d_emb, d_bias = carry
    o, t, w = xs
    logits = _chunk_logits(o, emb_VxH, bias_V)
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
    d_o = None
    if need_logits:
      onehot = jnp.arange(v)[None] == t[:, None]
      d_logits = (jnp.exp(logits - lse[:, None]) - onehot) * w[:, None]
      if need_emb:
        d_emb = d_emb + d_logits.T @ o
      if need_bias:
        d_bias = d_bias + jnp.sum(d_logits, axis=0)
      if need_out:
        d_o = d_logits @ emb_VxH
    return (total + jnp.sum(w * nll), d_emb, d_bias), (d_o, nll)

  init = (
    jnp.zeros([], out_KxCxH.dtype),
    jnp.zeros_like(emb_VxH) if need_emb else None,
    jnp.zeros_like(bias_V) if need_bias else None,
  )
  (total, d_emb, d_bias), (d_out, nll) = jax.lax.scan(
    body, init, (out_KxCxH, tgt_KxC, w_KxC)
  )
  return total, (d_out, d_emb, d_bias, nll if need_w else None)


def _decoder_nll_sum_bwd(res, g):
  scale = lambda d: None if d is None else g * d  # noqa: E731
  d_out, d_emb, d_bias, nll = res
  return scale(d_out), scale(d_emb), scale(d_bias), None, scale(nll)


_decoder_nll_sum.defvjp(
  _decoder_nll_sum_fwd, _decoder_nll_sum_bwd, symbolic_zeros=True
)


def eval_loss(
  model: SharedRNN,
  variables: PyTree,
  arch: Arch,
  inputs_TxB: Array,
  targets_TxB: Array,
  hidden_BxH: Array,
) -> tuple[Array, Array]:
  """Eval-mode mean token loss of one child on one batch.

  Dropout off, running batch-norm statistics, nothing mutated.

  Returns:
    `(loss, new_hidden)`: the scalar mean cross-entropy over T·B tokens and
    the float32[B, H] hidden state to carry to the next batch.
  """
  logits, new_hidden = model.apply(
    variables, inputs_TxB, hidden_BxH, arch, train=False
  )
  return cross_entropy(logits, targets_TxB), new_hidden


def validation_perplexity(
  model: SharedRNN,
  variables: PyTree,
  arch: Arch,
  inputs_NxTxB: Array,
  targets_NxTxB: Array,
  hidden_BxH: Array,
) -> Array:
  """Eval-mode perplexity of one child over consecutive batches.

  The hidden state is carried from batch to batch (`lax.scan`), and every
  token counts once: exp of the mean cross-entropy over all N·T·B tokens
  (unlike the reference's `evaluate()`, docs/method.md §4 "known faults").

  Args:
    model, variables: the shared model and its variables.
    arch: one `Arch`.
    inputs_NxTxB, targets_NxTxB: int32[N, T, B] consecutive batches.
    hidden_BxH: float32[B, H] initial hidden state.

  Returns:
    A float32 scalar perplexity.
  """

  def body(hidden, batch):
    loss, hidden = eval_loss(model, variables, arch, *batch, hidden)
    return hidden, loss

  _, losses = jax.lax.scan(body, hidden_BxH, (inputs_NxTxB, targets_NxTxB))
  return jnp.exp(jnp.mean(losses))
