"""The ENAS search's objects: states, the config's choices, mesh, init.

What the search builds before its first step, one home for each: the
state containers (`SharedState`, `ControllerState`), the objects the
config names (model, search policy, space, optimizers, REINFORCE's
baseline), the data windows, the device mesh and placement, the jitted
steps (`jit_steps`, for a `steps.Steps`) and the initial state. The
step functions themselves are in `steps`, one epoch in `epoch`, the loop
with its checkpoints in `search`.
"""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wpl_jax import fisher as fisher_lib
from wpl_jax.data import ptb
from wpl_jax.enas import controller as controller_lib
from wpl_jax.enas import search_space, supernet
from wpl_jax.enas import wpl as enas_wpl
from wpl_jax.enas.search_space import Arch
from wpl_jax.runtime import sharding
from wpl_jax.types import Array, Params, PRNGKey, PyTree

# Independent random streams, folded into the run's base key.
INIT, SHARED, CONTROLLER, DERIVE, FISHER, EPOCHS = range(6)


@flax.struct.dataclass
class SharedState:
  """The supernet: params, batch-norm statistics and optimizer state."""

  params: Params
  batch_stats: PyTree
  opt_state: optax.OptState


@flax.struct.dataclass
class ControllerState:
  """The controller: params, Adam state, REINFORCE baseline and step."""

  params: Params
  opt_state: optax.OptState
  baseline: Array  # float32 moving average of the reward: [] or [2N-1]
  step: Array  # int32 scalar


def make_model(config: ml_collections.ConfigDict) -> supernet.SharedRNN:
  """The shared RNN of `config.model` (vocabulary set by the data)."""
  m = config.model
  return supernet.SharedRNN(
    vocab_size=m.vocab_size,
    hidden_size=m.hidden,
    num_nodes=m.num_nodes,
    dropout_output=m.dropout_output,
    dropout_input=m.dropout_input,
    dropout_embed=m.dropout_embed,
    dropconnect=m.dropconnect,
    clip_norm=m.clip_norm,
    init_range=m.init_range,
    hidden_source=m.hidden_source,
    cell_output=m.cell_output,
    use_batch_norm=m.batch_norm,
    # config 0 = unroll the scan over nodes fully, k >= 1 = by k.
    node_unroll=m.node_unroll or True,
    matmul_dtype=m.get("matmul_dtype", "float32"),
  )


POLICIES = ("enas", "random")


def search_policy(config: ml_collections.ConfigDict) -> str:
  """ "enas" (LSTM controller, REINFORCE) or "random" (uniform sampling)."""
  return config.search.get("policy", "enas")


def fixed_first_activation(config: ml_collections.ConfigDict) -> int | None:
  """Node 0's fixed activation id of the space, or None (a free choice).

  `config.search.fixed_first_activation` is "" (none) or an activation
  name; "tanh" with `num_nodes=3` is the 32-cell space of docs/method.md §5.
  """
  name = config.search.get("fixed_first_activation", "")
  if not name:
    return None
  if name not in search_space.ACTIVATIONS:
    raise ValueError(
      f"config.search.fixed_first_activation {name!r} is not one of "
      f"{search_space.ACTIVATIONS}"
    )
  return search_space.ACTIVATIONS.index(name)


def space_archs(config: ml_collections.ConfigDict) -> Arch:
  """Every cell of the configured space, int32[S, N] fields, in codec order.

  The space of `config.model.num_nodes` nodes with node 0's activation
  fixed as `config.search.fixed_first_activation` says (32 cells for the
  space32 configs); `enumerate_space` refuses spaces over a million cells.
  """
  return search_space.enumerate_space(
    config.model.num_nodes,
    fixed_first_activation=fixed_first_activation(config),
  )


def shared_optimizer(
  grad_clip: float, weight_decay: float
) -> optax.GradientTransformation:
  """Global-norm clip, then weight decay, then −gradient (times lr later).

  The learning rate multiplies the result in the step, so changing it per
  epoch does not recompile. Order as in the reference: the gradient is
  clipped first and SGD's weight decay is added after.
  """
  return optax.chain(
    optax.clip_by_global_norm(grad_clip),
    optax.add_decayed_weights(weight_decay),
    optax.scale(-1.0),
  )


REWARD_FORMS = ("per_decision", "sequence")


def reward_form(config: ml_collections.ConfigDict) -> str:
  """REINFORCE's reward and baseline per decision or per cell (see Steps)."""
  return config.controller.reward_form


def initial_baseline(config: ml_collections.ConfigDict) -> Array:
  """float32 zeros: [2N-1] per decision, or [] for the sequence form."""
  if reward_form(config) == "per_decision":
    n = 2 * config.model.num_nodes - 1
    return jnp.zeros((n,), jnp.float32)
  return jnp.zeros([], jnp.float32)


def controller_optimizer(lr: float) -> optax.GradientTransformation:
  """Adam for the controller (3.5e-4 in the reference)."""
  return optax.adam(lr)


class Windows:
  """Rotating fixed-length BPTT windows over a batchified [N, B] stream."""

  def __init__(self, source: np.ndarray, bptt: int):
    if len(source) < bptt + 1:
      raise ValueError(
        f"a stream of {len(source)} rows is shorter than one bptt window"
      )
    self.source, self.bptt = source, bptt

  def get(self, pos: int) -> tuple[int, np.ndarray, np.ndarray, bool]:
    """Returns (next_pos, inputs, targets, wrapped) for window at `pos`."""
    wrapped = pos + self.bptt + 1 > len(self.source)
    if wrapped:
      pos = 0
    x, y = ptb.get_batch(self.source, pos, self.bptt)
    return pos + self.bptt, x, y, wrapped


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The search's device mesh (`wpl_jax.runtime.sharding`); checks the sizes.

  `config.num_devices` (0 = all; with `search.num_seeds` > 1, one)
  devices; the batch [T, B] is split on B
  over all of them, the K archs of a vmapped evaluation on K; with
  `config.model.shard_edges` = k > 1 the edge stacks [E, H, H] and their
  Fisher and anchor are split along E over k devices.

  Raises:
    ValueError: B, k or E do not divide as needed (before any training).
  """
  seeds = config.search.get("num_seeds", 1)
  devices = config.get("num_devices", 0)
  if seeds > 1 and devices == 0:
    devices = 1  # "all" means the one device a seed axis runs on
  mesh = sharding.make_mesh(devices, edge_shards=config.model.shard_edges)
  sharding.check_divisible(config.data.batch_size, mesh, "data.batch_size")
  n = config.model.num_nodes
  sharding.check_edges(n * (n - 1) // 2, mesh)
  if seeds > 1 and sharding.num_shards(mesh) > 1:
    raise ValueError(
      f"config.search.num_seeds={seeds} runs its seeds on one device, this "
      f"mesh has {sharding.num_shards(mesh)}: set --config.num_devices=1"
    )
  return mesh


def place_state(state: dict, mesh: jax.sharding.Mesh) -> dict:
  """The search state on `mesh`: hidden states split on B, the rest
  replicated but for the edge stacks (split along E when k > 1)."""
  shardings = sharding.tree_shardings(state, mesh, sharding.edge_rules(mesh))
  for name in ("train_hidden", "fisher_hidden", "ctrl_hidden"):
    shardings[name] = sharding.batch_sharding(mesh, 0)
  return sharding.put(state, shardings)


def jit_steps(steps, state: dict, mesh, seeds: int = 0) -> dict:
  """The search's jitted steps for a `place_state`d state on `mesh`.

  Inputs carry their shardings (placed by the loop); outputs are pinned to
  the inputs' shardings, so a step's output feeds the next call without a
  recompile. With the batch split on B and the params replicated, the
  compiler all-reduces the gradients and the batch-norm's batch mean.

  With `seeds` = S > 0 (one device) every step is vmapped over a leading
  seed axis of the state, the archs and the keys; the data batches, the
  learning rate and α are the same for every seed. The evaluations take
  archs [K, S] and return perplexities [K, S]; `sample` returns [S, K].

  Returns:
    {"shared", "fisher", "eval_one", "eval_archs", "ctrl", "sample"}.
  """
  if seeds:
    return _jit_seed_steps(steps)
  rep = sharding.replicated(mesh)
  hid = sharding.batch_sharding(mesh, 0)
  out = {k: sharding.shardings_of(v) for k, v in state.items()}
  return {
    "shared": jax.jit(
      steps.shared_step,
      donate_argnums=(0,),
      out_shardings=(out["shared"], hid, rep),
    ),
    # The WPL state is donated: at paper size its Fisher and anchor are
    # 1 GiB, otherwise held twice while the step runs.
    "fisher": jax.jit(
      steps.fisher_step, donate_argnums=(1,), out_shardings=(out["wpl"], hid)
    ),
    # Two jitted objects of one function: one shape each (K = 1 right after
    # an arch's training, K = eval_chunk for the end-of-epoch and derive).
    "eval_one": jax.jit(steps.eval_archs, out_shardings=rep),
    "eval_archs": jax.jit(steps.eval_archs, out_shardings=rep),
    "ctrl": jax.jit(
      steps.controller_step, out_shardings=(out["controller"], hid, rep)
    ),
    "sample": jax.jit(steps.sample, static_argnames="k", out_shardings=rep),
  }


def _jit_seed_steps(steps) -> dict:
  """`jit_steps` vmapped over a leading seed axis (keyword `key`s are
  mapped over their leading axis, as vmap maps every keyword argument)."""
  shared = jax.vmap(
    steps.shared_step, in_axes=(0, 0, 0, None, None, 0, None, None)
  )
  fisher = jax.vmap(steps.fisher_step, in_axes=(0, 0, 0, None, None, 0, None))
  evals = jax.vmap(
    steps.eval_archs, in_axes=(0, 1, None, None, None), out_axes=1
  )
  ctrl = jax.vmap(steps.controller_step, in_axes=(0, 0, None, None, 0))

  def sample(ctrl_params, *, key, k):
    return jax.vmap(lambda p, kk: steps.sample(p, key=kk, k=k))(
      ctrl_params, key
    )

  return {
    "shared": jax.jit(shared, donate_argnums=(0,)),
    "fisher": jax.jit(fisher, donate_argnums=(1,)),
    "eval_one": jax.jit(evals),
    "eval_archs": jax.jit(evals),
    "ctrl": jax.jit(ctrl),
    "sample": jax.jit(sample, static_argnames="k"),
  }


def seed_list(config: ml_collections.ConfigDict) -> list[int]:
  """The seeds a search runs: `seed, ..., seed + search.num_seeds - 1`."""
  return [config.seed + k for k in range(config.search.get("num_seeds", 1))]


def init_states(
  config: ml_collections.ConfigDict, model: supernet.SharedRNN, seeds: list
) -> tuple[dict, jax.Array]:
  """(`init_state` of each seed stacked on a leading axis [S], the seeds'
  base keys [S]): seed k's slice is the initial state of a one-seed run
  with `config.seed = seeds[k]`."""
  keys = jnp.stack([jax.random.key(seed) for seed in seeds])
  return jax.vmap(lambda k: init_state(config, model, k))(keys), keys


def init_state(
  config: ml_collections.ConfigDict, model: supernet.SharedRNN, key: PRNGKey
) -> dict:
  """The search's initial state: a dict of the shared and controller states,
  the WPL state (empty when WPL is off), three hidden states float32[B, H]
  (training, Fisher and controller batches) and the windows' positions
  int32[3]. Its params come from the INIT stream of `key`."""
  k_model, k_ctrl = jax.random.split(jax.random.fold_in(key, INIT))
  variables = supernet.init_variables(model, key=k_model)
  params = variables["params"]
  tx = shared_optimizer(config.shared.grad_clip, config.shared.weight_decay)
  shared = SharedState(
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
  )
  ctrl_params = controller_lib.init_params(
    key=k_ctrl,
    num_nodes=config.model.num_nodes,
    hidden_size=config.controller.hidden,
  )
  ctrl = ControllerState(
    params=ctrl_params,
    opt_state=controller_optimizer(config.controller.lr).init(ctrl_params),
    baseline=initial_baseline(config),
    step=jnp.zeros([], jnp.int32),
  )
  b, h = config.data.batch_size, config.model.hidden
  return {
    "shared": shared,
    "controller": ctrl,
    # WPL off: no Fisher or anchor is allocated, carried or checkpointed
    # (2 × 528 MB at paper size); the steps never read it then.
    "wpl": (
      enas_wpl.init_state(params)
      if config.wpl.enabled
      else fisher_lib.FisherState(fisher={}, anchor={})
    ),
    "train_hidden": jnp.zeros((b, h), jnp.float32),
    "fisher_hidden": jnp.zeros((b, h), jnp.float32),
    "ctrl_hidden": jnp.zeros((b, h), jnp.float32),
    "pos": jnp.zeros((3,), jnp.int32),  # train, fisher, controller windows
  }
