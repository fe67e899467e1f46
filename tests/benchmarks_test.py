"""The benchmarks' helpers: the matmul FLOP counter behind
benchmarks/ceiling.py's fractions, the ceiling's inputs and precision, and
the workers' platform (never forced unless asked)."""

import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from benchmarks import ceiling, common, sharding_bench
from benchmarks.ceiling import matmul_flops


def _flops(fn, *args):
  return matmul_flops(jax.make_jaxpr(fn)(*args))


class MatmulFlopsTest(absltest.TestCase):
  def test_one_matmul_is_2mnk(self):
    a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
    self.assertEqual(_flops(jnp.dot, a, b), 2 * 3 * 5 * 4)

  def test_batched_einsum(self):
    a, b = jnp.ones((6, 3, 4)), jnp.ones((6, 4, 5))
    self.assertEqual(_flops(lambda a, b: a @ b, a, b), 6 * 2 * 3 * 5 * 4)

  def test_scan_counts_its_length_and_nests(self):
    w = jnp.ones((4, 4))

    def inner(h, _):
      return h @ w, None

    def outer(h, _):
      h, _ = jax.lax.scan(inner, h, None, length=3)
      return h, None

    h = jnp.ones((2, 4))
    fn = lambda h: jax.lax.scan(outer, h, None, length=5)[0]
    self.assertEqual(_flops(fn, h), 5 * 3 * 2 * 2 * 4 * 4)

  def test_gradient_and_jit_and_cond(self):
    x = jnp.ones((8, 3))
    w = jnp.ones((3, 2))
    loss = jax.jit(lambda w: jnp.sum(x @ w))
    # Forward x @ w, backward xᵀ @ g (no gradient w.r.t. the constant x).
    self.assertEqual(_flops(jax.grad(loss), w), 2 * (2 * 8 * 2 * 3))
    branchy = lambda p, w: jax.lax.cond(p, lambda: x @ w @ w.T, lambda: 2.0 * x)
    self.assertEqual(_flops(branchy, True, w), 2 * 8 * 2 * 3 + 2 * 8 * 3 * 2)


class WorkerEnvTest(absltest.TestCase):
  def test_platform_none_keeps_the_callers_setting(self):
    for caller in ("tpu", "cuda,cpu"):
      with mock.patch.dict(os.environ, {"JAX_PLATFORMS": caller}):
        self.assertEqual(common.worker_env()["JAX_PLATFORMS"], caller)
        self.assertEqual(common.worker_env("")["JAX_PLATFORMS"], caller)

  def test_platform_none_leaves_it_unset(self):
    with mock.patch.dict(os.environ, {"JAX_PLATFORMS": "x"}):
      del os.environ["JAX_PLATFORMS"]
      env = common.worker_env(None, platform=None)
    self.assertNotIn("JAX_PLATFORMS", env)
    self.assertIn("--xla_cpu_multi_thread_eigen=false", env["XLA_FLAGS"])

  def test_platform_sets_it_when_asked(self):
    with mock.patch.dict(os.environ, {"JAX_PLATFORMS": "cpu"}):
      env = common.worker_env("", platform="gpu")
      self.assertEqual(env["JAX_PLATFORMS"], "gpu")
      self.assertEqual(env["GLIBC_TUNABLES"], "")
      self.assertEqual(os.environ["JAX_PLATFORMS"], "cpu")  # caller's intact
    with self.assertRaises(ValueError):
      common.worker_env(platform="gpus")

  def test_sharding_forces_cpu_only_for_fake_devices(self):
    with mock.patch.dict(os.environ, {"XLA_FLAGS": "--a=1"}):
      env = sharding_bench.subprocess_env(4)
      self.assertEqual(env["JAX_PLATFORMS"], "cpu")
      flag = "--xla_force_host_platform_device_count=4"
      self.assertIn(flag, env["XLA_FLAGS"])
      env = sharding_bench.subprocess_env(4, "tpu")
      self.assertEqual(env["JAX_PLATFORMS"], "tpu")
      self.assertNotIn("device_count", env["XLA_FLAGS"])

  def test_rows_name_their_device(self):
    facts = common.device_facts()
    self.assertEqual(facts["platform"], jax.devices()[0].platform)
    self.assertEqual(common.device_label({"platform": "cpu"}), "cpu")
    label = common.device_label({"platform": "gpu", "device_kind": "H200"})
    self.assertEqual(label, "gpu H200")
    row = common.Row("g", "s", "c", 1.0, 1.0, 1, device=label)
    self.assertIn("| gpu H200 |", common.markdown([row]))


class CeilingTest(absltest.TestCase):
  def test_matrix_is_random_normal_float32(self):
    m = ceiling.ceiling_matrix(64)
    self.assertEqual((m.shape, m.dtype), ((64, 64), np.float32))
    self.assertGreater(m.std(), 0.9)
    self.assertLess(abs(m.mean()), 0.1)
    self.assertFalse(np.array_equal(m, ceiling.ceiling_matrix(64, seed=1)))

  def test_size_is_larger_off_cpu(self):
    self.assertEqual(ceiling.ceiling_size("cpu"), 2048)
    self.assertGreater(ceiling.ceiling_size("gpu"), 2048)

  def test_precision_reaches_the_worker(self):
    cmd = ceiling.worker_cmd("16", "per_example", 1, "/r", "tensorfloat32")
    args = ceiling.parser().parse_args(cmd[2:])
    self.assertTrue(args.worker)
    self.assertEqual(args.precision, "tensorfloat32")
    default = ceiling.worker_cmd("16", "per_example", 1, "/r")
    default = ceiling.parser().parse_args(default[2:]).precision
    self.assertEqual(default, "highest")
    old = jax.config.jax_default_matmul_precision
    try:
      ceiling.set_precision(args.precision)
      self.assertEqual(jax.config.jax_default_matmul_precision, "tensorfloat32")
      with self.assertRaises(ValueError):
        ceiling.set_precision("float33")
    finally:
      jax.config.update("jax_default_matmul_precision", old)


if __name__ == "__main__":
  absltest.main()


class StepHloCensusTest(absltest.TestCase):
  """`step_hlo.census` on a hand-written HLO text: copies counted by
  shape and computation, a fusion's ops counted from its body."""

  HLO = """HloModule m

%fused_computation.1 (p0: f32[2,3]) -> f32[2,6] {
  %p0 = f32[2,3]{1,0} parameter(0)
  %m = f32[2,3]{1,0} multiply(%p0, %p0)
  ROOT %c = f32[2,6]{1,0} concatenate(%m, %p0), dimensions={1}
}

%body (t: f32[4,2,3]) -> f32[4,2,3] {
  %t = f32[4,2,3]{2,1,0} parameter(0)
  ROOT %copy.1 = f32[4,2,3]{2,1,0} copy(%t)
}

ENTRY %main (a: f32[4,2,3], b: f32[2,3]) -> f32[2,6] {
  %a = f32[4,2,3]{2,1,0} parameter(0)
  %copy.2 = f32[4,2,3]{2,1,0} copy(%a)
  %copy.3 = f32[5]{0} copy(%a)
  %b = f32[2,3]{1,0} parameter(1)
  ROOT %multiply_concatenate_fusion.7 = f32[2,6]{1,0} fusion(%b), \
kind=kLoop, calls=%fused_computation.1
}
"""

  def test_counts(self):
    from benchmarks import step_hlo  # noqa: PLC0415

    r = step_hlo.census(self.HLO, "f32[4,2,3]")
    self.assertEqual(r["node_copies"], 2)
    self.assertEqual(r["copies"]["f32[5]{0}"], 1)
    self.assertEqual(dict(r["where"]), {"other": 1, "entry": 2})
    self.assertEqual(r["bwd_fusion_ops"], [3])
