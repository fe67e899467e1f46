"""Issue 11: the ENAS search's pieces against the machine's GEMM ceiling.

Usage (from the project root, on an otherwise idle machine):

  python -m benchmarks.ceiling --hidden=16,200,400,1000 --reps=5 \\
      [--root=DIR] [--label=after] [--out=benchmarks/out/ceiling.json] \\
      [--platform=cpu|gpu|cuda|tpu] [--precision=highest] [--gemm=N]

For each width H (N = 12 nodes, V = 10000, batch 64 × 35, WPL on; the
`enas_ptb:cpu,wpl` config at that size) one fresh process, importing the
checkout at `--root` (default: this one; a worktree of an older commit gives
the "before" column), times

* the shared training step (forward, backward, WPL penalty, optimizer),
* the Fisher update after an architecture (`--estimators`: the reference's
  batch_grad_squared and the exact per_example),
* the controller step (sample one cell, score it on a validation batch,
  REINFORCE update) and the reward evaluation alone (`eval_archs`, K = 1),

and in the same process, first, `jnp.dot(m, m)` of an n × n float32 matrix
of standard normal data (`ceiling_matrix`), the GEMM ceiling: n = 2048 on CPU
and 8192 elsewhere (`--gemm` overrides; at 2048 a GPU would measure launch
latency, not arithmetic). The data is random, not `jnp.ones` as before
(constant operands run faster than real data on a GPU); on CPU this is the
only change to what is measured, so the stored CPU results stay comparable.
Each piece's matmul FLOPs are counted from its jaxpr (every `dot_general`,
scan bodies times their length; `matmul_flops`), so GFLOP/s ÷ the ceiling's
GFLOP/s is the fraction of the ceiling the piece reaches. The process also
reports its peak memory (after the shared and Fisher steps, before anything
else is built, and at the end) and the minor page faults per call of each
piece: the peak RSS on CPU; elsewhere the device's `peak_bytes_in_use`
(`memory_stats()`, where the device reports it; it includes the ceiling's
n × n input and output, and `peak_device_gb_ceiling` says how much that
was), with the host RSS kept alongside.

The workers inherit JAX_PLATFORMS from the caller unless `--platform` sets
it, and each row records the platform and device kind it actually ran on.
Every matmul, the ceiling's and the pieces', runs at `--precision`
(`jax_default_matmul_precision`, set in the worker before anything is
traced; default "highest", exact float32, which is what XLA:CPU does
anyway; "tensorfloat32" or "default" allow TF32 on a GPU). XLA runs with
`--xla_cpu_multi_thread_eigen=false` (as `benchmarks.run`; ignored off
CPU); GLIBC_TUNABLES is passed through, so the launch setting main.py uses
can be compared with none (`--tunables=`).
"""

import argparse
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parents[1]
PIECES = ("shared_step", "fisher_step", "controller_step", "reward_eval")
PRECISION = "highest"


def matmul_flops(closed_jaxpr) -> int:
  """2·M·N·K summed over every `dot_general` of a (closed) jaxpr.

  Scan bodies count `length` times, a `cond` its dearest branch; other
  sub-jaxprs (jit, custom_vjp/jvp, checkpoint) once. A `while` loop has no
  static trip count and raises.
  """
  jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[i] for i in lc)
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * k
    elif name == "scan":
      total += eqn.params["length"] * matmul_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(matmul_flops(b) for b in eqn.params["branches"])
    elif name == "while":
      if matmul_flops(eqn.params["body_jaxpr"]):
        raise ValueError("a while loop with matmuls: trip count unknown")
    else:
      for v in eqn.params.values():
        if hasattr(v, "eqns") or hasattr(getattr(v, "jaxpr", None), "eqns"):
          total += matmul_flops(v)
  return total


def _faults() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ceiling_size(platform: str) -> int:
  """The ceiling GEMM's n: 2048 on CPU (as before), 8192 elsewhere."""
  return 2048 if platform == "cpu" else 8192


def ceiling_matrix(n: int, seed: int = 0) -> np.ndarray:
  """An n × n float32 matrix of standard normal data (the ceiling's input)."""
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, n), dtype=np.float32)


def set_precision(precision: str) -> None:
  """Sets JAX's default matmul precision (raises on an unknown name)."""
  import jax  # noqa: PLC0415

  jax.config.update("jax_default_matmul_precision", precision)


def _device_peak_gb(jax) -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def worker(
  hidden: int,
  estimator: str,
  reps: int,
  root: str,
  precision: str = PRECISION,
  gemm: int = 0,
) -> dict:
  """Measures one size in this process (imports the checkout at `root`)."""
  sys.path.insert(0, root)
  import jax  # noqa: PLC0415 (after the path and XLA flags are set)
  import jax.numpy as jnp  # noqa: PLC0415

  set_precision(precision)  # before anything is traced
  from benchmarks import enas_bench  # noqa: PLC0415

  dev = jax.devices()[0]
  on_cpu = dev.platform == "cpu"
  n = gemm or ceiling_size(dev.platform)

  c = enas_bench.config_at("large", wpl=True)
  c.model.hidden, c.model.num_nodes = hidden, 12
  c.wpl.estimator = estimator
  s = enas_bench.setup(c)
  steps = s["steps"]
  arch = jax.tree.map(lambda x: x[0], s["archs"])
  x, y, h, key = s["inputs"], s["targets"], s["hidden"], s["key"]
  one = jax.tree.map(lambda a: a[:1], s["archs"])
  calls = {
    "shared_step": (
      lambda sh, w, a, x, y, h, k: steps.shared_step(
        sh, w, a, x, y, h, jnp.float32(0.1), jnp.float32(1.0), key=k
      ),
      (s["shared"], s["wpl"], arch, x, y, h, key),
    ),
    "fisher_step": (
      lambda sh, w, a, x, y, h, k: steps.fisher_step(
        sh, w, a, x, y, h, jnp.float32(2.0), key=k
      ),
      (s["shared"], s["wpl"], arch, x, y, h, key),
    ),
    "controller_step": (
      lambda ct, sh, x, y, h, k: steps.controller_step(ct, sh, x, y, h, key=k),
      (s["ctrl"], s["shared"], x, y, h, key),
    ),
    "reward_eval": (steps.eval_archs, (s["shared"], one, x, y, h)),
  }
  # The GEMM ceiling, first, in this process: m @ m as before, m random.
  m = jnp.asarray(ceiling_matrix(n))
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(m, m))
  best = float("inf")
  for _ in range(max(reps, 5)):
    t0 = time.perf_counter()
    jax.block_until_ready(dot(m, m))
    best = min(best, time.perf_counter() - t0)
  del m
  out = {
    "hidden": hidden,
    "estimator": estimator,
    "platform": dev.platform,
    "device_kind": dev.device_kind,
    "precision": precision,
    "ceiling_n": n,
    "ceiling_gflops": 2 * n**3 / best / 1e9,
    "pieces": {},
  }
  if not on_cpu and _device_peak_gb(jax) is not None:
    out["peak_device_gb_ceiling"] = _device_peak_gb(jax)
  for name, (fn, args) in calls.items():
    flops = matmul_flops(jax.make_jaxpr(fn)(*args))
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))  # warm-up
    times, f0 = [], _faults()
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - t0)
    faults = (_faults() - f0) / reps
    med = sorted(times)[len(times) // 2]
    out["pieces"][name] = {
      "median_ms": med * 1e3,
      "min_ms": min(times) * 1e3,
      "reps": reps,
      "matmul_gflop": flops / 1e9,
      "gflops": flops / med / 1e9,
      "fraction": flops / med / 1e9 / out["ceiling_gflops"],
      "faults_per_call": faults,
    }
    del compiled
    if name == "fisher_step":
      out["peak_rss_gb_train"] = _peak_rss_gb()
      if not on_cpu and _device_peak_gb(jax) is not None:
        out["peak_device_gb_train"] = _device_peak_gb(jax)
  out["peak_rss_gb"] = _peak_rss_gb()
  if not on_cpu and _device_peak_gb(jax) is not None:
    out["peak_device_gb"] = _device_peak_gb(jax)
  out["load"] = os.getloadavg()[0]
  return out


def _commit(root: str) -> str:
  r = subprocess.run(
    ["git", "-C", root, "rev-parse", "--short", "HEAD"],
    capture_output=True,
    text=True,
    check=False,
  )
  dirty = subprocess.run(
    ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
    capture_output=True,
    text=True,
    check=False,
  ).stdout.strip()
  return r.stdout.strip() + ("+dirty" if dirty else "")


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", default="16,200,400,1000")
  ap.add_argument("--estimators", default="batch_grad_squared,per_example")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--root", default=str(HERE), help="checkout to import")
  ap.add_argument("--label", default="", help="column label (default: commit)")
  ap.add_argument(
    "--tunables",
    default=None,
    help="GLIBC_TUNABLES for the workers (default: inherited)",
  )
  ap.add_argument(
    "--platform",
    choices=("cpu", "gpu", "cuda", "tpu"),
    default=None,
    help="JAX_PLATFORMS of the workers (default: the caller's environment)",
  )
  ap.add_argument(
    "--precision",
    default=PRECISION,
    help="jax_default_matmul_precision of the workers, ceiling and pieces "
    "alike (default: highest, exact float32)",
  )
  ap.add_argument(
    "--gemm",
    type=int,
    default=0,
    help="the ceiling's n (default 0: 2048 on CPU, 8192 elsewhere)",
  )
  ap.add_argument("--out", type=pathlib.Path, default=None, help="JSON lines")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  return ap


def worker_cmd(
  hidden: str,
  estimator: str,
  reps: int,
  root: str,
  precision: str = PRECISION,
  gemm: int = 0,
) -> list[str]:
  """The command line of one worker process."""
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve())]
  cmd += ["--worker", f"--hidden={hidden}", f"--estimators={estimator}"]
  cmd += [f"--reps={reps}", f"--root={root}"]
  cmd += [f"--precision={precision}", f"--gemm={gemm}"]
  return cmd


def main() -> None:
  args = parser().parse_args()
  if args.worker:
    # Printed here, not through `benchmarks.common`: the worker imports
    # the `benchmarks` package of the checkout at --root.
    r = worker(
      int(args.hidden),
      args.estimators,
      args.reps,
      args.root,
      args.precision,
      args.gemm,
    )
    print("RESULT " + json.dumps(r), flush=True)
    return
  from benchmarks import common  # noqa: PLC0415 (parent process only)

  set_precision(args.precision)  # an unknown name fails here, not per worker
  env = common.worker_env(args.tunables, platform=args.platform)
  label = args.label or _commit(args.root)
  rows = []
  for est in args.estimators.split(","):
    for hidden in args.hidden.split(","):
      cmd = worker_cmd(
        hidden, est, args.reps, args.root, args.precision, args.gemm
      )
      print(f"[{label}] H={hidden} {est} ...", file=sys.stderr, flush=True)
      r = common.run_worker(cmd, env, f"H={hidden} {est}")
      r["label"] = label
      r["commit"] = _commit(args.root)
      r["tunables"] = env.get("GLIBC_TUNABLES", "")
      rows.append(r)
      _print_row(r)
      if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
          f.write(json.dumps(r) + "\n")


def _print_row(r: dict) -> None:
  kind = r["device_kind"]
  device = r["platform"] + ("" if kind.lower() == r["platform"] else f" {kind}")
  if "peak_device_gb" in r:
    mem = (
      f"peak device memory {r['peak_device_gb']:.2f} GB (after shared+Fisher "
      f"{r['peak_device_gb_train']:.2f}, ceiling "
      f"{r['peak_device_gb_ceiling']:.2f}), host RSS {r['peak_rss_gb']:.2f} GB"
    )
  else:
    mem = (
      f"peak RSS {r['peak_rss_gb']:.2f} GB "
      f"(after shared+Fisher {r['peak_rss_gb_train']:.2f})"
    )
  n = r["ceiling_n"]
  print(
    f"{r['label']} H={r['hidden']} {r['estimator']} [{device}, "
    f"{r['precision']}]: ceiling {r['ceiling_gflops']:.0f} GFLOP/s "
    f"({n}x{n}x{n} f32), {mem}, load {r['load']:.1f}"
  )
  for name in PIECES:
    p = r["pieces"][name]
    print(
      f"  {name:16s} {p['median_ms']:9.1f} ms  {p['matmul_gflop']:8.2f} GFLOP"
      f"  {p['gflops']:6.1f} GFLOP/s  {100 * p['fraction']:5.1f}% of ceiling"
      f"  {p['faults_per_call']:9.0f} faults/call"
    )
  sys.stdout.flush()


if __name__ == "__main__":
  main()
