"""The two forms of a low product with a weight, timed on the search's shapes.

Usage (from the project root, on an otherwise idle machine):

  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/weight_forms.py \\
      [--hidden=1000,400,200] [--dtype=bfloat16] [--reps=7] [--edges_only]

`taps.weight_dot` computes `a @ w` for a weight held twice, w [I, O] and
its row-major copy wᵀ [O, I], in one of two forms:

* NN: `a @ w`, the row-major product with the weight as stored;
* NT: `a` and wᵀ contracted on their last axes (`lax.dot_general`
  with contracting dims (1, 1)).

For each shape below this times both, NN twice (before and after NT, the
faster of the two kept), as chains of dependent products inside one
compiled call (a `fori_loop`, the product's output squashed by tanh into
the next input), and prints one line per shape: the two medians, NT's
GFLOP/s and NT / NN. Shapes at width H (batch 64 × 35 steps, V = 10000):

* edge fwd / edge bwd: [64, H] × [H, 2H] and [64, 2H] × [2H, H], over 11
  distinct weights (one time step's edges, split as the search splits
  them) × 35 steps;
* node0x: [2240, H] × [H, 2H] (node 0's input projection, all steps);
* dec logits / dec dout: [249, H] × [H, 10000] and [249, 10000] ×
  [10000, H] (one chunk of the fused decoder loss).

`taps.NT_MIN_BYTES` (`wpl_jax/_tap_ops.py`) was chosen from these lines
(WORKSPACE §6.9).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp


def _args():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", default="1000,400,200")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--reps", type=int, default=7)
  ap.add_argument(
    "--edges_only", action="store_true", help="only the two edge shapes"
  )
  return ap.parse_args()


def _time(m, i, o, weights, chain, form, dtype, reps):
  """Median seconds of `chain` × `weights` dependent [m, i] × [i, o]
  products in `form` ("NN" or "NT")."""
  key = jax.random.key(0)
  w = (jax.random.normal(key, (weights, i, o)) * 0.02).astype(dtype)
  w_t = jnp.swapaxes(w, 1, 2) + 0  # materialised [weights, o, i]
  x0 = jax.random.normal(key, (m, i))
  nt_dims = (((1,), (1,)), ((), ()))
  f32 = jnp.float32

  def run(x, w, w_t):
    # Separate arrays, as the search's split edges are.
    src = w if form == "NN" else w_t
    ws = jax.lax.optimization_barrier([src[k] for k in range(weights)])

    def step(_, x):
      for wk in ws:
        a = x.astype(dtype)
        if form == "NN":
          z = jnp.dot(a, wk, preferred_element_type=f32)
        else:
          z = jax.lax.dot_general(a, wk, nt_dims, preferred_element_type=f32)
        # Back to [m, i] for the next product.
        x = jnp.tanh(jnp.tile(z, (1, -(-i // o)))[:, :i])
      return x

    return jax.lax.fori_loop(0, chain, step, x)

  f = jax.jit(run)
  f(x0, w, w_t).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(x0, w, w_t).block_until_ready()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  a = _args()
  dtype = jnp.dtype(a.dtype)
  for h in (int(s) for s in a.hidden.split(",")):
    shapes = [
      ("edge fwd", 64, h, 2 * h, 11, 35),
      ("edge bwd", 64, 2 * h, h, 11, 35),
    ]
    if not a.edges_only:
      shapes += [
        ("node0x", 2240, h, 2 * h, 1, 10),
        ("dec logits", 249, h, 10000, 1, 20),
        ("dec dout", 249, 10000, h, 1, 20),
      ]
    for name, m, i, o, k, chain in shapes:
      args = (m, i, o, k, chain)
      nn1 = _time(*args, "NN", dtype, a.reps)
      nt = _time(*args, "NT", dtype, a.reps)
      nn2 = _time(*args, "NN", dtype, a.reps)
      nn = min(nn1, nn2)
      gflops = 2 * m * i * o * k * chain / nt / 1e9
      mib = i * o * dtype.itemsize / 2**20
      print(
        f"H={h} {name} {a.dtype} [{m},{i}]x[{i},{o}] weight {mib:.2f}"
        f" MiB: NN {nn * 1e3:.1f} ms ({nn1 * 1e3:.1f}, {nn2 * 1e3:.1f}) | NT "
        f"{nt * 1e3:.1f} ms {gflops:.0f} GFLOP/s | NT/NN {nt / nn:.2f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
