"""Two-model study: train A, then B on A's first layers, with or without WPL."""

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from wpl_jax import checkpoint as checkpoint_lib
from wpl_jax import data as data_lib
from wpl_jax import fisher as fisher_lib
from wpl_jax import fisher_fast, partition, validation
from wpl_jax import loss as loss_lib
from wpl_jax import metrics as metrics_lib
from wpl_jax import workdir as workdir_lib
from wpl_jax.models import two_models as model_lib
from wpl_jax.types import Array, Params, PRNGKey

VARIANTS = ("plain", "l2", "wpl")
A_SETTINGS = ("converged", "weak")
_OPTIMIZERS = {
  "sgd": optax.sgd,
  "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
  "adam": optax.adam,
}


@flax.struct.dataclass
class TrainState:
  """Params, optimiser state and step of one run (or a stack of runs)."""

  params: Params
  opt_state: optax.OptState
  step: Array


@flax.struct.dataclass
class Penalty:
  """What B's quadratic pull needs: anchor θ̂, weights F, strength α."""

  anchor: Params
  fisher: Params
  alpha: Array


def make_optimizer(
  opt: ml_collections.ConfigDict,
) -> optax.GradientTransformation:
  """optax optimiser named by `opt.name` ("sgd", "momentum", "adam")."""
  return _OPTIMIZERS[opt.name](opt.lr)


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy of logits [B, C] and int labels [B]."""
  return jnp.mean(
    optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  )


@fisher_fast.tapped
def loss_a(
  params: Params, batch: tuple[Array, Array], tap=fisher_fast.PLAIN
) -> Array:
  """A's mean cross-entropy on batch (x [B, D], y [B]).

  Tap-aware, so `fisher_diagonal(loss_a, ..., estimator="per_example")`
  takes the exact one-backward path of `wpl_jax.fisher_fast`.
  """
  x, y = batch
  return cross_entropy(model_lib.forward_a(params, x, tap), y)


def loss_b(
  params: Params, batch: tuple[Array, Array], penalty: Penalty, *, mask: Params
) -> tuple[Array, dict[str, Array]]:
  """B's loss: cross-entropy + alpha/2 Σ_shared F (θ − θ̂)² (paper Eq. 5).

  `plain` is alpha = 0, `l2` is F = 1 (a uniform pull), `wpl` is F = Fisher
  of A. Only the leaves where `mask` is True (the shared layers) are pulled.
  """
  x, y = batch
  ce = cross_entropy(model_lib.forward_b(params, x), y)
  pull = loss_lib.wpl_penalty(
    params, penalty.anchor, penalty.fisher, alpha=penalty.alpha, mask=mask
  )
  return ce + pull, {"ce": ce, "penalty": pull}


def train_step(
  state: TrainState,
  batch: tuple[Array, Array],
  key: PRNGKey,
  *,
  loss_fn,
  tx: optax.GradientTransformation,
) -> tuple[TrainState, dict[str, Array]]:
  """One optimiser step; jitted (and vmapped over runs) by the caller.

  Args:
    state: params, optimiser state and step of one run.
    batch: (x [B, D] float32, y [B] int32).
    key: per-step PRNG key (unused: the MLPs have no dropout).
    loss_fn: `(params, batch) -> (scalar loss, aux dict)`.
    tx: the optax optimiser.

  Returns:
    The new state and {"loss": scalar, **aux}.
  """
  del key  # The MLPs are deterministic: no dropout.
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params, batch
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(
    params=params, opt_state=opt_state, step=state.step + 1
  )
  return new_state, {"loss": loss, **aux}


def _train_chunk(
  state: TrainState,
  key: PRNGKey,
  x: Array,
  y: Array,
  *,
  step_fn,
  num_steps: int,
  batch_size: int,
) -> tuple[TrainState, dict[str, Array]]:
  """`num_steps` steps of one run; batches drawn uniformly with replacement."""

  def body(state, _):
    step_key = jax.random.fold_in(key, state.step)
    data_key, train_key = jax.random.split(step_key)
    idx = jax.random.randint(data_key, (batch_size,), 0, x.shape[0])
    return step_fn(state, (x[idx], y[idx]), train_key)

  state, metrics = jax.lax.scan(body, state, None, length=num_steps)
  return state, jax.tree.map(jnp.mean, metrics)


def _accuracy(forward, params: Params, x: Array, y: Array) -> Array:
  """Top-1 accuracy of `forward(params, x)` against labels y."""
  return jnp.mean(jnp.argmax(forward(params, x), -1) == y)


def _evaluate(params_r: Params, x: Array, y: Array) -> tuple[Array, Array]:
  """Test accuracies of A and B for each run of a stack: ([R], [R])."""

  def one(params):
    return (
      _accuracy(model_lib.forward_a, params, x, y),
      _accuracy(model_lib.forward_b, params, x, y),
    )

  # lax.map, not vmap: one run's activations at a time bounds memory.
  return jax.lax.map(one, params_r)


@dataclasses.dataclass(frozen=True)
class Run:
  """One B training run: a variant, its estimator and strength, a seed."""

  variant: str
  estimator: str  # "" unless variant == "wpl".
  alpha: float
  seed: int

  @property
  def name(self) -> str:
    if self.variant == "plain":
      return "plain"
    if self.variant == "l2":
      return f"l2(a={self.alpha:g})"
    return f"wpl[{self.estimator}](a={self.alpha:g})"


def make_runs(config: ml_collections.ConfigDict) -> list[Run]:
  """Every (variant, estimator, alpha, seed) that B is trained with."""
  runs = []
  for s in range(config.num_seeds):
    seed = config.seed + s
    for variant in config.variants:
      if variant == "plain":
        runs.append(Run("plain", "", 0.0, seed))
      elif variant == "l2":
        for a in _grid(config.l2.strength, config.l2.strengths):
          runs.append(Run("l2", "", a, seed))
      else:
        for est in config.fisher.estimators:
          for a in _grid(config.wpl.alpha, config.wpl.alphas):
            runs.append(Run("wpl", est, a, seed))
  return runs


def _grid(headline: float, sweep) -> list[float]:
  """The headline strength plus the sweep, sorted, without duplicates."""
  return sorted({float(headline), *(float(a) for a in sweep)})


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) on an inconsistent config, before any work."""
  v = validation
  for path in ("model.width", "model.depth_a", "model.depth_b"):
    v.integer(config, path, min=1)
  for path in ("opt_a.lr", "opt_b.lr"):
    v.number(config, path, min=0, open_min=True)
  v.number(config, "wpl.alpha", min=0)
  v.numbers_in(config, "wpl.alphas", min=0)
  v.number(config, "l2.strength", min=0)
  v.numbers_in(config, "l2.strengths", min=0)
  for path in (
    "protocol.batch_size",
    "fisher.batch_size",
    "fisher.num_examples",
  ):
    v.integer(config, path, min=1)
  for path in ("protocol.a_log_every", "protocol.early_step"):
    v.integer(config, path, min=1)
  v.integer(config, "protocol.eval_examples", min=0)
  v.number(
    config, "data.test_fraction", min=0, max=1, open_min=True, open_max=True
  )
  p = config.protocol
  checks = [
    (
      set(config.variants) <= set(VARIANTS) and config.variants,
      f"variants {tuple(config.variants)} must be a non-empty subset of "
      f"{VARIANTS}",
    ),
    (
      set(p.a_settings) <= set(A_SETTINGS) and p.a_settings,
      f"protocol.a_settings {tuple(p.a_settings)} must be a non-empty subset "
      f"of {A_SETTINGS}",
    ),
    (
      set(config.fisher.estimators) <= set(fisher_lib.ESTIMATORS),
      f"fisher.estimators {tuple(config.fisher.estimators)} must be a subset "
      f"of {fisher_lib.ESTIMATORS}",
    ),
    (
      config.fisher.normalize in ("mean", "none"),
      f"fisher.normalize={config.fisher.normalize!r} must be 'mean' or 'none'",
    ),
    (
      config.opt_a.name in _OPTIMIZERS and config.opt_b.name in _OPTIMIZERS,
      f"optimiser names must be in {tuple(_OPTIMIZERS)}",
    ),
    (
      all(
        1 <= k <= min(config.model.depth_a, config.model.depth_b)
        for k in p.shared_layers
      )
      and p.shared_layers,
      f"protocol.shared_layers {tuple(p.shared_layers)} must lie in [1, "
      f"{min(config.model.depth_a, config.model.depth_b)}]",
    ),
    (config.num_seeds >= 1, f"num_seeds={config.num_seeds} must be >= 1"),
    (
      p.get("checkpoint_every", 0) >= 0
      and p.get("checkpoint_every", 0) % p.eval_every == 0,
      f"protocol.checkpoint_every={p.get('checkpoint_every', 0)} must be 0 "
      f"or a positive multiple of protocol.eval_every={p.eval_every}",
    ),
    (
      p.b_steps >= 1 and p.eval_every >= 1 and p.b_steps % p.eval_every == 0,
      f"protocol.b_steps={p.b_steps} must be a positive multiple of "
      f"protocol.eval_every={p.eval_every}",
    ),
    (
      0 < p.a_steps_weak < p.a_steps_converged,
      f"need 0 < protocol.a_steps_weak={p.a_steps_weak} < "
      f"protocol.a_steps_converged={p.a_steps_converged}",
    ),
    (
      config.fisher.num_examples % config.fisher.batch_size == 0,
      f"fisher.num_examples={config.fisher.num_examples} must be a multiple "
      f"of fisher.batch_size={config.fisher.batch_size}",
    ),
    (
      config.data.name in ("digits", "mnist"),
      f"data.name={config.data.name!r} must be 'digits' or 'mnist'",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


RESUMABLE = ()  # a rerun in the same workdir must match the config exactly


def check_data(config: ml_collections.ConfigDict, data) -> None:
  """Raises ValueError (one line) if the data cannot serve the config.

  Run before anything is written: the Fisher needs `fisher.num_examples`
  distinct training examples (`protocol.eval_examples` is an upper bound:
  a smaller test set is used whole).
  """
  n_train = len(data.x_train)
  n_fisher = config.fisher.num_examples
  if "wpl" in config.variants and n_fisher > n_train:
    raise ValueError(
      f"fisher.num_examples={n_fisher} exceeds the {n_train} training "
      f"examples of {config.data.name}"
    )


def _load_data(config: ml_collections.ConfigDict):
  """The ClassificationData named by `config.data.name`."""
  if config.data.name == "mnist":
    return data_lib.load_mnist(config.data_dir)
  return data_lib.load_digits(
    test_fraction=config.data.test_fraction, seed=config.data.split_seed
  )


def _seed_keys(seeds: list[int], stream: int) -> PRNGKey:
  """Keys [S], one per seed, for one purpose (`stream`): init, data, ..."""
  return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), stream))(
    jnp.asarray(seeds)
  )


# Key streams per seed: each consumer folds in its own constant.
_A_INIT, _A_DATA, _B_INIT, _B_DATA, _FISHER = range(5)


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
  keys = _seed_keys(seeds, _A_DATA)
  step_fn = functools.partial(
    train_step, loss_fn=lambda q, b: (loss_a(q, b), {}), tx=tx
  )
  accuracy = jax.jit(
    jax.vmap(
      functools.partial(_accuracy, model_lib.forward_a), in_axes=(0, None, None)
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
            _train_chunk, step_fn=step_fn, num_steps=n, batch_size=p.batch_size
          ),
          in_axes=(0, 0, None, None),
        )
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


def fisher_of_a(
  params: Params,
  key: PRNGKey,
  x: Array,
  y: Array,
  *,
  estimator: str,
  num_examples: int,
  batch_size: int,
  mask: Params,
  normalize: str,
) -> Params:
  """Diagonal Fisher of A's likelihood on `num_examples` training examples.

  The examples (drawn without replacement with `key`) are cut into
  minibatches of `batch_size`; the estimator runs on each and the results are
  averaged. For ``batch_grad_squared`` this is the mean over minibatches of
  the squared minibatch-mean gradient (the reference code's kind of estimate,
  REFERENCE.md §2); for the other two it equals the estimate on all examples.
  Leaves outside `mask` are set to zero. With normalize="mean", F is divided
  by its mean over the masked entries, so that alpha has the same meaning for
  every estimator and for the uniform `l2` pull (F = 1).

  Returns:
    A tree like `params`, float32, F >= 0.
  """
  perm_key, sample_key = jax.random.split(key)
  idx = jax.random.permutation(perm_key, x.shape[0])[:num_examples]
  nb = num_examples // batch_size
  xb = x[idx].reshape(nb, batch_size, x.shape[1])
  yb = y[idx].reshape(nb, batch_size)

  def one(args):
    xi, yi, k = args
    return fisher_lib.fisher_diagonal(
      loss_a,
      params,
      (xi, yi),
      estimator=estimator,
      key=k,
      logits_fn=lambda q, b: model_lib.forward_a(q, b[0]),
    )

  f = jax.lax.map(one, (xb, yb, jax.random.split(sample_key, nb)))
  f = jax.tree.map(lambda v, m: jnp.mean(v, 0) * m, f, mask)
  if normalize == "mean":
    total = sum(jnp.sum(v) for v in jax.tree.leaves(f))
    count = sum(
      v.size
      for v, m in zip(jax.tree.leaves(f), jax.tree.leaves(mask), strict=True)
      if m
    )
    f = jax.tree.map(lambda v: v / jnp.maximum(total / count, 1e-30), f)
  return f


def _headline(config) -> dict[str, str]:
  """Run names drawn in the figure and logged on the terminal."""
  names = {}
  if "plain" in config.variants:
    names["plain"] = Run("plain", "", 0.0, 0).name
  if "l2" in config.variants:
    names["l2"] = Run("l2", "", float(config.l2.strength), 0).name
  if "wpl" in config.variants and config.wpl.estimator in (
    config.fisher.estimators
  ):
    names["wpl"] = Run(
      "wpl", config.wpl.estimator, float(config.wpl.alpha), 0
    ).name
  return names


def _drop_lines(path, k: int, setting: str, after: int) -> None:
  """Drops `path`'s lines of B (k, setting) whose step is > `after`."""
  path = pathlib.Path(path)
  if not path.exists():
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

  def chunk_fn(state, penalty, key, x, y):
    step_fn = functools.partial(
      train_step,
      loss_fn=functools.partial(loss_b, penalty=penalty, mask=mask),
      tx=tx,
    )
    return _train_chunk(
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
      jax.vmap(chunk_fn, in_axes=(0, 0, 0, None, None)), donate_argnums=0
    )
  chunk = cache[("chunk", k)]
  x_test, y_test = data.x_test, data.y_test
  if p.eval_examples:
    x_test, y_test = x_test[: p.eval_examples], y_test[: p.eval_examples]
  evaluate = cache.setdefault("evaluate", jax.jit(_evaluate))
  heads = {v: n for v, n in _headline(config).items()}
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


def summarize(results: dict[tuple[int, str], dict], early_step: int) -> list:
  """One row per (setting, run name): mean/std over seeds of the key numbers.

  Columns: A before B, A at `early_step` iterations of B, A after, the drop
  (before − after), B final.
  """
  rows = []
  for (k, setting), res in results.items():
    steps = res["steps"]
    t_early = int(np.searchsorted(steps, early_step))
    t_early = min(t_early, len(steps) - 1)
    names = list(dict.fromkeys(r.name for r in res["runs"]))
    for name in names:
      idx = [i for i, r in enumerate(res["runs"]) if r.name == name]
      run = res["runs"][idx[0]]
      values = {
        "a_before": res["acc_a"][0, idx],
        "a_early": res["acc_a"][t_early, idx],
        "a_after": res["acc_a"][-1, idx],
        "drop": res["acc_a"][0, idx] - res["acc_a"][-1, idx],
        "b_final": res["acc_b"][-1, idx],
      }
      row = {
        "k": k,
        "a_setting": setting,
        "run": name,
        "variant": run.variant,
        "estimator": run.estimator,
        "alpha": run.alpha,
        "early_step": int(steps[t_early]),
        "seeds": [res["runs"][i].seed for i in idx],
      }
      for key, v in values.items():
        row[key] = {
          "mean": float(np.mean(v)),
          "std": float(np.std(v)),
          "values": [float(x) for x in v],
        }
        row[key + "_str"] = metrics_lib.format_mean_std(v)
      rows.append(row)
  return rows


_COLUMNS = [
  ("k", "k"),
  ("a_setting", "A"),
  ("run", "B variant"),
  ("a_before_str", "A before"),
  ("a_early_str", "A @early"),
  ("a_after_str", "A after"),
  ("drop_str", "drop of A"),
  ("b_final_str", "B final"),
]


def write_outputs(config, workdir: pathlib.Path, results, rows) -> None:
  """results.md, results.json and figure.png in `workdir`."""
  early = rows[0]["early_step"] if rows else 0
  columns = [(c, h.replace("@early", f"@{early}")) for c, h in _COLUMNS]
  heads = set(_headline(config).values())
  n_seeds = config.num_seeds
  text = [
    f"# Two-model study ({config.data.name})",
    "",
    f"Test accuracy, mean ± std over {n_seeds} seeds; B trained for "
    f"{config.protocol.b_steps} iterations ({config.opt_b.name}, lr "
    f"{config.opt_b.lr:g}, batch {config.protocol.batch_size}).",
    "",
    "## Headline runs",
    "",
    metrics_lib.markdown_table([r for r in rows if r["run"] in heads], columns),
    "",
    "## All runs",
    "",
    metrics_lib.markdown_table(rows, columns),
    "",
  ]
  (workdir / "results.md").write_text("\n".join(text), encoding="utf-8")
  metrics_lib.write_json(
    workdir / "results.json", {"config": config.to_dict(), "rows": rows}
  )
  plot_figure(config, results, workdir / "figure.png")


def plot_figure(config, results, path) -> None:
  """A's and B's test accuracy against B's iterations, one panel per (k, A).

  Args:
    config: the study's config.
    results: {(k, setting): {"runs", "steps" [T], "acc_a" [T, R],
      "acc_b" [T, R]}}, as `train_b` returns or `results_from_metrics`
      rebuilds; curves are mean ± std over the seeds of each headline run.
    path: the PNG to write.
  """
  style = {
    "plain": ("--", "without WPL"),
    "l2": (":", "uniform L2"),
    "wpl": ("-", "with WPL"),
  }
  panels = []
  for (k, setting), res in results.items():
    curves = []
    for variant, name in _headline(config).items():
      idx = [i for i, r in enumerate(res["runs"]) if r.name == name]
      ls, label = style[variant]
      for model, color in (("a", "tab:blue"), ("b", "tab:red")):
        acc = res[f"acc_{model}"][:, idx]
        curves.append(
          {
            "label": f"{model.upper()} {label}",
            "x": res["steps"],
            "mean": acc.mean(1),
            "std": acc.std(1),
            "color": color,
            "linestyle": ls,
          }
        )
    panels.append({"title": f"k={k} shared, {setting} A", "curves": curves})
  metrics_lib.plot_panels(
    panels,
    path,
    xlabel="iterations of B",
    ylabel="test accuracy",
    ncols=len(config.protocol.shared_layers),
  )


def results_from_metrics(config, records: list[dict]) -> dict:
  """Rebuilds `train_b`'s results from metrics.jsonl records (any prefix).

  Evaluations not yet written (a running job) are left out: each
  (k, setting) keeps the steps at which every run has a record.

  Returns:
    {(k, setting): {"runs", "steps" [T], "acc_a" [T, R], "acc_b" [T, R]}}
    in the order the study runs them.
  """
  runs = make_runs(config)
  index = {(r.name, r.seed): i for i, r in enumerate(runs)}
  out = {}
  for k in config.protocol.shared_layers:
    for setting in config.protocol.a_settings:
      rows = [r for r in records if r["k"] == k and r["a_setting"] == setting]
      by_step = {}
      for r in rows:
        by_step.setdefault(r["step"], {})[index[(r["run"], r["seed"])]] = r
      steps = sorted(s for s, got in by_step.items() if len(got) == len(runs))
      if not steps:
        continue
      acc = {
        m: np.array(
          [[by_step[s][i][f"acc_{m}"] for i in range(len(runs))] for s in steps]
        )
        for m in ("a", "b")
      }
      out[(k, setting)] = {
        "runs": runs,
        "steps": np.asarray(steps),
        "acc_a": acc["a"],
        "acc_b": acc["b"],
      }
  return out


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Runs the whole study and writes its outputs to `workdir`.

  Writes metrics.jsonl (one line per run and evaluation), results.md,
  results.json and figure.png.

  Returns:
    {"rows": summary rows (see `summarize`), "workdir": str}.

  Raises:
    ValueError: inconsistent config (before anything is written).
    wpl_jax.data.DataError: missing or corrupt data files (likewise).
  """
  validate(config)
  data = _load_data(config)
  check_data(config, data)
  logging.info("JAX devices: %s; workdir %s", jax.devices(), workdir)
  workdir = pathlib.Path(workdir)
  workdir_lib.claim(workdir, config, resumable=RESUMABLE)  # the first write
  seeds = [config.seed + s for s in range(config.num_seeds)]
  t0 = time.time()
  ckpt_root = workdir / "checkpoints"
  results = {}
  with checkpoint_lib.StopOnSignal() as stop:
    params_a = train_a(config, data, seeds, ckpt_dir=ckpt_root / "a", stop=stop)
    cache = {}
    for k in config.protocol.shared_layers:
      for setting in config.protocol.a_settings:
        results[(k, setting)] = train_b(
          config,
          data,
          params_a[setting],
          seeds,
          k=k,
          setting=setting,
          log_path=workdir / "metrics.jsonl",
          cache=cache,
          ckpt_root=ckpt_root,
          stop=stop,
        )
  order = lambda key: (A_SETTINGS.index(key[1]), key[0])
  results = {key: results[key] for key in sorted(results, key=order)}
  rows = summarize(results, config.protocol.early_step)
  write_outputs(config, workdir, results, rows)
  logging.info("Done in %.0f s; results in %s", time.time() - t0, workdir)
  heads = set(_headline(config).values())
  table = metrics_lib.markdown_table(
    [r for r in rows if r["run"] in heads], _COLUMNS
  )
  print(table, flush=True)
  return {"rows": rows, "workdir": str(workdir)}
