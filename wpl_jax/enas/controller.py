"""ENAS LSTM controller: samples cells and scores them for REINFORCE."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from wpl_jax.enas import search_space
from wpl_jax.enas.search_space import Arch
from wpl_jax.types import Array, Params, PRNGKey

_NUM_ACTS = search_space.NUM_ACTIVATIONS


def num_decisions(num_nodes: int) -> int:
  """2N - 1: node 0's activation, then (parent, activation) per node."""
  return 2 * num_nodes - 1


def decision_sizes(num_nodes: int) -> tuple[int, ...]:
  """Number of choices of each decision: 4, then (j, 4) for j = 1..N-1."""
  sizes = [_NUM_ACTS]
  for j in range(1, num_nodes):
    sizes += [j, _NUM_ACTS]
  return tuple(sizes)


def arch_to_decisions(arch: Arch) -> Array:
  """Interleaves an `Arch` into int32[..., 2N-1] decisions (a0, p1, a1, ...)."""
  acts = jnp.asarray(arch.activations, jnp.int32)
  pars = jnp.asarray(arch.parents, jnp.int32)[..., 1:]
  # Stack (parent_j, act_j) pairs for j >= 1, flatten, prepend act_0.
  pairs = jnp.stack([pars, acts[..., 1:]], axis=-1)
  pairs = pairs.reshape(pairs.shape[:-2] + (-1,))
  return jnp.concatenate([acts[..., :1], pairs], axis=-1)


def decisions_to_arch(decisions: Array) -> Arch:
  """Inverse of `arch_to_decisions` for int32[..., 2N-1] decisions."""
  decisions = jnp.asarray(decisions, jnp.int32)
  no_parent = jnp.full(
    decisions.shape[:-1] + (1,), search_space.NO_PARENT, jnp.int32
  )
  return Arch(
    activations=decisions[..., 0::2],
    parents=jnp.concatenate([no_parent, decisions[..., 1::2]], axis=-1),
  )


def _uniform(scale: float):
  """Initializer drawing U(-scale, scale)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def _lstm_step(kernel, bias, carry, x):
  """PyTorch-order LSTM cell (gates i, f, g, o) on unbatched [H] vectors."""
  c, h = carry
  gates = jnp.concatenate([x, h]) @ kernel + bias
  i, f, g, o = jnp.split(gates, 4)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (c, h), h


class Controller(nn.Module):
  """LSTM policy over ENAS cells (docs/method.md §4, "Controller").

  Decisions come in the reference's order: node 0's activation, then for
  j = 1..N-1 node j's parent and activation. Each is read off the LSTM
  output by its own linear decoder, shaped as `tanh_constant *
  tanh(logits / temperature)`; node j's parent logits keep only entries
  [0, j-1] (the rest are set to -1e9, probability exactly 0), so a parent
  is always an earlier node. The next LSTM input is the embedding of the
  chosen token (activation ids 0..3, parent i as 4 + i); the first input
  and the initial state are zero.

  Params: `embedding` [4+N-1, H]; `lstm_kernel` [2H, 4H] (input, hidden),
  `lstm_bias` [4H]; `act_kernel` [N, H, 4], `act_bias` [N, 4];
  `parent_kernel` [N-1, H, N-1], `parent_bias` [N-1, N-1]. Stacking the
  per-decision decoders lets one `lax.scan` over nodes serve every N
  (compile time flat in N); the reference's j-way decoder for node j is
  the first j columns of `parent_kernel[j-1]`.

  Attributes:
    num_nodes: N, nodes per cell.
    hidden_size: LSTM units H (100 in the paper).
    temperature: logits are divided by it (5.0).
    tanh_constant: exploration squash c·tanh(·) (2.5); None disables it.
    init_range: parameters ~ U(±init_range), decoder biases 0.
    fixed_first_activation: None, or the activation id that node 0 always
      uses (the reduced space of docs/method.md §5): node 0's decision is
      then not a choice (log-prob 0, entropy 0, the given decision's first
      token is ignored when scoring) and its token still feeds the LSTM.
  """

  num_nodes: int
  hidden_size: int = 100
  temperature: float = 5.0
  tanh_constant: float | None = 2.5
  init_range: float = 0.1
  fixed_first_activation: int | None = None

  def setup(self):
    n, h = self.num_nodes, self.hidden_size
    init, zeros = _uniform(self.init_range), nn.initializers.zeros
    self.embedding = self.param("embedding", init, (_NUM_ACTS + n - 1, h))
    self.lstm_kernel = self.param("lstm_kernel", init, (2 * h, 4 * h))
    self.lstm_bias = self.param("lstm_bias", init, (4 * h,))
    self.act_kernel = self.param("act_kernel", init, (n, h, _NUM_ACTS))
    self.act_bias = self.param("act_bias", zeros, (n, _NUM_ACTS))
    self.parent_kernel = self.param("parent_kernel", init, (n - 1, h, n - 1))
    self.parent_bias = self.param("parent_bias", zeros, (n - 1, n - 1))

  def declare(self) -> tuple[int, ...]:
    """Runs `setup` only: `init(..., method="declare")` skips the forward."""
    return self.embedding.shape

  def _squash(self, logits: Array) -> Array:
    """tanh_constant · tanh(logits / temperature) (docs/method.md §4)."""
    logits = logits / self.temperature
    if self.tanh_constant is not None:
      logits = self.tanh_constant * jnp.tanh(logits)
    return logits

  def __call__(
    self, decisions: Array | None = None, *, key: PRNGKey | None = None
  ) -> tuple[Array, Array, Array, tuple[Array, Array]]:
    """Samples decisions, or scores given ones (teacher forcing).

    Args:
      decisions: int32[2N-1] decisions to score, or None to sample.
      key: PRNG key, required (and only used) when sampling.

    Returns:
      `(decisions, log_probs, entropies, (act_logits, parent_logits))`:
      int32[2N-1] chosen tokens; float32[2N-1] log-probability of each
      choice and entropy of each decision's distribution (decision order);
      the shaped float32[N, 4] activation logits and float32[N-1, N-1]
      parent logits (row j-1 for node j, masked entries -1e9).
    """
    n, h = self.num_nodes, self.hidden_size
    if decisions is None:
      if key is None:
        raise ValueError("Controller needs `key` to sample")
      key0, key_rest = jax.random.split(key)
      node_keys = jax.random.split(key_rest, (n - 1, 2))
      forced_act0 = None
      forced = jnp.zeros((n - 1, 2), jnp.int32)  # ignored
    else:
      if decisions.shape != (num_decisions(n),):
        raise ValueError(
          f"decisions must be [{num_decisions(n)}], got {decisions.shape}"
        )
      decisions = decisions.astype(jnp.int32)
      key0, node_keys = None, None
      forced_act0 = decisions[0]
      forced = jnp.stack([decisions[1::2], decisions[2::2]], axis=-1)
    sampling = decisions is None
    embedding, kernel, bias = self.embedding, self.lstm_kernel, self.lstm_bias

    def decide(logits, key, forced_action):
      """Chosen action, its log-prob and the distribution's entropy."""
      log_p = jax.nn.log_softmax(logits)
      if sampling:
        action = jax.random.categorical(key, logits).astype(jnp.int32)
      else:
        action = forced_action
      # Masked entries have p == 0 exactly, so p·log p is 0 there.
      return action, log_p[action], -jnp.sum(jnp.exp(log_p) * log_p)

    zeros = jnp.zeros((h,), jnp.float32)
    carry, out = _lstm_step(kernel, bias, (zeros, zeros), zeros)
    act0_logits = self._squash(out @ self.act_kernel[0] + self.act_bias[0])
    if self.fixed_first_activation is None:
      act0, lp0, ent0 = decide(act0_logits, key0, forced_act0)
    else:
      act0 = jnp.int32(self.fixed_first_activation)
      lp0 = ent0 = jnp.zeros([], jnp.float32)

    def node_step(state, xs):
      carry, inputs = state
      j, keys, forced_j, w_p, b_p, w_a, b_a = xs
      carry, out = _lstm_step(kernel, bias, carry, inputs)
      p_logits = self._squash(out @ w_p + b_p)
      p_logits = jnp.where(jnp.arange(n - 1) < j, p_logits, -1e9)
      parent, lp_p, ent_p = decide(
        p_logits, None if keys is None else keys[0], forced_j[0]
      )
      carry, out = _lstm_step(
        kernel, bias, carry, embedding[_NUM_ACTS + parent]
      )
      a_logits = self._squash(out @ w_a + b_a)
      act, lp_a, ent_a = decide(
        a_logits, None if keys is None else keys[1], forced_j[1]
      )
      ys = (
        jnp.stack([parent, act]),
        jnp.stack([lp_p, lp_a]),
        jnp.stack([ent_p, ent_a]),
        a_logits,
        p_logits,
      )
      return (carry, embedding[act]), ys

    xs = (
      jnp.arange(1, n),
      node_keys,
      forced,
      self.parent_kernel,
      self.parent_bias,
      self.act_kernel[1:],
      self.act_bias[1:],
    )
    _, (pairs, lps, ents, act_logits, parent_logits) = jax.lax.scan(
      node_step, (carry, embedding[act0]), xs
    )
    return (
      jnp.concatenate([act0[None], pairs.reshape(-1)]),
      jnp.concatenate([lp0[None], lps.reshape(-1)]),
      jnp.concatenate([ent0[None], ents.reshape(-1)]),
      (jnp.concatenate([act0_logits[None], act_logits]), parent_logits),
    )


def _controller(params: Params, num_nodes: int, **kwargs) -> Controller:
  """A `Controller` whose hidden size is read off `params`."""
  hidden = params["embedding"].shape[-1]
  return Controller(num_nodes=num_nodes, hidden_size=hidden, **kwargs)


def init_params(
  *, key: PRNGKey, num_nodes: int, hidden_size: int = 100
) -> Params:
  """Initial controller params for `num_nodes`-node cells.

  Returns a flat dict with H = `hidden_size`, N = `num_nodes`: `embedding`
  [4+N-1, H], `lstm_kernel` [2H, 4H], `lstm_bias` [4H], `act_kernel`
  [N, H, 4], `act_bias` [N, 4], `parent_kernel` [N-1, H, N-1],
  `parent_bias` [N-1, N-1] (see `Controller`).
  """
  model = Controller(num_nodes=num_nodes, hidden_size=hidden_size)
  return model.init({"params": key}, method="declare")["params"]


def sample(
  params: Params,
  *,
  key: PRNGKey,
  num_nodes: int,
  temperature: float = 5.0,
  tanh_constant: float | None = 2.5,
  fixed_first_activation: int | None = None,
) -> tuple[Arch, Array, Array]:
  """Samples one cell from the controller.

  Args:
    params: controller params from `init_params`.
    key: PRNG key (consumed).
    num_nodes: N; must match the params.
    temperature, tanh_constant: logit shaping (see `Controller`).
    fixed_first_activation: None or node 0's fixed activation id.

  Returns:
    `(arch, log_prob, entropy)`: an `Arch` with int32[N] fields, the float32
    scalar log-probability of the whole cell (sum over the 2N-1
    decisions; differentiable in `params`) and the float32 scalar sum of
    the decisions' entropies.
  """
  model = _controller(
    params,
    num_nodes,
    temperature=temperature,
    tanh_constant=tanh_constant,
    fixed_first_activation=fixed_first_activation,
  )
  decisions, log_probs, entropies, _ = model.apply({"params": params}, key=key)
  arch = decisions_to_arch(decisions)
  return arch, jnp.sum(log_probs), jnp.sum(entropies)


def decision_log_probs(
  params: Params,
  arch: Arch,
  *,
  temperature: float = 5.0,
  tanh_constant: float | None = 2.5,
  fixed_first_activation: int | None = None,
) -> tuple[Array, Array]:
  """Per-decision log-probabilities and entropies of a given cell.

  Returns:
    `(log_probs, entropies)`, each float32[2N-1] in decision order
    (a0, p1, a1, ..., p_{N-1}, a_{N-1}).
  """
  model = _controller(
    params,
    arch.num_nodes,
    temperature=temperature,
    tanh_constant=tanh_constant,
    fixed_first_activation=fixed_first_activation,
  )
  decisions = arch_to_decisions(arch)
  _, log_probs, entropies, _ = model.apply({"params": params}, decisions)
  return log_probs, entropies


def log_prob(
  params: Params,
  arch: Arch,
  *,
  temperature: float = 5.0,
  tanh_constant: float | None = 2.5,
  fixed_first_activation: int | None = None,
) -> tuple[Array, Array]:
  """Teacher-forced score of a cell: equals `sample`'s values for it.

  Args:
    params: controller params.
    arch: one `Arch` with int32[N] fields (`vmap` for a batch).
    temperature, tanh_constant: logit shaping (see `Controller`).

  Returns:
    `(log_prob, entropy)`: float32 scalars, sums over the 2N-1 decisions.
  """
  log_probs, entropies = decision_log_probs(
    params,
    arch,
    temperature=temperature,
    tanh_constant=tanh_constant,
    fixed_first_activation=fixed_first_activation,
  )
  return jnp.sum(log_probs), jnp.sum(entropies)
