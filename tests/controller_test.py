"""Tests for wpl_jax.enas.controller: sampling and teacher-forced scores."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax.enas import controller as ctl
from wpl_jax.enas import search_space as ss

N, HIDDEN, K = 4, 16, 8


@functools.cache
def _params():
  """Controller params (shared; tests copy before changing them)."""
  init = functools.partial(ctl.init_params, num_nodes=N, hidden_size=HIDDEN)
  return jax.jit(init)(key=jax.random.key(0))


# Compiled once per process and shared by the tests below: every call has
# the same shapes, so a second trace would be a recompile bug.
@jax.jit
@chex.assert_max_traces(n=1)
def _draw(params, key):
  """K samples: (Arch[K], log_probs[K], entropies[K])."""
  keys = jax.random.split(key, K)
  return jax.vmap(lambda k: ctl.sample(params, key=k, num_nodes=N))(keys)


_score = jax.jit(jax.vmap(ctl.log_prob, in_axes=(None, 0)))


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  z = x - x.max()
  return z - np.log(np.exp(z).sum())


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_controller(p, decisions, n, temperature=5.0, tanh_c=2.5):
  """The controller's recurrence in NumPy float64, written from the spec.

  PyTorch LSTMCell gate order: the 4H columns of [x; h] @ kernel are the
  input gate i, forget gate f, cell candidate g, output gate o. Inputs:
  zeros first, then the embedding of each chosen token, where activation
  a is token a and parent i is token 4 + i. One LSTM kernel serves every
  decision; decision t is read by its own decoder (node 0's activation:
  act_kernel[0]; node j's parent: parent_kernel[j-1], first j columns;
  node j's activation: act_kernel[j]). Logits: tanh_c·tanh(z / T).

  Returns:
    (log_probs [2N-1], entropies [2N-1]).
  """
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  h_size = p["embedding"].shape[1]
  c = np.zeros(h_size)
  h = np.zeros(h_size)
  x = np.zeros(h_size)

  def lstm(x, h, c):
    z = np.concatenate([x, h]) @ p["lstm_kernel"] + p["lstm_bias"]
    i = _np_sigmoid(z[0:h_size])
    f = _np_sigmoid(z[h_size : 2 * h_size])
    g = np.tanh(z[2 * h_size : 3 * h_size])
    o = _np_sigmoid(z[3 * h_size : 4 * h_size])
    c = f * c + i * g
    return o * np.tanh(c), c

  def score(logits, d):
    z = tanh_c * np.tanh(logits / temperature)
    log_p = _np_log_softmax(z)
    return log_p[d], -np.sum(np.exp(log_p) * log_p)

  lps, ents = [], []
  for t, d in enumerate(decisions):
    h, c = lstm(x, h, c)
    if t == 0:
      logits = h @ p["act_kernel"][0] + p["act_bias"][0]
      token = d
    elif t % 2 == 1:  # node j's parent
      j = (t + 1) // 2
      logits = (h @ p["parent_kernel"][j - 1] + p["parent_bias"][j - 1])[:j]
      token = 4 + d
    else:  # node j's activation
      j = t // 2
      logits = h @ p["act_kernel"][j] + p["act_bias"][j]
      token = d
    lp, ent = score(logits, d)
    lps.append(lp)
    ents.append(ent)
    x = p["embedding"][token]
  del n
  return np.array(lps), np.array(ents)


class ControllerTest(parameterized.TestCase):
  def test_recurrence_matches_numpy(self):
    # Non-zero decoder biases and a larger scale, so that gate order, token
    # offsets and decoder indices all move the numbers.
    rng = np.random.default_rng(5)
    params = jax.tree.map(
      lambda v: jnp.asarray(rng.normal(size=v.shape) * 0.8, jnp.float32),
      _params(),
    )
    archs, _, _ = _draw(params, jax.random.key(11))
    for arch in ss.unstack(archs)[:4]:
      decisions = np.asarray(ctl.arch_to_decisions(arch))
      got_lp, got_ent = ctl.decision_log_probs(params, arch)
      want_lp, want_ent = _np_controller(params, decisions, N)
      np.testing.assert_allclose(got_lp, want_lp, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(got_ent, want_ent, rtol=1e-4, atol=1e-5)

  def test_decision_layout(self):
    self.assertEqual(ctl.num_decisions(12), 23)
    self.assertEqual(ctl.decision_sizes(3), (4, 1, 4, 2, 4))
    arch = ss.from_string("relu|0:sigmoid|1:tanh|0:identity")
    d = ctl.arch_to_decisions(arch)
    np.testing.assert_array_equal(d, [1, 0, 3, 1, 0, 0, 2])
    back = ctl.decisions_to_arch(d)
    self.assertEqual(ss.to_string(back), ss.to_string(arch))
    both = ctl.arch_to_decisions(ss.stack([arch, arch]))
    self.assertEqual(both.shape, (2, 7))

  def test_param_layout(self):
    p = _params()
    self.assertEqual(
      {k: v.shape for k, v in p.items()},
      {
        "embedding": (4 + N - 1, HIDDEN),
        "lstm_kernel": (2 * HIDDEN, 4 * HIDDEN),
        "lstm_bias": (4 * HIDDEN,),
        "act_kernel": (N, HIDDEN, 4),
        "act_bias": (N, 4),
        "parent_kernel": (N - 1, HIDDEN, N - 1),
        "parent_bias": (N - 1, N - 1),
      },
    )
    np.testing.assert_array_equal(p["act_bias"], 0.0)
    np.testing.assert_array_equal(p["parent_bias"], 0.0)

  def test_samples_are_valid_and_log_prob_agrees(self):
    params = _params()
    archs, lps, ents = _draw(params, jax.random.key(1))
    self.assertEqual(archs.activations.shape, (K, N))
    self.assertEqual(archs.parents.dtype, jnp.int32)
    ss.validate(archs)
    self.assertTrue(np.all(np.asarray(lps) < 0))
    self.assertTrue(np.all(np.asarray(ents) > 0))
    # Teacher forcing gives the sample's own numbers.
    lp2, ent2 = _score(params, archs)
    np.testing.assert_allclose(lp2, lps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent2, ents, rtol=1e-5, atol=1e-6)

  def test_one_trace_serves_every_key(self):
    params = _params()
    names = set()
    for seed in range(4):
      archs, _, _ = _draw(params, jax.random.key(10 + seed))
      names |= {ss.to_string(a) for a in ss.unstack(archs)}
    self.assertGreater(len(names), K)  # different keys, different cells

  def test_log_prob_is_manual_sum_of_log_softmax(self):
    params = _params()
    archs, lps, ents = _draw(params, jax.random.key(7))
    arch = ss.unstack(archs)[3]
    model = ctl.Controller(num_nodes=N, hidden_size=HIDDEN)
    _, _, _, (act_logits, parent_logits) = jax.jit(model.apply)(
      {"params": params}, ctl.arch_to_decisions(arch)
    )
    acts, parents = np.asarray(arch.activations), np.asarray(arch.parents)
    # Decision order: a0, then (p_j, a_j); node j's parent is one of j nodes.
    per_decision, chosen = [act_logits[0]], [acts[0]]
    for j in range(1, N):
      per_decision += [parent_logits[j - 1][:j], act_logits[j]]
      chosen += [parents[j], acts[j]]
    want_lp, want_ent = 0.0, 0.0
    for t, (z, d) in enumerate(zip(per_decision, chosen, strict=True)):
      self.assertEqual(z.shape, (ctl.decision_sizes(N)[t],))
      self.assertLess(float(jnp.max(jnp.abs(z))), 2.5)  # 2.5·tanh(·)
      log_p = _np_log_softmax(z)
      want_lp += log_p[d]
      want_ent -= np.sum(np.exp(log_p) * log_p)
    np.testing.assert_allclose(lps[3], want_lp, rtol=1e-5)
    np.testing.assert_allclose(ents[3], want_ent, rtol=1e-5)
    # Masked parent entries carry no probability.
    self.assertLess(float(parent_logits[0, 1]), -1e8)

  def test_zero_weights_give_uniform_policy(self):
    params = jax.tree.map(jnp.zeros_like, _params())
    _, lps, ents = _draw(params, jax.random.key(0))
    # Uniform over every decision: log p = -sum log(size), H = sum log(size).
    want = sum(math.log(s) for s in ctl.decision_sizes(N))
    np.testing.assert_allclose(lps, -want, rtol=1e-6)
    np.testing.assert_allclose(ents, want, rtol=1e-6)

  def test_peaked_biases_give_an_exact_architecture(self):
    target = ss.from_string("sigmoid|0:identity|0:relu|2:tanh")
    acts, parents = np.asarray(target.activations), np.asarray(target.parents)
    params = jax.tree.map(jnp.zeros_like, _params())
    params["act_bias"] = params["act_bias"].at[np.arange(N), acts].set(50.0)
    params["parent_bias"] = (
      params["parent_bias"].at[np.arange(N - 1), parents[1:]].set(50.0)
    )
    # Without the tanh squash the biases make every decision certain.
    sample = jax.jit(
      functools.partial(
        ctl.sample, num_nodes=N, temperature=1.0, tanh_constant=None
      )
    )
    for seed in range(3):
      arch, lp, _ = sample(params, key=jax.random.key(seed))
      self.assertEqual(ss.to_string(arch), ss.to_string(target))
      self.assertGreater(float(lp), -1e-6)

  def test_reinforce_gradient_is_finite(self):
    def loss(params, key):
      _, lp, ent = ctl.sample(params, key=key, num_nodes=N)
      advantage = 0.3  # reward - baseline, a constant here
      return -lp * advantage - 1e-4 * ent

    grads = jax.jit(jax.grad(loss))(_params(), jax.random.key(2))
    leaves = jax.tree.leaves(grads)
    self.assertTrue(all(np.all(np.isfinite(g)) for g in leaves))
    self.assertGreater(sum(float(jnp.sum(jnp.abs(g))) for g in leaves), 0.0)

  def test_errors(self):
    model = ctl.Controller(num_nodes=N, hidden_size=HIDDEN)
    with self.assertRaisesRegex(ValueError, "key"):
      model.apply({"params": _params()})
    with self.assertRaisesRegex(ValueError, "decisions"):
      model.apply({"params": _params()}, jnp.zeros((3,), jnp.int32))


if __name__ == "__main__":
  absltest.main()
