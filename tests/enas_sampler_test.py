"""Tests for wpl_jax.enas.sampler: K architectures in one vmapped call."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax.enas import controller as ctl
from wpl_jax.enas import losses, sampler, supernet
from wpl_jax.enas import search_space as ss

V, H, N, T, B, K = 50, 8, 4, 5, 4, 5
# A wide init, so that different children really give different losses.
_MODEL = supernet.SharedRNN(
  vocab_size=V, hidden_size=H, num_nodes=N, init_range=0.5
)


@functools.cache
def _setup():
  """Shared-model variables, a batch, a hidden state and K architectures."""

  @jax.jit
  def make(key):
    k_init, k_tok, k_h, k_arch = jax.random.split(key, 4)
    variables = supernet.init_variables(_MODEL, key=k_init)
    tokens = jax.random.randint(k_tok, (T + 1, B), 0, V)
    hidden = jax.random.normal(k_h, (B, H))
    archs = jax.vmap(lambda k: ss.sample_uniform(k, N))(
      jax.random.split(k_arch, K)
    )
    return variables, tokens[:-1], tokens[1:], hidden, archs

  return make(jax.random.key(0))


@jax.jit
@chex.assert_max_traces(n=1)
def _evaluate(variables, archs, inputs, targets, hidden):
  """Per-arch losses and final hidden states, one compile for any archs."""
  return sampler.evaluate_architectures(
    _MODEL, variables, archs, inputs, targets, hidden, return_hidden=True
  )


class SamplerTest(parameterized.TestCase):
  def test_sample_architectures_matches_single_samples(self):
    init = functools.partial(ctl.init_params, num_nodes=N, hidden_size=8)
    params = jax.jit(init)(key=jax.random.key(1))
    key = jax.random.key(2)
    draw = jax.jit(
      functools.partial(sampler.sample_architectures, k=K, num_nodes=N)
    )
    archs, lps, ents = draw(params, key=key)
    self.assertEqual(archs.activations.shape, (K, N))
    self.assertEqual(lps.shape, (K,))
    self.assertEqual(ents.shape, (K,))
    ss.validate(archs)
    # Sample i is what the controller draws with the i-th split key.
    one = jax.jit(functools.partial(ctl.sample, num_nodes=N))
    for i, key_i in enumerate(jax.random.split(key, K)):
      arch, lp, ent = one(params, key=key_i)
      self.assertEqual(ss.to_string(arch), ss.to_string(ss.unstack(archs)[i]))
      np.testing.assert_allclose(lp, lps[i], rtol=1e-5)
      np.testing.assert_allclose(ent, ents[i], rtol=1e-5)

  def test_vmapped_evaluation_equals_python_loop(self):
    variables, inputs, targets, hidden, archs = _setup()
    loss_K, hiddens = _evaluate(variables, archs, inputs, targets, hidden)
    self.assertEqual(loss_K.shape, (K,))
    self.assertEqual(hiddens.shape, (K, B, H))
    one = jax.jit(functools.partial(losses.eval_loss, _MODEL))
    for i, arch in enumerate(ss.unstack(archs)):
      loss, h = one(variables, arch, inputs, targets, hidden)
      np.testing.assert_allclose(loss_K[i], loss, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(hiddens[i], h, rtol=1e-5, atol=1e-5)
    # Per-architecture hidden states [K, B, H] are accepted too.
    per_arch = jnp.broadcast_to(hidden, (K, B, H))
    ppl = jax.jit(
      functools.partial(
        sampler.evaluate_architectures, _MODEL, metric="perplexity"
      )
    )(variables, archs, inputs, targets, per_arch)
    np.testing.assert_allclose(ppl, np.exp(loss_K), rtol=1e-5)

  def test_one_trace_for_any_architectures(self):
    variables, inputs, targets, hidden, archs = _setup()
    first, _ = _evaluate(variables, archs, inputs, targets, hidden)
    # A different set of K architectures reuses the same executable.
    others = ss.stack([ss.from_string("relu|0:tanh|1:identity|2:sigmoid")] * K)
    second, _ = _evaluate(variables, others, inputs, targets, hidden)
    np.testing.assert_allclose(second, second[0], rtol=1e-6)
    self.assertGreater(float(jnp.max(jnp.abs(first - second))), 1e-3)

  def test_errors(self):
    variables, inputs, targets, hidden, archs = _setup()
    with self.assertRaisesRegex(ValueError, "metric"):
      sampler.evaluate_architectures(
        _MODEL, variables, archs, inputs, targets, hidden, metric="acc"
      )
    with self.assertRaisesRegex(ValueError, r"\[K, N\]"):
      sampler.evaluate_architectures(
        _MODEL, variables, ss.unstack(archs)[0], inputs, targets, hidden
      )
    with self.assertRaisesRegex(ValueError, "hidden"):
      sampler.evaluate_architectures(
        _MODEL, variables, archs, inputs, targets, hidden[0]
      )


if __name__ == "__main__":
  absltest.main()
