"""ENAS RNN cell architectures as small int arrays, with masks and codecs."""

import itertools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from wpl_jax.types import Array, ArrayLike, PRNGKey

# Fixed order: an activation id indexes this tuple (docs/method.md §4).
ACTIVATIONS = ("tanh", "relu", "identity", "sigmoid")
NUM_ACTIVATIONS = len(ACTIVATIONS)
# Value of `parents[0]`: node 0 reads x_t and h_{t-1}, not an earlier node.
NO_PARENT = -1
# `enumerate_space` refuses spaces larger than this (memory guard).
_MAX_ENUMERATE = 1_000_000


@flax.struct.dataclass
class Arch:
  """One ENAS RNN cell (or a batch of them, with leading axes).

  Node j >= 1 reads node `parents[j]` (an earlier node) through edge
  `edge_index(parents[j], j)` and applies activation
  `ACTIVATIONS[activations[j]]`; node 0 reads the input and the previous
  hidden state and applies `ACTIVATIONS[activations[0]]` (docs/method.md §4).

  Attributes:
    activations: int32[..., N], activation id of every node, node 0 included.
    parents: int32[..., N]; `parents[0] == NO_PARENT` (-1, unused) and
      `parents[j]` is in [0, j - 1] for j >= 1.
  """

  activations: Array
  parents: Array

  @property
  def num_nodes(self) -> int:
    """Number of nodes N (static: the size of the last axis)."""
    return self.activations.shape[-1]


def num_edges(num_nodes: int) -> int:
  """Number of possible edges i -> j (i < j) among `num_nodes` nodes."""
  return num_nodes * (num_nodes - 1) // 2


def space_size(num_nodes: int, *, fixed_first_activation=None) -> int:
  """Number of distinct cells: 4^N (N-1)! (4^(N-1) (N-1)! if node 0 fixed)."""
  free = num_nodes - (fixed_first_activation is not None)
  return NUM_ACTIVATIONS**free * math.factorial(num_nodes - 1)


def edge_index(parent: ArrayLike, child: ArrayLike) -> ArrayLike:
  """Flat id of edge parent -> child (parent < child), row by row by child.

  Edges into child j take ids [j(j-1)/2, j(j-1)/2 + j), so ids run
  0..E-1 with E = `num_edges(N)`. Works on Python ints, NumPy and jnp
  arrays (elementwise, same broadcasting rules as `+`).
  """
  return child * (child - 1) // 2 + parent


def edge_ids(arch: Arch) -> Array:
  """Returns int32[..., N-1]: the edge used by node j = 1..N-1, in order."""
  parents = jnp.asarray(arch.parents)[..., 1:]
  children = jnp.arange(1, arch.num_nodes, dtype=jnp.int32)
  children = jnp.broadcast_to(children, parents.shape)
  return edge_index(parents, children).astype(jnp.int32)


def edge_mask(arch: Arch, num_nodes: int | None = None) -> Array:
  """Returns bool[..., E]: which flat edges the architecture uses.

  Works under `jit`/`vmap` with a traced `arch`. Exactly N-1 entries are
  True (one edge per node j >= 1).

  Args:
    arch: a single `Arch` or a batch (leading axes are kept).
    num_nodes: number of nodes of the shared model (E = `num_edges(...)`);
      defaults to `arch.num_nodes`. May exceed it (a smaller cell embedded
      in a larger supernet uses the supernet's first ids).
  """
  n = arch.num_nodes if num_nodes is None else num_nodes
  if n < arch.num_nodes:
    raise ValueError(f"num_nodes={n} is smaller than arch ({arch.num_nodes})")
  hits = jax.nn.one_hot(edge_ids(arch), num_edges(n), dtype=jnp.bool_)
  return jnp.any(hits, axis=-2)


def leaf_mask(arch: Arch) -> Array:
  """Returns bool[..., N]: nodes that no other node uses as its parent.

  The cell output is the mean of these nodes (docs/method.md §4). Node N-1 is
  always a leaf; node 0 never is when N >= 2 (node 1 reads it).
  """
  used = jax.nn.one_hot(
    jnp.asarray(arch.parents)[..., 1:], arch.num_nodes, dtype=jnp.bool_
  )
  return jnp.logical_not(jnp.any(used, axis=-2))


def _activation_id(act) -> int:
  if isinstance(act, str):
    if act not in ACTIVATIONS:
      raise ValueError(f"unknown activation {act!r}; expected {ACTIVATIONS}")
    return ACTIVATIONS.index(act)
  act = int(act)
  if not 0 <= act < NUM_ACTIVATIONS:
    raise ValueError(f"activation id {act} not in [0, {NUM_ACTIVATIONS})")
  return act


def sample_uniform(
  key: PRNGKey, num_nodes: int, *, fixed_first_activation=None
) -> Arch:
  """Draws one architecture uniformly from the space (random search).

  Each activation is uniform over `ACTIVATIONS` and each `parents[j]`
  uniform over [0, j - 1], independently, which is uniform over the cells.
  `vmap` over split keys for a batch.

  Args:
    key: a JAX PRNG key (consumed).
    num_nodes: N >= 1.
    fixed_first_activation: None, an activation name or an id; when set,
      node 0 always uses it (the reduced space of docs/method.md §5).

  Returns:
    An `Arch` with int32[N] fields.
  """
  key_act, key_par = jax.random.split(key)
  activations = jax.random.randint(
    key_act, (num_nodes,), 0, NUM_ACTIVATIONS, dtype=jnp.int32
  )
  if fixed_first_activation is not None:
    first = _activation_id(fixed_first_activation)
    activations = activations.at[0].set(first)
  # randint with a per-position maxval: parents[j] ~ U{0, ..., j-1}.
  maxval = jnp.arange(1, num_nodes, dtype=jnp.int32)
  parents = jax.random.randint(
    key_par, (num_nodes - 1,), 0, maxval, dtype=jnp.int32
  )
  parents = jnp.concatenate([jnp.full((1,), NO_PARENT, jnp.int32), parents])
  return Arch(activations=activations, parents=parents)


def validate(arch: Arch) -> None:
  """Checks an architecture (or a batch) on the host with NumPy.

  `arch`: int32[N] fields, or [..., N] for a batch.

  Raises:
    ValueError: with a one-line message naming the first problem.
  """
  acts = np.asarray(arch.activations)
  pars = np.asarray(arch.parents)
  if acts.shape != pars.shape or acts.ndim < 1 or acts.shape[-1] < 1:
    raise ValueError(
      f"activations {acts.shape} and parents {pars.shape} must share a "
      "non-empty shape [..., N]"
    )
  for name, a in (("activations", acts), ("parents", pars)):
    if not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f"{name} must be integers, got {a.dtype}")
  if acts.min() < 0 or acts.max() >= NUM_ACTIVATIONS:
    raise ValueError(f"activation ids must be in [0, {NUM_ACTIVATIONS})")
  if np.any(pars[..., 0] != NO_PARENT):
    raise ValueError(f"parents[0] must be {NO_PARENT} (node 0 has no parent)")
  child = np.arange(pars.shape[-1])
  bad = (pars[..., 1:] < 0) | (pars[..., 1:] >= child[1:])
  if np.any(bad):
    j = int(np.argwhere(bad)[0][-1]) + 1
    raise ValueError(f"parents[{j}] must be in [0, {j - 1}]")


def enumerate_space(num_nodes: int, *, fixed_first_activation=None) -> Arch:
  """Lists every architecture, stacked along a leading axis.

  Order is lexicographic in the controller's decision order (activation of
  node 0, then (parent, activation) of nodes 1..N-1). With `num_nodes=3`
  and node 0's activation fixed this is the 32-cell space of
  docs/method.md §5.

  Args:
    num_nodes: N >= 1.
    fixed_first_activation: None, an activation name or an id.

  Returns:
    An `Arch` with int32[S, N] fields, S = `space_size(...)`.

  Raises:
    ValueError: if S exceeds one million.
  """
  size = space_size(num_nodes, fixed_first_activation=fixed_first_activation)
  if size > _MAX_ENUMERATE:
    raise ValueError(f"space of {size} architectures is too large to list")
  if fixed_first_activation is None:
    first = range(NUM_ACTIVATIONS)
  else:
    first = [_activation_id(fixed_first_activation)]
  choices = [first]
  for j in range(1, num_nodes):
    choices += [range(j), range(NUM_ACTIVATIONS)]
  rows = np.array(list(itertools.product(*choices)), np.int32)
  rows = rows.reshape(size, 2 * num_nodes - 1)
  activations = rows[:, 0::2]
  parents = np.concatenate(
    [np.full((size, 1), NO_PARENT, np.int32), rows[:, 1::2]], axis=1
  )
  return Arch(
    activations=jnp.asarray(activations), parents=jnp.asarray(parents)
  )


def to_string(arch: Arch) -> str:
  """Encodes one architecture (int32[N] fields) as text, e.g. "tanh|0:relu".

  Fields are separated by "|": node 0's activation name, then
  "parent:activation" for each node j = 1..N-1. `from_string` inverts it.
  """
  validate(arch)
  acts = np.asarray(arch.activations)
  pars = np.asarray(arch.parents)
  if acts.ndim != 1:
    raise ValueError(f"to_string takes one architecture, got {acts.shape}")
  fields = [ACTIVATIONS[acts[0]]]
  fields += [f"{pars[j]}:{ACTIVATIONS[acts[j]]}" for j in range(1, len(acts))]
  return "|".join(fields)


def from_string(s: str) -> Arch:
  """Decodes `to_string`'s format; returns an `Arch` with int32[N] fields."""
  fields = s.strip().split("|")
  try:
    activations = [_activation_id(fields[0].strip())]
    parents = [NO_PARENT]
    for field in fields[1:]:
      parent, act = field.split(":")
      parents.append(int(parent))
      activations.append(_activation_id(act.strip()))
  except ValueError as e:
    raise ValueError(f"cannot parse architecture {s!r}: {e}") from None
  arch = Arch(
    activations=np.asarray(activations, np.int32),
    parents=np.asarray(parents, np.int32),
  )
  try:
    validate(arch)
  except ValueError as e:
    raise ValueError(f"invalid architecture {s!r}: {e}") from None
  return jax.tree.map(jnp.asarray, arch)


def stack(archs) -> Arch:
  """Stacks K architectures (int32[N] fields) into one with int32[K, N]."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *archs)


def unstack(archs: Arch) -> list[Arch]:
  """Splits a batch `Arch` (int32[K, N] fields) into K single ones."""
  k = archs.activations.shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], archs) for i in range(k)]
