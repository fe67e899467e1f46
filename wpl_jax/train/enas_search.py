"""ENAS RNN-cell search on PTB, with or without WPL; then derive and retrain.

Per epoch (REFERENCE.md §4): shared training (S sampled architectures × B
batches each; with WPL, after each architecture a Fisher estimate on one
validation batch, the running update on its edges and re-anchoring of all
edges, REFERENCE.md §2), the forgetting metric (each architecture's
validation perplexity on a fixed batch right after its training, err1,
and again at the end of the epoch in one vmapped call, err2), then C
controller steps; every D epochs, derive the best of M sampled cells.
Checkpoints every epoch; a rerun with the same workdir resumes.
"""

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from wpl_jax import checkpoint as checkpoint_lib
from wpl_jax import metrics as metrics_lib
from wpl_jax import validation
from wpl_jax import workdir as workdir_lib
from wpl_jax.data import ptb
from wpl_jax.enas import ranking, search_space
from wpl_jax.enas import wpl as enas_wpl
from wpl_jax.models import controller as controller_lib
from wpl_jax.models import enas_rnn
from wpl_jax.train import enas_steps, retrain
from wpl_jax.train.enas_steps import ControllerState, SharedState

# Independent random streams, folded into the run's base key.
_INIT, _SHARED, _CONTROLLER, _DERIVE, _FISHER, _EPOCHS = range(6)
# Config fields that may change when a run is resumed (e.g. to extend it).
_RESUMABLE = ("search.epochs", "retrain", "data_dir")
RESUMABLE = _RESUMABLE  # fields a rerun in the same workdir may change


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


def forgetting_stats(err1: np.ndarray, err2: np.ndarray) -> dict[str, float]:
  """Mean, best-5 (mean of the 5 largest) and max of err2 − err1 (ppl)."""
  diff = np.asarray(err2, np.float64) - np.asarray(err1, np.float64)
  top = np.sort(diff)[::-1][:5]
  return {
    "diff_mean": float(diff.mean()),
    "diff_best5": float(top.mean()),
    "diff_max": float(diff.max()),
  }


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


def valid_splits(config: ml_collections.ConfigDict, valid_ids: np.ndarray):
  """Cuts the validation stream into three disjoint parts.

  * "heldout": the last `search.heldout_tokens` tokens, for the ranking
    evaluation of the whole space (`ptb.eval_windows`, B columns, padded
    and masked): no training, Fisher, reward or forgetting batch reads it.
    None when `heldout_tokens` is 0.
  * "forget": the first BPTT window (inputs, targets) of the rest,
    batchified into B columns: the forgetting metric's fixed batch.
  * "stream": the rows after that window (none shared with it, not even
    a target row), walked by the Fisher and the reward batches.

  Raises:
    ValueError: when the split leaves fewer than two windows' rows.
  """
  b, bptt = config.data.batch_size, config.data.bptt
  n_held = config.search.get("heldout_tokens", 0)
  ids = np.asarray(valid_ids)
  heldout = None
  if n_held:
    if n_held >= len(ids):
      raise ValueError(
        f"config.search.heldout_tokens={n_held} is not smaller than the "
        f"{len(ids)} validation tokens"
      )
    heldout = ptb.eval_windows(ids[-n_held:], b, bptt)
    ids = ids[:-n_held]
  src = ptb.batchify(ids, b)
  if len(src) < 2 * (bptt + 1):
    raise ValueError(
      f"the validation split ({len(ids)} tokens in {b} columns) is shorter "
      f"than two {bptt}-token windows: lower search.heldout_tokens"
    )
  forget = ptb.get_batch(src, 0, bptt)
  return {"forget": forget, "stream": src[bptt + 1 :], "heldout": heldout}


class _Ranker:
  """Scores every cell of the space with the shared weights (held-out split).

  Logs the shared-weight perplexity of each cell, the shared ranking's best
  cell and, with a stored ground truth (`search.truth_path`), Kendall τ,
  Spearman ρ, top-3 hit and regret against it (`wpl_jax.enas.ranking`).
  """

  def __init__(self, config, steps, heldout):
    if heldout is None:
      raise ValueError("config.search.rank_every needs search.heldout_tokens")
    self.archs = enas_steps.space_archs(config)
    self.names = [
      search_space.to_string(a) for a in search_space.unstack(self.archs)
    ]
    self.x, self.y, self.mask = heldout
    self.count = float(self.mask.sum())
    self.fn = jax.jit(steps.eval_archs_windows)
    self.truth = None
    path = config.search.get("truth_path", "")
    if path:
      self.truth = ranking.truth_for(path, self.names)

  def __call__(self, shared) -> dict:
    nll = np.asarray(self.fn(shared, self.archs, self.x, self.y, self.mask))
    ppl = np.exp(nll / self.count)
    out = {
      "rank_shared_ppl": ppl.tolist(),
      "rank_best": self.names[int(np.argmin(ppl))],
    }
    if self.truth is not None:
      stats = ranking.ranking_stats(ppl, self.truth, k=3)
      out.update({f"rank_{k}": v for k, v in stats.items()})
    return out


def _init_state(config, model, key):
  k_model, k_ctrl = jax.random.split(jax.random.fold_in(key, _INIT))
  variables = enas_rnn.init_variables(model, key=k_model)
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
    baseline=jnp.zeros([], jnp.float32),
    step=jnp.zeros([], jnp.int32),
  )
  b, h = config.data.batch_size, config.model.hidden
  return {
    "shared": shared,
    "controller": ctrl,
    "wpl": enas_wpl.init_state(params),
    "train_hidden": jnp.zeros((b, h), jnp.float32),
    "fisher_hidden": jnp.zeros((b, h), jnp.float32),
    "ctrl_hidden": jnp.zeros((b, h), jnp.float32),
    "pos": jnp.zeros((3,), jnp.int32),  # train, fisher, controller windows
  }


def _eval_chunked(eval_fn, shared, archs, x, y, hidden, chunk):
  """Perplexities of K archs in vmapped chunks of a fixed size (1 compile)."""
  k = archs.activations.shape[0]
  pad = (-k) % chunk
  if pad:
    archs = jax.tree.map(
      lambda a: np.concatenate([a, np.repeat(a[-1:], pad, 0)]), archs
    )
  out = []
  for i in range(0, k + pad, chunk):
    part = jax.tree.map(lambda a, i=i: a[i : i + chunk], archs)
    out.append(np.asarray(eval_fn(shared, part, x, y, hidden)))
  return np.concatenate(out)[:k]


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
  key = jax.random.key(config.seed)
  b, bptt = config.data.batch_size, config.data.bptt
  train_w = _Windows(ptb.batchify(data.train, b), bptt)
  splits = valid_splits(config, data.valid)
  fixed_x, fixed_y = splits["forget"]  # the forgetting metric's batch
  valid_w = _Windows(splits["stream"], bptt)  # Fisher and reward batches
  zero_h = jnp.zeros((b, config.model.hidden), jnp.float32)
  s = config.search
  policy = enas_steps.search_policy(config)
  ranker = _Ranker(config, steps, splits["heldout"]) if s.rank_every else None

  shared_step = jax.jit(steps.shared_step, donate_argnums=(0,))
  fisher_step = jax.jit(steps.fisher_step)
  # Two jitted objects of one function: one shape each (K = 1 right after
  # an arch's training, K = eval_chunk for the end-of-epoch and derive).
  eval_one = jax.jit(steps.eval_archs)
  eval_archs = jax.jit(steps.eval_archs)
  ctrl_step = jax.jit(steps.controller_step)
  sample = jax.jit(steps.sample, static_argnames="k")

  state = _init_state(config, model, key)
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  start_epoch, history = 0, []
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    _check_same_config(config, meta.get("config"))
    start_epoch, history = meta["epoch"] + 1, meta["history"]
    logging.info("resumed from epoch %d in %s", meta["epoch"], ckpt.directory)
    # Lines of epochs after the checkpoint (a kill between the metrics line
    # and the checkpoint) are dropped: those epochs run again.
    _truncate_jsonl(workdir / "metrics.jsonl", meta["epoch"])
  else:  # a kill during the first save left epoch 0's line: it runs again
    _truncate_jsonl(workdir / "metrics.jsonl", -1)
  log = metrics_lib.JsonlWriter(workdir / "metrics.jsonl")
  tb = _tensorboard(workdir / "tb")

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
        losses.append(m["loss"])
        tokens += x.size
      jax.block_until_ready(state["shared"].params)
      t_train += time.time() - t0
      err1.append(
        float(
          eval_one(state["shared"], _one(arch), fixed_x, fixed_y, zero_h)[0]
        )
      )
      if use_fisher:
        pos[1], fx, fy, wrapped = valid_w.get(pos[1])
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
      if time.time() - t_log > s.get("log_seconds", 10.0):
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
    err2 = _eval_chunked(
      eval_archs,
      state["shared"],
      stacked,
      fixed_x,
      fixed_y,
      zero_h,
      s.eval_chunk,
    )
    forget = forgetting_stats(np.array(err1), err2)

    rewards, ppls = [], []
    c_key = jax.random.fold_in(ep_key, _CONTROLLER)
    ctrl_steps = config.controller.steps_per_epoch if policy == "enas" else 0
    for c in range(ctrl_steps):
      pos[2], vx, vy, wrapped = valid_w.get(pos[2])
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
      rewards.append(cm["reward"])
      ppls.append(cm["ppl"])
    state["pos"] = jnp.asarray(pos, jnp.int32)
    _check_finite(config, epoch, losses, err1, rewards)

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
      "controller_ppl": float(np.mean(jax.device_get(ppls))) if ppls else None,
      "err1_mean": float(np.mean(err1)),
      "err2_mean": float(np.mean(err2)),
      **forget,
      "fisher_norm": _fisher_norm(state["wpl"]),
      "archs": [search_space.to_string(a) for a in archs],
    }
    if ranker is not None and (
      (epoch + 1) % s.rank_every == 0 or epoch + 1 == s.epochs
    ):
      record.update(ranker(state["shared"]))
    if (epoch + 1) % s.derive_every == 0 or epoch + 1 == s.epochs:
      best, best_ppl = _derive(
        config,
        state,
        sample,
        eval_archs,
        jax.random.fold_in(ep_key, _DERIVE),
        fixed_x,
        fixed_y,
        zero_h,
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
      {"epoch": epoch, "history": history, "config": _comparable(config)},
    )
    _tb_write(tb, record, epoch)
    logging.info(
      "epoch %d: loss %.3f  reward %s  ppl(ctrl) %s  forget mean %.1f best5 "
      "%.1f max %.1f  %.0f tok/s  %.0fs",
      epoch,
      record["train_loss"],
      _fmt(record["reward"]),
      _fmt(record["controller_ppl"]),
      forget["diff_mean"],
      forget["diff_best5"],
      forget["diff_max"],
      record["train_tokens_per_s"],
      record["epoch_seconds"],
    )
  log.close()
  ckpt.close()
  if tb is not None:
    tb.close()
  derived = next(
    (h["derived"] for h in reversed(history) if "derived" in h), None
  )
  return {"derived": derived, "history": history}


def _check_finite(config, epoch, losses, err1, rewards) -> None:
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


def _comparable(config: ml_collections.ConfigDict) -> dict:
  """The config as a dict, without the fields a resume may change."""
  d = config.to_dict()
  for field in _RESUMABLE:
    *parents, leaf = field.split(".")
    node = d
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  return d


def _check_same_config(config, saved: dict | None) -> None:
  """Raises ValueError if a checkpoint was written under another config."""
  if saved is None:
    return
  now = workdir_lib.flatten(json.loads(json.dumps(_comparable(config))))
  old = workdir_lib.flatten(saved)
  diff = sorted(k for k in set(now) | set(old) if now.get(k) != old.get(k))
  if diff:
    raise ValueError(
      "the checkpoint in this workdir was written with a different config "
      f"({', '.join(diff[:4])}); use a new --workdir"
    )


def _truncate_jsonl(path: pathlib.Path, last_epoch: int) -> None:
  """Keeps the lines of `path` whose epoch is <= `last_epoch`."""
  if not path.exists():
    return
  keep = [r for r in metrics_lib.read_jsonl(path) if r["epoch"] <= last_epoch]
  with open(path, "w", encoding="utf-8") as f:
    for r in keep:
      f.write(json.dumps(r) + "\n")


def _cache_size(fn) -> int | None:
  """Number of compiled versions of a jitted function (private JAX API)."""
  size = getattr(fn, "_cache_size", None)
  return size() if size is not None else None


def _one(arch):
  return jax.tree.map(lambda x: x[None], arch)


def _fmt(v):
  return "-" if v is None else f"{v:.3f}"


def _fisher_norm(wpl_state) -> float:
  return float(
    sum(jnp.sum(f * f) for f in jax.tree.leaves(wpl_state.fisher)) ** 0.5
  )


def _derive(config, state, sample, eval_archs, key, x, y, hidden):
  """Best of M controller samples by validation perplexity on one batch."""
  m = config.search.derive_samples
  archs = jax.device_get(sample(state["controller"].params, key=key, k=m))
  ppl = _eval_chunked(
    eval_archs, state["shared"], archs, x, y, hidden, config.search.eval_chunk
  )
  best = int(np.argmin(ppl))
  arch = jax.tree.map(lambda a: a[best], archs)
  return search_space.to_string(arch), float(ppl[best])


def _tensorboard(path):
  try:
    from tensorboardX import SummaryWriter  # Optional: only for TB logs.
  except ImportError:
    logging.warning("tensorboardX not installed: no TensorBoard logs")
    return None
  return SummaryWriter(str(path))


def _tb_write(tb, record, epoch):
  if tb is None:
    return
  for k, v in record.items():
    if isinstance(v, (int, float)) and k != "epoch":
      tb.add_scalar(k, v, epoch)
  tb.flush()


def validate_model(config: ml_collections.ConfigDict) -> None:
  """Ranges of the model, data and shared-optimiser fields (one line each)."""
  v = validation
  v.integer(config, "model.hidden", min=1)
  v.integer(config, "model.num_nodes", min=2)
  for name in (
    "dropout_output",
    "dropout_input",
    "dropout_embed",
    "dropconnect",
  ):
    v.number(config, f"model.{name}", min=0, max=1, open_max=True)
  v.number(config, "model.clip_norm", min=0, open_min=True)
  v.number(config, "model.init_range", min=0, open_min=True)
  if "ce_chunk" in config.model:
    v.integer(config, "model.ce_chunk", min=0)
  v.integer(config, "data.batch_size", min=1)
  v.integer(config, "data.bptt", min=1)
  v.number(config, "shared.lr", min=0, open_min=True)
  v.number(config, "shared.lr_decay", min=0, max=1, open_min=True)
  v.integer(config, "shared.lr_decay_after", min=0)
  v.number(config, "shared.grad_clip", min=0, open_min=True)
  v.number(config, "shared.weight_decay", min=0)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) on an inconsistent config."""
  validate_model(config)
  v = validation
  c = config.controller
  v.integer(config, "controller.hidden", min=1)
  v.number(config, "controller.lr", min=0, open_min=True)
  v.integer(config, "controller.steps_per_epoch", min=0)
  v.integer(config, "controller.batch_size", min=1)
  v.number(config, "controller.temperature", min=0, open_min=True)
  v.number(
    config, "controller.tanh_constant", min=0, open_min=True, allow_none=True
  )
  v.number(config, "controller.reward_c", min=0, open_min=True)
  v.number(config, "controller.entropy_coef", min=0)
  v.number(config, "controller.baseline_decay", min=0, max=1)
  del c
  v.number(config, "wpl.alpha", min=0)
  v.integer(config, "wpl.start_epoch", min=0)
  v.integer(config, "wpl.reset_every", min=0)
  v.integer(config, "wpl.alpha_decay_after", min=0)
  v.number(config, "wpl.alpha_decay", min=0)
  v.number(config, "wpl.ema_new", min=0, max=1)
  v.number(config, "wpl.clip", min=0)
  v.integer(config, "wpl.chunk_size", min=1)
  r = config.retrain
  v.number(config, "retrain.lr", min=0, open_min=True)
  v.number(config, "retrain.lr_decay", min=0, max=1, open_min=True)
  v.integer(config, "retrain.lr_decay_after", min=0)
  v.number(config, "retrain.grad_clip", min=0, open_min=True)
  v.number(config, "retrain.weight_decay", min=0)
  v.integer(config, "retrain.random_archs", min=0)
  v.integer(config, "retrain.eval_batch_size", min=1)
  v.integer(config, "retrain.max_batches_per_epoch", min=0)
  v.integer(config, "retrain.log_every", min=1)
  v.integer(config, "search.epochs", min=0 if r.arch else 1)
  v.integer(config, "retrain.epochs", min=0)
  w = config.wpl
  if w.mode not in ("reference", "clean"):
    raise ValueError(f"config.wpl.mode must be reference or clean: {w.mode!r}")
  if w.estimator not in ("batch_grad_squared", "per_example", "sampled"):
    raise ValueError(f"unknown config.wpl.estimator {w.estimator!r}")
  if w.get("fisher_method", "fast") not in ("fast", "vmap"):
    raise ValueError("config.wpl.fisher_method must be 'fast' or 'vmap'")
  if config.search.get("eval_bn", "running") not in ("running", "batch"):
    raise ValueError("config.search.eval_bn must be 'running' or 'batch'")
  if config.model.num_nodes < 2:
    raise ValueError("config.model.num_nodes must be >= 2")
  if enas_steps.search_policy(config) not in enas_steps.POLICIES:
    raise ValueError(
      f"config.search.policy must be one of {enas_steps.POLICIES}: "
      f"{config.search.policy!r}"
    )
  enas_steps.fixed_first_activation(config)  # raises on an unknown name
  for field in ("heldout_tokens", "rank_every"):
    if config.search.get(field, 0) < 0:
      raise ValueError(f"config.search.{field} must be >= 0")
  for field in (
    "archs_per_epoch",
    "batches_per_arch",
    "derive_every",
    "derive_samples",
    "eval_chunk",
  ):
    if config.search[field] < 1:
      raise ValueError(f"config.search.{field} must be >= 1")
  if config.retrain.arch:
    search_space.validate(search_space.from_string(config.retrain.arch))


def _stream_rows(name: str, ids: np.ndarray, columns: int, need: int) -> None:
  rows = len(ids) // columns
  if rows < need:
    raise ValueError(
      f"ptb.{name}.txt has {len(ids)} tokens: fewer than {need} rows of "
      f"{columns} columns ({need * columns} tokens) that this config needs"
    )


def check_data(config: ml_collections.ConfigDict, data: ptb.PTBData) -> None:
  """Raises ValueError (one line) if a split is too short for the config.

  Checked before anything is written, so that a short or empty file is not
  found after the whole search: the train split must give one BPTT window,
  the validation split the forgetting, stream and held-out parts
  (`valid_splits`), and with retraining valid and test one target each.
  """
  b, bptt = config.data.batch_size, config.data.bptt
  _stream_rows("train", data.train, b, bptt + 1)
  valid_splits(config, data.valid)
  if config.retrain.epochs > 0:
    eb = config.retrain.eval_batch_size
    _stream_rows("valid", data.valid, eb, 2)
    _stream_rows("test", data.test, eb, 2)
  if config.search.get("rank_every", 0):
    if not config.search.get("heldout_tokens", 0):
      raise ValueError("config.search.rank_every needs search.heldout_tokens")
    path = config.search.get("truth_path", "")
    if path:
      archs = search_space.unstack(enas_steps.space_archs(config))
      ranking.truth_for(path, [search_space.to_string(a) for a in archs])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Search (unless `search.epochs == 0`), then retrain; writes results.

  Outputs in `workdir`: metrics.jsonl, tb/, checkpoints/, retrain.jsonl,
  results.json and results.md, figure.png (reward and forgetting curves).
  """
  validate(config)
  if not config.data_dir:
    raise ValueError("set --data_dir to the folder with the PTB text files")
  workdir = pathlib.Path(workdir)
  data = ptb.load_ptb(config.data_dir)
  check_data(config, data)
  workdir_lib.inspect(workdir, config, resumable=RESUMABLE)  # refuse early
  logging.info(
    "PTB: %d/%d/%d tokens, vocab %d",
    len(data.train),
    len(data.valid),
    len(data.test),
    len(data.vocab),
  )
  workdir_lib.claim(workdir, config, resumable=RESUMABLE)  # first write
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
  (workdir / "results.md").write_text(_results_md(out, result["history"]))
  _plot(result["history"], workdir / "figure.png")
  print(_results_md(out, result["history"]))
  return out


def _results_md(out, history) -> str:
  lines = [f"search: {out['search_seconds']:.0f} s; derived: {out['derived']}"]
  if history:
    last = history[-1]
    lines.append(
      f"last epoch {last['epoch']}: reward {_fmt(last['reward'])}, "
      f"forgetting mean/best5/max {last['diff_mean']:.1f}/"
      f"{last['diff_best5']:.1f}/{last['diff_max']:.1f}"
    )
  rows = out.get("retrained", [])
  if rows:
    lines.append("")
    lines.append(
      metrics_lib.markdown_table(
        [
          {
            **r,
            "valid_ppl": f"{r['valid_ppl']:.2f}",
            "test_ppl": f"{r['test_ppl']:.2f}",
          }
          for r in rows
        ],
        [
          ("name", "run"),
          ("arch", "architecture"),
          ("valid_ppl", "valid ppl"),
          ("test_ppl", "test ppl"),
        ],
      )
    )
  return "\n".join(lines) + "\n"


def _plot(history, path):
  if not history:
    return
  x = [h["epoch"] for h in history]
  panels = [
    {
      "title": t,
      "curves": [{"label": "run", "x": x, "mean": [h[k] for h in history]}],
    }
    for k, t in (
      ("diff_mean", "mean diff (ppl)"),
      ("diff_best5", "best-5 diff (ppl)"),
      ("diff_max", "max diff (ppl)"),
      ("reward", "controller reward"),
    )
    if all(h.get(k) is not None for h in history)
  ]
  metrics_lib.plot_panels(
    panels, path, xlabel="epoch", ylabel="", ncols=4, ylim=None
  )
