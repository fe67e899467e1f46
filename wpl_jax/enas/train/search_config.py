"""ENAS search: checks of the config and data, before any work and on resume.

`validate_model` (model, data and shared-optimiser fields; also used by
`enas_truth`) and `validate` raise one-line ValueErrors on an inconsistent
config. `valid_splits` cuts the validation stream into the forgetting, stream
and held-out parts, and `check_data` checks that every split is long enough
for the config. `comparable` and `check_same_config` compare a checkpoint's
config with a rerun's, except for the fields in `RESUMABLE`.
"""

import json
import math
import os

import jax
import ml_collections
import numpy as np

from wpl_jax.data import ptb
from wpl_jax.enas import ranking, search_space, supernet
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.runtime import platform_defaults, validation
from wpl_jax.runtime import workdir as workdir_lib

# Config fields that may change when a run is resumed (e.g. to extend it).
RESUMABLE = (
  "search.epochs",
  "retrain",
  "data_dir",
  "num_devices",
  "model.shard_edges",
  # How the decoder is chunked and the node scan unrolled change the loss
  # only by float rounding.
  "model.ce_chunk",
  "model.node_unroll",
  "search.grad_after_scan_from",
  # How many archs an evaluation vmaps together, and how many sequences a
  # per-example Fisher takes at a time: rounding only (both "auto" by
  # default: a run may resume on another platform).
  "search.eval_vmap",
  "wpl.chunk_size",
  # The 32-cell searches carry the ground truth's section too, whose
  # batching and save cadence are "auto" (platform_defaults.DEFAULTS).
  "truth.arch_batch",
  "truth.eval_arch_batch",
  "truth.checkpoint_every",
)


def validate_model(config: ml_collections.ConfigDict) -> None:
  """Ranges of the model, data and shared-optimiser fields (one line each)."""
  v = validation
  v.integer(config, "seed", min=0)
  v.integer(config, "model.hidden", min=1)
  v.integer(config, "model.num_nodes", min=2)
  for name in (
    "dropout_output",
    "dropout_input",
    "dropout_embed",
    "dropconnect",
  ):
    v.number(config, f"model.{name}", min=0, max=1, open_max=True)
  v.number(config, "model.clip_norm", min=0)  # 0 = no clip
  v.choice(config, "model.hidden_source", supernet.HIDDEN_SOURCES)
  v.choice(config, "model.cell_output", supernet.CELL_OUTPUTS)
  if "matmul_dtype" in config.model:
    v.choice(config, "model.matmul_dtype", supernet.MATMUL_DTYPES)
  v.number(config, "model.init_range", min=0, open_min=True)
  if "ce_chunk" in config.model:
    v.integer(config, "model.ce_chunk", min=0)
  if "node_unroll" in config.model:
    v.integer(config, "model.node_unroll", min=0)
  if config.search.get("grad_after_scan_from", "auto") != "auto":
    v.integer(config, "search.grad_after_scan_from", min=0)
  v.integer(config, "data.batch_size", min=1)
  v.integer(config, "data.bptt", min=1)
  v.number(config, "shared.lr", min=0, open_min=True)
  v.number(config, "shared.lr_decay", min=0, max=1, open_min=True)
  v.integer(config, "shared.lr_decay_after", min=0)
  v.number(config, "shared.grad_clip", min=0, open_min=True)
  v.number(config, "shared.weight_decay", min=0)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) on an inconsistent config.

  "auto" fields are checked at the values they take on this backend.
  """
  config = platform_defaults.resolved_config(config)
  platform_defaults.check_precision(config)
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
  form = c.reward_form
  if form not in enas_setup.REWARD_FORMS:
    raise ValueError(
      f"config.controller.reward_form must be one of "
      f"{', '.join(enas_setup.REWARD_FORMS)}: {form!r}"
    )
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
  if w.fisher_method not in ("fast", "vmap"):
    raise ValueError("config.wpl.fisher_method must be 'fast' or 'vmap'")
  if (
    config.model.get("matmul_dtype", "float32") != "float32"
    and w.enabled
    and w.estimator == "per_example"
    and w.fisher_method == "fast"
  ):
    raise ValueError(
      "config.model.matmul_dtype bfloat16 needs float32 taps for the fast "
      "per-example Fisher: set config.wpl.fisher_method='vmap' or "
      "matmul_dtype='float32'"
    )
  if config.search.get("eval_bn", "running") not in ("running", "batch"):
    raise ValueError("config.search.eval_bn must be 'running' or 'batch'")
  if config.model.num_nodes < 2:
    raise ValueError("config.model.num_nodes must be >= 2")
  if enas_setup.search_policy(config) not in enas_setup.POLICIES:
    raise ValueError(
      f"config.search.policy must be one of {enas_setup.POLICIES}: "
      f"{config.search.policy!r}"
    )
  enas_setup.fixed_first_activation(config)  # raises on an unknown name
  if "eval_vmap" in config.search:
    validation.integer(config, "search.eval_vmap", min=0)
  if "num_seeds" in config.search:
    validation.integer(config, "search.num_seeds", min=1)
    if config.search.num_seeds > 1 and r.epochs > 0:
      raise ValueError(
        "config.search.num_seeds > 1 searches only: set retrain.epochs=0 "
        "(retrain each seed's derived cell in its own run)"
      )
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
      archs = search_space.unstack(enas_setup.space_archs(config))
      ranking.truth_for(path, [search_space.to_string(a) for a in archs])


def comparable(
  config: ml_collections.ConfigDict, resumable: tuple[str, ...] = RESUMABLE
) -> dict:
  """The config as a dict, without the fields a resume may change."""
  d = config.to_dict()
  for field in resumable:
    *parents, leaf = field.split(".")
    node = d
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  return d


def check_same_config(
  config, saved: dict | None, resumable: tuple[str, ...] = RESUMABLE
) -> None:
  """Raises ValueError if a checkpoint was written under another config."""
  if saved is None:
    return
  now = workdir_lib.flatten(
    json.loads(json.dumps(comparable(config, resumable)))
  )
  now = {**workdir_lib.ADDED_DEFAULTS, **now}
  old = {**workdir_lib.ADDED_DEFAULTS, **workdir_lib.flatten(saved)}
  # A checkpoint written before a field became resumable still holds it.
  dropped = tuple(resumable) + tuple(f + "." for f in resumable)
  old = {k: v for k, v in old.items() if not k.startswith(dropped)}
  diff = sorted(k for k in set(now) | set(old) if now.get(k) != old.get(k))
  if diff:
    raise ValueError(
      "the checkpoint in this workdir was written with a different config "
      f"({', '.join(diff[:4])}); use a new --workdir"
    )


def check_sizes(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) on a size that only wastes memory.

  An evaluation call holds `search.eval_chunk` architectures, padded by
  repeating the last: more than any evaluation ever scores (the epoch's
  archs, the derive's samples, the whole space when ranking) is padding.
  """
  s = config.search
  most = max(s.archs_per_epoch, s.derive_samples)
  if s.rank_every:
    most = max(most, len(search_space.unstack(enas_setup.space_archs(config))))
  if s.eval_chunk > most:
    raise ValueError(
      f"config.search.eval_chunk={s.eval_chunk} exceeds the most "
      f"architectures one evaluation scores ({most}); use at most {most}"
    )


def machine_bytes() -> tuple[int, str]:
  """Memory one replica of the state may use, and where it was read.

  CPU: the machine's physical memory; an accelerator: the smallest local
  device's `bytes_limit` (every device holds the replicated state).
  """
  devices = jax.local_devices()
  if devices[0].platform != "cpu":
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    if all(limits):
      return min(limits), f"{devices[0].device_kind} memory"
  pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  return pages, "the machine's memory"


def memory_need(config: ml_collections.ConfigDict, state_shapes) -> dict:
  """A lower bound on the bytes an ENAS search holds at its peak.

  Args:
    config: the resolved config (vocabulary set from the data).
    state_shapes: `jax.eval_shape` of the search's initial state (params,
      optimizer, controller, WPL Fisher and anchor, hidden states).

  Returns:
    {"state", "gradient", "activations", "total"} in bytes: the state, one
    gradient of the shared params, and float32 activations of the larger
    of the training step (the [T, B, H] values each node keeps for the
    backward pass, and one decoder chunk's logits and their gradient) and
    an evaluation call (its vmapped archs' carries and logits chunk).
    XLA's temporaries come on top, so a run can need more, never less.
    Per device: edge stacks split by `model.shard_edges` count 1/k.
  """

  # `model.shard_edges = k` splits the cell's edge stacks (and their
  # Fisher, anchor and optimizer state) over k devices: per device, 1/k.
  k_edges = max(1, config.model.shard_edges or 1)

  def nbytes(tree):
    total = 0
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
      size = math.prod(x.shape) * x.dtype.itemsize
      if any(w in jax.tree_util.keystr(path) for w in ("cell", "edge_")):
        size //= k_edges
      total += size
    return total

  m, d = config.model, config.data
  t, b, h, n, v = d.bptt, d.batch_size, m.hidden, m.num_nodes, m.vocab_size
  chunk = min(m.ce_chunk or t * b, t * b)
  train = 4 * (t * b * h * (2 * n + 4) + 2 * chunk * v)
  group = platform_defaults.get(config, "search.eval_vmap", 0)
  k = (
    config.search.eval_chunk
    if group == 0
    else min(group, config.search.eval_chunk)
  )
  evaluate = 4 * k * (b * h * (2 * n + 4) + chunk * v)
  out = {
    "state": nbytes(state_shapes),  # every seed's, with a seed axis
    "gradient": nbytes(state_shapes["shared"].params),
    "activations": max(train, evaluate) * config.search.get("num_seeds", 1),
  }
  out["total"] = sum(out.values())
  return out


def check_memory(need: dict, available: tuple[int, str]) -> None:
  """Raises ValueError (one line) when `need["total"]` exceeds the machine."""
  have, where = available
  if need["total"] > have:
    gb = lambda x: f"{x / 2**30:.1f} GB"  # noqa: E731
    raise ValueError(
      f"this config needs at least {gb(need['total'])} (state "
      f"{gb(need['state'])}, gradient {gb(need['gradient'])}, activations "
      f"{gb(need['activations'])}), more than {where} ({gb(have)}); "
      "reduce model.hidden, data.batch_size or search.eval_chunk"
    )
