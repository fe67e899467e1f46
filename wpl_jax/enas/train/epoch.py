"""One epoch of the ENAS search: its phases and its metrics record.

An epoch (docs/method.md §4) is three phases on the search state (a dict,
`setup.init_state`, updated in place):

1. `train_archs`: S sampled architectures × B training batches each; after
   each architecture its validation perplexity on the fixed forgetting
   batch (err1) and, with WPL, the Fisher on one validation batch, the
   running update and re-anchoring (docs/method.md §2);
2. `forgetting`: every trained architecture scored again on that batch at
   the end (err2, vmapped chunks) and err2 − err1 summarised;
3. `train_controller`: C REINFORCE steps (none under uniform sampling).

`run` chains them and returns the epoch's records (before ranking, derive
and timing, which the loop adds); `check_finite` stops a diverged run
before its checkpoint is written. The loop around it, with resume and
checkpoints, is `search.search`.

Several seeds in one program (`search.num_seeds` = S > 1, `Loop.seeds`):
the state, keys and sampled archs carry a leading seed axis [S], the
jitted steps are vmapped over it (the data batches are the same for every
seed), and what one seed turns into a Python scalar becomes an array [S].
Each seed's keys are those of its one-seed run, so the S seeds equal S
separate runs up to float rounding; `run` returns one record per seed,
and a seed that diverged carries the reason instead of stopping the others.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from wpl_jax.enas import search_space
from wpl_jax.enas.train import setup
from wpl_jax.enas.train.search_eval import (
  eval_chunked,
  forgetting_stats,
  one_arch,
)
from wpl_jax.runtime import checkpoint as checkpoint_lib
from wpl_jax.runtime import sharding


def lr_at(config: ml_collections.ConfigDict, epoch: int) -> float:
  """Shared lr: constant, then × decay per epoch after `decay_after`."""
  s = config.shared
  return s.lr * s.lr_decay ** max(0, epoch - s.lr_decay_after)


def wpl_alpha_at(config: ml_collections.ConfigDict, epoch: int) -> float:
  """α(epoch): 0 before `start_epoch`, then α, minus 1/epoch after decay."""
  w = config.wpl
  if not w.enabled or epoch < w.start_epoch:
    return 0.0
  return max(0.0, w.alpha - w.alpha_decay * max(0, epoch - w.alpha_decay_after))


# Per-seed key derivations, compiled once: called every step, a vmap
# outside jit would trace anew at each call.
_fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


@functools.partial(jax.jit, static_argnums=1)
def _split_each(keys: jax.Array, n: int) -> jax.Array:
  return jax.vmap(lambda k: jax.random.split(k, n))(keys)


@dataclasses.dataclass
class Loop:
  """What every epoch of one search reads (built once by `search.search`).

  Attributes:
    config: the resolved experiment config.
    fns: the jitted steps (`setup.jit_steps`).
    mesh: the device mesh.
    train_w: windows over the training stream [N, B].
    valid_w: windows over the validation stream (Fisher, rewards).
    fixed: the forgetting batch (x, y int32[T, B], split on B) and a zero
      hidden state float32[B, H] (split on B).
    fixed_rep: the same three, replicated (for the vmapped evaluations).
    arch_sharding: how a vmapped evaluation's K archs are placed.
    key: the run's base key (with seeds: one per seed, [S]).
    seeds: S > 0: S seeds side by side, a leading axis [S] on the state,
      keys, archs and per-seed metrics (the steps vmapped over it,
      `setup.jit_steps`); 0: one seed, no such axis.
  """

  config: ml_collections.ConfigDict
  fns: dict
  mesh: jax.sharding.Mesh
  train_w: setup.Windows
  valid_w: setup.Windows
  fixed: tuple
  fixed_rep: tuple
  arch_sharding: jax.sharding.Sharding
  key: jax.Array
  seeds: int = 0

  @property
  def lanes(self) -> int:
    """Seeds in this program (1 without a seed axis)."""
    return self.seeds or 1

  def fold_in(self, key: jax.Array, data: int) -> jax.Array:
    """`jax.random.fold_in`, per seed when there is a seed axis."""
    if self.seeds:
      return _fold_in_each(key, data)
    return jax.random.fold_in(key, data)

  def split(self, key: jax.Array, n: int) -> list[jax.Array]:
    """`jax.random.split(key, n)` as n keys (each [S] with seeds)."""
    if self.seeds:
      keys = _split_each(key, n)
      return [keys[:, i] for i in range(n)]
    return list(jax.random.split(key, n))

  def epoch_key(self, epoch: int) -> jax.Array:
    return self.fold_in(self.fold_in(self.key, setup.EPOCHS), epoch)

  def zero_hidden(self) -> jax.Array:
    """A zero hidden state for the state's carries ([S, B, H] with seeds)."""
    zero_h = self.fixed[2]
    if self.seeds:
      return jnp.zeros((self.seeds, *zero_h.shape), zero_h.dtype)
    return zero_h

  def lane(self, values, i: int):
    """Seed i's part of a per-seed host value (the value itself without
    a seed axis); for a list of per-step values, seed i's list."""
    if not self.seeds:
      return values
    if isinstance(values, list):
      return [np.asarray(v)[i] for v in values]
    return jax.tree.map(lambda v: np.asarray(v)[i], values)


@dataclasses.dataclass
class ArchPhase:
  """What `train_archs` returns.

  Attributes:
    archs: the S trained architectures (host arrays), in training order.
    err1: float [S], each one's forgetting-batch perplexity after its turn.
    losses: the S·B training losses (device scalars: one transfer later).
    With a seed axis each entry of these three holds every seed's.
    tokens: training tokens seen; train_seconds: time in the shared steps.
  """

  archs: list
  err1: list
  losses: list
  tokens: int
  train_seconds: float


def train_archs(
  loop: Loop, state: dict, epoch: int, pos: list[int]
) -> ArchPhase:
  """Phase 1: S architectures × B shared steps, err1 and the Fisher each.

  `state` is updated in place; `pos` (the windows' positions: train,
  Fisher, controller) too.
  """
  config, s, w = loop.config, loop.config.search, loop.config.wpl
  fixed_x, fixed_y, zero_h = loop.fixed
  lr = lr_at(config, epoch)
  alpha = wpl_alpha_at(config, epoch)
  use_fisher = w.enabled and alpha > 0
  # In reference mode α lives in F and the loss has none (docs/method.md §2).
  loss_alpha = (1.0 if w.mode == "reference" else alpha) if use_fisher else 0.0
  ep_key = loop.epoch_key(epoch)
  out = ArchPhase(archs=[], err1=[], losses=[], tokens=0, train_seconds=0.0)
  t_log = time.time()
  first = (lambda x: x[:, 0]) if loop.seeds else (lambda x: x[0])
  for a in range(s.archs_per_epoch):
    k_arch = loop.fold_in(loop.fold_in(ep_key, setup.SHARED), a)
    k_sample, k_fisher, k_steps = loop.split(k_arch, 3)
    arch = jax.tree.map(
      first, loop.fns["sample"](state["controller"].params, key=k_sample, k=1)
    )
    t0 = time.time()
    for i in range(s.batches_per_arch):
      pos[0], x, y, wrapped = loop.train_w.get(pos[0])
      x, y = sharding.shard_batch((x, y), loop.mesh, axis=1)
      if wrapped:
        state["train_hidden"] = loop.zero_hidden()
      state["shared"], state["train_hidden"], m = loop.fns["shared"](
        state["shared"],
        state["wpl"],
        arch,
        x,
        y,
        state["train_hidden"],
        jnp.float32(lr),
        jnp.float32(loss_alpha),
        key=loop.fold_in(k_steps, i),
      )
      sharding.cpu_sync(state["train_hidden"], loop.mesh)
      out.losses.append(m["loss"])
      out.tokens += x.size
    jax.block_until_ready(state["shared"].params)
    out.train_seconds += time.time() - t0
    err1 = loop.fns["eval_one"](
      state["shared"], one_arch(arch), fixed_x, fixed_y, zero_h
    )
    out.err1.append(np.asarray(err1)[0] if loop.seeds else float(err1[0]))
    if use_fisher:
      pos[1], fx, fy, wrapped = loop.valid_w.get(pos[1])
      fx, fy = sharding.shard_batch((fx, fy), loop.mesh, axis=1)
      if wrapped:
        state["fisher_hidden"] = loop.zero_hidden()
      state["wpl"], state["fisher_hidden"] = loop.fns["fisher"](
        state["shared"],
        state["wpl"],
        arch,
        fx,
        fy,
        state["fisher_hidden"],
        jnp.float32(alpha),
        key=k_fisher,
      )
    out.archs.append(jax.device_get(arch))
    if time.time() - t_log > s.log_seconds:
      t_log = time.time()
      logging.info(
        "epoch %d arch %d/%d %s: loss %.3f err1 %.1f  %.0f tok/s",
        epoch,
        a + 1,
        s.archs_per_epoch,
        search_space.to_string(jax.device_get(loop.lane(arch, 0))),
        float(np.mean(jax.device_get(out.losses[-1]))),
        float(np.mean(out.err1[-1])),
        out.tokens / max(out.train_seconds, 1e-9),
      )
  return out


def forgetting(loop: Loop, state: dict, phase: ArchPhase) -> list[dict]:
  """Phase 2: err2 of the epoch's archs, and err2 − err1's statistics (one
  dict per seed)."""
  err2 = eval_chunked(
    loop.fns["eval_archs"],
    state["shared"],
    search_space.stack(phase.archs),
    *loop.fixed_rep,
    loop.config.search.eval_chunk,
    arch_sharding=loop.arch_sharding,
  )  # [A] (with seeds [A, S])
  err1 = np.array(phase.err1)
  return [
    {
      "err2_mean": float(np.mean(loop.lane(err2.T, i))),
      **forgetting_stats(loop.lane(err1.T, i), loop.lane(err2.T, i)),
    }
    for i in range(loop.lanes)
  ]


def train_controller(
  loop: Loop, state: dict, epoch: int, pos: list[int]
) -> tuple[list, list]:
  """Phase 3: the epoch's REINFORCE steps; (rewards, perplexities) as
  device scalars, empty under uniform sampling."""
  config = loop.config
  rewards, ppls = [], []
  c_key = loop.fold_in(loop.epoch_key(epoch), setup.CONTROLLER)
  steps = config.controller.steps_per_epoch
  if setup.search_policy(config) != "enas":
    steps = 0
  for c in range(steps):
    pos[2], vx, vy, wrapped = loop.valid_w.get(pos[2])
    vx, vy = sharding.shard_batch((vx, vy), loop.mesh, axis=1)
    if wrapped:
      state["ctrl_hidden"] = loop.zero_hidden()
    state["controller"], state["ctrl_hidden"], cm = loop.fns["ctrl"](
      state["controller"],
      state["shared"],
      vx,
      vy,
      state["ctrl_hidden"],
      key=loop.fold_in(c_key, c),
    )
    sharding.cpu_sync(state["ctrl_hidden"], loop.mesh)
    rewards.append(cm["reward"])
    ppls.append(cm["ppl"])
  return rewards, ppls


def run(loop: Loop, state: dict, epoch: int) -> list[dict]:
  """One epoch's three phases; returns its metrics records, one per seed.

  Resets the Fisher first where `wpl.reset_every` says; stores the
  windows' new positions in `state["pos"]`. Without a seed axis it raises
  `NonFiniteError` (via `check_finite`) before anything of a diverged
  epoch is written; with one, a seed whose epoch was not finite gets a
  record {"epoch", "diverged": reason} instead, and the others go on.
  """
  config, w = loop.config, loop.config.wpl
  if w.enabled and w.reset_every > 0 and epoch % w.reset_every == 0:
    state["wpl"] = state["wpl"]._replace(
      fisher=jax.tree.map(jnp.zeros_like, state["wpl"].fisher)
    )
  pos_now = np.asarray(state["pos"])
  pos = [int(p) for p in (pos_now[0] if loop.seeds else pos_now)]
  phase = train_archs(loop, state, epoch, pos)
  forget = forgetting(loop, state, phase)
  rewards, ppls = train_controller(loop, state, epoch, pos)
  new_pos = np.asarray(pos, np.int32)
  if loop.seeds:  # every seed reads the same windows
    new_pos = np.broadcast_to(new_pos, (loop.seeds, 3)).copy()
  state["pos"] = sharding.put(new_pos, sharding.replicated(loop.mesh))
  if not loop.seeds:
    check_finite(config, epoch, phase.losses, phase.err1, rewards)
  losses = jax.device_get(phase.losses)
  rewards, ppls = jax.device_get(rewards), jax.device_get(ppls)
  norms = fisher_norm(state["wpl"], seeds=loop.seeds)
  records = []
  for i in range(loop.lanes):
    where = nonfinite_where(
      config,
      loop.lane(losses, i),
      loop.lane(phase.err1, i),
      loop.lane(rewards, i),
    )
    if where is not None:
      why = diverged(config, epoch, where, seed_axis=True)
      records.append({"epoch": epoch, "diverged": why})
      continue
    rw, pp = loop.lane(rewards, i), loop.lane(ppls, i)
    records.append(
      {
        "epoch": epoch,
        "policy": setup.search_policy(config),
        "wpl": w.mode if w.enabled else "off",
        "wpl_start_epoch": w.start_epoch,
        "lr": lr_at(config, epoch),
        "wpl_alpha": wpl_alpha_at(config, epoch),
        "train_loss": float(np.mean(loop.lane(losses, i))),
        "train_tokens_per_s": phase.tokens / max(phase.train_seconds, 1e-9),
        "reward": float(np.mean(rw)) if rw else None,
        "controller_ppl": float(np.mean(pp)) if pp else None,
        "err1_mean": float(np.mean(loop.lane(phase.err1, i))),
        **forget[i],
        "fisher_norm": norms[i],
        "archs": [search_space.to_string(loop.lane(a, i)) for a in phase.archs],
      }
    )
  return records


def nonfinite_where(config, losses, err1, rewards) -> str | None:
  """Where the first NaN/inf of one seed's epoch is (None: all finite).

  `losses` [S·B] training losses, `err1` [S] forgetting-batch
  perplexities, `rewards` [C] controller rewards (host or device values).
  """
  n = config.search.batches_per_arch
  i = checkpoint_lib.first_nonfinite(losses)
  if i is not None:
    return (
      f"non-finite training loss at shared step {i} of the epoch "
      f"(arch {i // n + 1}, batch {i % n + 1})"
    )
  if (i := checkpoint_lib.first_nonfinite(err1)) is not None:
    return f"non-finite loss on the forgetting batch after arch {i + 1}"
  if (
    len(rewards) and (i := checkpoint_lib.first_nonfinite(rewards)) is not None
  ):
    return f"non-finite reward at controller step {i}"
  return None


def diverged(config, epoch: int, where: str, seed_axis: bool = False) -> str:
  """The one-line divergence message of `epoch` (`where`: what was not
  finite); with a seed axis, of one seed (its records end, the others'
  go on)."""
  if seed_axis:
    return (
      f"{config.experiment} diverged at epoch {epoch}: {where}; this seed "
      "stopped, its records end at the epoch before"
    )
  kept = f"epoch {epoch - 1}'s is kept" if epoch else "none saved"
  return (
    f"{config.experiment} diverged at epoch {epoch}: {where}; stopped, "
    f"checkpoint: {kept} (lower the learning rate or alpha)"
  )


def check_finite(config, epoch, losses, err1, rewards) -> None:
  """Raises NonFiniteError naming the epoch and step of the first NaN/inf.

  One host transfer per epoch (the losses stay on the device until here),
  before the epoch's metrics line and checkpoint are written, so the last
  good checkpoint is kept.
  """
  where = nonfinite_where(config, losses, err1, rewards)
  if where is not None:
    raise checkpoint_lib.NonFiniteError(diverged(config, epoch, where))


def fisher_norm(wpl_state, *, seeds: int = 0) -> list[float]:
  """‖F‖ over every leaf of the running Fisher (0 when WPL is off), one
  per seed (a list of one without a seed axis)."""
  leaves = jax.tree.leaves(wpl_state.fisher)
  if not seeds:
    return [float(sum(jnp.sum(f * f) for f in leaves) ** 0.5)]
  sq = sum(jnp.sum(f * f, axis=tuple(range(1, f.ndim))) for f in leaves)
  return [float(v) for v in np.asarray(sq) ** 0.5] if leaves else [0.0] * seeds
