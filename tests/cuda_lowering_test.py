"""The search's step functions at paper size lower cleanly for CUDA, on a CPU.

No GPU is needed to know that the code will run on one: each jitted program
of the ENAS search (`enas_setup.jit_steps`: shared, Fisher, evaluation,
controller and sampling steps) at the paper's sizes (H = 1000, 12 nodes,
B = 64, T = 35, V = 10k, WPL on), and the 32-cell ground truth's train
step, is traced from shape-only arguments (`jax.ShapeDtypeStruct`: no
array is allocated, nothing is compiled) and lowered for the "cuda"
platform. The StableHLO text must hold no custom call (a vendor library
kernel such as cuSOLVER, or anything XLA cannot compile itself), no host
callback (a Python round trip per step) and no float64 (slow on GPUs, and
a sign of an escaped x64 promotion).

The checker is shown to fail (negative controls): it flags a cuSOLVER
custom call, float64 and complex<float64> element types, and the Python
callbacks (which on this CPU-only machine cannot even be lowered for cuda,
so a callback in a step fails its test either way).
"""

import functools
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.experimental import io_callback

from experiments import enas_ptb, space32
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps
from wpl_jax.enas.train import truth as enas_truth
from wpl_jax.runtime import sharding

S = jax.ShapeDtypeStruct
# A typed PRNG key's shape and dtype, without allocating one.
KEY = jax.eval_shape(lambda: jax.random.key(0))

_CUSTOM_CALL = re.compile(r"custom_call")
# Python callbacks lower to custom calls named *callback*; host transfers
# (send/recv to the host, as io_callback on TPU) are flagged too.
_CALLBACK = re.compile(r"callback|is_host_transfer", re.IGNORECASE)
# f64 as an element type: tensor<f64>, tensor<3x4xf64>, complex<f64>, ": f64".
_F64 = re.compile(r"(?:\b|x)f64\b")
_CHECKS = (_CUSTOM_CALL, _CALLBACK, _F64)


def gpu_unsafe_lines(text: str) -> list[str]:
  """The lines of a StableHLO module with a custom call, callback or f64."""
  return [
    line.strip()
    for line in text.splitlines()
    if any(p.search(line) for p in _CHECKS)
  ]


def lower_text(jitted, *args, platform: str = "cuda", **kwargs) -> str:
  """StableHLO text of a jitted function lowered for `platform`."""
  lowered = jitted.trace(*args, **kwargs).lower(lowering_platforms=(platform,))
  return lowered.as_text()


def _shapes(tree, sharding_tree=None):
  """ShapeDtypeStructs of `tree`'s leaves (with shardings, if given)."""
  if sharding_tree is None:
    return jax.tree.map(lambda a: S(np.shape(a), a.dtype), tree)
  return jax.tree.map(
    lambda a, s: S(a.shape, a.dtype, sharding=s), tree, sharding_tree
  )


@functools.cache
def _search(estimator="batch_grad_squared", fisher_method="fast", vmap=None):
  """The paper-size search's jitted steps and shape-only arguments.

  The state is `enas_setup.init_state` as shapes, placed as `place_state`
  places it (on this machine's mesh); the steps are `jit_steps`' own
  jitted programs (donation and output shardings included).
  """
  c = enas_ptb.get_config("paper,wpl")
  c.model.vocab_size = 10000  # PTB's (set from the data at run time)
  c.wpl.estimator = estimator
  c.wpl.fisher_method = fisher_method
  model = enas_setup.make_model(c)
  steps = enas_steps.Steps(model=model, config=c, eval_vmap=vmap)
  mesh = enas_setup.make_mesh(c)
  state = jax.eval_shape(lambda k: enas_setup.init_state(c, model, k), KEY)
  placed = sharding.tree_shardings(state, mesh, sharding.edge_rules(mesh))
  for name in ("train_hidden", "fisher_hidden", "ctrl_hidden"):
    placed[name] = sharding.batch_sharding(mesh, 0)
  state = _shapes(state, placed)
  b, t = c.data.batch_size, c.data.bptt
  archs = jax.eval_shape(
    lambda p, k: steps.sample(p, key=k, k=c.search.eval_chunk),
    state["controller"].params,
    KEY,
  )
  return types.SimpleNamespace(
    config=c,
    fns=enas_setup.jit_steps(steps, state, mesh),
    state=state,
    archs=archs,  # K = eval_chunk = 16 stacked archs
    arch=jax.tree.map(lambda a: S(a.shape[1:], a.dtype), archs),
    x=S((t, b), jnp.int32, sharding=sharding.batch_sharding(mesh, 1)),
    x_rep=S((t, b), jnp.int32, sharding=sharding.replicated(mesh)),
    h_rep=S(
      (b, c.model.hidden), jnp.float32, sharding=sharding.replicated(mesh)
    ),
    scalar=S((), jnp.float32),
  )


class CheckerTest(parameterized.TestCase):
  """Negative controls: the checker flags what it must (so tests can fail)."""

  def test_clean_function_passes(self):
    """A float32 matmul with a softmax and a sort lowers without a flag."""
    f = jax.jit(lambda a: jnp.sort(jax.nn.softmax(a @ a.T), axis=-1))
    text = lower_text(f, S((8, 8), jnp.float32))
    self.assertIn("stablehlo.dot_general", text)
    self.assertEqual(gpu_unsafe_lines(text), [])

  def test_flags_custom_call(self):
    """`eigh` lowers to a cuSOLVER custom call on cuda: flagged."""
    text = lower_text(jax.jit(jnp.linalg.eigh), S((8, 8), jnp.float32))
    bad = gpu_unsafe_lines(text)
    self.assertTrue(any("stablehlo.custom_call @cusolver" in b for b in bad))

  @parameterized.named_parameters(
    ("real", jnp.float64, lambda a: a * 2),
    ("complex", jnp.float64, jnp.fft.fft),
    ("promoted", jnp.float32, lambda a: a.astype(jnp.float64).sum()),
  )
  def test_flags_float64(self, dtype, fn):
    """float64 and complex<float64> element types (x64 on) are flagged."""
    with jax.enable_x64(True):
      text = lower_text(jax.jit(fn), S((4, 3), dtype))
    bad = gpu_unsafe_lines(text)
    self.assertNotEmpty(bad)
    self.assertTrue(all("f64" in b for b in bad), bad)

  @parameterized.named_parameters(
    (
      "pure_callback",
      lambda a: jax.pure_callback(np.sin, S(a.shape, a.dtype), a),
    ),
    (
      "io_callback",
      lambda a: io_callback(np.sin, S(a.shape, a.dtype), a),
    ),
    ("debug_print", lambda a: (jax.debug.print("{}", a), a + 1)[1]),
  )
  def test_flags_callback(self, fn):
    """A host callback is flagged; lowering it for cuda here is refused.

    With no CUDA backend on this machine, JAX cannot lower a Python
    callback for cuda (it raises), so a step with one fails its lowering
    test before the checker runs; lowered for the CPU the checker flags
    the callback's custom call. Should a future JAX lower it for cuda
    without a GPU, the checker must flag that text too.
    """
    f = jax.jit(fn)
    a = S((4,), jnp.float32)
    bad = gpu_unsafe_lines(lower_text(f, a, platform="cpu"))
    self.assertTrue(any("callback" in b for b in bad), bad)
    try:
      text = lower_text(f, a)
    except ValueError:
      return
    bad = gpu_unsafe_lines(text)
    self.assertTrue(any("callback" in b for b in bad), bad)


class SearchLoweringTest(parameterized.TestCase):
  """The ENAS search's jitted steps at paper size lower cleanly for cuda."""

  def assertClean(self, text):
    bad = gpu_unsafe_lines(text)
    self.assertEqual(
      bad, [], f"{len(bad)} GPU-unsafe line(s):\n" + "\n".join(bad[:5])
    )

  def assertPaperSize(self, text):
    """The module holds the paper's 66 edges of 1000 × 1000."""
    self.assertIn("tensor<66x1000x1000xf32>", text)

  def test_shared_step(self):
    """One SGD step of an arch with the WPL penalty (reference mode)."""
    s = _search()
    text = lower_text(
      s.fns["shared"],
      s.state["shared"],
      s.state["wpl"],
      s.arch,
      s.x,
      s.x,
      s.state["train_hidden"],
      s.scalar,
      s.scalar,
      key=KEY,
    )
    self.assertPaperSize(text)
    self.assertClean(text)

  @parameterized.named_parameters(
    ("batch_grad_squared", "batch_grad_squared", "fast"),  # the paper's
    ("per_example_fast", "per_example", "fast"),
    ("per_example_vmap", "per_example", "vmap"),
    ("sampled", "sampled", "fast"),
  )
  def test_fisher_step(self, estimator, method):
    """The Fisher estimate and re-anchoring after an arch's turn."""
    s = _search(estimator, method)
    text = lower_text(
      s.fns["fisher"],
      s.state["shared"],
      s.state["wpl"],
      s.arch,
      s.x,
      s.x,
      s.state["fisher_hidden"],
      s.scalar,
      key=KEY,
    )
    self.assertPaperSize(text)
    self.assertClean(text)

  @parameterized.product(k=(1, 16), eval_vmap=(0, 1))
  def test_eval_archs(self, k, eval_vmap):
    """Perplexities of K archs (K = 1 after a turn, 16 at epoch end).

    As the search calls them: K = 1 on the batch-split forgetting batch
    (`eval_one`), K = 16 on the replicated one (`eval_archs`).
    """
    s = _search(vmap=eval_vmap)
    archs = jax.tree.map(lambda a: S((k,) + a.shape[1:], a.dtype), s.archs)
    if k == 1:
      args = (s.x, s.x, s.state["train_hidden"])
      fn = s.fns["eval_one"]
    else:
      args = (s.x_rep, s.x_rep, s.h_rep)
      fn = s.fns["eval_archs"]
    text = lower_text(fn, s.state["shared"], archs, *args)
    self.assertIn("tensor<1000x1000xf32>", text)
    self.assertClean(text)

  def test_controller_step(self):
    """One REINFORCE step: sample, evaluate, update the controller."""
    s = _search()
    text = lower_text(
      s.fns["ctrl"],
      s.state["controller"],
      s.state["shared"],
      s.x,
      s.x,
      s.state["ctrl_hidden"],
      key=KEY,
    )
    self.assertPaperSize(text)
    self.assertClean(text)

  @parameterized.parameters(1, 16)
  def test_sample(self, k):
    """K archs from the controller (K = 1 per turn, 16 for derive)."""
    s = _search()
    text = lower_text(
      s.fns["sample"], s.state["controller"].params, key=KEY, k=k
    )
    self.assertIn(f"tensor<{k}x12xi32>", text)
    self.assertClean(text)


class TruthLoweringTest(parameterized.TestCase):
  """The 32-cell ground truth's train step lowers cleanly for cuda."""

  @parameterized.parameters(32, 1)
  def test_train_step(self, arch_batch):
    """All 32 cells' SGD step, vmapped in groups of `arch_batch`."""
    c = space32.get_config("truth")
    c.model.vocab_size = 10000
    c.truth.arch_batch = arch_batch
    trainer = enas_truth.TruthTrainer(c)
    archs = _shapes(enas_truth.space_archs(c))
    n = archs.activations.shape[0]
    keys = S((n,), KEY.dtype)
    b, h, t = c.data.batch_size, c.model.hidden, c.data.bptt
    text = lower_text(
      trainer.train_step,
      jax.eval_shape(trainer._init, keys),
      S((n, b, h), jnp.float32),
      archs,
      S((t, b), jnp.int32),
      S((t, b), jnp.int32),
      S((), jnp.float32),
      keys,
    )
    self.assertEqual(n, 32)
    self.assertIn("tensor<32x10000x32xf32>", text)  # 32 cells' embeddings
    bad = gpu_unsafe_lines(text)
    self.assertEqual(bad, [], "\n".join(bad[:5]))


if __name__ == "__main__":
  absltest.main()
