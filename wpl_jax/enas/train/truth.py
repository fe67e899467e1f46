"""Ground truth of a small ENAS space: every cell trained on its own.

All S cells of the space (32 for the reduced space of docs/method.md §5) are
trained from scratch as standalone language models, in one compiled
program over the stacked architectures: the cell is data, so one compile
trains all of them (`lax.map` over the architecture axis, vmapped in
groups of `truth.arch_batch`; a full `vmap` of 32 cells with a 10k-word
decoder is memory-bound: 2× slower on CPU than one cell at a time,
WORKSPACE §7).
Every cell sees the same training windows; init and dropout keys differ
per cell. The validation perplexity of every cell is scored on every token
after each epoch.

`truth.num_seeds` = K > 1 trains K seeds side by side in the same program:
the model axis is K · S long (seed-major), and the models of seed k get
exactly the init and dropout keys a one-seed run with `--config.seed =
seed + k` gives them, so the K seeds equal K separate runs up to float
rounding (tests/space32_test.py). On an accelerator this is what makes
several seeds cost about one; on a CPU it buys nothing.

Outputs in the workdir: metrics.jsonl (one record per evaluation), tb/,
checkpoints/ (every `truth.checkpoint_every` steps; a rerun resumes bit
for bit), truth.json (the final per-cell perplexities) and results.md.
With K = 1 the perplexities are lists over cells ([S]); with K > 1 they
are nested [K][S] (seed-major) and the records carry `seeds`.
`experiments/space32_truth.py` merges seeds into the stored ground truth.
"""

import math
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from wpl_jax.data import fingerprint, ptb
from wpl_jax.enas import ranking, search_space, supernet
from wpl_jax.enas.train import search as enas_search
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps
from wpl_jax.enas.train.steps import SharedState
from wpl_jax.runtime import checkpoint as checkpoint_lib
from wpl_jax.runtime import metrics as metrics_lib
from wpl_jax.runtime import platform_defaults, validation
from wpl_jax.runtime import workdir as workdir_lib

# Independent random streams, folded into the run's base key.
_INIT, _TRAIN = range(2)


# Every cell of the configured space, int32[S, N] fields, in codec order.
space_archs = enas_setup.space_archs


def lr_at_step(
  config: ml_collections.ConfigDict, step: int, total: int
) -> float:
  """Cosine decay from `truth.lr` to `lr · lr_final` over `total` steps."""
  t = config.truth
  frac = min(step, total) / max(total, 1)
  cosine = 0.5 * (1 + math.cos(math.pi * frac))
  return t.lr * (t.lr_final + (1 - t.lr_final) * cosine)


class TruthTrainer:
  """The jitted programs of the ground truth: init, train step, evaluation.

  Each takes the stacked cells `archs` (int32[S, N] fields) as data and
  maps over them, so each compiles once for the whole space.
  """

  def __init__(
    self, config: ml_collections.ConfigDict, *, num_devices: int | None = None
  ):
    """Builds the programs.

    Args:
      config: the space32 truth config.
      num_devices: local devices to split the architecture axis over
        (default: all); S cells go S / D to a device when D divides S,
        otherwise everything runs on one device.
    """
    rconfig = ml_collections.ConfigDict(config.to_dict())
    rconfig.wpl.enabled = False  # standalone models: plain cross-entropy
    self.config = config
    self.model = enas_setup.make_model(rconfig)
    self.steps = enas_steps.Steps(model=self.model, config=rconfig)
    self.tx = enas_setup.shared_optimizer(
      config.shared.grad_clip, config.shared.weight_decay
    )
    devices = jax.local_devices()[: num_devices or jax.local_device_count()]
    self.mesh = jax.sharding.Mesh(np.asarray(devices), ("arch",))
    self.init = jax.jit(self._init)
    self.train_step = jax.jit(self._train_step, donate_argnums=(0, 1))
    self.evaluate = jax.jit(self._evaluate)

  def _init(self, keys_S: jax.Array) -> SharedState:
    """Fresh variables and optimizer state per cell: leading axis S."""

    def one(key):
      variables = supernet.init_variables(self.model, key=key)
      return SharedState(
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=self.tx.init(variables["params"]),
      )

    return jax.vmap(one)(keys_S)

  def _train_step(
    self, shared_S, hidden_SxBxH, archs, x_TxB, y_TxB, lr, keys_S
  ):
    """One SGD step of every cell on the same window.

    Args:
      shared_S: `SharedState` with a leading axis S (one model per cell).
      hidden_SxBxH: float32[S, B, H] carried hidden states.
      archs: the S cells.
      x_TxB, y_TxB: int32[T, B] inputs and targets (shared by all cells).
      lr: float32 scalar learning rate.
      keys_S: S dropout keys.

    Returns:
      `(shared_S, hidden_SxBxH, loss_S)`: float32[S] mean token loss.
    """

    def one(args):
      shared, arch, hidden, key = args
      shared, hidden, m = self.steps.shared_step(
        shared, None, arch, x_TxB, y_TxB, hidden, lr, jnp.float32(0.0), key=key
      )
      return shared, hidden, m["loss"]

    return self._map_cells(
      one,
      (shared_S, archs, hidden_SxBxH, keys_S),
      platform_defaults.get(self.config, "truth.arch_batch"),
    )

  def _map_cells(self, fn, xs, batch_size):
    """`lax.map(fn, xs)` over the leading (cell) axis, split over devices.

    With D devices and D | S the cell axis is reshaped to [D, S / D], the
    D axis is sharded over the mesh (`NamedSharding`, the compiler
    partitions the vmap over it) and each device maps over its S / D
    cells; the result has the leading S axis again.
    """
    s = jax.tree.leaves(xs)[0].shape[0]
    d = self.mesh.devices.size
    if d == 1 or s % d:
      return jax.lax.map(fn, xs, batch_size=batch_size)
    spec = jax.sharding.NamedSharding(
      self.mesh, jax.sharding.PartitionSpec("arch")
    )

    def split(x):
      x = x.reshape((d, s // d) + x.shape[1:])
      return jax.lax.with_sharding_constraint(x, spec)

    def per_device(part):
      return jax.lax.map(fn, part, batch_size=batch_size)

    out = jax.vmap(per_device)(jax.tree.map(split, xs))
    return jax.tree.map(lambda y: y.reshape((s,) + y.shape[2:]), out)

  def _evaluate(self, shared_S, archs, x_WxTxB, y_WxTxB, mask_WxTxB):
    """Eval-mode summed NLL float32[S] of every cell over all windows.

    The hidden state starts at zero and is carried across the W windows;
    masked (padding) targets count for nothing.
    """
    h = self.config.model.hidden
    batch = x_WxTxB.shape[-1]

    def one(args):
      params, stats, arch = args
      variables = {"params": params, "batch_stats": stats}

      def body(carry, xs):
        hidden, total = carry
        x, y, m = xs
        logits, hidden = self.model.apply(
          variables, x, hidden, arch, train=False
        )
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return (hidden, total + jnp.sum(nll * m)), None

      zero = (jnp.zeros((batch, h), jnp.float32), jnp.zeros([], jnp.float32))
      (_, total), _ = jax.lax.scan(body, zero, (x_WxTxB, y_WxTxB, mask_WxTxB))
      return total

    return self._map_cells(
      one,
      (shared_S.params, shared_S.batch_stats, archs),
      self.config.truth.eval_arch_batch,
    )


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line naming the field) on a bad truth config."""
  config = platform_defaults.resolved_config(config)  # "auto" as resolved
  platform_defaults.check_precision(config)
  enas_setup.fixed_first_activation(config)
  enas_search.validate_model(config)
  v = validation
  for field in (
    "epochs",
    "arch_batch",
    "eval_arch_batch",
    "eval_batch_size",
    "num_seeds",
  ):
    v.integer(config, f"truth.{field}", min=1)
  for field in (
    "max_batches_per_epoch",
    "checkpoint_every",
    "eval_every",
    "eval_tokens",
  ):
    v.integer(config, f"truth.{field}", min=0)
  v.number(config, "truth.lr", min=0, open_min=True)
  v.number(config, "truth.lr_final", min=0, max=1)


# Fields a rerun in the same workdir may change (the rest must match): how
# many cells a step vmaps together changes the numbers by rounding only, the
# save cadence not at all; both are "auto" by default, so a ground truth may
# resume on another platform.
RESUMABLE = (
  "truth.arch_batch",
  "truth.eval_arch_batch",
  "truth.checkpoint_every",
  # The search's platform-dependent fields (the truth reads neither).
  "search.eval_vmap",
  "wpl.chunk_size",
  "search.grad_after_scan_from",
)
# What a checkpoint's stored config leaves out: the search's resumable
# fields (as before) and these.
CKPT_RESUMABLE = enas_search.RESUMABLE + RESUMABLE


def memory_need(config: ml_collections.ConfigDict, vocab: int) -> tuple:
  """A lower bound on the ground truth's peak bytes (nothing allocated).

  The S cells' state (`jax.eval_shape` of the trainer's init), one
  gradient of `truth.arch_batch` cells' params, and their float32
  activations in a training step (each node's [T, B, H] values and one
  decoder chunk's logits and gradient). XLA's temporaries come on top.

  Returns:
    `(need, shapes)`: need as `enas_search_config.memory_need`'s, shapes
    the S cells' `SharedState` as `jax.ShapeDtypeStruct`s.
  """
  sized = ml_collections.ConfigDict(config.to_dict())
  sized.model.vocab_size = vocab
  s = len(search_space.unstack(space_archs(sized))) * sized.truth.num_seeds
  trainer = TruthTrainer(sized, num_devices=1)
  shapes = jax.eval_shape(trainer._init, jax.random.split(jax.random.key(0), s))

  def nbytes(tree):
    return sum(
      math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )

  m, d = sized.model, sized.data
  t, b, h, n = d.bptt, d.batch_size, m.hidden, m.num_nodes
  chunk = min(m.ce_chunk or t * b, t * b)
  group = min(platform_defaults.get(sized, "truth.arch_batch"), s)
  # The cells are split over the devices when their number divides S.
  devices = len(jax.local_devices()[: config.get("num_devices", 0) or None])
  split = devices if devices > 1 and s % devices == 0 else 1
  out = {
    "state": nbytes(shapes) // split,
    "gradient": nbytes(shapes.params) * group // s,
    "activations": 4 * group * (t * b * h * (2 * n + 4) + 2 * chunk * vocab),
  }
  out["total"] = sum(out.values())
  return out, shapes


@platform_defaults.with_precision
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains every cell of the space; writes truth.json and results.md.

  "auto" fields take the backend's values and `config.precision` is set
  (`platform_defaults.resolve`); run.json records both.
  """
  given = config
  config, platform = platform_defaults.resolve(config)
  logging.info("platform: %s", platform)
  validate(config)
  if not config.data_dir:
    raise ValueError("set --data_dir to the folder with the PTB text files")
  data = ptb.load_ptb(config.data_dir)
  b, bptt = config.data.batch_size, config.data.bptt
  train_src = ptb.batchify(data.train, b)
  n_windows = (len(train_src) - 1) // bptt
  if n_windows < 1:
    raise ValueError(f"ptb.train.txt is shorter than one {b}x{bptt} batch")
  t = config.truth
  every = platform_defaults.get(config, "truth.checkpoint_every")
  if t.max_batches_per_epoch:
    n_windows = min(n_windows, t.max_batches_per_epoch)
  valid = data.valid[: t.eval_tokens] if t.eval_tokens else data.valid
  ex, ey, em = ptb.eval_windows(valid, t.eval_batch_size, bptt)
  n_eval_tokens = float(em.sum())
  need, shapes = memory_need(config, len(data.vocab))
  enas_search.check_memory(need, enas_search.machine_bytes())
  workdir = pathlib.Path(workdir)
  hidden = jax.ShapeDtypeStruct(
    (jax.tree.leaves(shapes)[0].shape[0], b, config.model.hidden), jnp.float32
  )
  enas_search.check_checkpoint_fits(  # another vocabulary: before any write
    workdir, {"shared": shapes, "hidden": hidden}
  )
  workdir_lib.claim(  # the first write; refuses a resume on other data
    workdir,
    given,
    resumable=RESUMABLE,
    extra={"platform": platform, "data": fingerprint.ptb(config.data_dir)},
  )
  with config.unlocked():
    config.model.vocab_size = len(data.vocab)

  commit = _git_commit()  # at the start: the code this run trains with
  cells = space_archs(config)
  names = [search_space.to_string(a) for a in search_space.unstack(cells)]
  seeds = seed_list(config)
  n_cells, h = len(names), config.model.hidden
  s = n_cells * len(seeds)  # models: seed-major
  archs = jax.tree.map(lambda a: jnp.concatenate([a] * len(seeds)), cells)
  # config.num_devices (0 or absent = all local devices), as the search's.
  trainer = TruthTrainer(
    config, num_devices=config.get("num_devices", 0) or None
  )
  init_keys, k_train = model_keys(seeds, n_cells)
  step_keys = jax.jit(
    lambda k, i: jax.vmap(
      lambda kk: jax.random.split(jax.random.fold_in(kk, i), n_cells)
    )(k).reshape(-1)
  )
  state = {
    "shared": trainer.init(init_keys),
    "hidden": jnp.zeros((s, b, h), jnp.float32),
  }
  total_steps = t.epochs * n_windows
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  done, history, seconds, pending = 0, [], 0.0, []
  if ckpt.latest_step() is not None:
    state, meta = enas_search.restore(ckpt, state)
    enas_search.check_same_config(config, meta.get("config"), CKPT_RESUMABLE)
    done, history, seconds = meta["step"], meta["history"], meta["seconds"]
    # Step losses since the last evaluation: its train_loss averages them
    # all, so a resumed log equals an uninterrupted one.
    pending = meta.get("pending_losses", [])
    logging.info(
      "resumed at step %d/%d from %s", done, total_steps, ckpt.directory
    )
    _truncate(workdir / "metrics.jsonl", done)
  else:  # lines of a run killed before its first checkpoint
    _truncate(workdir / "metrics.jsonl", 0)
  log = metrics_lib.JsonlWriter(workdir / "metrics.jsonl")
  tb = enas_search.tensorboard(workdir / "tb")
  logging.info(
    "ground truth: %d cells, %d epochs x %d steps, %d eval tokens",
    s,
    t.epochs,
    n_windows,
    int(n_eval_tokens),
  )

  def save(step):
    meta = {
      "step": step,
      "history": history,
      "seconds": seconds,
      "config": enas_search.comparable(config, CKPT_RESUMABLE),
      "pending_losses": np.asarray(jax.device_get(losses), np.float32).tolist(),
    }
    try:
      ckpt.save(step, state, meta)
    except checkpoint_lib.NonFiniteError:
      raise checkpoint_lib.NonFiniteError(
        f"{config.experiment} diverged by epoch {step // n_windows} step "
        f"{step}: the weights hold NaN or infinity; stopped, the last good "
        "checkpoint is kept"
      ) from None

  t_prev = t_log = time.time()
  losses = [np.asarray(v, np.float32) for v in pending]
  logged = done
  # SIGTERM/SIGINT: the step in progress ends, is saved, and the run stops
  # (exit 128 + signal); a second signal kills at once.
  try:  # closed however the loop ends (see enas_search.search)
    with checkpoint_lib.StopOnSignal() as stop:
      while done < total_steps:
        epoch, i = divmod(done, n_windows)
        if i == 0:
          state["hidden"] = jnp.zeros((s, b, h), jnp.float32)
        x, y = ptb.get_batch(train_src, i * bptt, bptt)
        lr = lr_at_step(config, done, total_steps)
        keys = step_keys(k_train, done)
        state["shared"], state["hidden"], loss = trainer.train_step(
          state["shared"], state["hidden"], archs, x, y, jnp.float32(lr), keys
        )
        losses.append(loss)
        done += 1
        now = time.time()
        if now - t_log > t.get("log_seconds", 30.0):
          jax.block_until_ready(loss)
          now = time.time()
          rate = (done - logged) / max(now - t_log, 1e-9)
          logging.info(
            "truth epoch %d step %d/%d: mean loss %.3f lr %.2f  %.3f steps/s, "
            "ETA %.0f min",
            epoch,
            done,
            total_steps,
            float(jnp.mean(loss)),
            lr,
            rate,
            (total_steps - done) / max(rate, 1e-9) / 60,
          )
          t_log, logged = now, done
        end_of_epoch = done % n_windows == 0
        if end_of_epoch or (t.eval_every and done % t.eval_every == 0):
          nll = np.asarray(trainer.evaluate(state["shared"], archs, ex, ey, em))
          ppl_KxS = np.exp(nll / n_eval_tokens).reshape(len(seeds), n_cells)
          train_loss = np.mean(np.asarray(jax.device_get(losses)), axis=0)
          losses = []
          ppl = ppl_KxS.mean(0)  # the seed mean ranks the cells
          record = {
            "epoch": epoch,
            "step": done,
            "end_of_epoch": end_of_epoch,
            "lr": lr,
            "valid_ppl": _per_seed(ppl_KxS),
            "train_loss": _per_seed(train_loss.reshape(len(seeds), n_cells)),
            "best": names[int(np.argmin(ppl))],
            "best_ppl": float(np.min(ppl)),
            "median_ppl": float(np.median(ppl)),
            "seconds": seconds + time.time() - t_prev,
          }
          if len(seeds) > 1:
            record["seeds"] = seeds
            record["seed_tau"] = ranking.seed_ceiling(ppl_KxS)["tau_mean"]
          if not np.all(np.isfinite(ppl_KxS)):
            raise ValueError(
              f"ground truth diverged at epoch {epoch} step {done}: non-finite "
              "validation perplexity for "
              f"{int(np.sum(~np.isfinite(ppl_KxS)))} models"
            )
          history.append(record)
          log.write(record)
          if tb is not None:
            for k in ("best_ppl", "median_ppl", "lr"):
              tb.add_scalar(k, record[k], done)
            tb.flush()
          logging.info(
            "truth epoch %d step %d: valid ppl best %.2f (%s) median %.2f "
            "worst %.2f%s; %.0f s",
            epoch,
            done,
            ppl.min(),
            record["best"],
            np.median(ppl),
            ppl.max(),
            (
              f" (mean of {len(seeds)} seeds; seed-to-seed τ "
              f"{record['seed_tau']:.3f})"
              if len(seeds) > 1
              else ""
            ),
            record["seconds"],
          )
          t_log, logged = time.time(), done  # the evaluation is not a step
        if end_of_epoch or (every and done % every == 0) or stop.requested:
          now = time.time()
          seconds, t_prev = seconds + now - t_prev, now
          save(done)
        if stop.requested:
          raise stop.interrupted(f"enas_truth step {done}")
  finally:
    log.close()
    ckpt.close()
    if tb is not None:
      tb.close()
  final = history[-1]["valid_ppl"] if history else []
  out = {
    "commit": commit,
    "archs": names,
    "seed": config.seed,
    **({"seeds": seeds} if len(seeds) > 1 else {}),
    "valid_ppl": final,
    "valid_tokens": int(n_eval_tokens),
    "history": [
      {k: r[k] for k in ("epoch", "step", "valid_ppl")} for r in history
    ],
    "seconds": seconds,
    "config": config.to_dict(),
  }
  metrics_lib.write_json(workdir / "truth.json", out)
  if history and metrics_lib.is_primary():
    redraw(config, history, workdir / "figure.png")
  md = _results_md(names, final, seeds, seconds)
  if metrics_lib.is_primary():
    (workdir / "results.md").write_text(md)
  print(md)
  return out


def seed_list(config: ml_collections.ConfigDict) -> list[int]:
  """The seeds a run trains: `seed, seed + 1, ..., seed + num_seeds - 1`."""
  return [config.seed + k for k in range(config.truth.num_seeds)]


def model_keys(seeds: list[int], n_cells: int) -> tuple[jax.Array, jax.Array]:
  """Init keys of the K · S models (seed-major) and the K training keys.

  Seed k's S init keys, and the training key its step keys are folded
  from, are those of a one-seed run with `config.seed = seeds[k]`.

  Returns:
    `(init_keys, train_keys)`: K · S keys and K keys.
  """
  base = [jax.random.key(seed) for seed in seeds]
  init = jnp.concatenate(
    [jax.random.split(jax.random.fold_in(k, _INIT), n_cells) for k in base]
  )
  train = jnp.stack([jax.random.fold_in(k, _TRAIN) for k in base])
  return init, train


def _per_seed(values_KxS: np.ndarray) -> list:
  """[S] for one seed (the one-seed format), else [K][S]."""
  if values_KxS.shape[0] == 1:
    return values_KxS[0].tolist()
  return values_KxS.tolist()


def redraw(config, records: list[dict], out: pathlib.Path) -> None:
  """Every cell's validation perplexity at each evaluation (the seed mean
  when several seeds trained), with the best and the median (from
  metrics.jsonl; `wpl_jax.runtime.plots`)."""
  steps = [r["step"] for r in records]
  ppl = [np.atleast_2d(r["valid_ppl"]).mean(0) for r in records]
  cells = list(zip(*ppl, strict=True))
  seeds = records[-1].get("seeds", [config.seed])
  curves = [
    {"label": None, "x": steps, "mean": c, "color": "0.8"} for c in cells
  ]
  curves += [
    {"label": "best", "x": steps, "mean": [r["best_ppl"] for r in records]},
    {
      "label": "median",
      "x": steps,
      "mean": [r["median_ppl"] for r in records],
    },
  ]
  metrics_lib.plot_panels(
    [{"title": f"{len(cells)} cells, seeds {seeds}", "curves": curves}],
    out,
    xlabel="training step (all cells)",
    ylabel="validation perplexity",
    ncols=1,
    ylim=None,
  )


def _git_commit() -> str:
  """The checkout's commit (with "+dirty" if modified), or "" outside git."""
  import subprocess  # noqa: PLC0415

  root = pathlib.Path(__file__).resolve().parents[3]
  try:
    rev = subprocess.run(
      ["git", "-C", str(root), "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""
  return rev + ("+dirty" if dirty else "")


def _truncate(path: pathlib.Path, step: int) -> None:
  """Drops metrics lines written after checkpoint `step` (they rerun)."""
  if not path.exists() or not metrics_lib.is_primary():
    return
  keep = [r for r in metrics_lib.read_jsonl(path) if r["step"] <= step]
  path.write_text("".join(metrics_lib.dumps_line(r) for r in keep))


def _results_md(names, ppl, seeds, seconds) -> str:
  """The ranking by validation perplexity (the seed mean for K > 1)."""
  if not len(ppl):
    return f"ground truth, seeds {seeds}: no evaluation\n"
  ppl_KxS = np.atleast_2d(np.asarray(ppl))
  mean = ppl_KxS.mean(0)
  order = np.argsort(mean)
  rows = [
    {
      "rank": r + 1,
      "arch": names[i],
      "ppl": f"{mean[i]:.2f}",
      "per_seed": " / ".join(f"{v:.2f}" for v in ppl_KxS[:, i]),
    }
    for r, i in enumerate(order)
  ]
  what = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds}"
  head = f"ground truth, {what}: {len(names)} cells in {seconds:.0f} s\n\n"
  cols = [("rank", "rank"), ("arch", "cell"), ("ppl", "valid ppl")]
  if len(seeds) > 1:
    cols[2] = ("ppl", "valid ppl (seed mean)")
    cols.append(("per_seed", "per seed"))
    c = ranking.seed_ceiling(ppl_KxS)
    head += f"seed-to-seed Kendall τ {c['tau_mean']:.3f}\n\n"
  return head + metrics_lib.markdown_table(rows, cols) + "\n"
