"""The search's own matmul shapes in XLA and in torch: GFLOP/s of each.

Usage (from the project root; an idle machine; torch from .venv-torch):

  python -m benchmarks.small_gemm --hidden=200,400,1000 --reps=50
  python -m benchmarks.small_gemm --forms --hidden=1000
  .venv-torch/bin/python benchmarks/small_gemm.py --lib=torch \\
      --hidden=200,400,1000 --reps=50

One ENAS node update at width H and batch B = 64 is three matmuls, each
repeated 35 × 12 times per training step with nothing else to overlap:

* forward        [B, H] × [H, 2H]      (the node's fused c/h projection)
* input grad     [B, 2H] × [2H, H]     (its cotangent to the node's input)
* weight grad    [H, B] × [B, 2H]      (one step's share of the edge's
  gradient, accumulated over the 35 steps)

and the 2048³ square GEMM is the library's ceiling. Each shape runs as a
chain of `--chain` dependent products inside one compiled call (XLA:
`lax.fori_loop`; torch: a Python loop, which is how the reference runs
them), so launch overhead is what it is in each code. Prints one JSON line
per shape with GFLOP/s and the fraction of that library's 2048³ rate.
"""

import argparse
import json
import statistics
import sys
import time


def _args():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lib", choices=("jax", "torch"), default="jax")
  ap.add_argument("--hidden", default="200,400,1000")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--chain", type=int, default=100)
  ap.add_argument("--reps", type=int, default=7)
  ap.add_argument("--dtype", default="float32", help="float32 or bfloat16")
  ap.add_argument(
    "--forms",
    action="store_true",
    help="jax only: the [64, H] x [H, 2H] product (H = the first --hidden) "
    "in several forms: float32 under each matmul precision setting, "
    "bfloat16 inputs with a bfloat16 or a float32 output, and the weight "
    "gradient contracted over the leading (batch) axes",
  )
  return ap.parse_args()


def shapes(h: int, b: int) -> dict[str, tuple[int, int, int]]:
  """name -> (M, K, N) of the node update's three matmuls at width h."""
  return {
    "forward": (b, h, 2 * h),
    "input_grad": (b, 2 * h, h),
    "weight_grad": (h, b, 2 * h),
  }


def _median_s(fn, reps: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _jax_chain(m, k, n, chain, dtype):
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  jax.config.update("jax_default_matmul_precision", "highest")
  key = jax.random.key(0)
  x = jax.random.normal(key, (m, k), jnp.float32).astype(dtype)
  w = (jax.random.normal(key, (k, n), jnp.float32) / k**0.5).astype(dtype)

  @jax.jit
  def run(x, w):
    def body(_, acc):
      # Each product depends on the last (x perturbed by the accumulator),
      # so XLA cannot hoist or merge them; the add is O(M·N).
      y = jnp.dot(
        x + acc[:, :1].astype(dtype), w, preferred_element_type=jnp.float32
      )
      return acc + y

    return jax.lax.fori_loop(0, chain, body, jnp.zeros((m, n), jnp.float32))

  return lambda: jax.block_until_ready(run(x, w))


def _torch_chain(m, k, n, chain, dtype):
  import torch  # noqa: PLC0415

  dt = getattr(torch, dtype)
  x = torch.randn(m, k).to(dt)
  w = (torch.randn(k, n) / k**0.5).to(dt)

  def run():
    acc = torch.zeros(m, n)
    with torch.no_grad():
      for _ in range(chain):
        acc = acc + (x + acc[:, :1].to(dt)) @ w
    return acc

  return run


def _forms(h: int, b: int, chain: int, reps: int) -> None:
  """GFLOP/s of one product shape written several ways (XLA only)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  key = jax.random.key(0)
  x32 = jax.random.normal(key, (b, h), jnp.float32)
  w32 = jax.random.normal(key, (h, 2 * h), jnp.float32) / h**0.5
  g32 = jax.random.normal(key, (b, 2 * h), jnp.float32)
  bf = jnp.bfloat16

  def chained(mm, a, c, out_shape):
    @jax.jit
    def run(a, c):
      def body(_, acc):
        return acc + mm(a + acc[:1, :1].astype(a.dtype), c).astype(jnp.float32)

      return jax.lax.fori_loop(
        0, chain, body, jnp.zeros(out_shape, jnp.float32)
      )

    return lambda: jax.block_until_ready(run(a, c))

  flops = 2 * b * h * 2 * h * chain
  cases = []
  for prec in ("highest", "bfloat16", "default"):
    with jax.default_matmul_precision(prec):
      f = chained(jnp.dot, x32, w32, (b, 2 * h))
      s = _median_s(f, reps)  # traced (and compiled) under `prec`
    cases.append((f"float32 inputs, precision={prec}", s))
  dot32 = lambda a, c: jnp.dot(a, c, preferred_element_type=jnp.float32)  # noqa: E731
  for name, mm in (
    ("bfloat16 in, bfloat16 out", jnp.dot),
    ("bfloat16 in, float32 out", dot32),
  ):
    cases.append(
      (
        name,
        _median_s(
          chained(mm, x32.astype(bf), w32.astype(bf), (b, 2 * h)), reps
        ),
      )
    )
  wg = lambda a, c: jnp.einsum("bi,bo->io", a, c)  # noqa: E731
  wg32 = lambda a, c: jnp.einsum(
    "bi,bo->io", a, c, preferred_element_type=jnp.float32
  )  # noqa: E731
  from wpl_jax.taps import row_major_t  # noqa: PLC0415

  # xᵀ @ g: XLA folds a plain transpose into the operand's layout (the
  # float32 rate); materialised row-major it reaches the bf16 units.
  wg_t = lambda a, c: dot32(a.T, c)  # noqa: E731
  wg_rm = lambda a, c: dot32(row_major_t(a), c)  # noqa: E731
  for name, mm in (
    ("weight grad einsum bi,bo->io, bfloat16 out", wg),
    ("weight grad einsum bi,bo->io, float32 out", wg32),
    ("weight grad dot(x.T, g), float32 out", wg_t),
    ("weight grad dot(row_major_t(x), g), float32 out", wg_rm),
  ):
    cases.append(
      (
        name,
        _median_s(
          chained(mm, x32.astype(bf), g32.astype(bf), (h, 2 * h)), reps
        ),
      )
    )
  for name, sec in cases:
    print(
      json.dumps(
        {"lib": "jax", "hidden": h, "form": name, "gflops": flops / sec / 1e9}
      ),
      flush=True,
    )


def main() -> int:
  a = _args()
  if a.forms:
    _forms(int(a.hidden.split(",")[0]), a.batch, a.chain, a.reps)
    return 0
  make = _jax_chain if a.lib == "jax" else _torch_chain
  if a.lib == "jax":
    import jax.numpy as jnp  # noqa: PLC0415

    dtype = getattr(jnp, a.dtype)
    version = __import__("jax").__version__
  else:
    import torch  # noqa: PLC0415

    dtype = a.dtype
    version = torch.__version__
  n = 2048
  ceil_s = _median_s(make(n, n, n, 1, dtype), a.reps)
  ceiling = 2 * n**3 / ceil_s / 1e9
  base = {"lib": a.lib, "version": version, "dtype": a.dtype}
  print(json.dumps({**base, "shape": "ceiling 2048³", "gflops": ceiling}))
  for h in (int(v) for v in a.hidden.split(",")):
    for name, (m, k, nn) in shapes(h, a.batch).items():
      s = _median_s(make(m, k, nn, a.chain, dtype), a.reps)
      gf = 2 * m * k * nn * a.chain / s / 1e9
      row = {
        **base,
        "hidden": h,
        "shape": name,
        "mkn": [m, k, nn],
        "us_per_product": s / a.chain * 1e6,
        "gflops": gf,
        "of_ceiling": gf / ceiling,
      }
      print(json.dumps(row), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
