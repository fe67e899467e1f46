"""ENAS RNN-cell search on PTB, with or without WPL; then derive and retrain.

Per epoch (docs/method.md §4): shared training (S sampled architectures × B
batches each; with WPL, after each architecture a Fisher estimate on one
validation batch, the running update on its edges and re-anchoring of all
edges, docs/method.md §2), the forgetting metric (each architecture's
validation perplexity on a fixed batch right after its training, err1,
and again at the end of the epoch in one vmapped call, err2), then C
controller steps; every D epochs, derive the best of M sampled cells.
Checkpoints every epoch; a rerun with the same workdir resumes.

Parts: `enas_search_config` (checks of the config and data, the validation
splits, the resume check), `enas_search_eval` (forgetting, derive, ranking)
and `enas_search_report` (TensorBoard, results.md, figure).
"""

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from wpl_jax import fisher as fisher_lib
from wpl_jax.data import fingerprint, ptb
from wpl_jax.enas import controller as controller_lib
from wpl_jax.enas import search_space, supernet
from wpl_jax.enas import wpl as enas_wpl
from wpl_jax.enas.train import retrain
from wpl_jax.enas.train import steps as enas_steps
from wpl_jax.enas.train.search_config import (
  RESUMABLE,
  check_data,
  check_memory,
  check_same_config,
  check_sizes,
  comparable,
  machine_bytes,
  memory_need,
  valid_splits,
  validate,
)
from wpl_jax.enas.train.search_config import (
  validate_model as validate_model,  # re-exported (enas_truth)
)
from wpl_jax.enas.train.search_eval import (
  Ranker,
  derive,
  eval_chunked,
  forgetting_stats,
  one_arch,
)
from wpl_jax.enas.train.search_report import (
  fmt,
  plot,
  results_md,
  tb_write,
  tensorboard,
)
from wpl_jax.enas.train.steps import ControllerState, SharedState
from wpl_jax.runtime import checkpoint as checkpoint_lib
from wpl_jax.runtime import metrics as metrics_lib
from wpl_jax.runtime import platform_defaults, sharding
from wpl_jax.runtime import workdir as workdir_lib

# Independent random streams, folded into the run's base key.
_INIT, _SHARED, _CONTROLLER, _DERIVE, _FISHER, _EPOCHS = range(6)


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


class _Windows:
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

  `config.num_devices` (0 = all) devices; the batch [T, B] is split on B
  over all of them, the K archs of a vmapped evaluation on K; with
  `config.model.shard_edges` = k > 1 the edge stacks [E, H, H] and their
  Fisher and anchor are split along E over k devices.

  Raises:
    ValueError: B, k or E do not divide as needed (before any training).
  """
  mesh = sharding.make_mesh(
    config.get("num_devices", 0),
    edge_shards=config.model.shard_edges,
  )
  sharding.check_divisible(config.data.batch_size, mesh, "data.batch_size")
  n = config.model.num_nodes
  sharding.check_edges(n * (n - 1) // 2, mesh)
  return mesh


def place_state(state: dict, mesh: jax.sharding.Mesh) -> dict:
  """The search state on `mesh`: hidden states split on B, the rest
  replicated but for the edge stacks (split along E when k > 1)."""
  shardings = sharding.tree_shardings(state, mesh, sharding.edge_rules(mesh))
  for name in ("train_hidden", "fisher_hidden", "ctrl_hidden"):
    shardings[name] = sharding.batch_sharding(mesh, 0)
  return sharding.put(state, shardings)


def jit_steps(steps: enas_steps.Steps, state: dict, mesh) -> dict:
  """The search's jitted steps for a `place_state`d state on `mesh`.

  Inputs carry their shardings (placed by the loop); outputs are pinned to
  the inputs' shardings, so a step's output feeds the next call without a
  recompile. With the batch split on B and the params replicated, the
  compiler all-reduces the gradients and the batch-norm's batch mean.

  Returns:
    {"shared", "fisher", "eval_one", "eval_archs", "ctrl", "sample"}.
  """
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


def init_state(config, model, key):
  k_model, k_ctrl = jax.random.split(jax.random.fold_in(key, _INIT))
  variables = supernet.init_variables(model, key=k_model)
  params = variables["params"]
  tx = enas_steps.shared_optimizer(
    config.shared.grad_clip, config.shared.weight_decay
  )
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
    opt_state=enas_steps.controller_optimizer(config.controller.lr).init(
      ctrl_params
    ),
    baseline=enas_steps.initial_baseline(config),
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


def search(
  config: ml_collections.ConfigDict, workdir: pathlib.Path, data: ptb.PTBData
) -> dict:
  """Runs the search; returns {"derived": arch string, "history": [...]}.

  Writes metrics.jsonl (one record per epoch), TensorBoard events under
  tb/, and checkpoints under checkpoints/ (resumed if present).
  """
  with config.unlocked():
    config.model.vocab_size = len(data.vocab)
  model = enas_steps.make_model(config)
  steps = enas_steps.Steps(model=model, config=config)
  mesh = make_mesh(config)
  logging.info("devices: %s", sharding.describe(mesh))
  key = jax.random.key(config.seed)
  b, bptt = config.data.batch_size, config.data.bptt
  train_w = _Windows(ptb.batchify(data.train, b), bptt)
  splits = valid_splits(config, data.valid)
  fixed_x, fixed_y = splits["forget"]  # the forgetting metric's batch
  valid_w = _Windows(splits["stream"], bptt)  # Fisher and reward batches
  zero_h = np.zeros((b, config.model.hidden), np.float32)
  # One arch on B / D examples per device; K archs split K / D per device
  # on the whole batch (each replicated), or all replicated if D ∤ K.
  rep = sharding.replicated(mesh)
  fixed_r = sharding.put((fixed_x, fixed_y, zero_h), rep)
  fixed_x, fixed_y = sharding.shard_batch((fixed_x, fixed_y), mesh, axis=1)
  zero_h = sharding.shard_batch(zero_h, mesh, axis=0)
  s = config.search
  arch_sharding = sharding.batch_sharding(mesh, 0)
  if s.eval_chunk % sharding.num_shards(mesh):
    arch_sharding = rep
    logging.info(
      "search.eval_chunk=%d archs do not split over %d devices: the "
      "vmapped evaluations run replicated",
      s.eval_chunk,
      sharding.num_shards(mesh),
    )
  elif sharding.num_shards(mesh) > 1 and platform_defaults.get(
    config, "search.eval_vmap", 0
  ):
    # The devices split each call's archs: one vmap over all of them.
    steps = dataclasses.replace(steps, eval_vmap=0)
    logging.info(
      "search.eval_vmap=%d ignored: the %d devices split each "
      "evaluation's archs, vmapped together",
      platform_defaults.get(config, "search.eval_vmap"),
      sharding.num_shards(mesh),
    )
  policy = enas_steps.search_policy(config)
  ranker = None
  if s.rank_every:
    ranker = Ranker(config, steps, splits["heldout"], mesh=mesh)

  state = place_state(init_state(config, model, key), mesh)
  fns = jit_steps(steps, state, mesh)
  shared_step, fisher_step, eval_one, eval_archs, ctrl_step, sample = (
    fns[k]
    for k in ("shared", "fisher", "eval_one", "eval_archs", "ctrl", "sample")
  )

  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  start_epoch, history = 0, []
  if ckpt.latest_step() is not None:
    state, meta = restore(ckpt, state)
    check_same_config(config, meta.get("config"))
    start_epoch, history = meta["epoch"] + 1, meta["history"]
    logging.info("resumed from epoch %d in %s", meta["epoch"], ckpt.directory)
    # Lines of epochs after the checkpoint (a kill between the metrics line
    # and the checkpoint) are dropped: those epochs run again.
    truncate_jsonl(workdir / "metrics.jsonl", meta["epoch"])
  else:  # a kill during the first save left epoch 0's line: it runs again
    truncate_jsonl(workdir / "metrics.jsonl", -1)
  log = metrics_lib.JsonlWriter(workdir / "metrics.jsonl")
  tb = tensorboard(workdir / "tb")

  # SIGTERM/SIGINT: the epoch in progress ends and is saved, then the run
  # stops (exit 128 + signal); a second signal kills at once.
  with checkpoint_lib.StopOnSignal() as stop:
    for epoch in range(start_epoch, s.epochs):
      t_epoch = time.time()
      lr = lr_at(config, epoch)
      alpha = wpl_alpha_at(config, epoch)
      use_fisher = config.wpl.enabled and alpha > 0
      w = config.wpl
      if w.enabled and w.reset_every > 0 and epoch % w.reset_every == 0:
        state["wpl"] = state["wpl"]._replace(
          fisher=jax.tree.map(jnp.zeros_like, state["wpl"].fisher)
        )
      # In reference mode α lives in F and the loss has none (REFERENCE §2).
      loss_alpha = 1.0 if w.mode == "reference" else alpha
      if not use_fisher:
        loss_alpha = 0.0
      pos = [int(p) for p in np.asarray(state["pos"])]
      ep_key = jax.random.fold_in(jax.random.fold_in(key, _EPOCHS), epoch)
      archs, err1, losses = [], [], []
      tokens, t_train, t_log = 0, 0.0, time.time()
      for a in range(s.archs_per_epoch):
        k_arch = jax.random.fold_in(jax.random.fold_in(ep_key, _SHARED), a)
        k_sample, k_fisher, k_steps = jax.random.split(k_arch, 3)
        arch = jax.tree.map(
          lambda x: x[0], sample(state["controller"].params, key=k_sample, k=1)
        )
        t0 = time.time()
        for i in range(s.batches_per_arch):
          pos[0], x, y, wrapped = train_w.get(pos[0])
          x, y = sharding.shard_batch((x, y), mesh, axis=1)
          if wrapped:
            state["train_hidden"] = zero_h
          shared, state["train_hidden"], m = shared_step(
            state["shared"],
            state["wpl"],
            arch,
            x,
            y,
            state["train_hidden"],
            jnp.float32(lr),
            jnp.float32(loss_alpha),
            key=jax.random.fold_in(k_steps, i),
          )
          state["shared"] = shared
          sharding.cpu_sync(state["train_hidden"], mesh)
          losses.append(m["loss"])
          tokens += x.size
        jax.block_until_ready(state["shared"].params)
        t_train += time.time() - t0
        err1.append(
          float(
            eval_one(state["shared"], one_arch(arch), fixed_x, fixed_y, zero_h)[
              0
            ]
          )
        )
        if use_fisher:
          pos[1], fx, fy, wrapped = valid_w.get(pos[1])
          fx, fy = sharding.shard_batch((fx, fy), mesh, axis=1)
          if wrapped:
            state["fisher_hidden"] = zero_h
          state["wpl"], state["fisher_hidden"] = fisher_step(
            state["shared"],
            state["wpl"],
            arch,
            fx,
            fy,
            state["fisher_hidden"],
            jnp.float32(alpha),
            key=k_fisher,
          )
        archs.append(jax.device_get(arch))
        if time.time() - t_log > s.log_seconds:
          t_log = time.time()
          logging.info(
            "epoch %d arch %d/%d %s: loss %.3f err1 %.1f  %.0f tok/s",
            epoch,
            a + 1,
            s.archs_per_epoch,
            search_space.to_string(arch),
            float(losses[-1]),
            err1[-1],
            tokens / max(t_train, 1e-9),
          )
      stacked = search_space.stack(archs)
      err2 = eval_chunked(
        eval_archs,
        state["shared"],
        stacked,
        *fixed_r,
        s.eval_chunk,
        arch_sharding=arch_sharding,
      )
      forget = forgetting_stats(np.array(err1), err2)

      rewards, ppls = [], []
      c_key = jax.random.fold_in(ep_key, _CONTROLLER)
      ctrl_steps = config.controller.steps_per_epoch if policy == "enas" else 0
      for c in range(ctrl_steps):
        pos[2], vx, vy, wrapped = valid_w.get(pos[2])
        vx, vy = sharding.shard_batch((vx, vy), mesh, axis=1)
        if wrapped:
          state["ctrl_hidden"] = zero_h
        state["controller"], state["ctrl_hidden"], cm = ctrl_step(
          state["controller"],
          state["shared"],
          vx,
          vy,
          state["ctrl_hidden"],
          key=jax.random.fold_in(c_key, c),
        )
        sharding.cpu_sync(state["ctrl_hidden"], mesh)
        rewards.append(cm["reward"])
        ppls.append(cm["ppl"])
      state["pos"] = sharding.put(np.asarray(pos, np.int32), rep)
      check_finite(config, epoch, losses, err1, rewards)

      record = {
        "epoch": epoch,
        "policy": policy,
        "wpl": w.mode if w.enabled else "off",
        "wpl_start_epoch": w.start_epoch,
        "lr": lr,
        "wpl_alpha": alpha,
        "train_loss": float(np.mean(jax.device_get(losses))),
        "train_tokens_per_s": tokens / max(t_train, 1e-9),
        "reward": float(np.mean(jax.device_get(rewards))) if rewards else None,
        "controller_ppl": float(np.mean(jax.device_get(ppls)))
        if ppls
        else None,
        "err1_mean": float(np.mean(err1)),
        "err2_mean": float(np.mean(err2)),
        **forget,
        "fisher_norm": _fisher_norm(state["wpl"]),
        "archs": [search_space.to_string(a) for a in archs],
      }
      if ranker is not None and (
        (epoch + 1) % s.rank_every == 0 or epoch + 1 == s.epochs
      ):
        record.update(ranker(state["shared"], state["controller"].params))
      if (epoch + 1) % s.derive_every == 0 or epoch + 1 == s.epochs:
        best, best_ppl = derive(
          config,
          state,
          sample,
          eval_archs,
          jax.random.fold_in(ep_key, _DERIVE),
          *fixed_r,
          arch_sharding=arch_sharding,
        )
        record["derived"], record["derived_ppl"] = best, best_ppl
      record["epoch_seconds"] = time.time() - t_epoch
      # Compilations so far of each jitted step (1 each: archs are data).
      record["compiles"] = {
        name: _cache_size(fn)
        for name, fn in (
          ("shared_step", shared_step),
          ("fisher_step", fisher_step),
          ("eval_one", eval_one),
          ("eval_archs", eval_archs),
          ("controller_step", ctrl_step),
        )
      }
      history.append({k: v for k, v in record.items() if k != "archs"})
      log.write(record)
      ckpt.save(
        epoch,
        state,
        {"epoch": epoch, "history": history, "config": comparable(config)},
      )
      tb_write(tb, record, epoch)
      logging.info(
        "epoch %d: loss %.3f  reward %s  ppl(ctrl) %s  forget mean %.1f best5 "
        "%.1f max %.1f  %.0f tok/s  %.0fs",
        epoch,
        record["train_loss"],
        fmt(record["reward"]),
        fmt(record["controller_ppl"]),
        forget["diff_mean"],
        forget["diff_best5"],
        forget["diff_max"],
        record["train_tokens_per_s"],
        record["epoch_seconds"],
      )
      if stop.requested:
        raise stop.interrupted(f"enas_ptb epoch {epoch}")
  log.close()
  ckpt.close()
  if tb is not None:
    tb.close()
  derived = next(
    (h["derived"] for h in reversed(history) if "derived" in h), None
  )
  return {"derived": derived, "history": history}


def check_finite(config, epoch, losses, err1, rewards) -> None:
  """Raises NonFiniteError naming the epoch and step of the first NaN/inf.

  One host transfer per epoch (the losses stay on the device until here),
  before the epoch's metrics line and checkpoint are written, so the last
  good checkpoint is kept.
  """
  n = config.search.batches_per_arch
  kept = f"epoch {epoch - 1}'s is kept" if epoch else "none saved"
  where = None
  i = checkpoint_lib.first_nonfinite(losses)
  if i is not None:
    where = (
      f"non-finite training loss at shared step {i} of the epoch "
      f"(arch {i // n + 1}, batch {i % n + 1})"
    )
  elif (i := checkpoint_lib.first_nonfinite(err1)) is not None:
    where = f"non-finite loss on the forgetting batch after arch {i + 1}"
  elif rewards and (i := checkpoint_lib.first_nonfinite(rewards)) is not None:
    where = f"non-finite reward at controller step {i}"
  if where is not None:
    raise checkpoint_lib.NonFiniteError(
      f"{config.experiment} diverged at epoch {epoch}: {where}; stopped, "
      f"checkpoint: {kept} (lower the learning rate or alpha)"
    )


def truncate_jsonl(path: pathlib.Path, last_epoch: int) -> None:
  """Keeps the lines of `path` whose epoch is <= `last_epoch`."""
  if not path.exists() or not metrics_lib.is_primary():
    return
  keep = [r for r in metrics_lib.read_jsonl(path) if r["epoch"] <= last_epoch]
  with open(path, "w", encoding="utf-8") as f:
    for r in keep:
      f.write(json.dumps(r) + "\n")


def _cache_size(fn) -> int | None:
  """Number of compiled versions of a jitted function (private JAX API)."""
  size = getattr(fn, "_cache_size", None)
  return size() if size is not None else None


def _fisher_norm(wpl_state) -> float:
  return float(
    sum(jnp.sum(f * f) for f in jax.tree.leaves(wpl_state.fisher)) ** 0.5
  )


def restore(ckpt: checkpoint_lib.Checkpointer, like: dict) -> tuple:
  """`ckpt.restore(like)`; an intact checkpoint of another vocabulary says so.

  Raises:
    ValueError: the checkpoint does not fit (`CheckpointMismatch`); when
      the embedding's first axis differs, one line naming both
      vocabularies and the likely cause.
  """
  try:
    return ckpt.restore(like)
  except checkpoint_lib.CheckpointMismatch as e:
    raise _vocabulary_error(ckpt, e) from None


def check_checkpoint_fits(workdir: pathlib.Path, like) -> None:
  """Before the workdir is claimed: its newest checkpoint fits `like`.

  Raises:
    ValueError: it does not (one line; another vocabulary says so).
  """
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return
  ckpt = checkpoint_lib.Checkpointer(directory)
  try:
    ckpt.check_fits(like)
  except checkpoint_lib.CheckpointMismatch as e:
    raise _vocabulary_error(ckpt, e) from None
  finally:
    ckpt.close()


def _vocabulary_error(ckpt, e: "checkpoint_lib.CheckpointMismatch"):
  """`e`, or a clearer error when the vocabulary is what differs."""
  for name, saved, now in e.differences:
    if name.endswith("embedding") and saved and now and saved[0] != now[0]:
      return ValueError(
        f"the checkpoint in {ckpt.directory} has a vocabulary of "
        f"{saved[0][0]} words, the data {now[0][0]}: a different "
        "--data_dir? Nothing was moved; rerun with the original data or "
        "use a new --workdir"
      )
  return e


def state_shapes(config: ml_collections.ConfigDict, vocab: int):
  """`(config at vocabulary vocab, jax.eval_shape of its initial state)`.

  Nothing is allocated: a size far beyond the machine is found in about a
  second, and a checkpoint's fit is checked before anything is written.
  """
  sized = ml_collections.ConfigDict(config.to_dict())
  sized.model.vocab_size = vocab
  model = enas_steps.make_model(sized)
  shapes = jax.eval_shape(
    lambda k: init_state(sized, model, k), jax.random.key(0)
  )
  return sized, shapes


@platform_defaults.with_precision
def redraw(config, records: list[dict], out: pathlib.Path) -> None:
  """Forgetting and the controller's reward per epoch (from metrics.jsonl;
  `wpl_jax.runtime.plots`)."""
  del config
  plot(records, out)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Search (unless `search.epochs == 0`), then retrain; writes results.

  Outputs in `workdir`: metrics.jsonl, tb/, checkpoints/, retrain.jsonl,
  results.json and results.md, figure.png (reward and forgetting curves).
  "auto" fields take the backend's values and `config.precision` is set
  (`platform_defaults.resolve`); run.json keeps the config as given and
  the resolved values under "platform".
  """
  given = config
  config, platform = platform_defaults.resolve(config)
  logging.info("platform: %s", platform)
  validate(config)
  make_mesh(config)  # the device counts divide, before any file is written
  if not config.data_dir:
    raise ValueError("set --data_dir to the folder with the PTB text files")
  workdir = pathlib.Path(workdir)
  data = ptb.load_ptb(config.data_dir)
  check_data(config, data)
  check_sizes(config)
  sized, shapes = state_shapes(config, len(data.vocab))
  check_memory(memory_need(sized, shapes), machine_bytes())
  workdir_lib.inspect(workdir, given, resumable=RESUMABLE)  # refuse early
  check_checkpoint_fits(workdir, shapes)  # another vocabulary: say so now
  logging.info(
    "PTB: %d/%d/%d tokens, vocab %d",
    len(data.train),
    len(data.valid),
    len(data.test),
    len(data.vocab),
  )
  workdir_lib.claim(  # the first write; refuses a resume on other data
    workdir,
    given,
    resumable=RESUMABLE,
    extra={"platform": platform, "data": fingerprint.ptb(config.data_dir)},
  )
  t0 = time.time()
  result = search(config, workdir, data)
  # Summed over epochs, so a resumed run reports the whole search.
  search_s = sum(h["epoch_seconds"] for h in result["history"])
  out = {"search_seconds": search_s, "derived": result["derived"]}
  r = config.retrain
  if r.epochs > 0:
    to_train = []
    arch = r.arch or result["derived"]
    if arch:
      to_train.append(("derived" if not r.arch else "given", arch))
    rng = jax.random.key(config.seed + 10_000)
    for i in range(r.random_archs):
      a = search_space.sample_uniform(
        jax.random.fold_in(rng, i),
        config.model.num_nodes,
        fixed_first_activation=enas_steps.fixed_first_activation(config),
      )
      to_train.append((f"random_{i}", search_space.to_string(a)))
    out["retrained"] = []
    retrainer = retrain.Retrainer(config, data)
    for name, arch_str in to_train:
      # A finished cell's result is kept, so a resumed run does not redo it.
      done = workdir / f"retrain_{name}.json"
      if done.exists() and json.loads(done.read_text())["arch"] == arch_str:
        res = json.loads(done.read_text())
      else:
        res = retrainer.run(
          search_space.from_string(arch_str), workdir=workdir, name=name
        )
        res = {"name": name, "arch": arch_str, **res}
        metrics_lib.write_json(done, res)
      out["retrained"].append(res)
  out["total_seconds"] = time.time() - t0
  metrics_lib.write_json(workdir / "results.json", out)
  if metrics_lib.is_primary():
    (workdir / "results.md").write_text(results_md(out, result["history"]))
  plot(result["history"], workdir / "figure.png")
  print(results_md(out, result["history"]))
  return out
