"""Vmapped ENAS sampling and evaluation of K architectures in one call."""

# Lazy annotations: `models.supernet` imports `wpl_jax.enas`, whose
# `__init__` imports this module, so its names are not ready at import time.
from __future__ import annotations

import jax
import jax.numpy as jnp

from wpl_jax.enas import controller as controller_lib
from wpl_jax.enas import losses, search_space, supernet
from wpl_jax.enas.search_space import Arch
from wpl_jax.types import Array, Params, PRNGKey, PyTree

METRICS = ("loss", "perplexity")


def sample_architectures(
  controller_params: Params,
  *,
  key: PRNGKey,
  k: int,
  num_nodes: int,
  temperature: float = 5.0,
  tanh_constant: float | None = 2.5,
  fixed_first_activation: int | None = None,
) -> tuple[Arch, Array, Array]:
  """Samples K cells from the controller, one split key each (`vmap`).

  Args:
    controller_params: params of `controller.Controller`.
    key: PRNG key (consumed; split into K).
    k: number of architectures K (static).
    num_nodes: N (static).
    temperature, tanh_constant: logit shaping (see `controller.Controller`).
    fixed_first_activation: None or node 0's fixed activation id.

  Returns:
    `(archs, log_probs, entropies)`: an `Arch` with int32[K, N] fields and
    float32[K] log-probabilities and entropies (each a sum over the 2N-1
    decisions of its cell).
  """

  def one(key_i):
    return controller_lib.sample(
      controller_params,
      key=key_i,
      num_nodes=num_nodes,
      temperature=temperature,
      tanh_constant=tanh_constant,
      fixed_first_activation=fixed_first_activation,
    )

  return jax.vmap(one)(jax.random.split(key, k))


def sample_uniform_architectures(
  *, key: PRNGKey, k: int, num_nodes: int, fixed_first_activation=None
) -> Arch:
  """K cells drawn uniformly from the space (random search), vmapped.

  Returns:
    An `Arch` with int32[K, N] fields.
  """

  def one(key_i):
    return search_space.sample_uniform(
      key_i, num_nodes, fixed_first_activation=fixed_first_activation
    )

  return jax.vmap(one)(jax.random.split(key, k))


def evaluate_architectures(
  model: supernet.SharedRNN,
  variables: PyTree,
  archs: Arch,
  inputs_TxB: Array,
  targets_TxB: Array,
  hidden: Array,
  *,
  metric: str = "loss",
  return_hidden: bool = False,
) -> Array | tuple[Array, Array]:
  """Scores K children of the shared model on one batch in one vmapped call.

  Eval mode (no dropout, running batch-norm statistics); the variables
  and the batch are broadcast, only the architecture varies.

  Args:
    model: the shared model.
    variables: its variables (`params` and `batch_stats`).
    archs: an `Arch` with int32[K, N] fields.
    inputs_TxB, targets_TxB: int32[T, B] tokens.
    hidden: float32[B, H] shared by all children, or float32[K, B, H] one
      per child.
    metric: "loss" (mean token cross-entropy over T·B, nats) or
      "perplexity" (its exp).
    return_hidden: also return the float32[K, B, H] final hidden states.

  Returns:
    float32[K] values of `metric`, and the hidden states if asked.
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  if archs.activations.ndim != 2:
    raise ValueError(f"archs must be [K, N], got {archs.activations.shape}")
  if hidden.ndim not in (2, 3):
    raise ValueError(f"hidden must be [B, H] or [K, B, H], got {hidden.shape}")
  hidden_axis = None if hidden.ndim == 2 else 0

  def one(arch, hidden_BxH):
    return losses.eval_loss(
      model, variables, arch, inputs_TxB, targets_TxB, hidden_BxH
    )

  loss_K, hiddens = jax.vmap(one, in_axes=(0, hidden_axis))(archs, hidden)
  values = jnp.exp(loss_K) if metric == "perplexity" else loss_K
  return (values, hiddens) if return_hidden else values
