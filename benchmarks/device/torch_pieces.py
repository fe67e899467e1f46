"""Times the paper's own PyTorch trainer (the reference peer), piece by piece.

Usage (from the project root; .device/ref from prepare_reference.py, which
must travel to a device machine as a carried, git-ignored path):

  python benchmarks/device/torch_pieces.py --ref=.device/ref \\
      --data=../shared/data/ptb --hidden=1000 --tf32=0 --reps=5 \\
      --time_limit=100 --jsonl=$OUT/torch.jsonl

Needs only torch, numpy and scipy. Builds the reference's objects as its
main.py does for ENAS RNN on PTB with WPL on: `config.get_args()` with the
reference defaults (12 nodes, batch 64, bptt 35, tied embeddings, SGD lr 20
with l2 1e-7 and clip 0.25, Adam controller lr 3.5e-4, policy batch 5,
lambda_fisher 0.9, alpha_fisher 1) except `--shared_hid = --shared_embed =
--hidden`, `--num_gpu` 1 on cuda / 0 on cpu, `--use_tensorboard=False`;
main.py's seeding; `data.text.Corpus` on the PTB files (train/valid/test.txt
or ptb.*.txt; vocab 10000); `trainer.Trainer(args, dataset)`; then
`compute_fisher = True` and `epoch = 0`, as `Trainer.train()` sets them
(start_using_fisher = 0).

The trainer's own methods run unmodified; the clock is read by markers
installed around its calls (each marker runs `torch.cuda.synchronize()` on
cuda before reading `time.perf_counter()`):

- shared_step, fisher_update: one call `trainer.train_shared(max_step=n-1)`
  with `args.num_batch_per_iter = --batches_per_arch` (default 1; reference
  10, paper 7), i.e. n = warmup + reps archs, each sampled by
  `controller.sample(1)` outside the regions.
  shared_step = from `self.get_batch(self.train_data, train_idx,
  self.max_length)` through `self.shared_optim.step()` (trainer.py lines
  424-455 at 6f6457f): get_batch; `_run_shared_one_batch` = get_loss (the
  shared RNN forward over 35 steps with dropouts, CE loss, and
  `0.5 * compute_weight_plastic_loss_with_update_fisher(dag)`), utils.detach
  of the hidden state, `_apply_penalties` (all off by default);
  `shared_optim.zero_grad()`; `loss.backward()`; `_clip_gradient` (max hidden
  norm `.item()`, `_check_abs_max_grad` over all grads, `clip_grad_norm`);
  `shared_optim.step()`.
  fisher_update = from `self.get_batch(self.valid_data, valid_idx,
  self.max_length)` through `self.shared.update_optimal_weights()` (lines
  483-494, the `if self.compute_fisher:` block after an arch's batches):
  get_batch; `_run_shared_one_batch` on that validation batch (forward + WPL
  term); `zero_grad()`; `v_sample_loss.backward()` (shared_ce_fisher);
  `shared.update_fisher(dags[0], epoch)`; `shared.update_optimal_weights()`.
- controller_step: one call `trainer.train_controller()` with
  `args.controller_max_step = n`; the region runs from
  `self.controller.sample(batch_size=5, with_details=True)` through
  `self.controller_optim.step()` (lines 577-621): sampling 5 dags, the
  entropies to numpy, `get_reward(dags, ...)` under no_grad (get_batch on the
  validation data, get_loss over the 5 dags: 5 forwards, each with its WPL
  term, the reward from the last dag's loss), the EMA baseline, the
  REINFORCE loss, `zero_grad`, `backward`, `step`.
- reward_eval: `trainer.get_reward(dag, entropies, hidden, 0)` under
  `_get_no_grad_ctx_mgr()`, for one dag from `controller.sample(1,
  with_details=True)` and `hidden = shared.init_training(64)` (made outside
  the region), as `derive()` calls it: get_batch on valid batch 0, get_loss
  on one dag (forward + WPL term), `.item()`, the reward arithmetic.
- eval_k16: `trainer.derive(sample_num=16, valid_idx=0)` under
  `_get_no_grad_ctx_mgr()` (as `train()` calls it): `controller.sample(16,
  with_details=True)`, then for each of the 16 dags in sequence
  `shared.init_training(64)` and `get_reward(dag, ...)` on the same
  validation batch, keeping the best. Its `draw_network` is replaced by a
  no-op (no image rendering, no directory made).

The shared model stays in train mode after train_shared (the reference
never calls eval() before the controller), so rewards use dropout, as in
the reference. Each piece: `--warmup` (>= 2) calls, then `--reps` timed
calls; median and min in ms. Each row is appended to --jsonl as soon as it
is known; a piece raising writes {"error": ...}; past --time_limit seconds
(checked between pieces) the rest are written as {"skipped": "time limit"}.
A last row, piece "projected", projects the paper's epoch from the medians.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings

CODE = "reference-pytorch"
PIECES = (
  "shared_step",
  "fisher_update",
  "controller_step",
  "reward_eval",
  "eval_k16",
)
PHASES = (
  ("shared", ("shared_step", "fisher_update")),
  ("controller", ("controller_step",)),
  ("reward", ("reward_eval",)),
  ("eval16", ("eval_k16",)),
)
PAPER_ARCHS, PAPER_BATCHES, PAPER_CTRL = 61, 7, 2000
K_EVAL = 16
BASIS = (
  f"{PAPER_ARCHS} archs x {PAPER_BATCHES} shared_step + {PAPER_ARCHS} "
  f"fisher_update + {PAPER_CTRL} controller_step (medians); "
  f"with_evals_ms adds {2 * PAPER_ARCHS} reward_eval, standing for the "
  "reference's _evaluate_valid of each arch before and after the epoch "
  "(one validation batch each)"
)
SPLITS = ("train", "valid", "test")
_QUIET = (
  r"volatile was removed",
  r".*clip_grad_norm.* is now deprecated",
  r"nn\.functional\.(sigmoid|tanh) is deprecated",
)


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--ref", default=".device/ref", help="prepared reference")
  ap.add_argument("--data", required=True, help="folder with the PTB files")
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--tf32", type=int, choices=(0, 1), default=0)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--time_limit", type=float, default=100.0, help="seconds")
  ap.add_argument("--jsonl", default=None)
  ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
  ap.add_argument("--batches_per_arch", type=int, default=1)
  ap.add_argument(
    "--threads", type=int, default=0, help="torch CPU threads; 0: default"
  )
  ap.add_argument("--pieces", default=",".join(PIECES))
  ap.add_argument("--verbose", action="store_true", help="reference logging")
  a = ap.parse_args(argv)
  if a.reps < 1:
    ap.error("--reps must be >= 1")
  if a.warmup < 2:
    ap.error("--warmup must be >= 2")
  if a.batches_per_arch < 1:
    ap.error("--batches_per_arch must be >= 1")
  a.pieces = tuple(p for p in a.pieces.split(",") if p)
  unknown = sorted(set(a.pieces) - set(PIECES))
  if unknown:
    ap.error(f"unknown pieces {unknown}; known: {PIECES}")
  return a


def find_ptb(data_dir: str) -> dict:
  """split -> path, for `{split}.txt` or `ptb.{split}.txt` in data_dir."""
  found = {}
  for s in SPLITS:
    for name in (f"{s}.txt", f"ptb.{s}.txt"):
      path = os.path.join(data_dir, name)
      if os.path.isfile(path):
        found[s] = path
        break
    else:
      raise FileNotFoundError(f"no {s}.txt or ptb.{s}.txt in {data_dir}")
  return found


def corpus_dir(data_dir: str, tmp: str) -> str:
  """A folder with train/valid/test.txt, as data.text.Corpus expects."""
  files = find_ptb(data_dir)
  if all(os.path.basename(p) == f"{s}.txt" for s, p in files.items()):
    return data_dir
  out = os.path.join(tmp, "ptb")
  os.makedirs(out, exist_ok=True)
  for s, p in files.items():
    try:
      os.symlink(os.path.abspath(p), os.path.join(out, f"{s}.txt"))
    except OSError:
      shutil.copyfile(p, os.path.join(out, f"{s}.txt"))
  return out


def summarize(times_s: list, warmup: int) -> dict:
  """Median/min in ms of the calls after the first `warmup`."""
  kept = times_s[warmup:]
  if not kept:
    raise RuntimeError(f"only {len(times_s)} calls, warmup {warmup}")
  ms = [t * 1e3 for t in kept]
  return {
    "median_ms": statistics.median(ms),
    "min_ms": min(ms),
    "reps": len(ms),
  }


def projection(median_ms: dict) -> dict:
  """The paper-structured epoch projected from per-piece medians (ms)."""
  row = {"piece": "projected", "basis": BASIS}
  need = ("shared_step", "fisher_update", "controller_step")
  missing = [p for p in need if median_ms.get(p) is None]
  if missing:
    row["error"] = "missing medians: " + ", ".join(missing)
    return row
  parts = {
    "shared_ms": PAPER_ARCHS * PAPER_BATCHES * median_ms["shared_step"],
    "fisher_ms": PAPER_ARCHS * median_ms["fisher_update"],
    "controller_ms": PAPER_CTRL * median_ms["controller_step"],
  }
  total = sum(parts.values())
  row.update(median_ms=total, projected_s=total / 1e3, parts=parts)
  if median_ms.get("reward_eval") is not None:
    row["with_evals_ms"] = total + 2 * PAPER_ARCHS * median_ms["reward_eval"]
  return row


class Rows:
  """Appends each row to the JSON-lines file as soon as it is known."""

  def __init__(self, path, common: dict):
    self.path, self.common, self.rows = path, dict(common), []
    if path:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, row: dict) -> dict:
    row = {"code": CODE, "piece": row["piece"], **self.common, **row}
    self.rows.append(row)
    if self.path:
      with open(self.path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


class Marks:
  """Region clocks opened/closed by markers around the trainer's calls."""

  def __init__(self, sync):
    self.sync = sync
    self.active = set()
    self.t0 = {}
    self.times = collections.defaultdict(list)

  def begin(self, name):
    if name in self.active:
      self.sync()
      self.t0[name] = time.perf_counter()

  def end(self, name):
    if name in self.t0:
      self.sync()
      self.times[name].append(time.perf_counter() - self.t0.pop(name))


def _one_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}".replace("\n", " ")[:500]


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
      for line in fh:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "cpu"


def _build(a, torch, tmp):
  """The reference's args, corpus and Trainer, as its main.py builds them."""
  import random  # noqa: PLC0415

  import numpy  # noqa: PLC0415

  ref = os.path.abspath(a.ref)
  if not os.path.isfile(os.path.join(ref, "PATCHES.txt")):
    raise FileNotFoundError(f"{ref} is not a prepare_reference.py export")
  sys.path.insert(0, ref)
  import config  # noqa: PLC0415
  import data  # noqa: PLC0415
  import trainer as trainer_mod  # noqa: PLC0415
  import utils  # noqa: PLC0415

  for mod in (config, data, trainer_mod, utils):
    if not os.path.abspath(mod.__file__).startswith(ref + os.sep):
      raise ImportError(f"{mod.__name__} imported from {mod.__file__}")
  if not a.verbose:
    utils.get_logger().setLevel("WARNING")
  cuda = a.device_kind == "cuda"
  argv = [
    "main.py",
    "--network_type=rnn",
    "--mode=train",
    f"--num_gpu={1 if cuda else 0}",
    f"--shared_hid={a.hidden}",
    f"--shared_embed={a.hidden}",
    "--use_tensorboard=False",
  ]
  saved, sys.argv = sys.argv, argv
  try:
    args, _ = config.get_args()
  finally:
    sys.argv = saved
  args.model_dir = os.path.join(tmp, "model")
  # main.py's preamble
  torch.manual_seed(args.random_seed)
  numpy.random.seed(args.random_seed)
  random.seed(args.random_seed)
  torch.backends.cudnn.deterministic = True
  if args.num_gpu > 0:
    torch.cuda.manual_seed(args.random_seed)
  dataset = data.text.Corpus(corpus_dir(a.data, tmp))
  trnr = trainer_mod.Trainer(args, dataset)
  # Trainer.train(): epoch 0 >= start_using_fisher (0)
  trnr.epoch = 0
  trnr.compute_fisher = True
  return args, dataset, trnr, trainer_mod


def _install_marks(trnr, marks):
  """Markers at the regions' first and last statements (see docstring)."""
  get_batch = trnr.get_batch

  def marked_get_batch(source, idx, length=None, volatile=False):
    if source is trnr.train_data:
      marks.begin("shared_step")
    elif source is trnr.valid_data and not volatile:
      marks.begin("fisher_update")
    return get_batch(source, idx, length, volatile)

  trnr.get_batch = marked_get_batch
  trnr.shared_optim.register_step_post_hook(lambda *_: marks.end("shared_step"))
  update_optimal_weights = trnr.shared.update_optimal_weights

  def marked_update_optimal_weights(*args, **kwargs):
    out = update_optimal_weights(*args, **kwargs)
    marks.end("fisher_update")
    return out

  trnr.shared.update_optimal_weights = marked_update_optimal_weights
  sample = trnr.controller.sample

  def marked_sample(*args, **kwargs):
    marks.begin("controller_step")
    return sample(*args, **kwargs)

  trnr.controller.sample = marked_sample
  trnr.controller_optim.register_step_post_hook(
    lambda *_: marks.end("controller_step")
  )
  trnr.draw_network = lambda dag, path: False  # derive(): no rendering


def _run_phase(name, a, trnr, trainer_mod, marks, timed):
  n = a.warmup + a.reps
  if name == "shared":
    trnr.args.num_batch_per_iter = a.batches_per_arch
    marks.active = {"shared_step", "fisher_update"}
    trnr.train_shared(max_step=n - 1)  # steps 0..n-1: n archs
  elif name == "controller":
    trnr.args.controller_max_step = n
    marks.active = {"controller_step"}
    trnr.train_controller()
  elif name == "reward":
    marks.active = set()
    dags, _, entropies = trnr.controller.sample(1, with_details=True)
    hidden = trnr.shared.init_training(trnr.args.batch_size)
    for _ in range(n):
      with timed("reward_eval"), trainer_mod._get_no_grad_ctx_mgr():
        trnr.get_reward(dags[0], entropies, hidden, 0)
  elif name == "eval16":
    marks.active = set()
    for _ in range(n):
      with timed("eval_k16"), trainer_mod._get_no_grad_ctx_mgr():
        trnr.derive(sample_num=K_EVAL, valid_idx=0)
  marks.active = set()


def _print_table(rows):
  print(f"\n{'piece':<16} {'median ms':>12} {'min ms':>12} {'reps':>5}  note")
  for r in rows:
    note = r.get("error") or r.get("skipped") or ""
    if r["piece"] == "projected" and "projected_s" in r:
      note = f"{r['projected_s']:.1f} s / paper epoch"
    med, mn = r.get("median_ms"), r.get("min_ms")
    print(
      f"{r['piece']:<16} "
      f"{'' if med is None else f'{med:.2f}':>12} "
      f"{'' if mn is None else f'{mn:.2f}':>12} "
      f"{r.get('reps', ''):>5}  {note}"
    )


def main(argv=None) -> int:
  a = parse_args(argv)
  t_start = time.perf_counter()
  import torch  # noqa: PLC0415

  for msg in _QUIET:
    warnings.filterwarnings("ignore", message=msg)
  if a.device == "auto":
    a.device_kind = "cuda" if torch.cuda.is_available() else "cpu"
  else:
    a.device_kind = a.device
  cuda = a.device_kind == "cuda"
  if a.threads > 0:
    torch.set_num_threads(a.threads)
  torch.backends.cuda.matmul.allow_tf32 = bool(a.tf32)
  torch.backends.cudnn.allow_tf32 = bool(a.tf32)
  torch.set_float32_matmul_precision("high" if a.tf32 else "highest")
  if cuda:
    device = f"cuda ({torch.cuda.get_device_name(0)})"
  else:
    device = f"cpu ({_cpu_name()}, {torch.get_num_threads()} threads)"
  rows = Rows(
    a.jsonl,
    {
      "hidden": a.hidden,
      "tf32": a.tf32,
      "device": device,
      "torch": torch.__version__,
    },
  )

  def sync():
    if cuda:
      torch.cuda.synchronize()

  marks = Marks(sync)

  class timed:
    def __init__(self, name):
      self.name = name

    def __enter__(self):
      sync()
      self.t0 = time.perf_counter()

    def __exit__(self, *exc):
      if exc[0] is None:
        sync()
        marks.times[self.name].append(time.perf_counter() - self.t0)

  def peak():
    out = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return out

  tmp = tempfile.mkdtemp(prefix="torch_pieces_")
  medians = {}
  try:
    try:
      t0 = time.perf_counter()
      args, dataset, trnr, trainer_mod = _build(a, torch, tmp)
      _install_marks(trnr, marks)
      print(
        f"built in {time.perf_counter() - t0:.1f} s: vocab "
        f"{dataset.num_tokens}, shared params "
        f"{trnr.shared.num_parameters:,}, device {trnr.device}",
        flush=True,
      )
    except Exception as e:  # noqa: BLE001
      traceback.print_exc()
      for p in a.pieces:
        rows.write({"piece": p, "error": "build: " + _one_line(e)})
      trnr = None
    for phase, pieces in PHASES if trnr is not None else ():
      pieces = [p for p in pieces if p in a.pieces]
      if not pieces:
        continue
      if time.perf_counter() - t_start > a.time_limit:
        for p in pieces:
          rows.write({"piece": p, "skipped": "time limit"})
        continue
      if cuda:
        torch.cuda.reset_peak_memory_stats()
      try:
        _run_phase(phase, a, trnr, trainer_mod, marks, timed)
      except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        for p in pieces:
          rows.write({"piece": p, "error": _one_line(e)})
        continue
      mem = peak()
      for p in pieces:
        try:
          stats = summarize(marks.times.pop(p, []), a.warmup)
        except Exception as e:  # noqa: BLE001
          rows.write({"piece": p, "error": _one_line(e)})
          continue
        medians[p] = stats["median_ms"]
        extra = {"warmup": a.warmup}
        if phase == "shared":
          extra["batches_per_arch"] = a.batches_per_arch
        rows.write({"piece": p, **stats, **mem, **extra})
    rows.write(projection(medians))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  _print_table(rows.rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
