"""benchmarks/versus_reference.py's pure parts: no torch, no subprocess.

Two small fake JSONL files, one per side, in the formats torch_pieces.py and
jax_pieces.py write, are read with summary.load and paired into the table.
"""

import json
import pathlib
import tempfile

from absl.testing import absltest

from benchmarks import versus_reference as vr
from benchmarks.device import summary

_TORCH = [
  {"code": "reference-pytorch", "piece": "shared_step", "hidden": 16,
   "tf32": 0, "device": "cpu (Xeon, 2 threads)", "median_ms": 30.0},
  {"code": "reference-pytorch", "piece": "fisher_update", "hidden": 16,
   "tf32": 0, "median_ms": 20.0},
  {"code": "reference-pytorch", "piece": "controller_step", "hidden": 16,
   "tf32": 0, "median_ms": 50.0},
  {"code": "reference-pytorch", "piece": "reward_eval", "hidden": 16,
   "tf32": 0, "error": "RuntimeError: boom"},
  {"code": "reference-pytorch", "piece": "eval_k16", "hidden": 16,
   "tf32": 0, "median_ms": 160.0},
  {"code": "reference-pytorch", "piece": "shared_step", "hidden": 200,
   "tf32": 0, "median_ms": 90.0},
  {"code": "reference-pytorch", "piece": "projected", "hidden": 16,
   "tf32": 0, "median_ms": 1.0},
  # a TF32 row is not float32: left out
  {"code": "reference-pytorch", "piece": "shared_step", "hidden": 16,
   "tf32": 1, "median_ms": 1.0},
]  # fmt: skip
_JAX = [
  {"code": "wpl_jax", "precision": "highest", "hidden": 16,
   "piece": "ceiling_gemm", "median_ms": 70.0, "tflops": 0.25},
  {"code": "wpl_jax", "precision": "highest", "hidden": 16,
   "piece": "shared_step", "median_ms": 10.0},
  {"code": "wpl_jax", "precision": "highest", "hidden": 16,
   "piece": "fisher_update", "median_ms": 5.0},
  {"code": "wpl_jax", "precision": "highest", "hidden": 16,
   "piece": "controller_step", "median_ms": 25.0},
  {"code": "wpl_jax", "precision": "highest", "hidden": 16,
   "piece": "reward_eval", "median_ms": 2.0},
  {"code": "wpl_jax", "precision": "highest", "hidden": 16,
   "piece": "eval16_vmapped", "median_ms": 3.0},
  {"code": "wpl_jax", "precision": "highest", "hidden": 16,
   "piece": "eval16_mapped", "median_ms": 40.0},
  {"code": "wpl_jax", "precision": "highest", "hidden": 200,
   "piece": "shared_step", "skipped": "time limit"},
]  # fmt: skip
_LSCPU = """Architecture:            x86_64
CPU(s):                  2
Model name:              Intel(R) Xeon(R) Processor
Thread(s) per core:      1
Core(s) per socket:      2
Socket(s):               1
Hypervisor vendor:       KVM
Flags:                   fpu sse avx2 avx512f avx512bw avx_vnni amx_tile amx_bf16 avx512_fp16 fma
"""  # noqa: E501


def _rows():
  with tempfile.TemporaryDirectory() as d:
    rows = []
    for name, data in (("torch", _TORCH), ("jax", _JAX)):
      path = pathlib.Path(d) / f"{name}.jsonl"
      path.write_text("".join(json.dumps(r) + "\n" for r in data) + "junk\n")
      rows += summary.load(path)
  return rows


class VersusReferenceTest(absltest.TestCase):
  def test_pairs_and_ratios(self):
    pairs = {(p["hidden"], p["piece"]): p for p in vr.pair_pieces(_rows())}
    self.assertEqual(
      list(pairs),
      [
        (16, "shared step"),
        (16, "Fisher update"),
        (16, "controller step"),
        (16, "controller step, 5 cells both"),
        (16, "reward eval"),
        (16, "eval K=16"),
        (200, "shared step"),
      ],
    )
    shared = pairs[(16, "shared step")]
    self.assertEqual((shared["reference_ms"], shared["wpl_jax_ms"]), (30, 10))
    self.assertAlmostEqual(shared["ratio"], 3.0)  # the tf32 row is left out
    self.assertAlmostEqual(pairs[(16, "Fisher update")]["ratio"], 4.0)
    self.assertAlmostEqual(pairs[(16, "eval K=16")]["ratio"], 4.0)  # mapped
    reward = pairs[(16, "reward eval")]
    self.assertIsNone(reward["ratio"])
    self.assertIn("reference: RuntimeError: boom", reward["note"])
    five = pairs[(16, "controller step, 5 cells both")]
    self.assertIsNone(five["ratio"])  # wpl_jax's K = 5 row is missing
    big = pairs[(200, "shared step")]
    self.assertIsNone(big["ratio"])
    self.assertEqual(big["note"], "wpl_jax: time limit")

  def test_projected_epoch_from_both_sides_medians(self):
    (e16, e200) = vr.epochs(_rows())
    want_ref = (61 * 7 * 30 + 61 * 20 + 2000 * 50) / 1e3
    want_jax = (61 * 7 * 10 + 61 * 5 + 2000 * 25) / 1e3
    self.assertAlmostEqual(e16["reference_s"], want_ref)
    self.assertAlmostEqual(e16["wpl_jax_s"], want_jax)
    self.assertAlmostEqual(e16["ratio"], want_ref / want_jax)
    self.assertIsNone(e200["ratio"])  # pieces missing on both sides

  def test_markdown_table(self):
    rows = _rows() + [
      {
        "kind": "machine",
        "cpu": vr.lscpu_facts(_LSCPU),
        "commit": "abc1234",
        "reps": 2,
      },
      {**vr.gemm_row({"code": "wpl_jax", "times_s": [0.1, 0.2, 0.3]}, 1000)},
      {
        "kind": "run",
        "side": "jax",
        "hidden": 16,
        "rc": 0,
        "env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
      },
      {"kind": "run", "side": "torch", "hidden": 16, "rc": 1, "env": {}},
    ]
    text = vr.markdown(rows)
    self.assertIn("| 16 | shared step | 30.00 | 10.00 | 3.00× |", text)
    self.assertIn("| 16 | eval K=16 | 160.00 | 40.00 | 4.00× |", text)
    self.assertIn("Intel(R) Xeon(R) Processor", text)
    self.assertIn("avx512f avx512bw avx_vnni amx_tile amx_bf16", text)
    self.assertNotIn("avx2", text)
    self.assertIn("GLIBC_TUNABLES='glibc.malloc.hugetlb=1'", text)
    self.assertIn("FAILED: torch at H=16: rc 1", text)
    self.assertIn("10.0 GFLOP/s", text)  # 2·1000³ / 0.2 s
    self.assertIn("abc1234", text)

  def test_markdown_names_a_bf16_run(self):
    self.assertNotIn("matmul_dtype", vr.markdown(_rows()))
    rows = [
      {**r, "matmul_dtype": "bfloat16"} if r.get("code") == "wpl_jax" else r
      for r in _rows()
    ]
    text = vr.markdown(rows)
    self.assertIn("model.matmul_dtype = bfloat16", text)
    self.assertIn("| 16 | shared step | 30.00 | 10.00 | 3.00× |", text)

  def test_order_and_main_tunables(self):
    self.assertEqual(vr.side_order("torch,jax", 1), ("torch", "jax"))
    self.assertEqual(vr.side_order("jax,torch", 0), ("jax", "torch"))
    self.assertEqual(vr.side_order("alternate", 0), ("torch", "jax"))
    self.assertEqual(vr.side_order("alternate", 1), ("jax", "torch"))
    with self.assertRaises(ValueError):
      vr.side_order("torch", 0)
    self.assertIn("hugetlb", vr.main_tunables())


if __name__ == "__main__":
  absltest.main()
