"""How to train the 32 cells of the ground truth in one program (CPU costs).

  python -m benchmarks.space32_bench [--hidden=32] [--reps=3]

Times, at the space32 sizes (H = 32, 3 nodes, V = 10k, 64 × 35 tokens):
(1) one cell's training step with the full [T, B, V] logits and with the
chunked decoder (`losses.chunked_cross_entropy`), and (2) one step of
all 32 cells in one jitted program: a full `vmap` over the cells, and
`lax.map` over them in vmapped groups of 1, 4 and 8 (`truth.arch_batch`),
against 32 calls of the single-cell step. Prints a Markdown table with
each row's ratio to its baseline, measured in the same run. Run it on an
otherwise idle machine.
"""

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _time(fn, reps):
  out = fn()
  jax.block_until_ready(out)
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--hidden", type=int, default=32)
  p.add_argument("--reps", type=int, default=3)
  args = p.parse_args(argv)
  from experiments import space32  # noqa: PLC0415
  from wpl_jax.enas.train import truth as enas_truth  # noqa: PLC0415

  rows = []
  x = jnp.asarray(np.random.default_rng(0).integers(0, 10000, (35, 64)))
  x = x.astype(jnp.int32)
  one_step = {}
  for chunk in (0, 140):
    c = space32.get_config("truth")
    c.model.vocab_size, c.model.hidden, c.model.ce_chunk = (
      10000,
      args.hidden,
      chunk,
    )
    tr = enas_truth.TruthTrainer(c)
    archs = enas_truth.space_archs(c)
    a0 = jax.tree.map(lambda a: a[5], archs)
    st = jax.tree.map(
      lambda a: a[0], tr.init(jax.random.split(jax.random.key(0), 32))
    )
    h = jnp.zeros((64, args.hidden))
    step = jax.jit(
      lambda st, h, k, tr=tr, a0=a0: tr.steps.shared_step(
        st, None, a0, x, x, h, jnp.float32(1.0), jnp.float32(0.0), key=k
      )
    )
    one_step[chunk] = _time(
      lambda step=step, st=st, h=h: step(st, h, jax.random.key(1)), args.reps
    )
  base = one_step[0]
  for chunk, t in one_step.items():
    name = "full logits" if not chunk else f"chunked decoder ({chunk} tokens)"
    rows.append(("1 cell", name, t, base / t, "1 cell, full logits"))

  loop32 = 32 * one_step[140]
  rows.append(
    ("32 cells", "32 single-cell calls (chunked)", loop32, 1.0, "itself")
  )
  for batch in (32, 8, 4, 1):
    c = space32.get_config("truth")
    c.model.vocab_size, c.model.hidden = 10000, args.hidden
    c.truth.arch_batch = batch
    tr = enas_truth.TruthTrainer(c)
    archs = enas_truth.space_archs(c)
    keys = jax.random.split(jax.random.key(1), 32)

    def run(tr=tr, archs=archs, keys=keys):
      st = tr.init(jax.random.split(jax.random.key(0), 32))
      h = jnp.zeros((32, 64, args.hidden))
      return tr.train_step(st, h, archs, x, x, jnp.float32(1.0), keys)

    init = tr.init(jax.random.split(jax.random.key(0), 32))
    jax.block_until_ready(init)
    t_init = _time(
      lambda tr=tr: tr.init(jax.random.split(jax.random.key(0), 32)), 1
    )
    t = _time(run, args.reps) - t_init
    name = "vmap of all 32" if batch == 32 else f"lax.map, groups of {batch}"
    rows.append(("32 cells", name, t, loop32 / t, "32 single-cell calls"))

  print(
    f"H = {args.hidden}, jax {jax.__version__}, {jax.devices()[0].device_kind}"
  )
  print()
  print("| what | how | s per step | speed-up | against |")
  print("|---|---|---|---|---|")
  for what, how, t, ratio, against in rows:
    print(f"| {what} | {how} | {t:.3f} | {ratio:.2f}× | {against} |")


if __name__ == "__main__":
  sys.exit(main())
