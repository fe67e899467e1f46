"""Losses and evaluation of the ENAS supernet's children.

The cross-entropy of a child's logits, the decoder fused with the
cross-entropy in chunks of tokens (a custom VJP that never holds the
[T·B, V] logits), and eval-mode losses and perplexities of one child
(`wpl_jax.enas.supernet.SharedRNN`).
"""

import functools

import jax
import jax.numpy as jnp
import optax

from wpl_jax import taps
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
  matmul_dtype: str = "float32",
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
    matmul_dtype: the decoder products' input dtype, as `chunked_nll_sum`.

  Returns:
    A float32 scalar, the mean over all T·B tokens.
  """
  total = chunked_nll_sum(
    params, out_TxBxH, targets_TxB, chunk=chunk, matmul_dtype=matmul_dtype
  )
  return total / targets_TxB.size


def chunked_nll_sum(
  params: PyTree,
  out_TxBxH: Array,
  targets_TxB: Array,
  weights_TxB: Array | None = None,
  *,
  chunk: int,
  matmul_dtype: str = "float32",
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
    matmul_dtype: "float32" (default), or "bfloat16": the three decoder
      products (the logits, d out and d E) take bfloat16 inputs, the
      embedding cast once per call, and accumulate and return float32;
      the softmax, the NLL and every sum stay float32
      (`SharedRNN.matmul_dtype`).

  Returns:
    A float32 scalar: the weighted sum over the T·B tokens (no mean).
  """
  if out_TxBxH.shape[:-1] != targets_TxB.shape:
    raise ValueError(
      f"outputs {out_TxBxH.shape} do not match targets {targets_TxB.shape}"
    )
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  if matmul_dtype not in ("float32", "bfloat16"):
    raise ValueError(
      f"matmul_dtype must be float32 or bfloat16, got {matmul_dtype!r}"
    )
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
  return _decoder_nll_sum(matmul_dtype)(xs[0], emb, bias, xs[1], xs[2])


class _Decoder:
  """The tied decoder's three products in one dtype.

  float32: the plain products, as autodiff would form them. A low dtype:
  inputs cast to it, float32 accumulation and output, and every operand
  row-major (`taps.row_major_t`: XLA:CPU runs a bfloat16 product with a
  transposed operand at its float32 rate, WORKSPACE §6.7): E [V, H] and
  Eᵀ [H, V] cast once per call, the logits and d out each in
  `taps.weight_dot`'s form for E's size, d E formed as [H, V] per chunk
  and transposed once at the end.
  """

  def __init__(self, emb_VxH: Array, dtype: str):
    self.low = dtype != "float32"
    self.emb = emb_VxH
    if self.low:
      self.dtype = jnp.dtype(dtype)
      self.emb_low = emb_VxH.astype(self.dtype)
      self.emb_low_t = taps.row_major_t(self.emb_low)

  def logits(self, o_CxH: Array, bias_V: Array) -> Array:
    if not self.low:
      return o_CxH @ self.emb.T + bias_V[None]
    o = o_CxH.astype(self.dtype)
    return taps.weight_dot(o, self.emb_low_t, self.emb_low) + bias_V[None]

  def d_out(self, d_logits_CxV: Array) -> Array:
    if not self.low:
      return d_logits_CxV @ self.emb
    g = d_logits_CxV.astype(self.dtype)
    return taps.weight_dot(g, self.emb_low, self.emb_low_t)

  def d_emb_zero(self) -> Array:
    """The d E accumulator: [V, H] (float32 products) or [H, V] (low)."""
    return jnp.zeros_like(self.emb.T if self.low else self.emb)

  def d_emb_add(self, acc: Array, d_logits_CxV: Array, o_CxH: Array) -> Array:
    if not self.low:
      return acc + d_logits_CxV.T @ o_CxH
    o_t = taps.row_major_t(o_CxH.astype(self.dtype))  # [H, C]
    g = d_logits_CxV.astype(self.dtype)
    return acc + jnp.dot(o_t, g, preferred_element_type=jnp.float32)

  def d_emb_final(self, acc: Array) -> Array:
    if not self.low:
      return acc
    # The barrier keeps XLA from folding the transpose into the last
    # chunk's product (a one-chunk scan is inlined), which would leave
    # that product no bfloat16 kernel on CPU.
    return jax.lax.optimization_barrier(acc).T


@functools.cache
def _decoder_nll_sum(dtype: str):
  """The fused decoder loss (a custom VJP) with products in `dtype`."""
  f = jax.custom_vjp(functools.partial(_decoder_nll_sum_value, dtype))
  f.defvjp(
    functools.partial(_decoder_nll_sum_fwd, dtype),
    _decoder_nll_sum_bwd,
    symbolic_zeros=True,
  )
  return f


def _decoder_nll_sum_value(
  dtype: str,
  out_KxCxH: Array,
  emb_VxH: Array,
  bias_V: Array,
  tgt_KxC: Array,
  w_KxC: Array,
) -> Array:
  """Σ w · NLL over K chunks of C tokens; the value alone (no gradients)."""
  dec = _Decoder(emb_VxH, dtype)

  def body(total, xs):
    o, t, w = xs
    nll = optax.softmax_cross_entropy_with_integer_labels(
      dec.logits(o, bias_V), t
    )
    return total + jnp.sum(w * nll), None

  total, _ = jax.lax.scan(
    body, jnp.zeros([], out_KxCxH.dtype), (out_KxCxH, tgt_KxC, w_KxC)
  )
  return total


def _decoder_nll_sum_fwd(dtype, out_KxCxH, emb_VxH, bias_V, tgt_KxC, w_KxC):
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
  dec = _Decoder(emb_VxH, dtype)

  def body(carry, xs):
    total, d_emb, d_bias = carry
    o, t, w = xs
    logits = dec.logits(o, bias_V)
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
    d_o = None
    if need_logits:
      onehot = jnp.arange(v)[None] == t[:, None]
      d_logits = (jnp.exp(logits - lse[:, None]) - onehot) * w[:, None]
      if need_emb:
        d_emb = dec.d_emb_add(d_emb, d_logits, o)
      if need_bias:
        d_bias = d_bias + jnp.sum(d_logits, axis=0)
      if need_out:
        d_o = dec.d_out(d_logits)
    return (total + jnp.sum(w * nll), d_emb, d_bias), (d_o, nll)

  init = (
    jnp.zeros([], out_KxCxH.dtype),
    dec.d_emb_zero() if need_emb else None,
    jnp.zeros_like(bias_V) if need_bias else None,
  )
  (total, d_emb, d_bias), (d_out, nll) = jax.lax.scan(
    body, init, (out_KxCxH, tgt_KxC, w_KxC)
  )
  if need_emb:
    d_emb = dec.d_emb_final(d_emb)
  return total, (d_out, d_emb, d_bias, nll if need_w else None)


def _decoder_nll_sum_bwd(res, g):
  scale = lambda d: None if d is None else g * d  # noqa: E731
  d_out, d_emb, d_bias, nll = res
  return scale(d_out), scale(d_emb), scale(d_bias), None, scale(nll)


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
