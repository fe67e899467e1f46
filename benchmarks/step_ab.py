"""Issue 11 A/B: ENAS shared step and Fisher update, one process per checkout.

Usage (2-core CPU, one XLA thread; run on an otherwise idle machine):

  python benchmarks/step_ab.py --hidden=1000 --reps=5 --what=matmul_dtype \
      --estimator=batch_grad_squared
      shared_step and fisher_step with the model's large products in
      float32 and in bfloat16 (`model.matmul_dtype`, same process)
  python benchmarks/step_ab.py --hidden=200 --reps=5 --what=grad
      shared_step and fisher_step with autodiff vs the edges' gradient
      after the scan (`search.grad_after_scan_from` 0 and 1, same process)
  python benchmarks/step_ab.py --root=DIR --hidden=200 --reps=5 \\
      --what=fisher --estimator=per_example
      fisher_step and shared_step of the checkout at DIR (default: this
      one), timed alternately; prints their ratio. For before/after, run it
      once with --root=<a worktree of the old commit> and once without.
  python benchmarks/step_ab.py --hidden=1000 --reps=5 --what=edges_const
      jax.grad of the training loss, and the same with the cell's edge
      matrices held constant: the share of the edges' weight gradients
  python benchmarks/step_ab.py --hidden=200 --reps=5 --what=ce_chunk \\
      --chunks=0,256,560
      shared_step with the whole [T, B, V] logits (0) and with the fused
      chunked decoder loss at each chunk size (same process)
  python benchmarks/step_ab.py --hidden=200 --reps=9 --what=unroll
      shared_step with the node scan rolled (node_unroll=1) and fully
      unrolled (0, the default), and each one's first call (compile)
  python benchmarks/step_ab.py --hidden=200 --reps=9 --what=eval_vmap
      controller_step and eval_archs on K = 1 arch as shipped (no vmap for
      one arch) and with the vmap over the one arch, as before
  python benchmarks/step_ab.py --hidden=200 --reps=15 --what=highway
      shared_step and fisher_step with the node update's hand-written VJP
      (shipped) and with autodiff of the same formula, and XLA's temporary
      memory of each compiled step
  python benchmarks/step_ab.py --hidden=200 --reps=7 --what=pieces
      the training step's two halves jitted alone (the cell's recurrence
      forward + backward, the chunked decoder forward + backward), the
      same number of bare [B, H] x [H, 2H] matmuls chained with a tanh
      (forward + backward), and `jnp.dot` 2048³: GFLOP/s of each, so the
      step's rate can be read against what XLA gets on its own shapes
  python benchmarks/step_ab.py --hidden=200 --reps=9 --what=precision \\
      --estimator=batch_grad_squared
      shared_step and fisher_step at the platform's default matmul
      precision and at "highest" (config.precision = "float32"), same
      process, alternately
  python benchmarks/step_ab.py --hidden=1000 --reps=3 --what=einsum
      the 35 × 11 edge weight-gradient products three ways (accumulated
      over steps, one einsum, a loop over edges) and `jnp.dot` 2048³, the
      GEMM ceiling, in GFLOP/s

Sizes: `enas_ptb:cpu,wpl` with N = 12 nodes, V = 10000, batch 64 × 35.
Prints medians in ms (`benchmarks/run.py` is the full suite).
"""

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault(
  "XLA_FLAGS",
  "--xla_cpu_multi_thread_eigen=false",
)


def _median_ms(values):
  return sorted(values)[len(values) // 2] * 1e3


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  here = pathlib.Path(__file__).resolve().parents[1]
  ap.add_argument("--root", default=str(here), help="checkout to import")
  ap.add_argument("--hidden", type=int, default=200)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument(
    "--what",
    choices=(
      "grad",
      "fisher",
      "matmul_dtype",
      "edges_const",
      "einsum",
      "ce_chunk",
      "unroll",
      "eval_vmap",
      "highway",
      "pieces",
      "precision",
    ),
    default="grad",
  )
  ap.add_argument("--estimator", default="per_example")
  ap.add_argument(
    "--matmul_dtype",
    default="float32",
    help="model.matmul_dtype of every case (--what=matmul_dtype sets both)",
  )
  ap.add_argument(
    "--chunks", default="0,256,560", help="ce_chunk values for --what=ce_chunk"
  )
  args = ap.parse_args()
  sys.path.insert(0, args.root)
  import jax  # noqa: PLC0415 (after the path and XLA flags are set)
  import jax.numpy as jnp  # noqa: PLC0415

  from benchmarks import enas_bench  # noqa: PLC0415

  def build(**model):
    c = enas_bench.config_at("large", wpl=True)
    c.model.hidden, c.model.num_nodes = args.hidden, 12
    c.wpl.estimator = args.estimator
    c.model.matmul_dtype = args.matmul_dtype
    for k, v in model.items():
      (c.search if k == "grad_after_scan_from" else c.model)[k] = v
    s = enas_bench.setup(c)
    arch = jax.tree.map(lambda x: x[0], s["archs"])
    batch = (arch, s["inputs"], s["targets"], s["hidden"])
    step = jax.jit(s["steps"].shared_step)
    step_args = (s["shared"], s["wpl"], *batch, jnp.float32(0.1))
    step_args += (jnp.float32(1.0),)
    fisher = jax.jit(s["steps"].fisher_step)
    fisher_args = (s["shared"], s["wpl"], *batch, jnp.float32(2.0))
    return {
      "step": lambda: step(*step_args, key=s["key"]),
      "fisher": lambda: fisher(*fisher_args, key=s["key"]),
      "temp_mb": lambda: {
        name: fn.lower(*a, key=s["key"])
        .compile()
        .memory_analysis()
        .temp_size_in_bytes
        / 1e6
        for name, fn, a in (
          ("step", step, step_args),
          ("fisher", fisher, fisher_args),
        )
      },
    }

  if args.what == "pieces":
    _pieces(jax, jnp, enas_bench, args.hidden, args.reps, args.matmul_dtype)
    return
  if args.what == "einsum":
    _einsum(jax, jnp, args.hidden, args.reps)
    return
  if args.what == "edges_const":
    c = enas_bench.config_at("large", wpl=True)
    c.model.hidden, c.model.num_nodes = args.hidden, 12
    s = enas_bench.setup(c)
    arch = jax.tree.map(lambda x: x[0], s["archs"])
    sh = s["shared"]

    def grad_of(held):
      def loss(params):
        if held:
          cell = jax.tree.map(jax.lax.stop_gradient, params["cell"])
          params = {**params, "cell": cell}
        ce, _, _ = s["steps"].train_ce(
          params,
          sh.batch_stats,
          s["inputs"],
          s["targets"],
          s["hidden"],
          arch,
          s["key"],
        )
        return ce

      f = jax.jit(jax.grad(loss))
      return lambda: f(sh.params)

    cases = {"grad": grad_of(False), "grad, edges constant": grad_of(True)}
  elif args.what == "ce_chunk":
    cases = {
      f"shared_step ce_chunk={c}": build(ce_chunk=int(c))["step"]
      for c in args.chunks.split(",")
    }
  elif args.what == "unroll":
    cases = {}
    for u in (1, 0):  # config 0 = the node scan fully unrolled
      fns = build(node_unroll=u)
      for name in ("step", "fisher"):
        t0 = time.perf_counter()
        jax.block_until_ready(fns[name]())  # compiles
        print(
          f"node_unroll={u} {name}: first call (compile) "
          f"{time.perf_counter() - t0:.1f} s"
        )
      cases[f"shared_step node_unroll={u}"] = fns["step"]
  elif args.what == "eval_vmap":
    cases = _eval_vmap_cases(jax, jnp, enas_bench, args.hidden)
  elif args.what == "highway":
    from wpl_jax.enas import supernet

    hand = supernet.highway
    cases = {}
    for name, highway in (
      ("autodiff", lambda z, h, a: supernet.highway_parts(z, h, a)[0]),
      ("custom_vjp", hand),
    ):
      supernet.highway = highway
      fns = build()
      for k in ("step", "fisher"):
        jax.block_until_ready(fns[k]())  # traced with this node update
      print(f"{name}: XLA temporary memory (MB) {fns['temp_mb']()}")
      cases[f"shared_step {name}"] = fns["step"]
      cases[f"fisher_step {name}"] = fns["fisher"]
    supernet.highway = hand
  elif args.what == "precision":
    # Each case is traced (and compiled) under its own matmul precision:
    # the platform's default and config.precision's "float32" (highest).
    cases = {}
    for prec in ("default", "highest"):
      fns = build()
      with jax.default_matmul_precision(prec):
        jax.block_until_ready(fns["step"]())
        jax.block_until_ready(fns["fisher"]())

      def run(fn, prec=prec):
        with jax.default_matmul_precision(prec):
          return fn()

      cases[f"shared_step precision={prec}"] = lambda f=fns["step"], r=run: r(f)
      cases[f"fisher_step precision={prec}"] = lambda f=fns["fisher"], r=run: r(
        f
      )
  elif args.what == "matmul_dtype":
    # The model's large products in float32 (default) and bfloat16.
    cases = {}
    for dtype in ("float32", "bfloat16"):
      fns = build(matmul_dtype=dtype)
      cases[f"shared_step {dtype}"] = fns["step"]
      cases[f"fisher_step {dtype}"] = fns["fisher"]
  elif args.what == "grad":
    plain, tapped = build(grad_after_scan_from=0), build(grad_after_scan_from=1)
    cases = {
      "shared_step autodiff": plain["step"],
      "shared_step tapped_grad": tapped["step"],
      # the tapped gradient reaches the Fisher under batch_grad_squared only
      "fisher_step autodiff": plain["fisher"],
      "fisher_step tapped_grad": tapped["fisher"],
    }
  else:
    fns = build()
    cases = {"fisher_step": fns["fisher"], "shared_step": fns["step"]}
  for f in cases.values():
    jax.block_until_ready(f())
  times = {k: [] for k in cases}
  for _ in range(args.reps):
    for k, f in cases.items():
      t = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - t)
  base = None
  for k, v in times.items():
    m = _median_ms(v)
    base = base or m
    print(
      f"{pathlib.Path(args.root).name} H={args.hidden} {k}: median "
      f"{m:.0f} ms, min {min(v) * 1e3:.0f} ms, {m / base:.2f}x the first row"
    )


def _pieces(jax, jnp, enas_bench, hidden: int, reps: int, dtype: str) -> None:
  """GFLOP/s of the step's halves, a bare matmul chain and the ceiling
  (the step's halves with `model.matmul_dtype = dtype`; the chain and the
  ceiling in float32)."""
  from benchmarks.ceiling import matmul_flops  # noqa: PLC0415
  from wpl_jax.enas import losses  # noqa: PLC0415

  c = enas_bench.config_at("large", wpl=True)
  c.model.hidden, c.model.num_nodes = hidden, 12
  c.model.matmul_dtype = dtype
  s = enas_bench.setup(c)
  st, sh, key = s["steps"], s["shared"], s["key"]
  arch = jax.tree.map(lambda x: x[0], s["archs"])
  x, y, h = s["inputs"], s["targets"], s["hidden"]
  t, b = x.shape
  probe = jax.random.normal(jax.random.key(1), (t, b, hidden))

  def recurrence(p):  # cell forward + backward, no decoder
    out, _, _ = st.train_forward(
      p, sh.batch_stats, x, h, arch, key, decode=False
    )
    return jnp.sum(out * probe)

  def decoder(p, o):
    return losses.chunked_nll_sum(
      p, o, y, chunk=c.model.ce_chunk, matmul_dtype=dtype
    )

  n_mm = t * c.model.num_nodes  # node 0's recurrent matmul + 11 edges
  w = 0.01 * jax.random.normal(jax.random.key(2), (n_mm, hidden, 2 * hidden))

  def chain(w):
    def body(hh, w_j):
      return jnp.tanh((hh @ w_j)[:, :hidden]), None

    return jnp.sum(jax.lax.scan(body, h + 0.1, w)[0])

  m = jnp.ones((2048, 2048), jnp.float32)
  cases = {
    "training step": (
      lambda *a: st.shared_step(*a, jnp.float32(0.1), jnp.float32(1), key=key),
      (sh, s["wpl"], arch, x, y, h),
    ),
    "recurrence fwd+bwd": (jax.grad(recurrence), (sh.params,)),
    "decoder fwd+bwd": (jax.grad(decoder, argnums=(0, 1)), (sh.params, probe)),
    f"{n_mm} bare matmuls fwd+bwd": (jax.grad(chain), (w,)),
    "jnp.dot 2048³ (ceiling)": (jnp.dot, (m, m)),
  }
  for name, (fn, fn_args) in cases.items():
    flops = matmul_flops(jax.make_jaxpr(fn)(*fn_args))
    f = jax.jit(fn)
    jax.block_until_ready(f(*fn_args))
    times = []
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(f(*fn_args))
      times.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    print(
      f"H={hidden} {name}: median {med * 1e3:.0f} ms, "
      f"{flops / 1e9:.2f} GFLOP, {flops / med / 1e9:.0f} GFLOP/s"
    )


def _eval_vmap_cases(jax, jnp, enas_bench, hidden: int) -> dict:
  """controller_step / eval_archs at K = 1: as shipped, and vmapped."""
  from wpl_jax.enas.train import steps as enas_steps  # noqa: PLC0415

  class VmapSteps(enas_steps.Steps):
    """`eval_many` as before: a vmap even over one arch."""

    def eval_many(self, shared, archs, inputs_TxB, targets_TxB, hidden_BxH):
      variables = {"params": shared.params, "batch_stats": shared.batch_stats}

      def one(arch):
        total, new_hidden = self._eval_nll_sum(
          variables, arch, inputs_TxB, targets_TxB, hidden_BxH
        )
        return jnp.exp(total / targets_TxB.size), new_hidden

      return jax.vmap(one)(archs)

  c = enas_bench.config_at("large", wpl=True)
  c.model.hidden, c.model.num_nodes = hidden, 12
  s = enas_bench.setup(c)
  one = jax.tree.map(lambda a: a[:1], s["archs"])
  batch = (s["inputs"], s["targets"], s["hidden"])
  cases = {}
  for name, steps in (
    ("shipped", s["steps"]),
    ("vmapped", VmapSteps(s["model"], c)),
  ):
    ctrl = jax.jit(steps.controller_step)
    ev = jax.jit(steps.eval_archs)
    cases[f"controller_step {name}"] = lambda ctrl=ctrl: ctrl(
      s["ctrl"], s["shared"], *batch, key=s["key"]
    )
    cases[f"eval_archs K=1 {name}"] = lambda ev=ev: ev(s["shared"], one, *batch)
  return cases


def _einsum(jax, jnp, hidden: int, reps: int) -> None:
  """GFLOP/s of the edges' weight-gradient products and of `jnp.dot`."""
  t, n, b, h = 35, 11, 64, hidden
  a, g = jnp.ones((t, n, b, h)), jnp.ones((t, n, b, 2 * h))

  def accumulate(a, g):
    step = lambda i, acc: acc + jnp.einsum("nbi,nbo->nio", a[i], g[i])
    return jax.lax.fori_loop(0, t, step, jnp.zeros((n, h, 2 * h)))

  def per_edge(a, g):
    return jnp.stack(
      [jnp.einsum("tbi,tbo->io", a[:, j], g[:, j]) for j in range(n)]
    )

  flops = 2 * t * n * b * h * 2 * h
  m = jnp.ones((2048, 2048))
  cases = {
    "accumulated over steps (autodiff-like)": (accumulate, (a, g), flops),
    "one einsum tnbi,tnbo->nio": (
      lambda a, g: jnp.einsum("tnbi,tnbo->nio", a, g),
      (a, g),
      flops,
    ),
    "a loop over edges": (per_edge, (a, g), flops),
    "jnp.dot 2048³ (ceiling)": (jnp.dot, (m, m), 2 * 2048**3),
  }
  for name, (fn, fn_args, f) in cases.items():
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*fn_args))
    best = float("inf")
    for _ in range(reps):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*fn_args))
      best = min(best, time.perf_counter() - t0)
    print(
      f"H={hidden} {name}: {best * 1e3:.0f} ms, {f / best / 1e9:.0f} GFLOP/s"
    )


if __name__ == "__main__":
  main()
