"""Retrains one ENAS cell from scratch; scores every token.

Data parallel over `config.num_devices` devices (0 = all,
`wpl_jax.runtime.sharding`): each [T, B] training batch is split on B, the model
replicated (its edge stacks split along E with `model.shard_edges`); the
evaluation is split the same way when `retrain.eval_batch_size` divides
over the devices, and runs replicated otherwise (e.g. the default 1).
"""

import functools
import pathlib
import time
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from wpl_jax.data import ptb
from wpl_jax.enas import search_space, supernet
from wpl_jax.enas.search_space import Arch
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps
from wpl_jax.enas.train.steps import SharedState
from wpl_jax.runtime import metrics as metrics_lib
from wpl_jax.runtime import sharding


def _nll_sum(model, params, stats, x, y, hidden, arch):
  """Eval mode: summed token NLL (nats) of one window and the new hidden."""
  logits, new_hidden = model.apply(
    {"params": params, "batch_stats": stats}, x, hidden, arch, train=False
  )
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return jnp.sum(nll), new_hidden


def perplexity(
  eval_fn,
  params,
  stats,
  ids: np.ndarray,
  arch: Arch,
  *,
  batch_size: int,
  bptt: int,
  hidden_size: int,
  mesh=None,
) -> float:
  """exp(mean NLL) over every token of `ids` (all but the first).

  The stream is cut into `batch_size` contiguous columns (with
  `batch_size` = 1 every token is scored; otherwise the last
  len(ids) mod batch_size tokens are dropped) and walked in BPTT windows
  with the hidden state carried, dividing by the number of tokens scored
  (not the reference's partial evaluation, docs/method.md §4). With a
  `mesh` the windows and hidden state are split on B over its devices.
  """
  src = ptb.batchify(ids, batch_size)
  hidden = np.zeros((batch_size, hidden_size), np.float32)
  if mesh is not None:
    hidden = sharding.shard_batch(hidden, mesh, axis=0)
  total, count = jnp.zeros([], jnp.float32), 0
  for i in range(0, len(src) - 1, bptt):
    x, y = ptb.get_batch(src, i, bptt)
    if mesh is not None:
      x, y = sharding.shard_batch((x, y), mesh, axis=1)
    s, hidden = eval_fn(params, stats, x, y, hidden, arch)
    if mesh is not None:
      sharding.cpu_sync(hidden, mesh)
    total = total + s  # On the device: one host sync at the end.
    count += y.size
  return float(np.exp(float(total) / count))


class Retrainer:
  """Retrains cells from scratch; its jitted step and evaluation are built
  once and serve every architecture (the cell is an argument)."""

  def __init__(self, config: ml_collections.ConfigDict, data: ptb.PTBData):
    self.config, self.data = config, data
    r = config.retrain
    self.model = enas_setup.make_model(config)
    # The search's step with WPL off and the retraining optimizer.
    rconfig = ml_collections.ConfigDict(config.to_dict())
    rconfig.wpl.enabled = False
    rconfig.shared.grad_clip = r.grad_clip
    rconfig.shared.weight_decay = r.weight_decay
    self.tx = enas_setup.shared_optimizer(r.grad_clip, r.weight_decay)
    steps = enas_steps.Steps(model=self.model, config=rconfig)
    self.mesh = sharding.make_mesh(
      config.get("num_devices", 0),
      edge_shards=config.model.shard_edges,
    )
    sharding.check_divisible(
      config.data.batch_size, self.mesh, "data.batch_size"
    )
    rep = sharding.replicated(self.mesh)
    hid = sharding.batch_sharding(self.mesh, 0)
    shapes = jax.eval_shape(self._init, jax.random.key(0))
    self.shardings = sharding.tree_shardings(
      shapes, self.mesh, sharding.edge_rules(self.mesh)
    )
    # Outputs pinned to the inputs' shardings: one compile per run.
    self.step = jax.jit(
      steps.shared_step,
      donate_argnums=(0,),
      out_shardings=(self.shardings, hid, rep),
    )
    self.eval_mesh = None
    if r.eval_batch_size % sharding.num_shards(self.mesh) == 0:
      self.eval_mesh = self.mesh
    elif sharding.num_shards(self.mesh) > 1:
      logging.info(
        "retrain.eval_batch_size=%d does not split over %d devices: the "
        "evaluation runs replicated",
        r.eval_batch_size,
        sharding.num_shards(self.mesh),
      )
    self.eval_fn = jax.jit(
      functools.partial(_nll_sum, self.model),
      out_shardings=(rep, hid if self.eval_mesh is not None else rep),
    )

  def _init(self, key) -> SharedState:
    """Fresh variables and optimizer state of the standalone model."""
    variables = supernet.init_variables(self.model, key=key)
    return SharedState(
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      opt_state=self.tx.init(variables["params"]),
    )

  def run(self, arch: Arch, *, workdir: pathlib.Path, name: str) -> dict:
    """Trains `arch` from scratch for `config.retrain.epochs` passes.

    The standalone model is the shared RNN with the cell fixed (only the
    arch's edges receive gradients). After every epoch the validation
    perplexity is computed on every token; the best-validation params give
    the test perplexity. Per-epoch records go to `workdir/retrain.jsonl`.

    Returns:
      {"valid_ppl", "test_ppl", "best_epoch", "seconds", "tokens_per_s"}.
    """
    search_space.validate(arch)
    config, data, r = self.config, self.data, self.config.retrain
    seed = zlib.crc32(name.encode())
    key = jax.random.fold_in(jax.random.key(config.seed), seed)
    k_init, k_train = jax.random.split(key)
    shared = sharding.put(self._init(k_init), self.shardings)
    b, bptt, h = config.data.batch_size, config.data.bptt, config.model.hidden
    train_src = ptb.batchify(data.train, b)
    n_windows = (len(train_src) - 1) // bptt
    if r.get("max_batches_per_epoch", 0):
      n_windows = min(n_windows, r.max_batches_per_epoch)
    ppl_kw = dict(
      batch_size=r.eval_batch_size,
      bptt=bptt,
      hidden_size=h,
      mesh=self.eval_mesh,
    )
    best = (np.inf, None, -1)
    # A retrain has no checkpoint: one interrupted earlier starts over, so
    # its records from that attempt go (the other cells' stay).
    drop_records(workdir / "retrain.jsonl", name)
    log = metrics_lib.JsonlWriter(workdir / "retrain.jsonl")
    t0, tokens = time.time(), 0
    for epoch in range(r.epochs):
      lr = r.lr * r.lr_decay ** max(0, epoch - r.lr_decay_after)
      hidden = sharding.shard_batch(np.zeros((b, h), np.float32), self.mesh)
      losses, t_ep = [], time.time()
      for i in range(n_windows):
        x, y = ptb.get_batch(train_src, i * bptt, bptt)
        x, y = sharding.shard_batch((x, y), self.mesh, axis=1)
        k = jax.random.fold_in(jax.random.fold_in(k_train, epoch), i)
        shared, hidden, m = self.step(
          shared,
          None,
          arch,
          x,
          y,
          hidden,
          jnp.float32(lr),
          jnp.float32(0.0),
          key=k,
        )
        sharding.cpu_sync(hidden, self.mesh)
        losses.append(m["loss"])
        tokens += x.size
        if (i + 1) % r.log_every == 0:
          logging.info(
            "retrain %s epoch %d batch %d/%d loss %.3f (%.0f tok/s)",
            name,
            epoch,
            i + 1,
            n_windows,
            float(m["loss"]),
            (i + 1) * x.size / (time.time() - t_ep),
          )
      valid = perplexity(
        self.eval_fn,
        shared.params,
        shared.batch_stats,
        data.valid,
        arch,
        **ppl_kw,
      )
      train_loss = float(np.mean(jax.device_get(losses)))
      log.write(
        {
          "name": name,
          "arch": search_space.to_string(arch),
          "epoch": epoch,
          "train_loss": train_loss,
          "valid_ppl": valid,
          "lr": lr,
        }
      )
      logging.info(
        "retrain %s epoch %d: train loss %.3f valid ppl %.2f",
        name,
        epoch,
        train_loss,
        valid,
      )
      if valid < best[0]:
        best = (
          valid,
          jax.device_get((shared.params, shared.batch_stats)),
          epoch,
        )
    log.close()
    seconds = time.time() - t0
    if best[1] is None:
      raise ValueError(f"retrain {name} diverged: no finite validation ppl")
    # Placed once (not transferred again with every window).
    params, stats = sharding.put(
      best[1], (self.shardings.params, self.shardings.batch_stats)
    )
    test = perplexity(self.eval_fn, params, stats, data.test, arch, **ppl_kw)
    return {
      "valid_ppl": best[0],
      "test_ppl": test,
      "best_epoch": best[2],
      "seconds": seconds,
      "tokens_per_s": tokens / seconds,
    }


def drop_records(path: pathlib.Path, name: str) -> None:
  """Rewrites the JSONL at `path` without the records of cell `name`."""
  if not path.exists() or not metrics_lib.is_primary():
    return
  records = metrics_lib.read_jsonl(path)
  keep = [r for r in records if r.get("name") != name]
  if len(keep) == len(records) and path.read_bytes().endswith(b"\n"):
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.unlink(missing_ok=True)  # one a kill left: the writer appends
  with metrics_lib.JsonlWriter(tmp) as log:
    for r in keep:
      log.write(r)
  tmp.replace(path)
