"""The 32-cell PTB space: ground truth, and weight-shared rankings against it.

The reduced space of docs/method.md §5 (ICLR'20 follow-up): 3 nodes; node 0
as in the full space with its activation fixed to tanh; node 1 reads node
0; node 2 reads node 0 or node 1; nodes 1 and 2 choose one of the 4
activations: 4 · 2 · 4 = 32 cells (`enumerate_space(3,
fixed_first_activation="tanh")`, codec strings such as
"tanh|0:relu|1:identity").

Variants (the `:arg` string, comma-separated):
  truth      every cell trained from scratch on PTB (one program over the 32
             cells); one seed per run (--config.seed), merged into
             experiments/results/space32_truth.json by space32_truth.py.
  enas       weight-shared search, LSTM controller with REINFORCE.
  random     weight-shared search, cells sampled uniformly.
  off        WPL off (default).    reference   WPL, reference mode.
  clean      WPL, clean mode.
  published  the published DARTS-style cell (WORKSPACE §7.9): the cell
             outputs the mean of nodes 1 and 2, carries that output as the
             hidden state and has no batch-norm. It keeps the hidden-norm
             clip at 25 (the public code's NORM mode): without it one model
             in 96 diverged within the first epoch at every H tried. Without
             this variant, the ENAS cell (mean of the loose ends, node 2
             carried, BN).
  h128, h256 hidden size 128 or 256 instead of 32 (truth and searches).
  concentrate  400 controller steps per epoch instead of 50: with 50 the
             controller's entropy over the 32 cells stays at uniform's
             (3.459 vs 3.466 nats after 12 epochs); with 400 it falls to
             2.1 within 3 epochs (WORKSPACE §7.10).
  ladder     the ground truth's pilot ladder: 3 seeds in one program, 10
             epochs, evaluated at every epoch end on all validation tokens
             in 16 columns; with h128/h256 it is sized for an accelerator.
  smoke      seconds: tiny sizes (tests).

Run (from the project root):
  python main.py --config=experiments/space32.py:truth \
      --data_dir=../shared/data/ptb --workdir=workdir/truth_s0 --config.seed=0
  python main.py --config=experiments/space32.py:enas,reference \
      --data_dir=../shared/data/ptb --workdir=workdir/s32_enas_ref_s0
  python main.py --config=experiments/space32.py:truth,published,ladder,h256 \
      --data_dir=../shared/data/ptb --workdir=workdir/truth_pub_h256

Measured results and the budget's trade-offs: WORKSPACE.md §6.
"""

import pathlib

import ml_collections

from experiments import enas_ptb

# Sizes shared by the ground truth and the searches (a ranking compares
# the same model family).
HIDDEN = 32
FIRST_ACTIVATION = "tanh"
TRUTH_PATH = pathlib.Path(__file__).parent / "results" / "space32_truth.json"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config for the comma-separated variants in `arg`."""
  variants = [v for v in (arg or "truth").split(",") if v]
  for v in variants:
    if v not in _VARIANTS:
      raise ValueError(
        f"unknown variant {v!r} of space32; choose from {sorted(_VARIANTS)}"
      )
  c = enas_ptb.get_config("paper")
  c.experiment = "enas_ptb"
  c.model.num_nodes = 3
  c.model.ce_chunk = 140  # tokens per decoder chunk (supernet.chunked_...)
  # A 32-unit model trained for a few epochs underfits: the paper's heavy
  # dropout (0.4/0.65/0.1/0.5) only slows it down.
  c.model.dropout_output = 0.1
  c.model.dropout_input = 0.1
  c.model.dropout_embed = 0.0
  c.model.dropconnect = 0.1
  c.search.fixed_first_activation = FIRST_ACTIVATION
  c.search.policy = "enas"

  # Weight-shared search: 12 epochs of 16 cells × 4 batches (~2.4 PTB
  # epochs through the shared model), 50 controller steps per epoch.
  se = c.search
  se.epochs = 12
  se.archs_per_epoch = 16
  se.batches_per_arch = 4
  se.derive_every = 12
  se.derive_samples = 32
  se.eval_chunk = 4
  se.eval_bn = "batch"  # running stats inflate err2 10²-10⁵ (WORKSPACE §4)
  se.heldout_tokens = 16000  # last 16k valid tokens: ranking only
  se.rank_every = 1
  se.truth_path = str(TRUTH_PATH)
  c.controller.steps_per_epoch = 50
  # The stored searches (WORKSPACE §7) ran with one reward per cell.
  c.controller.reward_form = "sequence"
  c.shared.lr_decay_after = 8
  w = c.wpl
  w.start_epoch = 2
  w.reset_every = 2
  w.alpha_decay_after = 1000  # α constant within the 12 epochs
  _set_hidden(c, HIDDEN)  # w.clip scales with H
  c.retrain.epochs = 0  # the ground truth scores the derived cell

  c.truth = t = ml_collections.ConfigDict(type_safe=False)  # "auto" fields
  t.epochs = 1
  # Seeds trained side by side in one program (seed, seed + 1, ...): the
  # cells of seed k are those a run with --config.seed=seed+k trains.
  t.num_seeds = 1
  t.max_batches_per_epoch = 0  # 0 = full passes over ptb.train.txt.
  t.lr = 20.0  # SGD, cosine decay to lr · lr_final over the whole run.
  t.lr_final = 0.05
  # Cells vmapped together inside the map over cells ("auto": 1 on CPU,
  # 32 on GPU/TPU; wpl_jax/runtime/platform_defaults.py).
  t.arch_batch = "auto"
  t.eval_arch_batch = 32
  t.eval_batch_size = 1  # 1 column: every validation token is scored.
  t.eval_tokens = 0  # 0 = the whole validation set
  # Steps between saves, and at every epoch end ("auto": 50 on CPU, 0 =
  # epoch ends only on GPU/TPU).
  t.checkpoint_every = "auto"
  t.eval_every = 210  # steps; also at every epoch end (0 = epoch ends only)
  t.log_seconds = 30.0

  for v in variants:
    _VARIANTS[v](c)
  return c


def _set_hidden(c, hidden):
  c.model.hidden = hidden
  # WPL's per-entry pull as at H = 1000 (enas_ptb cpu).
  c.wpl.clip = 10.0 * hidden / 1000


def _published(c):
  c.model.cell_output = "all"
  c.model.hidden_source = "output"
  c.model.batch_norm = False
  # clip_norm stays 25: with 0 (no clip, the public code's default) the
  # identity chain diverged in the first epoch (WORKSPACE §7.9).


def _concentrate(c):
  c.controller.steps_per_epoch = 400


def _ladder(c):
  t = c.truth
  t.num_seeds = 3
  t.epochs = 10
  t.eval_every = 0  # epoch ends only
  t.eval_batch_size = 16  # 16 columns: every token, 16 cold starts


def _truth(c):
  c.experiment = "enas_truth"


def _enas(c):
  c.search.policy = "enas"


def _random(c):
  c.search.policy = "random"


def _off(c):
  c.wpl.enabled = False


# WPL modes exactly as in the main ENAS search's variants.
_reference = enas_ptb._VARIANTS["wpl"]
_clean = enas_ptb._VARIANTS["clean"]


def _smoke(c):
  c.model.hidden = 8
  c.model.ce_chunk = 16
  c.data.batch_size = 4
  c.data.bptt = 6
  c.truth.epochs = 2
  c.truth.max_batches_per_epoch = 3
  c.truth.arch_batch = 4
  c.truth.eval_arch_batch = 8
  c.truth.eval_batch_size = 64
  c.truth.eval_tokens = 2000
  c.truth.checkpoint_every = 2
  c.truth.eval_every = 0
  c.search.epochs = 2
  c.search.archs_per_epoch = 3
  c.search.batches_per_arch = 2
  c.search.derive_every = 1
  c.search.derive_samples = 4
  c.search.eval_chunk = 8
  c.search.heldout_tokens = 2000
  c.search.truth_path = ""  # tests pass their own
  c.controller.steps_per_epoch = 3
  c.controller.hidden = 8
  c.wpl.start_epoch = 0


_VARIANTS = {
  "truth": _truth,
  "enas": _enas,
  "random": _random,
  "off": _off,
  "reference": _reference,
  "clean": _clean,
  "published": _published,
  "h128": lambda c: _set_hidden(c, 128),
  "h256": lambda c: _set_hidden(c, 256),
  "ladder": _ladder,
  "concentrate": _concentrate,
  "smoke": _smoke,
}
