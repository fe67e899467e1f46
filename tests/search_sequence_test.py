"""The search loop's order of operations, step by step on a tiny model.

docs/method.md §2 fixes the sequence of one architecture's turn: train its
batches (loss = CE + α-weighted WPL), score it on the forgetting batch
(err1), then estimate its Fisher, update the running F and re-anchor every
edge before the next architecture; F is zeroed every `reset_every` epochs.
A `Steps` subclass records, from inside the jitted steps (host callbacks,
in execution order), what each step sees; the test reads the sequence.
"""

import dataclasses
import pathlib
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from experiments import enas_ptb
from wpl_jax.data import ptb
from wpl_jax.enas.train import search as enas_search
from wpl_jax.enas.train import steps as enas_steps

_EVENTS: list[tuple] = []


def _edges_gap(params, wpl_state) -> jax.Array:
  """max |θ − θ̂| over the edge matrices."""
  cell = params["cell"]
  return jnp.max(
    jnp.stack(
      [
        jnp.max(jnp.abs(cell[k] - wpl_state.anchor[k]))
        for k in wpl_state.anchor
      ]
    )
  )


def _f_sum(wpl_state) -> jax.Array:
  return sum(jnp.sum(v) for v in jax.tree.leaves(wpl_state.fisher))


def _record(*values):
  _EVENTS.append(
    tuple(np.asarray(v).item() if np.ndim(v) == 0 else v for v in values)
  )


@dataclasses.dataclass(frozen=True)
class _Recording(enas_steps.Steps):
  def shared_step(self, shared, wpl_state, arch, x, y, h, lr, alpha, *, key):
    jax.debug.callback(
      lambda a, f, g: _record("shared", a, f, g),
      alpha,
      _f_sum(wpl_state),
      _edges_gap(shared.params, wpl_state),
      ordered=True,
    )
    return super().shared_step(
      shared, wpl_state, arch, x, y, h, lr, alpha, key=key
    )

  def fisher_step(self, shared, wpl_state, arch, x, y, h, alpha, *, key):
    out_state, hidden = super().fisher_step(
      shared, wpl_state, arch, x, y, h, alpha, key=key
    )
    jax.debug.callback(
      lambda a, g: _record("fisher", a, g),
      alpha,
      _edges_gap(shared.params, out_state),
      ordered=True,
    )
    return out_state, hidden

  def eval_archs(self, shared, archs, x, y, h):
    out = super().eval_archs(shared, archs, x, y, h)
    jax.debug.callback(lambda: _record("eval"), ordered=True)
    return out


def _config(mode: str):
  c = enas_ptb.get_config("smoke,wpl")
  c.model.hidden, c.model.num_nodes = 8, 3
  c.data.batch_size, c.data.bptt = 2, 3
  s = c.search
  s.epochs, s.archs_per_epoch, s.batches_per_arch = 3, 2, 2
  s.derive_every, s.derive_samples, s.eval_chunk = 100, 2, 2
  s.heldout_tokens, s.rank_every = 0, 0
  c.controller.steps_per_epoch = 1
  c.wpl.mode, c.wpl.start_epoch, c.wpl.reset_every = mode, 0, 2
  c.wpl.alpha = 7.0
  c.wpl.alpha_decay_after = 100
  c.wpl.estimator = "batch_grad_squared"
  return c


def _data():
  rng = np.random.default_rng(0)
  ids = lambda n: rng.integers(0, 20, n).astype(np.int32)
  return ptb.PTBData(
    train=ids(400),
    valid=ids(200),
    test=ids(50),
    vocab=[str(i) for i in range(20)],
  )


class SearchSequenceTest(parameterized.TestCase):
  @parameterized.parameters("reference", "clean")
  def test_one_turn_after_another(self, mode):
    config = _config(mode)
    _EVENTS.clear()
    with mock.patch.object(enas_search.steps_lib, "Steps", _Recording):
      enas_search.search(config, pathlib.Path(tempfile.mkdtemp()), _data())
    jax.effects_barrier()
    kinds = [e[0] for e in _EVENTS]
    # Per architecture: its 2 batches, err1 (eval of K = 1), then its Fisher;
    # after the epoch's archs, err2 of the epoch (one more eval call); at
    # the end, the derive step scores its 2 samples (one call).
    turn = ["shared", "shared", "eval", "fisher"]
    epoch = turn * 2 + ["eval"]
    self.assertEqual(kinds, epoch * 3 + ["eval"])
    shared = [e for e in _EVENTS if e[0] == "shared"]
    fishers = [e for e in _EVENTS if e[0] == "fisher"]
    # α in the loss: reference mode keeps it in F (loss weight 1); clean
    # mode puts α in the loss.
    want_alpha = 1.0 if mode == "reference" else 7.0
    self.assertTrue(all(e[1] == want_alpha for e in shared), shared)
    self.assertTrue(all(e[1] == 7.0 for e in fishers), fishers)
    # Every Fisher step re-anchors all edges at the current weights ...
    self.assertTrue(all(e[2] == 0.0 for e in fishers))
    # ... so the next architecture starts with θ = θ̂ on every edge.
    firsts = [shared[i] for i in range(0, len(shared), 2)]
    self.assertTrue(all(e[3] == 0.0 for e in firsts[1:]), firsts)
    # F: zero at the start of epochs 0 and 2 (reset every 2 epochs), not 1.
    per_epoch = 4  # shared steps per epoch
    f_at_epoch_start = [shared[e * per_epoch][2] for e in range(3)]
    self.assertEqual(f_at_epoch_start[0], 0.0)
    self.assertGreater(f_at_epoch_start[1], 0.0)
    self.assertEqual(f_at_epoch_start[2], 0.0)
    # Within an epoch F grows from the first Fisher step on.
    self.assertGreater(shared[2][2], 0.0)


if __name__ == "__main__":
  absltest.main()
