"""Two-model study: training A for every seed, then B from A for every run.

`train_a` trains A (vmapped over seeds) and snapshots the weak and the
converged A; `train_b` attaches B to A's first k layers, estimates the Fisher
of A per estimator and trains every B run (variant, strength, seed) vmapped,
appending its evaluations to metrics.jsonl. Both checkpoint and resume.

Data parallel over `config.num_devices` devices (0 = all,
`wpl_jax.runtime.sharding`):
each step's minibatch [B, D] is split on B over the devices while the
states, penalties and the (small) data sets are replicated; the compiler
reduces the gradients. Multi-host: every process loads the whole data set
(it is drawn from on the device) and holds it replicated. The Fisher of A
runs replicated (its minibatches are cut inside `fisher_of_a`).
"""

import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from wpl_jax import partition
from wpl_jax.runtime import checkpoint as checkpoint_lib
from wpl_jax.runtime import metrics as metrics_lib
from wpl_jax.runtime import sharding
from wpl_jax.two_models import model as model_lib
from wpl_jax.two_models.config import headline_runs, make_runs
from wpl_jax.two_models.steps import (
  Penalty,
  TrainState,
  accuracy_of,
  evaluate_params,
  fisher_of_a,
  loss_a,
  loss_b,
  make_optimizer,
  train_chunk,
  train_step,
)
from wpl_jax.types import Params, PRNGKey


def _seed_keys(seeds: list[int], stream: int) -> PRNGKey:
  """Keys [S], one per seed, for one purpose (`stream`): init, data, ..."""
  return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), stream))(
    jnp.asarray(seeds)
  )


# Key streams per seed: each consumer folds in its own constant.
_A_INIT, _A_DATA, _B_INIT, _B_DATA, _FISHER = range(5)


def make_mesh(config) -> jax.sharding.Mesh:
  """The study's mesh of `config.num_devices` (0 = all) devices.

  Raises:
    ValueError: `protocol.batch_size` does not split over the devices.
  """
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  sharding.check_divisible(
    config.protocol.batch_size, mesh, "protocol.batch_size"
  )
  return mesh


def data_parallel(step_fn, mesh):
  """`step_fn(state, batch, key)` with the batch split on its example axis.

  The minibatch (x [B, D], y [B]) is drawn on the device inside the scan;
  the constraint splits it B / D per device (under the vmap over runs it
  applies to each run's batch), so each device computes the forward and
  backward of its examples and the compiler sums the gradients.
  """
  spec = sharding.batch_sharding(mesh, 0)

  def step(state, batch, key):
    return step_fn(state, jax.lax.with_sharding_constraint(batch, spec), key)

  return step


def _place_data(data, mesh):
  """The data set's arrays replicated on `mesh` (placed once, not per call)."""
  arrays = (data.x_train, data.y_train, data.x_test, data.y_test)
  x, y, xt, yt = sharding.put(arrays, sharding.replicated(mesh))
  return data._replace(x_train=x, y_train=y, x_test=xt, y_test=yt)


def train_a(
  config, data, seeds: list[int], *, ckpt_dir=None, stop=None
) -> dict[str, Params]:
  """Trains A for every seed (vmapped); snapshots the weak and converged A.

  With `ckpt_dir`, A's state is checkpointed after every logged segment and
  a rerun resumes from it (bit-identical); `stop` (a
  `checkpoint.StopOnSignal`) ends the run at the next segment, saved.

  Returns:
    {"weak": params [S, ...], "converged": params [S, ...]}.

  Raises:
    checkpoint.NonFiniteError: a seed's loss became NaN or infinite.
  """
  p, m = config.protocol, config.model
  mesh = make_mesh(config)
  rep = sharding.replicated(mesh)
  logging.info("A: %s", sharding.describe(mesh))
  data = _place_data(data, mesh)
  tx = make_optimizer(config.opt_a)
  init = functools.partial(
    model_lib.init_a,
    in_dim=data.x_train.shape[1],
    width=m.width,
    num_classes=data.num_classes,
    depth=m.depth_a,
  )
  params = jax.vmap(init)(_seed_keys(seeds, _A_INIT))
  state = TrainState(params, jax.vmap(tx.init)(params), jnp.zeros([len(seeds)]))
  state, keys = sharding.put((state, _seed_keys(seeds, _A_DATA)), rep)
  step_fn = data_parallel(
    functools.partial(
      train_step, loss_fn=lambda q, b: (loss_a(q, b), {}), tx=tx
    ),
    mesh,
  )
  accuracy = jax.jit(
    jax.vmap(
      functools.partial(accuracy_of, model_lib.forward_a),
      in_axes=(0, None, None),
    )
  )
  segments = [p.a_steps_weak]
  rest = p.a_steps_converged - p.a_steps_weak
  while rest > 0:
    segments.append(min(rest, p.a_log_every))
    rest -= segments[-1]
  snapshots, done, chunks = {}, 0, {}
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir) if ckpt_dir else None
  if ckpt is not None and ckpt.latest_step() is not None:
    restored, meta = ckpt.restore({"state": state, "weak": state.params})
    state, done = restored["state"], meta["done"]
    snapshots["weak"] = restored["weak"]
    logging.info("A resumed at step %d from %s", done, ckpt.directory)
  end = 0
  for n in segments:
    end += n
    if end <= done:  # run before the checkpoint
      continue
    if n not in chunks:  # One compile per distinct segment length.
      chunks[n] = jax.jit(
        jax.vmap(
          functools.partial(
            train_chunk, step_fn=step_fn, num_steps=n, batch_size=p.batch_size
          ),
          in_axes=(0, 0, None, None),
        ),
        out_shardings=rep,
      )
    chunk = chunks[n]
    t0 = time.time()
    state, stats = chunk(state, keys, data.x_train, data.y_train)
    acc = np.asarray(accuracy(state.params, data.x_test, data.y_test))
    bad = checkpoint_lib.first_nonfinite(stats["loss"])
    if bad is not None:
      raise checkpoint_lib.NonFiniteError(
        f"two_models diverged: A (seed {seeds[bad]}) has a non-finite loss "
        f"in steps {done + 1}-{done + n}; stopped (lower opt_a.lr)"
      )
    done += n
    logging.info(
      "A step %d/%d | loss %.3f | test acc %.3f ± %.3f | %.0f it/s",
      done,
      p.a_steps_converged,
      float(np.mean(stats["loss"])),
      acc.mean(),
      acc.std(),
      n * len(seeds) / (time.time() - t0),
    )
    if done == p.a_steps_weak:
      snapshots["weak"] = jax.tree.map(jnp.copy, state.params)
    if ckpt is not None:
      saved = {"state": state, "weak": snapshots["weak"]}
      ckpt.save(done, saved, {"done": done})
      if stop is not None and stop.requested:
        ckpt.close()
        raise stop.interrupted(f"A step {done}")
  if ckpt is not None:
    ckpt.close()
  snapshots["converged"] = state.params
  return snapshots


def _drop_lines(path, k: int, setting: str, after: int) -> None:
  """Drops `path`'s lines of B (k, setting) whose step is > `after`."""
  path = pathlib.Path(path)
  if not path.exists() or not metrics_lib.is_primary():
    return
  keep = [
    r
    for r in metrics_lib.read_jsonl(path)
    if not (r["k"] == k and r["a_setting"] == setting and r["step"] > after)
  ]
  path.write_text("".join(metrics_lib.dumps_line(r) for r in keep))


def train_b(
  config,
  data,
  params_a: Params,
  seeds: list[int],
  *,
  k: int,
  setting: str,
  log_path,
  cache: dict,
  ckpt_root=None,
  stop=None,
) -> dict[str, Any]:
  """Trains B from A (params [S, ...]) for every run, vmapped over runs.

  `cache` holds the jitted functions, keyed by k, so that the second A
  setting reuses the first one's compiles. Evaluations are appended to
  `log_path` (JSONL). With `ckpt_root`, B's state is checkpointed every
  `protocol.checkpoint_every` steps (and at a `stop` request), a rerun
  resumes bit-identically, and a finished (k, setting) is stored as
  `ckpt_root/b_k{k}_{setting}.json` and not run again.

  Returns:
    {"runs": [Run], "steps": [T], "acc_a": [T, R], "acc_b": [T, R]}.

  Raises:
    checkpoint.NonFiniteError: a run's loss became NaN or infinite.
  """
  p = config.protocol
  name = f"b_k{k}_{setting}"
  done_path = pathlib.Path(ckpt_root) / f"{name}.json" if ckpt_root else None
  if done_path is not None and done_path.exists():
    d = json.loads(done_path.read_text(encoding="utf-8"))
    logging.info("B k=%d %s A: finished before, read %s", k, setting, done_path)
    return {
      "runs": make_runs(config),
      "steps": np.asarray(d["steps"]),
      "acc_a": np.asarray(d["acc_a"], np.float32),
      "acc_b": np.asarray(d["acc_b"], np.float32),
    }
  s_count = len(seeds)
  mesh = make_mesh(config)
  rep = sharding.replicated(mesh)
  data = _place_data(data, mesh)
  params = jax.vmap(
    functools.partial(
      model_lib.attach_b, num_shared=k, depth=config.model.depth_b
    )
  )(params_a, _seed_keys(seeds, _B_INIT))
  mask = partition.make_mask(
    jax.tree.map(lambda v: v[0], params), model_lib.SHARED_REGEX
  )
  runs = make_runs(config)
  # Penalty weights per run, gathered from stacks [option * S + seed].
  options = {"ones": jax.tree.map(lambda v: jnp.ones_like(v), params)}
  fisher_keys = _seed_keys(seeds, _FISHER)
  for est in config.fisher.estimators if "wpl" in config.variants else ():
    key = ("fisher", k, est)
    if key not in cache:  # One compile per (k, estimator), reused.
      cache[key] = jax.jit(
        functools.partial(
          fisher_of_a,
          estimator=est,
          num_examples=config.fisher.num_examples,
          batch_size=config.fisher.batch_size,
          mask=mask,
          normalize=config.fisher.normalize,
        )
      )
    t0 = time.time()
    per_seed = [
      cache[key](
        jax.tree.map(lambda v, i=i: v[i], params),
        fisher_keys[i],
        data.x_train,
        data.y_train,
      )
      for i in range(s_count)
    ]
    options[est] = jax.tree.map(lambda *v: jnp.stack(v), *per_seed)
    logging.info(
      "Fisher %s of A (k=%d, %s A): %.1f s",
      est,
      k,
      setting,
      time.time() - t0,
    )
  order = list(options)
  stacked = jax.tree.map(lambda *v: jnp.concatenate(v), *options.values())
  seed_pos = {s: i for i, s in enumerate(seeds)}
  opt_index = np.array(
    [
      order.index(r.estimator or "ones") * s_count + seed_pos[r.seed]
      for r in runs
    ]
  )
  run_seed = np.array([seed_pos[r.seed] for r in runs])
  penalty = Penalty(
    anchor=jax.tree.map(lambda v: v[run_seed], params),
    fisher=jax.tree.map(lambda v: v[opt_index], stacked),
    alpha=jnp.asarray([r.alpha for r in runs], jnp.float32),
  )
  del options, stacked
  tx = make_optimizer(config.opt_b)
  params_r = jax.tree.map(lambda v: v[run_seed], params)
  state = TrainState(
    params_r, jax.vmap(tx.init)(params_r), jnp.zeros([len(runs)])
  )
  keys = _seed_keys(seeds, _B_DATA)[run_seed]
  state, penalty, keys = sharding.put((state, penalty, keys), rep)

  def chunk_fn(state, penalty, key, x, y):
    step_fn = data_parallel(
      functools.partial(
        train_step,
        loss_fn=functools.partial(loss_b, penalty=penalty, mask=mask),
        tx=tx,
      ),
      mesh,
    )
    return train_chunk(
      state,
      key,
      x,
      y,
      step_fn=step_fn,
      num_steps=p.eval_every,
      batch_size=p.batch_size,
    )

  if ("chunk", k) not in cache:
    cache[("chunk", k)] = jax.jit(
      jax.vmap(chunk_fn, in_axes=(0, 0, 0, None, None)),
      donate_argnums=0,
      out_shardings=rep,
    )
  chunk = cache[("chunk", k)]
  x_test, y_test = data.x_test, data.y_test
  if p.eval_examples:
    x_test, y_test = x_test[: p.eval_examples], y_test[: p.eval_examples]
  evaluate = cache.setdefault("evaluate", jax.jit(evaluate_params))
  heads = {v: n for v, n in headline_runs(config).items()}
  steps, acc_a, acc_b = [], [], []

  def record(step, a, b, rate):
    steps.append(step)
    acc_a.append(a)
    acc_b.append(b)
    for r, ra, rb in zip(runs, a, b, strict=True):
      log.write(
        {
          "k": k,
          "a_setting": setting,
          "run": r.name,
          "variant": r.variant,
          "estimator": r.estimator,
          "alpha": r.alpha,
          "seed": r.seed,
          "step": step,
          "acc_a": float(ra),
          "acc_b": float(rb),
        }
      )
    parts = []
    for v, name in heads.items():
      sel = [i for i, r in enumerate(runs) if r.name == name]
      parts.append(f"{v} A {a[sel].mean():.3f} B {b[sel].mean():.3f}")
    logging.info(
      "B k=%d %s A | step %d/%d | %s | %s it/s",
      k,
      setting,
      step,
      p.b_steps,
      " | ".join(parts),
      "-" if rate is None else f"{rate:.0f}",
    )

  ckpt = checkpoint_lib.Checkpointer(ckpt_root / name) if ckpt_root else None
  start = -1  # the last step whose evaluation is recorded
  if ckpt is not None and ckpt.latest_step() is not None:
    state, meta = ckpt.restore(state)
    start = meta["step"]
    steps = list(meta["steps"])
    acc_a = list(np.asarray(meta["acc_a"], np.float32))
    acc_b = list(np.asarray(meta["acc_b"], np.float32))
    logging.info("B k=%d %s A resumed at step %d", k, setting, start)
  # Lines after the checkpoint (or of a run killed before it) run again.
  _drop_lines(log_path, k, setting, start)
  every = p.get("checkpoint_every", 0)
  with metrics_lib.JsonlWriter(log_path) as log:
    if start < 0:
      a0, b0 = evaluate(state.params, x_test, y_test)
      record(0, np.asarray(a0), np.asarray(b0), None)
    for _ in range(max(start, 0) // p.eval_every, p.b_steps // p.eval_every):
      t0 = time.time()
      state, stats = chunk(state, penalty, keys, data.x_train, data.y_train)
      a, b = evaluate(state.params, x_test, y_test)
      a, b = np.asarray(a), np.asarray(b)
      step = int(state.step[0])
      bad = checkpoint_lib.first_nonfinite(stats["loss"])
      if bad is not None:
        raise checkpoint_lib.NonFiniteError(
          f"two_models diverged: B run {runs[bad].name} (seed "
          f"{runs[bad].seed}, k={k}, {setting} A) has a non-finite loss in "
          f"steps {step - p.eval_every + 1}-{step}; stopped (lower opt_b.lr "
          "or the alphas)"
        )
      record(step, a, b, p.eval_every * len(runs) / (time.time() - t0))
      requested = stop is not None and stop.requested
      if (
        ckpt is not None
        and step < p.b_steps
        and (requested or (every and step % every == 0))
      ):
        meta = {"step": step, "steps": steps, "acc_a": acc_a, "acc_b": acc_b}
        ckpt.save(step, state, metrics_lib.plain(meta))
        if requested:
          ckpt.close()
          raise stop.interrupted(f"B step {step} (k={k}, {setting} A)")
  if ckpt is not None:  # B's final state stays (one step) beside its JSON
    meta = {"step": p.b_steps, "steps": steps, "acc_a": acc_a, "acc_b": acc_b}
    if ckpt.latest_step() != p.b_steps:  # (not if killed right after it)
      ckpt.save(p.b_steps, state, metrics_lib.plain(meta))
    ckpt.keep_only_latest()
    ckpt.close()
    metrics_lib.write_json(done_path, meta)
  return {
    "runs": runs,
    "steps": np.asarray(steps),
    "acc_a": np.stack(acc_a),
    "acc_b": np.stack(acc_b),
  }
