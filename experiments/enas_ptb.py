"""ENAS RNN-cell search on Penn Treebank, with and without WPL.

Variants (the `:arg` string; join several with commas, e.g. `cpu,wpl`):
  paper   docs/method.md §4 sizes (H = 1000, 12 nodes, 150 epochs): for GPUs.
  cpu     a faithful scaled-down search + retrain for a 2-core CPU (about
          half an hour; more when the machine is shared).
  smoke   seconds: tiny sizes, 2 epochs, WPL off (add `wpl` or `clean`).
  wpl     WPL on, reference mode (docs/method.md §2 constants, scaled epochs).
  clean   WPL on, clean mode (EMA Fisher, α only in the loss).
  bnbatch search evaluations normalise with each child's batch statistics.

Run (from the project root):
  python main.py --config=experiments/enas_ptb.py:cpu \
      --data_dir=../shared/data/ptb --workdir=workdir/enas_cpu
  python main.py --config=experiments/enas_ptb.py:cpu,wpl \
      --data_dir=../shared/data/ptb --workdir=workdir/enas_cpu_wpl
  python main.py --config=experiments/enas_ptb.py:smoke \
      --data_dir=../shared/data/ptb --workdir=/tmp/enas_smoke

Outputs: metrics.jsonl (per epoch: reward, forgetting mean/best-5/max,
tokens/s, derived cell), tb/, checkpoints/ (a rerun resumes), retrain.jsonl,
results.{json,md}, figure.png. Measured results: WORKSPACE.md §4–5.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config for the comma-separated variants in `arg`."""
  c = ml_collections.ConfigDict()
  c.experiment = "enas_ptb"
  c.seed = 0
  # Matmul precision: "float32" (exact, as the reference computes), "tf32",
  # "bf16" or "default" (the platform's: TF32 on recent NVIDIA GPUs);
  # wpl_jax/runtime/platform_defaults.py. Not resumable.
  c.precision = "float32"
  c.data_dir = ""  # Folder with ptb.{train,valid,test}.txt; set --data_dir.
  c.num_devices = 0  # Local devices the batch is split over (0 = all).

  c.model = m = ml_collections.ConfigDict()
  m.vocab_size = 10000  # Set from the data at run time.
  m.hidden = 1000  # Embedding = hidden size (tied decoder).
  m.num_nodes = 12  # Nodes per cell.
  m.dropout_output = 0.4
  m.dropout_input = 0.65
  m.dropout_embed = 0.1
  m.dropconnect = 0.5  # On W_hc and W_hh.
  m.clip_norm = 25.0  # Per-example hidden-norm clip (0 = none).
  m.init_range = 0.025
  m.hidden_source = "last"  # Reference quirk: next hidden = last node.
  # "leaves": the ENAS cell outputs the mean of its loose ends; "all": the
  # mean of nodes 1..N-1 (the published DARTS-style cell, space32 :published).
  m.cell_output = "leaves"
  m.batch_norm = True
  # Tokens per decoder chunk: the fused decoder + cross-entropy never holds
  # the [T·B, V] logits (0 = whole logits; losses.chunked_nll_sum). 0.90×
  # the step at H = 200, 0.85× at H = 400 (WORKSPACE §6.2).
  m.ce_chunk = 256
  # `unroll` of the scan over a cell's nodes (0 = fully): 0.88× the shared
  # step at H = 200, 0.95–0.97× at H = 400 and 1000, +1–2 s compile per
  # step function at N = 12 (WORKSPACE §6.2).
  m.node_unroll = 0
  # Input dtype of the model's large products (node 0's projections, the
  # edges, the tied decoder): "float32", or "bfloat16" (float32
  # accumulation and output; an opt-in for CPUs with AMX / AVX512-BF16 and
  # accelerators at H >= 200; changes the loss by more than rounding,
  # WORKSPACE §6.7-6.8).
  m.matmul_dtype = "float32"
  # Split the [E, H, H] edge stacks, their Fisher and anchor along E over
  # this many devices (0 = replicated; must divide E and the device count).
  m.shard_edges = 0

  c.data = d = ml_collections.ConfigDict()
  d.batch_size = 64
  d.bptt = 35

  c.shared = s = ml_collections.ConfigDict()
  s.lr = 20.0
  s.lr_decay = 0.96  # × per epoch after `lr_decay_after`.
  s.lr_decay_after = 15
  s.grad_clip = 0.25  # Global gradient norm.
  s.weight_decay = 1e-7

  # type_safe=False: "auto" fields (wpl_jax.runtime.platform_defaults) take
  # ints too.
  c.search = se = ml_collections.ConfigDict(type_safe=False)
  se.epochs = 150
  se.archs_per_epoch = 61  # S architectures per epoch ...
  se.batches_per_arch = 7  # ... × B training batches each.
  se.derive_every = 30  # Derive every D epochs (and at the end).
  se.derive_samples = 100  # Best of M sampled cells.
  se.eval_chunk = 16  # Archs per evaluation call.
  # Archs per vmap inside an evaluation call (0 = all of the call's);
  # "auto": 1 on CPU, where one at a time is faster and gathers one arch's
  # edges, not 16 (WORKSPACE §6.3); 0 on GPU/TPU (2.3x faster for K = 16 on
  # an H200, WORKSPACE §10.4). The search vmaps all of them when its
  # devices split the archs.
  se.eval_vmap = "auto"
  # From this hidden size on, the shared step forms the edges' gradient
  # once after the time scan instead of accumulating it step by step (the
  # same gradient; "auto": 800 on CPU, 0 = never on accelerators;
  # 0.87–0.97× the step at H = 1000 on two CPUs, WORKSPACE §6.4).
  se.grad_after_scan_from = "auto"
  # Batch-norm in search evaluations (forgetting, reward, derive): "running"
  # statistics (reference) or each child's own "batch" statistics.
  se.eval_bn = "running"
  se.policy = "enas"  # "enas" (controller, REINFORCE) or "random" (uniform)
  se.fixed_first_activation = ""  # "" or node 0's fixed activation name
  # The last `heldout_tokens` validation tokens are never trained, Fisher'd
  # or rewarded on; every `rank_every` epochs (0 = never) all cells of the
  # space are scored on them with the shared weights (small spaces only).
  se.heldout_tokens = 0
  se.rank_every = 0
  se.truth_path = ""  # stored ground truth (experiments/results/...json)
  se.log_seconds = 10.0  # seconds between progress lines within an epoch
  # Seeds searched side by side in one program (seed, seed + 1, ...; one
  # device; each seed's records under seed_<seed>/); 1 = one seed.
  se.num_seeds = 1

  c.controller = ct = ml_collections.ConfigDict()
  ct.hidden = 100
  ct.lr = 3.5e-4
  ct.steps_per_epoch = 2000
  ct.batch_size = 1  # Archs per REINFORCE step (vmapped).
  ct.temperature = 5.0
  ct.tanh_constant = 2.5
  ct.reward_c = 80.0  # reward = c / valid ppl.
  ct.entropy_coef = 1e-4
  ct.baseline_decay = 0.95
  # "per_decision" (ENAS-pytorch, the reference code's base): decision t's
  # reward R + coef·H_t with its own baseline; "sequence": one reward
  # R + coef·Σ H_t and one baseline for every decision (WORKSPACE §4).
  ct.reward_form = "per_decision"

  c.wpl = w = ml_collections.ConfigDict(type_safe=False)
  w.enabled = False
  w.mode = "reference"  # "reference" (α folded into F) or "clean".
  w.estimator = "batch_grad_squared"  # Or "per_example", "sampled".
  w.alpha = 60.0
  w.start_epoch = 5  # Fisher updates and penalty from this epoch on.
  w.reset_every = 2  # Zero F at the start of every k-th epoch (0 = never).
  w.alpha_decay_after = 14  # α − alpha_decay·(epoch − 14) after epoch 14.
  w.alpha_decay = 1.0
  w.ema_new = 0.9  # Weight of the new estimate in the running Fisher.
  w.clip = 10.0  # Per-matrix Frobenius clip (0 = none).
  # Examples per chunk for per-example estimators ("auto": 16 on CPU, 64
  # on GPU/TPU).
  w.chunk_size = "auto"
  # per_example by "fast" (one probed backward, wpl_jax.fisher_fast) or
  # "vmap" (vmap of per-sequence gradients); both exact.
  w.fisher_method = "fast"

  c.retrain = r = ml_collections.ConfigDict()
  r.arch = ""  # A cell string to retrain instead of the derived one.
  r.epochs = 40
  r.random_archs = 1  # Uniformly sampled cells retrained with the same budget.
  r.lr = 20.0
  r.lr_decay = 0.96
  r.lr_decay_after = 15
  r.grad_clip = 0.25
  r.weight_decay = 1e-7
  r.eval_batch_size = 1  # 1 = every token scored.
  r.max_batches_per_epoch = 0  # 0 = full passes over train.
  r.log_every = 200

  for variant in filter(None, (arg or "paper").split(",")):
    if variant not in _VARIANTS:
      raise ValueError(
        f"unknown variant {variant!r}; choose from {sorted(_VARIANTS)}"
      )
    _VARIANTS[variant](c)
  return c


def _paper(c):
  del c  # The defaults are the paper's.


def _cpu(c):
  """A faithful scaled-down run for 2 CPU cores: H = 64, 6 nodes, 10 epochs.

  The WPL clip scales with H so that the saturated Fisher has the same
  per-entry RMS as at H = 1000 (α·clip/H = 0.6): with the paper's clip of
  10 a 64×64 matrix would carry a 16× stronger per-entry pull.
  """
  c.model.hidden = 64
  c.model.num_nodes = 6
  c.search.epochs = 10
  c.search.archs_per_epoch = 16
  c.search.batches_per_arch = 4
  c.search.derive_every = 5
  c.search.derive_samples = 16
  c.search.eval_chunk = 8
  c.controller.steps_per_epoch = 40
  c.shared.lr_decay_after = 6
  c.wpl.start_epoch = 2
  c.wpl.alpha_decay_after = 6
  c.wpl.clip *= 64 / 1000  # Any order of variants: scales what is set.
  c.retrain.epochs = 2
  c.retrain.random_archs = 1
  c.retrain.eval_batch_size = 1


def _smoke(c):
  c.model.hidden = 16
  c.model.num_nodes = 3
  c.data.batch_size = 8
  c.data.bptt = 10
  c.search.epochs = 2
  c.search.archs_per_epoch = 3
  c.search.batches_per_arch = 2
  c.search.derive_every = 1
  c.search.derive_samples = 4
  c.search.eval_chunk = 4
  c.controller.steps_per_epoch = 3
  c.controller.hidden = 16
  c.wpl.start_epoch = 0
  c.retrain.epochs = 1
  c.retrain.random_archs = 1
  c.retrain.max_batches_per_epoch = 5
  c.retrain.eval_batch_size = 64
  c.retrain.log_every = 2


def _wpl(c):
  c.wpl.enabled = True
  c.wpl.mode = "reference"


def _clean(c):
  c.wpl.enabled = True
  c.wpl.mode = "clean"
  c.wpl.clip = 0.0


def _bnbatch(c):
  c.search.eval_bn = "batch"


_VARIANTS = {
  "bnbatch": _bnbatch,
  "paper": _paper,
  "cpu": _cpu,
  "smoke": _smoke,
  "wpl": _wpl,
  "clean": _clean,
}
