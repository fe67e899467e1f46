"""Issue 11: the search's steps as its epoch loop calls them, and alone.

Usage (from the project root, on an otherwise idle machine):

  python -m benchmarks.loop_bench --hidden=1000 --archs=4 --ctrl=5
  python -m benchmarks.loop_bench --hidden=200 --archs=6 --ctrl=50 \\
      --estimator=batch_grad_squared

Builds the search's own state and jitted steps (`enas_setup.init_state`,
`place_state`, `jit_steps`: the same donation and shardings) for
`enas_ptb:paper,wpl` at width H (N = 12, V = 10000, batch 64 × 35, random
tokens), then runs the epoch's sequence for `--archs` architectures: sample,
`--batches` shared steps, the err1 evaluation (`eval_one`, fetched as the
loop does), the Fisher update; then `--ctrl` controller steps and one
end-of-epoch evaluation of `eval_chunk` archs. Every call is timed to
completion. Then the Fisher update and the shared step are timed alone,
back to back, in the same process. Prints each call's time (the Fisher
update in the loop and alone: the bimodality issue 11 reports) and the
projection of one paper-structured epoch (61 archs × 7 batches, 61 Fisher
updates, 2000 controller steps, ⌈61 / eval_chunk⌉ evaluation calls) from
the medians.
"""

import argparse
import json
import os
import statistics
import sys
import time


def _ms(t):
  return f"{t * 1e3:.0f}"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--archs", type=int, default=4)
  ap.add_argument("--batches", type=int, default=7)
  ap.add_argument("--ctrl", type=int, default=5)
  ap.add_argument("--alone", type=int, default=4, help="Fisher calls alone")
  ap.add_argument("--estimator", default="batch_grad_squared")
  ap.add_argument("--json", action="store_true", help="print one JSON line")
  args = ap.parse_args()
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
  )
  import jax  # noqa: PLC0415 (after XLA_FLAGS)
  import numpy as np  # noqa: PLC0415

  from experiments import enas_ptb  # noqa: PLC0415
  from wpl_jax.enas import search_space  # noqa: PLC0415
  from wpl_jax.enas.train import setup as enas_setup  # noqa: PLC0415
  from wpl_jax.enas.train import steps as enas_steps

  c = enas_ptb.get_config("paper,wpl")
  c.model.hidden, c.model.vocab_size = args.hidden, 10000
  c.wpl.estimator = args.estimator
  b, t = c.data.batch_size, c.data.bptt
  model = enas_setup.make_model(c)
  steps = enas_steps.Steps(model=model, config=c)
  mesh = enas_setup.make_mesh(c)
  state = enas_setup.place_state(
    enas_setup.init_state(c, model, jax.random.key(0)),
    mesh,
  )
  fns = enas_setup.jit_steps(steps, state, mesh)
  rng = np.random.default_rng(0)
  batches = [
    rng.integers(0, 10000, (t + 1, b)).astype(np.int32) for _ in range(8)
  ]
  zero_h = np.zeros((b, args.hidden), np.float32)
  key = jax.random.key(1)
  lr, alpha = np.float32(20.0), np.float32(60.0)
  times = {"sample": [], "shared": [], "err1": [], "fisher": [], "ctrl": []}

  def timed(name, fn, *a, **kw):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*a, **kw))
    times[name].append(time.perf_counter() - t0)
    return out

  def fisher(arch, x, k):
    """The loop's Fisher call on batch x (the WPL state is donated)."""
    return fns["fisher"](
      state["shared"],
      state["wpl"],
      arch,
      x[:-1],
      x[1:],
      state["fisher_hidden"],
      alpha,
      key=k,
    )

  def arch_turn(a, record=True):
    k = jax.random.fold_in(key, a)
    arch = jax.tree.map(
      lambda x: x[0],
      timed("sample", fns["sample"], state["controller"].params, key=k, k=1),
    )
    for i in range(args.batches):
      x = batches[i % 8]
      state["shared"], state["train_hidden"], _ = timed(
        "shared",
        fns["shared"],
        state["shared"],
        state["wpl"],
        arch,
        x[:-1],
        x[1:],
        state["train_hidden"],
        lr,
        alpha,
        key=jax.random.fold_in(k, i),
      )
    x = batches[7]
    one = jax.tree.map(lambda v: v[None], arch)
    float(
      timed(
        "err1", fns["eval_one"], state["shared"], one, x[:-1], x[1:], zero_h
      )[0]
    )
    state["wpl"], state["fisher_hidden"] = timed("fisher", fisher, arch, x, k)
    jax.device_get(arch)
    if not record:
      for v in times.values():
        v.clear()
    return arch

  t_compile = time.perf_counter()
  arch = arch_turn(99_999, record=False)  # compiles shared, eval_one, fisher
  x = batches[0]
  state["controller"], state["ctrl_hidden"], _ = fns["ctrl"](
    state["controller"],
    state["shared"],
    x[:-1],
    x[1:],
    state["ctrl_hidden"],
    key=key,
  )
  archs = search_space.stack([arch] * c.search.eval_chunk)
  jax.block_until_ready(
    fns["eval_archs"](state["shared"], archs, x[:-1], x[1:], zero_h)
  )
  t_compile = time.perf_counter() - t_compile
  t_loop = time.perf_counter()
  for a in range(args.archs):
    arch = arch_turn(a)
  for i in range(args.ctrl):
    state["controller"], state["ctrl_hidden"], _ = timed(
      "ctrl",
      fns["ctrl"],
      state["controller"],
      state["shared"],
      batches[i % 8][:-1],
      batches[i % 8][1:],
      state["ctrl_hidden"],
      key=jax.random.fold_in(key, 10_000 + i),
    )
  t0 = time.perf_counter()
  jax.block_until_ready(
    fns["eval_archs"](state["shared"], archs, x[:-1], x[1:], zero_h)
  )
  t_eval = time.perf_counter() - t0
  t_loop = time.perf_counter() - t_loop
  in_loop = list(times["fisher"])
  alone = []
  for _ in range(args.alone):
    t0 = time.perf_counter()
    state["wpl"], state["fisher_hidden"] = jax.block_until_ready(
      fisher(arch, x, key)
    )
    alone.append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items() if v}
  epoch = (
    61 * 7 * med["shared"]
    + 61 * (med["sample"] + med["err1"] + med["fisher"])
    + 2000 * med["ctrl"]
    + -(-61 // c.search.eval_chunk) * t_eval
  )
  out = {
    "hidden": args.hidden,
    "estimator": args.estimator,
    "tunables": os.environ.get("GLIBC_TUNABLES"),
    "compile_s": t_compile,
    "loop_s": t_loop,
    "median_ms": {k: v * 1e3 for k, v in med.items()},
    "fisher_in_loop_ms": [v * 1e3 for v in in_loop],
    "fisher_alone_ms": [v * 1e3 for v in alone],
    "eval_chunk_ms": t_eval * 1e3,
    "paper_epoch_projected_s": epoch,
    "controller_share": 2000 * med["ctrl"] / epoch,
  }
  if args.json:
    print("RESULT " + json.dumps(out))
    return
  print(
    f"H={args.hidden} {args.estimator} (GLIBC_TUNABLES="
    f"{out['tunables']}): compile {t_compile:.1f} s, loop {t_loop:.1f} s"
  )
  for k, v in med.items():
    print(f"  {k:7s} median {v * 1e3:8.1f} ms over {len(times[k])} calls")
  print(f"  Fisher in the loop: {', '.join(map(_ms, in_loop))} ms")
  print(f"  Fisher alone:       {', '.join(map(_ms, alone))} ms")
  print(f"  eval_archs K={c.search.eval_chunk}: {t_eval * 1e3:.0f} ms")
  print(
    f"  one paper-structured epoch, projected: {epoch:.0f} s "
    f"(controller {100 * out['controller_share']:.0f}%)"
  )
  sys.stdout.flush()


if __name__ == "__main__":
  main()
