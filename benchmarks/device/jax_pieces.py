"""The paper-size ENAS search's pieces on whatever JAX device is up.

Usage (from the project root; the device run calls it, SMALL=1 shrinks it):

  python -m benchmarks.device.jax_pieces --precision=highest \\
      --hidden=1000 --reps=5 --time_limit=120 --jsonl=$OUT/results.jsonl

Builds the search's own state and jitted steps (`enas_setup.init_state`,
`place_state`, `jit_steps`: the same donation and shardings) for
`enas_ptb:paper,wpl` at width H (N = 12, V = 10000, batch 64 × 35, random
tokens) under `jax.default_matmul_precision(--precision)` ("highest":
exact float32; "tensorfloat32": TF32 matmuls where the device has them;
"default": the platform's own), then measures, in priority order:

1. the ceilings of this run: a large random float32 matmul (`--gemm` ³) and
   a chain of the shared step's own matmul shape (`--chain` dependent
   [64, H] × [H, 2H] products, each followed by the node's gate: what one
   node update costs when nothing else runs);
2. the shared step, the controller step (sample, score on a validation
   batch, REINFORCE), the reward evaluation (`eval_archs` at K = 1), the
   Fisher update (batch_grad_squared, the reference's estimator);
3. the K = 16 evaluation vmapped (`eval_vmap = 0`) and mapped one arch at a
   time (`eval_vmap = 1`, the CPU default);
4. the epoch's call order with its host syncs (sample, 7 shared steps, the
   err1 fetch, the Fisher update, per arch; then controller steps and one
   K = 16 evaluation), and the paper epoch projected from it (61 archs × 7
   shared steps + 61 × (sample + err1 + Fisher) + 2000 controller steps +
   ⌈61 / 16⌉ K = 16 evaluations).

Every piece is timed to completion (`block_until_ready`), `--reps` times
after one first call (whose time, compile included, is `first_call_s`).
A piece starts only if `--time_limit` seconds have not passed, so a slow
compile shortens the list instead of killing the process; each result is
appended to `--jsonl` as one JSON line as soon as it is measured. The
device's peak memory (`memory_stats()`, where the device reports it) ends
the list.
"""

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

T0 = time.monotonic()


def _args():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--precision", default="highest")
  ap.add_argument("--hidden", type=int, default=1000)
  ap.add_argument("--nodes", type=int, default=12)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--archs", type=int, default=3, help="archs in the epoch")
  ap.add_argument("--ctrl", type=int, default=10, help="ctrl steps in it")
  ap.add_argument(
    "--ctrl_k",
    type=int,
    default=5,
    help="also time the controller step at K archs per step (the "
    "reference's policy_batch_size is 5: the same forwards); 0 = skip",
  )
  ap.add_argument("--gemm", type=int, default=8192)
  ap.add_argument("--chain", type=int, default=1260)
  ap.add_argument(
    "--eval_vmap",
    type=int,
    default=-1,
    help="the search's eval_vmap (-1: 1 on CPU, 0 = all vmapped elsewhere)",
  )
  ap.add_argument(
    "--matmul_dtype",
    default="float32",
    help="the model's matmul_dtype (bfloat16: its large products on bf16 "
    "inputs, an opt-in)",
  )
  ap.add_argument("--time_limit", type=float, default=120.0)
  ap.add_argument("--jsonl", default="")
  return ap.parse_args()


class Recorder:
  """Appends rows to a JSONL file (and stdout) as they are measured."""

  def __init__(self, path: str, **common):
    self.path, self.common = path, common

  def __call__(self, **row) -> dict:
    row = {**self.common, **row, "t_s": round(time.monotonic() - T0, 1)}
    line = json.dumps(row)
    print(line, flush=True)
    if self.path:
      with open(self.path, "a") as f:
        f.write(line + "\n")
    return row


def main() -> None:
  args = _args()
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  jax.config.update("jax_default_matmul_precision", args.precision)
  from experiments import enas_ptb  # noqa: PLC0415
  from wpl_jax.enas import search_space  # noqa: PLC0415
  from wpl_jax.enas.train import setup as enas_setup  # noqa: PLC0415
  from wpl_jax.enas.train import steps as enas_steps

  dev = jax.devices()[0]
  rec = Recorder(
    args.jsonl,
    code="wpl_jax",
    platform=dev.platform,
    device=dev.device_kind,
    precision=args.precision,
    matmul_dtype=args.matmul_dtype,
    hidden=args.hidden,
    jax=jax.__version__,
  )
  deadline = T0 + args.time_limit

  def left() -> float:
    return deadline - time.monotonic()

  def timed(piece, call, reps=args.reps, work_flops=None, **extra):
    """`call()` once (first call), then `reps` times; records the row."""
    if left() <= 0:
      return rec(piece=piece, skipped="time limit")
    try:
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      first = time.perf_counter() - t0
      times = []
      for _ in range(reps):
        if left() <= 0 and times:
          break
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 (one piece's failure is a row)
      msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
      return rec(piece=piece, error=msg)
    med = statistics.median(times)
    row = dict(
      piece=piece,
      median_ms=med * 1e3,
      min_ms=min(times) * 1e3,
      reps=len(times),
      first_call_s=first,
    )
    if work_flops:
      row["tflops"] = work_flops / med / 1e12
    return rec(**row, **extra)

  # 1. Ceilings of this run.
  rng = np.random.default_rng(0)
  n = args.gemm
  a = jnp.asarray(rng.standard_normal((n, n), np.float32))
  b = jnp.asarray(rng.standard_normal((n, n), np.float32))
  gemm = jax.jit(jnp.matmul)
  g = timed(
    "ceiling_gemm", lambda: gemm(a, b), reps=10, work_flops=2 * n**3
  )  # the lambda holds a and b until here
  a = b = None
  h_dim, batch = args.hidden, 64
  h0 = jnp.asarray(rng.standard_normal((batch, h_dim), np.float32))
  w = jnp.asarray(
    rng.standard_normal((h_dim, 2 * h_dim), np.float32) / math.sqrt(h_dim)
  )

  @jax.jit
  def chain(h, w):
    def node(_, h):
      z = h @ w
      c = jax.nn.sigmoid(z[:, :h_dim])
      return c * jnp.tanh(z[:, h_dim:]) + (1 - c) * h

    return jax.lax.fori_loop(0, args.chain, node, h)

  chain_flops = args.chain * 2 * batch * h_dim * 2 * h_dim
  ch = timed(
    "ceiling_own_shape_chain",
    lambda: chain(h0, w),
    work_flops=chain_flops,
    matmuls=args.chain,
  )

  # 2. The search's own state and steps.
  c = enas_ptb.get_config("paper,wpl")
  c.model.hidden, c.model.num_nodes, c.model.vocab_size = (
    args.hidden,
    args.nodes,
    10000,
  )
  c.model.matmul_dtype = args.matmul_dtype
  c.search.eval_chunk = 16
  c.search.eval_vmap = (
    args.eval_vmap if args.eval_vmap >= 0 else int(dev.platform == "cpu")
  )
  bsz, bptt = c.data.batch_size, c.data.bptt
  model = enas_setup.make_model(c)
  steps = enas_steps.Steps(model=model, config=c)
  mesh = enas_setup.make_mesh(c)
  state = enas_setup.place_state(
    enas_setup.init_state(c, model, jax.random.key(0)),
    mesh,
  )
  fns = enas_setup.jit_steps(steps, state, mesh)
  batches = [
    rng.integers(0, 10000, (bptt + 1, bsz)).astype(np.int32) for _ in range(8)
  ]
  zero_h = np.zeros((bsz, args.hidden), np.float32)
  key = jax.random.key(1)
  lr, alpha = np.float32(20.0), np.float32(60.0)
  arch = jax.tree.map(
    lambda x: x[0], fns["sample"](state["controller"].params, key=key, k=1)
  )
  one = jax.tree.map(lambda v: v[None], arch)
  archs16 = search_space.stack([arch] * 16)
  x = batches[0]
  count = [0]

  def shared():
    count[0] += 1
    xb = batches[count[0] % 8]
    state["shared"], state["train_hidden"], loss = fns["shared"](
      state["shared"],
      state["wpl"],
      arch,
      xb[:-1],
      xb[1:],
      state["train_hidden"],
      lr,
      alpha,
      key=jax.random.fold_in(key, count[0]),
    )
    return loss

  def fisher():
    state["wpl"], state["fisher_hidden"] = fns["fisher"](
      state["shared"],
      state["wpl"],
      arch,
      x[:-1],
      x[1:],
      state["fisher_hidden"],
      alpha,
      key=key,
    )
    return state["wpl"]

  def ctrl_with(step):
    """One controller step of the jitted `step` on the next batch."""

    def call():
      count[0] += 1
      xb = batches[count[0] % 8]
      state["controller"], state["ctrl_hidden"], out = step(
        state["controller"],
        state["shared"],
        xb[:-1],
        xb[1:],
        state["ctrl_hidden"],
        key=jax.random.fold_in(key, count[0]),
      )
      return out

    return call

  ctrl = ctrl_with(fns["ctrl"])

  def reward():
    return fns["eval_one"](state["shared"], one, x[:-1], x[1:], zero_h)

  tok = bsz * bptt
  for piece, call in (
    ("shared_step", shared),
    ("controller_step", ctrl),
    ("reward_eval", reward),
    ("fisher_update", fisher),
  ):
    timed(piece, call, tokens=tok)

  if args.ctrl_k > 1:
    # The controller step scoring K sampled cells on the validation batch
    # (the reference's policy_batch_size = 5 runs 5 forwards per step).
    ck = copy.deepcopy(c)
    ck.controller.batch_size = args.ctrl_k
    ctrl_k_fn = jax.jit(
      enas_steps.Steps(model=model, config=ck).controller_step
    )

    ctrl_k = ctrl_with(ctrl_k_fn)
    timed(f"controller_step_k{args.ctrl_k}", ctrl_k, tokens=tok, k=args.ctrl_k)

  # 3. K = 16 evaluations, vmapped and mapped one arch at a time.
  for group, name in ((0, "eval16_vmapped"), (1, "eval16_mapped")):
    fn = jax.jit(dataclasses_replace(steps, eval_vmap=group).eval_archs)
    timed(
      name,
      lambda fn=fn: fn(state["shared"], archs16, x[:-1], x[1:], zero_h),
      reps=max(2, args.reps // 2),
    )

  # 4. The epoch's call order, host syncs included (as the search loop).
  if left() > 0:
    try:
      epoch_order(args, fns, state, batches, key, lr, alpha, zero_h, rec)
    except Exception as e:  # noqa: BLE001
      rec(piece="epoch_order", error=f"{type(e).__name__}: {e}"[:300])
  stats = dev.memory_stats() or {}
  rec(
    piece="device_memory",
    peak_gb=stats.get("peak_bytes_in_use", 0) / 2**30 or None,
    limit_gb=stats.get("bytes_limit", 0) / 2**30 or None,
  )
  if g.get("tflops") and ch.get("tflops"):
    rec(piece="ceilings", gemm_tflops=g["tflops"], chain_tflops=ch["tflops"])
  sys.stdout.flush()


def dataclasses_replace(obj, **kw):
  import dataclasses  # noqa: PLC0415

  return dataclasses.replace(obj, **kw)


def epoch_order(args, fns, state, batches, key, lr, alpha, zero_h, rec):
  """A few arch turns and controller steps in the loop's order; projection."""
  import jax  # noqa: PLC0415

  from wpl_jax.enas import search_space  # noqa: PLC0415

  def turn(a):
    k = jax.random.fold_in(key, 1000 + a)
    arch = jax.tree.map(
      lambda v: v[0], fns["sample"](state["controller"].params, key=k, k=1)
    )
    for i in range(7):
      x = batches[i % 8]
      state["shared"], state["train_hidden"], _ = fns["shared"](
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
    float(fns["eval_one"](state["shared"], one, x[:-1], x[1:], zero_h)[0])
    state["wpl"], state["fisher_hidden"] = fns["fisher"](
      state["shared"],
      state["wpl"],
      arch,
      x[:-1],
      x[1:],
      state["fisher_hidden"],
      alpha,
      key=k,
    )
    jax.device_get(arch)
    return arch

  arch = turn(0)  # anything not yet compiled (the search's K = 16 eval too)
  archs16 = search_space.stack([arch] * 16)
  x = batches[0]
  jax.block_until_ready(
    fns["eval_archs"](state["shared"], archs16, x[:-1], x[1:], zero_h)
  )
  t0 = time.perf_counter()
  for a in range(args.archs):
    arch = turn(1 + a)
  jax.block_until_ready(state["wpl"])
  per_arch = (time.perf_counter() - t0) / args.archs
  t0 = time.perf_counter()
  for i in range(args.ctrl):
    x = batches[i % 8]
    state["controller"], state["ctrl_hidden"], out = fns["ctrl"](
      state["controller"],
      state["shared"],
      x[:-1],
      x[1:],
      state["ctrl_hidden"],
      key=jax.random.fold_in(key, 5000 + i),
    )
  jax.block_until_ready(out)
  per_ctrl = (time.perf_counter() - t0) / args.ctrl
  archs16 = search_space.stack([arch] * 16)
  t0 = time.perf_counter()
  jax.block_until_ready(
    fns["eval_archs"](state["shared"], archs16, x[:-1], x[1:], zero_h)
  )
  per_eval = time.perf_counter() - t0
  epoch = 61 * per_arch + 2000 * per_ctrl + math.ceil(61 / 16) * per_eval
  rec(
    piece="epoch_order",
    arch_turn_ms=per_arch * 1e3,
    ctrl_in_loop_ms=per_ctrl * 1e3,
    eval16_in_loop_ms=per_eval * 1e3,
    archs=args.archs,
    ctrl_steps=args.ctrl,
    paper_epoch_projected_s=epoch,
    paper_search_150_epochs_projected_h=150 * epoch / 3600,
    basis="61 arch turns (sample, 7 shared, err1 fetch, Fisher) + 2000 "
    "controller steps + 4 K=16 evaluations, each as measured in the loop",
  )


if __name__ == "__main__":
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  main()
