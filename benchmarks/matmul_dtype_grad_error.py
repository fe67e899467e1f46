"""How far bf16 products move a training gradient, against how far SGD's
batches already move it (issue 27, WORKSPACE §6.8).

Usage (from the project root; PTB from ../shared/data by default):

  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \\
    python benchmarks/matmul_dtype_grad_error.py \\
      --hidden=200,1000 --warm_steps=100 --batches=8

The paper's ENAS model (`enas_ptb:paper`, 12 nodes, width H) with one fixed
cell (the 12-node cell of `benchmarks/matmul_dtype_loss.sh`) is trained
from its seed-0 init for `--warm_steps` float32 SGD steps of the paper's
shared step (lr 20, clip 0.25, WPL off) on consecutive PTB training
batches, to leave the init. Then, on each of the next `--batches` batches,
the training cross-entropy's gradient with respect to every parameter is
taken at the same params, hidden state and dropout key twice: with
`model.matmul_dtype = "float32"` (g32) and `"bfloat16"` (g16). Printed per
width (JSON lines, then a summary):

* bf16 error:   ‖g16 − g32‖ / ‖g32‖, over all parameters and per group
                (embedding, node 0, cell edges, batch-norm), and the
                cosine of g16 and g32;
* batch spread: ‖g32(k+1) − g32(k)‖ / ‖g32(k)‖ for consecutive batches
                k, k+1 (overall and per group): how much the gradient
                moves from one SGD batch to the next, which training
                tolerates by design;
* the loss:     |loss16 − loss32| (nats/token).

A bf16 error far below the batch spread says the products' rounding is
small beside SGD's own noise at that point of training; it does not say
what it does over a whole run (benchmarks/matmul_dtype_loss.sh does).
"""

import argparse
import json
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCH = (
  "tanh|0:relu|1:sigmoid|1:identity|2:tanh|2:relu|3:sigmoid|4:identity"
  "|5:tanh|5:relu|6:sigmoid|7:tanh"
)
GROUPS = ("embedding", "node0", "cell", "batch_norm")


def _args():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--hidden", default="200,1000")
  ap.add_argument("--warm_steps", type=int, default=100)
  ap.add_argument("--batches", type=int, default=8)
  ap.add_argument("--data", default=str(ROOT.parent / "shared/data/ptb"))
  return ap.parse_args()


def _norm(tree) -> float:
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  sq = (
    np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)
  )
  return float(np.sqrt(sum(sq)))


def _dot(a, b) -> float:
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  return float(
    sum(
      np.sum(np.asarray(x, np.float64) * np.asarray(y, np.float64))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
  )


def run_width(h: int, a, data) -> dict:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from experiments import enas_ptb  # noqa: PLC0415
  from wpl_jax.data import ptb  # noqa: PLC0415
  from wpl_jax.enas import search_space  # noqa: PLC0415
  from wpl_jax.enas import wpl as enas_wpl  # noqa: PLC0415
  from wpl_jax.enas.train import setup as enas_setup  # noqa: PLC0415
  from wpl_jax.enas.train import steps as enas_steps  # noqa: PLC0415

  steps, c = {}, None
  for dtype in ("float32", "bfloat16"):
    c = enas_ptb.get_config("paper")
    c.model.hidden = h
    c.model.vocab_size = len(data.vocab)
    c.model.matmul_dtype = dtype
    steps[dtype] = enas_steps.Steps(enas_setup.make_model(c), c)
  model = steps["float32"].model
  state = enas_setup.init_state(c, model, jax.random.key(0))
  shared = state["shared"]
  wpl_state = enas_wpl.init_state(shared.params)
  arch = search_space.from_string(ARCH)
  b, t = c.data.batch_size, c.data.bptt
  source = ptb.batchify(data.train, b)
  hidden = jnp.zeros((b, h), jnp.float32)
  key = jax.random.key(1)
  lr = jnp.float32(c.shared.lr)

  step = jax.jit(steps["float32"].shared_step)
  row = 0
  for _ in range(a.warm_steps):
    x, y = ptb.get_batch(source, row, t)
    row += t
    key, sub = jax.random.split(key)
    shared, hidden, m = step(
      shared, wpl_state, arch, x, y, hidden, lr, jnp.float32(0.0), key=sub
    )
  warm_loss = float(m["loss"]) if a.warm_steps else None

  def grad_fn(dtype):
    def f(params, x, y, hidden, key):
      def ce(p):
        loss, new_hidden, _ = steps[dtype].train_ce(
          p, shared.batch_stats, x, y, hidden, arch, key
        )
        return loss, new_hidden

      (loss, new_hidden), g = jax.value_and_grad(ce, has_aux=True)(params)
      return loss, g, new_hidden

    return jax.jit(f)

  g_fns = {d: grad_fn(d) for d in steps}
  rows, prev = [], None
  for k in range(a.batches):
    x, y = ptb.get_batch(source, row, t)
    row += t
    key, sub = jax.random.split(key)
    l32, g32, new_hidden = g_fns["float32"](shared.params, x, y, hidden, sub)
    l16, g16, _ = g_fns["bfloat16"](shared.params, x, y, hidden, sub)
    diff = jax.tree.map(lambda p, q: p - q, g16, g32)
    r = {
      "hidden": h,
      "batch": k,
      "bf16_error": _norm(diff) / _norm(g32),
      "cosine": _dot(g16, g32) / (_norm(g16) * _norm(g32)),
      "loss_diff": abs(float(l16) - float(l32)),
      "loss32": float(l32),
    }
    for grp in GROUPS:
      if grp in g32:
        r[f"bf16_error_{grp}"] = _norm(diff[grp]) / _norm(g32[grp])
    if prev is not None:
      moved = jax.tree.map(lambda p, q: p - q, g32, prev)
      r["batch_spread"] = _norm(moved) / _norm(prev)
      for grp in GROUPS:
        if grp in g32:
          r[f"batch_spread_{grp}"] = _norm(moved[grp]) / _norm(prev[grp])
    prev = g32
    hidden = new_hidden  # the next batch continues the stream
    print(json.dumps(r), flush=True)
    rows.append(r)
  med = lambda k: statistics.median(r[k] for r in rows if k in r)  # noqa: E731
  summary = {
    "hidden": h,
    "warm_steps": a.warm_steps,
    "warm_loss": warm_loss,
    "batches": a.batches,
    "bf16_error_median": med("bf16_error"),
    "bf16_error_max": max(r["bf16_error"] for r in rows),
    "batch_spread_median": med("batch_spread") if a.batches > 1 else None,
    "cosine_min": min(r["cosine"] for r in rows),
    "loss_diff_max": max(r["loss_diff"] for r in rows),
    **{
      f"{what}_{g}_median": med(f"{what}_{g}")
      for g in GROUPS
      for what in ("bf16_error", "batch_spread")
      if f"bf16_error_{g}" in rows[0]
      and (a.batches > 1 or what == "bf16_error")
    },
  }
  print(json.dumps({"summary": summary}), flush=True)
  return summary


def main() -> int:
  a = _args()
  from wpl_jax.data import ptb  # noqa: PLC0415

  data = ptb.load_ptb(a.data)
  for h in (int(v) for v in a.hidden.split(",")):
    run_width(h, a, data)
  return 0


if __name__ == "__main__":
  sys.exit(main())
