"""The device run's probe: versions, devices, and the float32 matmul mode.

  python -m benchmarks.device.probe [--jsonl=$OUT/results.jsonl]

Prints (and appends as one JSON line) the Python, JAX, jaxlib, CUDA plugin,
flax, optax, orbax, chex, numpy and torch versions and where each was
imported from; the devices; whether `flax.nnx` imports; and whether a
default-precision float32 matmul runs as TF32 there: the relative error
‖out − ref‖/‖ref‖ of a 2048³ product of random float32 matrices against a
float64 NumPy reference, at `default` and at `highest` precision (float32
lands near 1e-6, TF32 near 3e-4).
"""

import argparse
import importlib
import json
import platform
import sys


def _version(name: str):
  try:
    m = importlib.import_module(name)
  except Exception as e:  # noqa: BLE001 (a probe reports, never stops)
    return f"import failed: {type(e).__name__}: {e}"[:200]
  return f"{getattr(m, '__version__', '?')} ({getattr(m, '__file__', '')})"


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--jsonl", default="")
  ap.add_argument("--n", type=int, default=2048)
  args = ap.parse_args()
  row = {"piece": "probe", "python": platform.python_version()}
  for name in (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax.checkpoint",
    "chex",
    "ml_collections",
    "tensorboardX",
    "numpy",
    "torch",
  ):
    row[name] = _version(name)
  try:
    from importlib import metadata  # noqa: PLC0415

    row["cuda_plugin"] = [
      f"{d.metadata['Name']} {d.version}"
      for d in metadata.distributions()
      if "jax-cuda" in (d.metadata["Name"] or "")
      or "jax_cuda" in (d.metadata["Name"] or "")
    ]
  except Exception as e:  # noqa: BLE001
    row["cuda_plugin"] = str(e)
  row["flax_nnx"] = _version("flax.nnx")
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  row["devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
  row["default_backend"] = jax.default_backend()
  rng = np.random.default_rng(0)
  a = rng.standard_normal((args.n, args.n), np.float32)
  b = rng.standard_normal((args.n, args.n), np.float32)
  ref = a.astype(np.float64) @ b.astype(np.float64)
  for prec in ("default", "highest", "tensorfloat32"):
    with jax.default_matmul_precision(prec):
      out = np.asarray(jax.jit(lambda x, y: x @ y)(a, b), np.float64)
    row[f"matmul_rel_err_{prec}"] = float(
      np.linalg.norm(out - ref) / np.linalg.norm(ref)
    )
  row["default_f32_matmul_is_tf32"] = row["matmul_rel_err_default"] > 1e-4
  line = json.dumps(row)
  print(line, flush=True)
  if args.jsonl:
    with open(args.jsonl, "a") as f:
      f.write(line + "\n")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
