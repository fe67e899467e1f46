"""ENAS RNN-cell search on PTB, with or without WPL; then derive and retrain.

Per epoch (docs/method.md §4): shared training (S sampled architectures × B
batches each; with WPL, after each architecture a Fisher estimate on one
validation batch, the running update on its edges and re-anchoring of all
edges, docs/method.md §2), the forgetting metric (each architecture's
validation perplexity on a fixed batch right after its training, err1,
and again at the end of the epoch in one vmapped call, err2), then C
controller steps; every D epochs, derive the best of M sampled cells.
Checkpoints every epoch; a rerun with the same workdir resumes.

Parts: `setup` (states, config -> objects, mesh, jitted steps, initial
state), `steps` (the jit-once step functions), `epoch` (one epoch's
phases and record), `search_config` (checks of the config and data, the
validation splits, the resume check), `search_eval` (forgetting, derive,
ranking) and `search_report` (TensorBoard, results.md, figure). This
module is the loop: resume, epochs, checkpoints, logs; then retraining.
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

from wpl_jax.data import fingerprint, ptb
from wpl_jax.enas import search_space
from wpl_jax.enas.train import epoch as epoch_lib
from wpl_jax.enas.train import retrain, setup
from wpl_jax.enas.train import steps as steps_lib
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
)
from wpl_jax.enas.train.search_report import (
  fmt,
  plot,
  results_md,
  tb_write,
  tensorboard,
)
from wpl_jax.runtime import checkpoint as checkpoint_lib
from wpl_jax.runtime import metrics as metrics_lib
from wpl_jax.runtime import platform_defaults, sharding
from wpl_jax.runtime import workdir as workdir_lib


def search(
  config: ml_collections.ConfigDict, workdir: pathlib.Path, data: ptb.PTBData
) -> dict:
  """Runs the search; returns {"derived": arch string, "history": [...]}.

  Writes metrics.jsonl (one record per epoch), TensorBoard events under
  tb/ (not with a seed axis), and checkpoints under checkpoints/ (resumed
  if present).

  With `search.num_seeds` = S > 1 the S seeds `setup.seed_list` search side
  by side in one program (`epoch_lib`'s seed axis): each seed's records go
  to seed_<seed>/metrics.jsonl, a seed that diverges stops being recorded
  (its reason kept) while the others go on, and the result is
  {"seeds", "derived": [per seed], "histories", "diverged": {seed: why}}.
  """
  with config.unlocked():
    config.model.vocab_size = len(data.vocab)
  model = setup.make_model(config)
  steps = steps_lib.Steps(model=model, config=config)
  mesh = setup.make_mesh(config)
  logging.info("devices: %s", sharding.describe(mesh))
  seeds = setup.seed_list(config)
  n_seeds = len(seeds) if len(seeds) > 1 else 0  # 0: no seed axis
  b, bptt = config.data.batch_size, config.data.bptt
  train_w = setup.Windows(ptb.batchify(data.train, b), bptt)
  splits = valid_splits(config, data.valid)
  fixed_x, fixed_y = splits["forget"]  # the forgetting metric's batch
  valid_w = setup.Windows(splits["stream"], bptt)  # Fisher and reward batches
  zero_h = np.zeros((b, config.model.hidden), np.float32)
  # One arch on B / D examples per device; K archs split K / D per device
  # on the whole batch (each replicated), or all replicated if D ∤ K.
  rep = sharding.replicated(mesh)
  fixed_r = sharding.put((fixed_x, fixed_y, zero_h), rep)
  fixed_x, fixed_y = sharding.shard_batch((fixed_x, fixed_y), mesh, axis=1)
  zero_h = sharding.shard_batch(zero_h, mesh, axis=0)
  s = config.search
  arch_sharding = sharding.batch_sharding(mesh, 0)
  if n_seeds:  # one device (`setup.make_mesh`): nothing to place
    arch_sharding = None
  elif s.eval_chunk % sharding.num_shards(mesh):
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
  ranker = None
  if s.rank_every:
    ranker = Ranker(config, steps, splits["heldout"], mesh=mesh, seeds=n_seeds)

  if n_seeds:
    state, key = setup.init_states(config, model, seeds)
  else:
    key = jax.random.key(config.seed)
    state = setup.init_state(config, model, key)
  state = setup.place_state(state, mesh)
  fns = setup.jit_steps(steps, state, mesh, seeds=n_seeds)
  loop = epoch_lib.Loop(
    config=config,
    fns=fns,
    mesh=mesh,
    train_w=train_w,
    valid_w=valid_w,
    fixed=(fixed_x, fixed_y, zero_h),
    fixed_rep=fixed_r,
    arch_sharding=arch_sharding,
    key=key,
    seeds=n_seeds,
  )

  # One history and metrics file per seed (the workdir's own without a
  # seed axis); `diverged` {lane: reason} holds the seeds that stopped.
  paths = [workdir / "metrics.jsonl"]
  if n_seeds:
    paths = [workdir / f"seed_{seed}" / "metrics.jsonl" for seed in seeds]
    for path in paths:
      path.parent.mkdir(exist_ok=True)
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  start_epoch, histories, diverged = 0, [[] for _ in paths], {}
  if ckpt.latest_step() is not None:
    state, meta = restore(ckpt, state)
    check_same_config(config, meta.get("config"))
    start_epoch = meta["epoch"] + 1
    histories = meta["histories"] if n_seeds else [meta["history"]]
    diverged = {int(i): why for i, why in meta.get("diverged", {}).items()}
    logging.info("resumed from epoch %d in %s", meta["epoch"], ckpt.directory)
  # Lines of epochs after the checkpoint (a kill between the metrics line
  # and the checkpoint) are dropped: those epochs run again. A kill during
  # the first save left epoch 0's line: it runs again.
  for path in paths:
    truncate_jsonl(path, start_epoch - 1)
  logs = [metrics_lib.JsonlWriter(path) for path in paths]
  tb = None if n_seeds else tensorboard(workdir / "tb")

  # SIGTERM/SIGINT: the epoch in progress ends and is saved, then the run
  # stops (exit 128 + signal); a second signal kills at once.
  # Closed however the loop ends (a divergence or a signal raises): an
  # open TensorBoard writer's thread fails at interpreter shutdown.
  try:
    with checkpoint_lib.StopOnSignal() as stop:
      for epoch in range(start_epoch, s.epochs):
        if len(diverged) == len(paths):
          break  # every seed diverged (a seed axis only: one seed raises)
        t_epoch = time.time()
        records = epoch_lib.run(loop, state, epoch)
        for i, r in enumerate(records):
          if "diverged" in r and i not in diverged:
            diverged[i] = r["diverged"]
            logging.warning("seed %d: %s", seeds[i], r["diverged"])
        ep_key = loop.epoch_key(epoch)
        if ranker is not None and (
          (epoch + 1) % s.rank_every == 0 or epoch + 1 == s.epochs
        ):
          ranks = ranker(
            state["shared"], state["controller"].params, skip=set(diverged)
          )
          for r, extra in zip(records, ranks, strict=True):
            r.update(extra)
        if (epoch + 1) % s.derive_every == 0 or epoch + 1 == s.epochs:
          derived = derive(
            config,
            state,
            fns["sample"],
            fns["eval_archs"],
            loop.fold_in(ep_key, setup.DERIVE),
            *fixed_r,
            arch_sharding=arch_sharding,
            seeds=n_seeds,
          )
          for r, (best, best_ppl) in zip(records, derived, strict=True):
            r["derived"], r["derived_ppl"] = best, best_ppl
        seconds = time.time() - t_epoch
        # Compilations so far of each jitted step (1 each: archs are data).
        compiles = {
          name: _cache_size(fns[k])
          for name, k in (
            ("shared_step", "shared"),
            ("fisher_step", "fisher"),
            ("eval_one", "eval_one"),
            ("eval_archs", "eval_archs"),
            ("controller_step", "ctrl"),
          )
        }
        for i, record in enumerate(records):
          if i in diverged:
            continue
          record["epoch_seconds"], record["compiles"] = seconds, compiles
          histories[i].append({k: v for k, v in record.items() if k != "archs"})
          logs[i].write(record)
        meta = {"epoch": epoch, "config": comparable(config)}
        if n_seeds:
          meta.update(histories=histories, diverged=diverged)
          # A diverged seed's slice holds NaN/inf, which a checkpoint refuses:
          # it is zeroed (its records have ended; the others are untouched).
          state.update(_zero_seeds(state, sorted(diverged)))
        else:
          meta["history"] = histories[0]
        ckpt.save(epoch, state, meta)
        if n_seeds:
          _log_seeds(epoch, records, diverged, seconds)
        else:
          record = records[0]
          tb_write(tb, record, epoch)
          logging.info(
            "epoch %d: loss %.3f  reward %s  ppl(ctrl) %s  forget mean %.1f "
            "best5 %.1f max %.1f  %.0f tok/s  %.0fs",
            epoch,
            record["train_loss"],
            fmt(record["reward"]),
            fmt(record["controller_ppl"]),
            record["diff_mean"],
            record["diff_best5"],
            record["diff_max"],
            record["train_tokens_per_s"],
            record["epoch_seconds"],
          )
        if stop.requested:
          raise stop.interrupted(f"enas_ptb epoch {epoch}")
  finally:
    for log in logs:
      log.close()
    ckpt.close()
    if tb is not None:
      tb.close()
  derived = [
    next((h["derived"] for h in reversed(hist) if "derived" in h), None)
    for hist in histories
  ]
  if not n_seeds:
    return {"derived": derived[0], "history": histories[0]}
  return {
    "seeds": seeds,
    "derived": derived,
    "histories": histories,
    "diverged": {seeds[i]: why for i, why in sorted(diverged.items())},
  }


def _zero_seeds(state: dict, lanes: list[int]) -> dict:
  """`state` with the float leaves of seeds `lanes` (leading axis) set to
  0; unchanged without such seeds."""
  if not lanes:
    return state
  idx = np.asarray(lanes)

  def zero(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    return x.at[idx].set(0)

  return jax.tree.map(zero, state)


def _log_seeds(epoch, records, diverged, seconds) -> None:
  """One progress line for the epoch of a seed-axis search."""
  live = [r for i, r in enumerate(records) if i not in diverged]
  if not live:
    logging.info("epoch %d: every seed has diverged  %.0fs", epoch, seconds)
    return
  loss = [r["train_loss"] for r in live]
  taus = [r["rank_tau"] for r in live if "rank_tau" in r]
  logging.info(
    "epoch %d: %d of %d seeds live; loss %.3f (%.3f-%.3f)%s  %.0f tok/s "
    "per seed  %.0fs",
    epoch,
    len(live),
    len(records),
    float(np.mean(loss)),
    min(loss),
    max(loss),
    f"  rank tau {np.mean(taus):.3f}" if taus else "",
    live[0]["train_tokens_per_s"],
    seconds,
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
  model = setup.make_model(sized)
  seeds = setup.seed_list(sized)
  if len(seeds) > 1:  # the states of all seeds, on one leading axis
    return sized, jax.eval_shape(
      lambda: setup.init_states(sized, model, seeds)[0]
    )
  shapes = jax.eval_shape(
    lambda k: setup.init_state(sized, model, k), jax.random.key(0)
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
  setup.make_mesh(
    config
  )  # the device counts divide, before any file is written
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
  if "seeds" in result:
    return _seeds_results(result, workdir, t0)
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
        fixed_first_activation=setup.fixed_first_activation(config),
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


def _seeds_results(result: dict, workdir: pathlib.Path, t0: float) -> dict:
  """results.json / results.md of a search over seeds (no retraining):
  each seed's derived cell or divergence, and its own results.md and
  figure under seed_<seed>/."""
  per_seed, mds = [], []
  longest = max(result["histories"], key=len)
  for seed, derived, history in zip(
    result["seeds"], result["derived"], result["histories"], strict=True
  ):
    entry = {"seed": seed, "derived": derived, "epochs": len(history)}
    if seed in result["diverged"]:
      entry["diverged"] = result["diverged"][seed]
    per_seed.append(entry)
    one = {
      "search_seconds": sum(h["epoch_seconds"] for h in history),
      "derived": derived,
    }
    md = results_md(one, history) if history else "no epoch finished\n"
    if seed in result["diverged"]:
      md += f"\ndiverged: {result['diverged'][seed]}\n"
    mds.append(f"## seed {seed}\n\n{md}")
    if metrics_lib.is_primary():
      (workdir / f"seed_{seed}" / "results.md").write_text(md)
    if history:
      plot(history, workdir / f"seed_{seed}" / "figure.png")
  out = {
    # One program for all seeds: its epochs' time, summed (resumes too).
    "search_seconds": sum(h["epoch_seconds"] for h in longest),
    "seeds": result["seeds"],
    "per_seed": per_seed,
    "total_seconds": time.time() - t0,
  }
  metrics_lib.write_json(workdir / "results.json", out)
  md = f"search over seeds {result['seeds']} in one program\n\n"
  md += "\n".join(mds)
  if metrics_lib.is_primary():
    (workdir / "results.md").write_text(md)
  print(md)
  return out
