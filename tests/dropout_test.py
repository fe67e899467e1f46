"""Dropout semantics of the shared RNN (docs/method.md §4), tested by effect.

Locked masks (one per batch, the same at every time step), word-level
embedding dropout (one keep flag per vocabulary row), inverted scaling
(kept entries × 1/keep) and DropConnect on W_hc and W_hh only.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from wpl_jax.enas import search_space, supernet

_V, _H, _N, _T, _B = 30, 64, 3, 5, 4
_ARCH = search_space.from_string("tanh|0:relu|1:sigmoid")


def _model(**rates):
  kw = dict(dropout_output=0.0, dropout_input=0.0, dropout_embed=0.0)
  kw["dropconnect"] = 0.0
  kw.update(rates)
  return supernet.SharedRNN(vocab_size=_V, hidden_size=_H, num_nodes=_N, **kw)


def _inputs():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, _V, (_T, _B)), jnp.int32)
  h = jnp.asarray(rng.normal(size=(_B, _H)) * 0.1, jnp.float32)
  return x, h


def _variables():
  return supernet.init_variables(_model(), key=jax.random.key(0))


def _masks(model, key):
  return model.apply(
    _variables(),
    True,
    _B,
    method=supernet.SharedRNN.dropout_masks,
    rngs={"dropout": key},
  )


def _out(model, variables, key, x, h):
  (out, _), _ = model.apply(
    variables,
    x,
    h,
    _ARCH,
    train=True,
    decode=False,
    rngs={"dropout": key},
    mutable=["batch_stats"],
  )
  return out


class DropoutTest(absltest.TestCase):
  def test_masks_are_locked_inverted_and_at_the_rate(self):
    rates = dict(
      dropout_output=0.4, dropout_input=0.65, dropout_embed=0.1, dropconnect=0.5
    )
    masks = _masks(_model(**rates), jax.random.key(1))
    # No time axis: one mask serves every step (locked / variational).
    want_shapes = {
      "embed": (_V,),
      "input": (_B, _H),
      "w_hc": (_H, _H),
      "w_hh": (_H, _H),
      "output": (_B, _H),
    }
    rate_of = {
      "embed": 0.1,
      "input": 0.65,
      "w_hc": 0.5,
      "w_hh": 0.5,
      "output": 0.4,
    }
    for k, shape in want_shapes.items():
      m = np.asarray(masks[k])
      self.assertEqual(m.shape, shape, k)
      keep = 1.0 - rate_of[k]
      np.testing.assert_allclose(np.unique(m), [0.0, 1.0 / keep], rtol=1e-6)
      if m.size >= 256:  # the share dropped is the rate, within 4 sigma
        sigma = np.sqrt(rate_of[k] * keep / m.size)
        self.assertLess(abs(np.mean(m == 0) - rate_of[k]), 4 * sigma, k)
    self.assertFalse(np.array_equal(masks["w_hc"], masks["w_hh"]))
    # Evaluation mode: no masks at all.
    off = _model(**rates).apply(
      _variables(),
      False,
      _B,
      method=supernet.SharedRNN.dropout_masks,
    )
    self.assertTrue(all(v is None for v in off.values()))

  def test_dropconnect_touches_only_w_hc_and_w_hh(self):
    x, h = _inputs()
    variables = jax.tree.map(jnp.copy, _variables())
    key = jax.random.key(2)
    plain = _out(_model(), variables, key, x, h)
    dropped = _out(_model(dropconnect=0.5), variables, key, x, h)
    self.assertFalse(np.allclose(plain, dropped))
    node0 = dict(variables["params"]["node0"])
    node0["w_hc"] = jnp.zeros_like(node0["w_hc"])
    node0["w_hh"] = jnp.zeros_like(node0["w_hh"])
    params = dict(variables["params"], node0=node0)
    zeroed = {"params": params, "batch_stats": variables["batch_stats"]}
    # With W_hc = W_hh = 0 the masks have nothing to act on: DropConnect
    # then changes nothing, so no other weight is masked.
    np.testing.assert_allclose(
      _out(_model(dropconnect=0.5), zeroed, key, x, h),
      _out(_model(), zeroed, key, x, h),
      rtol=1e-6,
      atol=1e-7,
    )

  def test_embedding_dropout_drops_whole_words(self):
    x, h = _inputs()
    model = _model(dropout_embed=0.5)
    variables = _variables()
    key = jax.random.key(3)
    row_keep = np.asarray(_masks(model, key)["embed"]) > 0

    def total(emb):
      params = dict(variables["params"], embedding=emb)
      v = {"params": params, "batch_stats": variables["batch_stats"]}
      return jnp.sum(_out(model, v, key, x, h))

    # decode=False: the embedding is read only by the input lookup, so a
    # row's gradient is 0 exactly when its word was dropped, at every
    # position where it occurs.
    grad = np.asarray(jax.grad(total)(variables["params"]["embedding"]))
    present = np.unique(np.asarray(x))
    dropped = [t for t in present if not row_keep[t]]
    kept = [t for t in present if row_keep[t]]
    self.assertNotEmpty(dropped)
    self.assertNotEmpty(kept)
    for t in dropped:
      np.testing.assert_array_equal(grad[t], 0.0)
    for t in kept:
      self.assertGreater(float(np.abs(grad[t]).max()), 0.0)


if __name__ == "__main__":
  absltest.main()
