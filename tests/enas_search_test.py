"""Tests for the ENAS search steps (WPL reference mode) and the search loop."""

import json
import pathlib
import subprocess
import sys
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from conftest import DATA_DIR

from experiments import enas_ptb
from wpl_jax import fisher as fisher_lib
from wpl_jax import loss
from wpl_jax.enas import losses, search_space
from wpl_jax.enas import wpl as enas_wpl
from wpl_jax.enas.train import epoch as enas_epoch
from wpl_jax.enas.train import search as enas_search
from wpl_jax.enas.train import search_eval
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps
from wpl_jax.runtime import checkpoint as checkpoint_lib

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config(**wpl):
  c = enas_ptb.get_config("smoke,wpl")
  c.model.vocab_size = 20
  c.model.hidden = 4
  c.model.num_nodes = 3
  c.data.batch_size = 3
  c.data.bptt = 4
  for name in ("dropout_output", "dropout_input", "dropout_embed"):
    c.model[name] = 0.0
  c.model.dropconnect = 0.0
  c.wpl.update(wpl)
  return c


def _setup(config, seed=0):
  model = enas_setup.make_model(config)
  steps = enas_steps.Steps(model=model, config=config)
  state = enas_setup.init_state(config, model, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  t, b = config.data.bptt, config.data.batch_size
  x = rng.integers(0, 20, size=(t, b)).astype(np.int32)
  y = rng.integers(0, 20, size=(t, b)).astype(np.int32)
  h = (0.1 * rng.normal(size=(b, config.model.hidden))).astype(np.float32)
  return model, steps, state, x, y, h, rng


def _ce_grad(model, params, stats, x, y, h, arch):
  """Independent path: jax.grad of the training-mode cross-entropy only."""

  def ce(p):
    (logits, _), _ = model.apply(
      {"params": p, "batch_stats": stats},
      x,
      h,
      arch,
      train=True,
      mutable=["batch_stats"],
    )
    return losses.cross_entropy(logits, y)

  return jax.device_get(jax.grad(ce)(params))


class WplOffStateTest(absltest.TestCase):
  def test_no_fisher_or_anchor_when_wpl_is_off(self):
    """WPL off: the state holds no Fisher/anchor arrays, a shared step runs,
    and a checkpoint of it restores (nothing of WPL saved)."""
    config = _tiny_config()
    config.wpl.enabled = False
    model, steps, state, x, y, h, _ = _setup(config)
    self.assertEqual(jax.tree.leaves(state["wpl"]), [])
    on = _setup(_tiny_config())[2]
    self.assertLen(jax.tree.leaves(on["wpl"]), 4)  # F and anchor, h and c
    arch = search_space.from_string("tanh|0:relu|1:sigmoid")
    shared, _, m = jax.jit(steps.shared_step)(
      state["shared"],
      state["wpl"],
      arch,
      x,
      y,
      h,
      jnp.float32(0.5),
      jnp.float32(0.0),
      key=jax.random.key(0),
    )
    self.assertEqual(float(m["wpl"]), 0.0)
    state["shared"] = shared
    ckpt = checkpoint_lib.Checkpointer(pathlib.Path(tempfile.mkdtemp()))
    ckpt.save(0, state, {"epoch": 0})
    restored, meta = ckpt.restore(state)
    self.assertEqual(meta["epoch"], 0)
    self.assertEqual(jax.tree.leaves(restored["wpl"]), [])
    for a, b in zip(
      jax.tree.leaves(restored["shared"]),
      jax.tree.leaves(state["shared"]),
      strict=True,
    ):
      np.testing.assert_array_equal(a, b)
    ckpt.close()


class GradAfterScanTest(parameterized.TestCase):
  @parameterized.parameters("reference", "clean")
  def test_shared_step_tapped_equals_autodiff(self, mode):
    """search.grad_after_scan_from (edges' gradient after the scan) =
    plain jax.grad, dropout and training batch-norm on, a non-zero WPL
    penalty."""
    outs = []
    for tapped in (True, False):
      config = _tiny_config(mode=mode)
      # The tiny model has H = 4: from 1 on is "always", 0 is "never".
      config.search.grad_after_scan_from = 1 if tapped else 0
      model, steps, state, x, y, h, _ = _setup(config)
      ws = state["wpl"]
      ws = ws._replace(
        fisher=jax.tree.map(lambda f: f + 0.5, ws.fisher),
        anchor=jax.tree.map(lambda a: a - 0.05, ws.anchor),
      )
      arch = search_space.from_string("tanh|0:relu|1:sigmoid")
      shared, hidden, m = jax.jit(steps.shared_step)(
        state["shared"],
        ws,
        arch,
        x,
        y,
        h,
        jnp.float32(0.5),
        jnp.float32(2.0),
        key=jax.random.key(3),
      )
      outs.append((shared, hidden, m))
    (a, ha, ma), (b, hb, mb) = outs
    self.assertGreater(float(ma["wpl"]), 0.0)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
    np.testing.assert_allclose(ha, hb, rtol=1e-6, atol=1e-7)
    for x_a, x_b in zip(
      jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True
    ):
      np.testing.assert_allclose(x_a, x_b, rtol=1e-5, atol=1e-7)
    moved = (
      a.params["cell"]["edge_h"] - state["shared"].params["cell"]["edge_h"]
    )
    self.assertGreater(float(jnp.max(jnp.abs(moved))), 0.0)

  @parameterized.parameters("reference", "clean")
  def test_fisher_step_tapped_equals_autodiff(self, mode):
    """batch_grad_squared's gradient after the scan (the shared step's
    threshold) = plain jax.grad: the same Fisher, anchor and hidden."""
    outs = []
    for tapped in (True, False):
      config = _tiny_config(mode=mode, estimator="batch_grad_squared")
      config.search.grad_after_scan_from = 1 if tapped else 0
      model, steps, state, x, y, h, _ = _setup(config)
      self.assertEqual(steps.grad_after_scan(), tapped)
      arch = search_space.from_string("tanh|0:relu|1:sigmoid")
      ws, hidden = jax.jit(steps.fisher_step)(
        state["shared"],
        state["wpl"],
        arch,
        x,
        y,
        h,
        jnp.float32(2.0),
        key=jax.random.key(5),
      )
      outs.append((ws, hidden))
    (a, ha), (b, hb) = outs
    np.testing.assert_allclose(ha, hb, rtol=1e-6, atol=1e-7)
    for x_a, x_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_allclose(x_a, x_b, rtol=1e-5, atol=1e-12)
    self.assertGreater(float(jnp.max(a.fisher["edge_h"])), 0.0)


class NodeUnrollTest(parameterized.TestCase):
  """`model.node_unroll` = 0 (the enas_ptb default: the node scan fully
  unrolled) gives the steps of the rolled scan (1), which the NumPy and
  autodiff references of this file check."""

  @parameterized.parameters("per_example", "batch_grad_squared")
  def test_unrolled_equals_rolled(self, estimator):
    arch = search_space.from_string("tanh|0:relu|1:sigmoid|1:identity|3:tanh")
    out = []
    for unroll in (1, 0):
      config = _tiny_config(estimator=estimator)
      config.model.num_nodes, config.model.node_unroll = 5, unroll
      model, steps, state, x, y, h, _ = _setup(config)
      # 0 = fully (True; note 1 == True, hence the identity checks).
      self.assertIs(model.node_unroll is True, unroll == 0)
      key = jax.random.key(4)
      shared, _, m = jax.jit(steps.shared_step)(
        state["shared"],
        state["wpl"],
        arch,
        x,
        y,
        h,
        jnp.float32(0.5),
        jnp.float32(1.0),
        key=key,
      )
      wpl, hidden = jax.jit(steps.fisher_step)(
        shared, state["wpl"], arch, x, y, h, jnp.float32(2.0), key=key
      )
      out.append((shared.params, m["loss"], wpl.fisher, hidden))
    self.assertGreater(float(jnp.max(out[0][2]["edge_h"])), 0.0)
    chex.assert_trees_all_close(out[0], out[1], rtol=1e-4, atol=1e-7)


class TrainingModeFisherTest(absltest.TestCase):
  def test_batch_grad_squared_with_dropout_matches_independent_grad(self):
    """fisher_step's `batch_grad_squared` in training mode, dropout on.

    Independent path: jax.grad of the training-mode cross-entropy of the
    whole supernet with the same dropout key (split from fisher_step's key,
    as the step does), squared, on the arch's edges; 0 on other edges.
    Clean mode, ema_new = 1 and no clip, so F is exactly the new estimate.
    """
    config = _tiny_config(
      estimator="batch_grad_squared", mode="clean", ema_new=1.0, clip=0.0
    )
    for name in ("dropout_output", "dropout_input", "dropout_embed"):
      config.model[name] = 0.3
    config.model.dropconnect = 0.4
    model, steps, state, x, y, h, _ = _setup(config)
    arch = search_space.from_string("tanh|0:relu|1:sigmoid")
    shared = state["shared"]
    key = jax.random.key(9)
    new_state, new_hidden = jax.jit(steps.fisher_step)(
      shared, state["wpl"], arch, x, y, h, jnp.float32(1.0), key=key
    )
    k_drop, _ = jax.random.split(key)

    def ce(p, with_hidden=False):
      (logits, hidden), _ = model.apply(
        {"params": p, "batch_stats": shared.batch_stats},
        x,
        h,
        arch,
        train=True,
        rngs={"dropout": k_drop},
        mutable=["batch_stats"],
      )
      return hidden if with_hidden else losses.cross_entropy(logits, y)

    grads = jax.device_get(jax.grad(ce)(shared.params))["cell"]
    ids = np.asarray(search_space.edge_ids(arch))
    # The carried hidden state is the training-mode forward's own.
    np.testing.assert_allclose(
      new_hidden, ce(shared.params, with_hidden=True), rtol=1e-5, atol=1e-6
    )
    for k in ("edge_h", "edge_c"):
      want = np.zeros_like(grads[k])
      want[ids] = np.square(grads[k][ids])
      got = np.asarray(new_state.fisher[k])
      self.assertGreater(float(np.abs(want).max()), 0.0)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-12, err_msg=k)
    # Dropout is on: another key gives another estimate.
    other, _ = jax.jit(steps.fisher_step)(
      shared,
      state["wpl"],
      arch,
      x,
      y,
      h,
      jnp.float32(1.0),
      key=jax.random.key(10),
    )
    self.assertFalse(
      np.allclose(other.fisher["edge_h"], new_state.fisher["edge_h"])
    )


class ReferenceModeTest(parameterized.TestCase):
  """One architecture's full turn in reference mode against NumPy."""

  def test_shared_step_and_fisher_update_match_numpy(self):
    config = _tiny_config(mode="reference", estimator="batch_grad_squared")
    model, steps, state, x, y, h, rng = _setup(config)
    arch = search_space.from_string("tanh|0:relu|0:sigmoid")
    ids = np.asarray(search_space.edge_ids(arch))
    params = jax.device_get(state["shared"].params)
    stats = state["shared"].batch_stats
    e, hid = params["cell"]["edge_h"].shape[:2]
    # A running state with a non-zero Fisher and an anchor off the weights.
    fisher = {
      k: np.abs(rng.normal(size=(e, hid, hid))).astype(np.float32)
      for k in enas_wpl.EDGE_KEYS
    }
    anchor = {
      k: params["cell"][k]
      + 0.05 * rng.normal(size=(e, hid, hid)).astype(np.float32)
      for k in enas_wpl.EDGE_KEYS
    }
    wpl_state = enas_wpl.init_state(params)._replace(
      fisher=fisher, anchor=anchor
    )

    # --- loss term and SGD step: NumPy transcription of docs/method.md §2/§4.
    lr, wd, clip_g = 0.5, config.shared.weight_decay, config.shared.grad_clip
    pen_np = 0.5 * sum(
      np.sum(fisher[k][ids] * (params["cell"][k][ids] - anchor[k][ids]) ** 2)
      for k in enas_wpl.EDGE_KEYS
    )
    g = _ce_grad(model, params, stats, x, y, h, arch)
    for k in enas_wpl.EDGE_KEYS:
      g_wpl = np.zeros_like(fisher[k])
      g_wpl[ids] = fisher[k][ids] * (params["cell"][k][ids] - anchor[k][ids])
      g["cell"][k] = g["cell"][k] + g_wpl
    gnorm = np.sqrt(sum(np.sum(np.square(v)) for v in jax.tree.leaves(g)))
    scale = min(1.0, clip_g / gnorm)
    want_params = jax.tree.map(
      lambda p, gi: p - lr * (scale * gi + wd * p), params, g
    )

    new_shared, _, m = jax.jit(steps.shared_step)(
      state["shared"],
      wpl_state,
      arch,
      x,
      y,
      h,
      jnp.float32(lr),
      jnp.float32(1.0),
      key=jax.random.key(0),
    )
    np.testing.assert_allclose(m["wpl"], pen_np, rtol=1e-5)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
      jax.device_get(new_shared.params),
      want_params,
    )

    # --- Fisher on a validation batch, clip, α, reset, re-anchor.
    alpha, clip = 60.0, config.wpl.clip
    new_params = jax.device_get(new_shared.params)
    vx, vy = y[::-1].copy(), x[::-1].copy()
    gv = _ce_grad(model, new_params, new_shared.batch_stats, vx, vy, h, arch)
    want_f = {}
    for k in enas_wpl.EDGE_KEYS:
      want_f[k] = np.zeros_like(fisher[k])
      for i in ids:
        mixed = 0.1 * fisher[k][i] + 0.9 * gv["cell"][k][i] ** 2
        norm = np.linalg.norm(mixed)
        want_f[k][i] = alpha * mixed * (clip / norm if norm > clip else 1.0)
    got, _ = jax.jit(steps.fisher_step)(
      new_shared,
      wpl_state,
      arch,
      vx,
      vy,
      h,
      jnp.float32(alpha),
      key=jax.random.key(1),
    )
    for k in enas_wpl.EDGE_KEYS:
      np.testing.assert_allclose(got.fisher[k], want_f[k], rtol=1e-4, atol=1e-9)
      np.testing.assert_array_equal(got.anchor[k], new_params["cell"][k])

  def test_gathered_penalty_equals_masked_penalty(self):
    """Gathering the arch's edges = masking the stacked leaves."""
    config = _tiny_config()
    _, _, state, *_ = _setup(config)
    params = state["shared"].params
    rng = np.random.default_rng(1)
    f = jax.tree.map(
      lambda a: np.abs(rng.normal(size=a.shape)).astype(np.float32),
      enas_wpl.edge_params(params),
    )
    a = jax.tree.map(lambda w: w + 0.1, enas_wpl.edge_params(params))
    ws = enas_wpl.init_state(params)._replace(fisher=f, anchor=a)
    for s in ("tanh|0:relu|0:sigmoid", "relu|0:tanh|1:identity"):
      arch = search_space.from_string(s)
      got = enas_wpl.edge_penalty(params, ws, arch, alpha=2.0)
      mask = enas_wpl.arch_edge_mask(arch, f["edge_h"].shape[0])
      want = loss.wpl_penalty(
        enas_wpl.edge_params(params), a, f, alpha=2.0, mask=mask
      )
      np.testing.assert_allclose(got, want, rtol=1e-6)

  @parameterized.product(mode=("reference", "clean"), dense=(True, False))
  def test_gathered_update_equals_masked_dense_update(self, mode, dense):
    """update_after_arch (N-1 gathered edges, one scatter) = the dense
    masked `update_fisher` + `reanchor` over all E edges."""
    config = _tiny_config()
    _, _, state, *_ = _setup(config)
    params = state["shared"].params
    rng = np.random.default_rng(2)
    pos = lambda a: np.abs(rng.normal(size=a.shape)).astype(np.float32)
    edges = enas_wpl.edge_params(params)
    old = enas_wpl.init_state(params)._replace(
      fisher=jax.tree.map(pos, edges),
      anchor=jax.tree.map(lambda w: w - 0.3, edges),
    )
    new_dense = jax.tree.map(lambda a: 50.0 * pos(a), edges)
    arch = search_space.from_string("tanh|0:relu|1:sigmoid")
    ids = search_space.edge_ids(arch)
    new = new_dense if dense else jax.tree.map(lambda a: a[ids], new_dense)
    kw = dict(mode=mode, decay=0.9, clip=0.5)
    got = jax.jit(
      lambda st, p, f, a: enas_wpl.update_after_arch(
        st, p, f, a, alpha=3.0, **kw
      )
    )(old, params, new, arch)
    mask = enas_wpl.arch_edge_mask(arch, edges["edge_h"].shape[0])
    want = fisher_lib.reanchor(
      fisher_lib.update_fisher(
        old,
        new_dense,
        alpha=3.0 if mode == "reference" else 1.0,
        mask=mask,
        norm_axes=(-2, -1),
        **kw,
      ),
      edges,
    )
    for k in enas_wpl.EDGE_KEYS:
      np.testing.assert_allclose(got.fisher[k], want.fisher[k], rtol=1e-6)
      np.testing.assert_array_equal(got.anchor[k], want.anchor[k])
    # The clip bites (the new estimate is large), and the modes differ
    # off the arch: reference resets, clean keeps.
    unused = ~np.asarray(search_space.edge_mask(arch))
    off = np.asarray(got.fisher["edge_h"])[unused]
    if mode == "reference":
      np.testing.assert_array_equal(off, 0.0)
    else:
      np.testing.assert_array_equal(
        off, np.asarray(old.fisher["edge_h"])[unused]
      )

  def test_update_refuses_a_fisher_of_the_wrong_rows(self):
    config = _tiny_config()
    _, _, state, *_ = _setup(config)
    params = state["shared"].params
    st = enas_wpl.init_state(params)
    arch = search_space.from_string("tanh|0:relu|1:sigmoid")
    bad = jax.tree.map(lambda a: a[:1], st.fisher)
    with self.assertRaisesRegex(ValueError, "rows"):
      enas_wpl.update_after_arch(
        st, params, bad, arch, mode="clean", alpha=1.0, decay=0.9, clip=None
      )

  @parameterized.parameters(
    ("per_example", "fast"), ("per_example", "vmap"), ("sampled", "fast")
  )
  def test_other_estimators_touch_only_arch_edges(self, estimator, method):
    config = _tiny_config(
      mode="clean", estimator=estimator, clip=0.0, fisher_method=method
    )
    _, steps, state, x, y, h, _ = _setup(config)
    arch = search_space.from_string("tanh|0:relu|1:sigmoid")
    ids = set(np.asarray(search_space.edge_ids(arch)).tolist())
    got, _ = jax.jit(steps.fisher_step)(
      state["shared"],
      state["wpl"],
      arch,
      x,
      y,
      h,
      jnp.float32(1.0),
      key=jax.random.key(0),
    )
    norms = np.linalg.norm(
      np.asarray(got.fisher["edge_h"]).reshape(3, -1), axis=1
    )
    for e in range(3):
      self.assertEqual(norms[e] > 0, e in ids, msg=f"edge {e}")

  def test_fast_per_example_equals_vmap_in_fisher_step(self):
    outs = []
    for method in ("fast", "vmap"):
      config = _tiny_config(
        mode="clean", estimator="per_example", clip=0.0, fisher_method=method
      )
      _, steps, state, x, y, h, _ = _setup(config)
      arch = search_space.from_string("relu|0:tanh|1:sigmoid")
      got, _ = jax.jit(steps.fisher_step)(
        state["shared"],
        state["wpl"],
        arch,
        x,
        y,
        h,
        jnp.float32(1.0),
        key=jax.random.key(0),
      )
      outs.append(jax.device_get(got.fisher))
    for k in enas_wpl.EDGE_KEYS:
      np.testing.assert_allclose(outs[0][k], outs[1][k], rtol=1e-5, atol=1e-12)


class EvalBatchNormTest(parameterized.TestCase):
  @parameterized.product(
    eval_bn=("running", "batch"), k_group=((1, 1), (2, 0), (3, 1), (3, 2))
  )
  def test_eval_archs_matches_single_forward(self, eval_bn, k_group):
    # K = 1 runs without vmap; search.eval_vmap = 0 vmaps all K; 1 maps
    # one arch at a time; 2 maps vmapped pairs (and a remainder of one).
    k, group = k_group
    config = _tiny_config()
    config.search.eval_bn = eval_bn
    config.search.eval_vmap = group
    model, steps, state, x, y, h, _ = _setup(config)
    archs = [
      search_space.from_string(s)
      for s in (
        "tanh|0:relu|0:sigmoid",
        "sigmoid|0:identity|1:relu",
        "relu|0:tanh|1:tanh",
      )[:k]
    ]
    eqns = jax.make_jaxpr(steps.eval_archs)(
      state["shared"], search_space.stack(archs), x, y, h
    ).jaxpr.eqns
    # One arch at a time is a top-level scan of length K (T = 4 here).
    mapped = any(
      e.primitive.name == "scan" and e.params["length"] == k for e in eqns
    )
    self.assertEqual(mapped, group == 1 and k > 1)
    got = jax.jit(steps.eval_archs)(
      state["shared"], search_space.stack(archs), x, y, h
    )
    self.assertEqual(got.shape, (k,))
    variables = {
      "params": state["shared"].params,
      "batch_stats": state["shared"].batch_stats,
    }
    for arch, g in zip(archs, got, strict=True):
      if eval_bn == "running":
        logits, _ = model.apply(variables, x, h, arch, train=False)
      else:  # The tiny config has no dropout: train mode = batch stats.
        (logits, _), _ = model.apply(
          variables, x, h, arch, train=True, mutable=["batch_stats"]
        )
      want = np.exp(float(losses.cross_entropy(logits, y)))
      np.testing.assert_allclose(g, want, rtol=1e-5)


class CompileOnceTest(absltest.TestCase):
  def test_one_compile_per_step_across_architectures(self):
    config = _tiny_config()
    _, steps, state, x, y, h, _ = _setup(config)
    shared_step = jax.jit(steps.shared_step)
    fisher_step = jax.jit(steps.fisher_step)
    eval_archs = jax.jit(steps.eval_archs)
    shared, ws = state["shared"], state["wpl"]
    for i in range(4):
      arch = search_space.sample_uniform(jax.random.key(i), 3)
      shared, _, _ = shared_step(
        shared,
        ws,
        arch,
        x,
        y,
        h,
        jnp.float32(0.1),
        jnp.float32(1.0),
        key=jax.random.key(i),
      )
      ws, _ = fisher_step(
        shared, ws, arch, x, y, h, jnp.float32(60.0), key=jax.random.key(i)
      )
      batch = jax.tree.map(lambda a: jnp.stack([a, a]), arch)
      eval_archs(shared, batch, x, y, h)
    for fn in (shared_step, fisher_step, eval_archs):
      self.assertEqual(fn._cache_size(), 1)


class ScheduleTest(parameterized.TestCase):
  @parameterized.parameters(
    (0, 0.0),
    (4, 0.0),
    (5, 60.0),
    (14, 60.0),
    (15, 59.0),
    (73, 1.0),
    (74, 0.0),
    (100, 0.0),
  )
  def test_reference_alpha_schedule(self, epoch, want):
    config = enas_ptb.get_config("paper,wpl")
    self.assertEqual(enas_epoch.wpl_alpha_at(config, epoch), want)

  def test_resume_refuses_another_config(self):
    saved = enas_search.comparable(enas_ptb.get_config("cpu,wpl"))
    longer = enas_ptb.get_config("cpu,wpl")
    longer.search.epochs = 20  # Extending a run is allowed.
    enas_search.check_same_config(longer, json.loads(json.dumps(saved)))
    with self.assertRaisesRegex(ValueError, "wpl.enabled"):
      enas_search.check_same_config(enas_ptb.get_config("cpu"), saved)

  def test_truncate_jsonl_drops_epochs_after_checkpoint(self):
    path = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
    path.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(4)))
    enas_search.truncate_jsonl(path, 1)
    self.assertEqual(
      [json.loads(x)["epoch"] for x in path.read_text().splitlines()], [0, 1]
    )

  def test_variant_order_does_not_matter(self):
    self.assertEqual(
      enas_ptb.get_config("clean,cpu").wpl.clip,
      enas_ptb.get_config("cpu,clean").wpl.clip,
    )

  def test_forgetting_stats(self):
    err1 = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    err2 = err1 + np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    s = search_eval.forgetting_stats(err1, err2)
    self.assertAlmostEqual(s["diff_mean"], 115 / 6)
    self.assertAlmostEqual(s["diff_best5"], (100 + 5 + 4 + 3 + 2) / 5)
    self.assertEqual(s["diff_max"], 100.0)


class MainSmokeTest(absltest.TestCase):
  @pytest.mark.slow
  def test_smoke_search_retrain_and_resume(self):
    workdir = pathlib.Path(tempfile.mkdtemp()) / "run"
    base = [
      sys.executable,
      str(_ROOT / "main.py"),
      "--config=" + str(_ROOT / "experiments/enas_ptb.py") + ":smoke,wpl",
      f"--data_dir={DATA_DIR / 'ptb'}",
      f"--workdir={workdir}",
      "--config.retrain.random_archs=0",
    ]
    r = subprocess.run(
      base + ["--config.search.epochs=1"],
      capture_output=True,
      text=True,
      cwd=_ROOT,
      check=False,
    )
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    # Rerun with more epochs in the same workdir: resumes after epoch 0.
    r = subprocess.run(
      base + ["--config.search.epochs=2", "--config.retrain.epochs=0"],
      capture_output=True,
      text=True,
      cwd=_ROOT,
      check=False,
    )
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    self.assertIn("resumed from epoch 0", r.stderr)
    records = [
      json.loads(line)
      for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    self.assertEqual([rec["epoch"] for rec in records], [0, 1])
    for rec in records:
      self.assertTrue(np.isfinite(rec["diff_mean"]))
      self.assertIn("derived", rec)
    self.assertTrue(all(v == 1 for v in records[0]["compiles"].values()))
    results = json.loads((workdir / "results.json").read_text())
    self.assertIn("derived", results)
    self.assertTrue(
      (workdir / "figure.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    )

  def test_smoke_search_and_retrain(self):
    """One epoch of search with WPL, derive, a short retrain: all outputs."""
    workdir = pathlib.Path(tempfile.mkdtemp()) / "run"
    r = subprocess.run(
      [
        sys.executable,
        str(_ROOT / "main.py"),
        "--config=" + str(_ROOT / "experiments/enas_ptb.py") + ":smoke,wpl",
        f"--data_dir={DATA_DIR / 'ptb'}",
        f"--workdir={workdir}",
        "--config.search.epochs=1",
        "--config.retrain.random_archs=0",
      ],
      capture_output=True,
      text=True,
      cwd=_ROOT,
      check=False,
    )
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    rec = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
    self.assertTrue(all(v == 1 for v in rec["compiles"].values()))
    self.assertGreater(rec["fisher_norm"], 0.0)
    results = json.loads((workdir / "results.json").read_text())
    (row,) = results["retrained"]
    self.assertEqual(row["arch"], results["derived"])
    self.assertTrue(np.isfinite(row["test_ppl"]))
    self.assertTrue((workdir / "tb").is_dir())

  def test_missing_data_dir_is_one_line(self):
    r = subprocess.run(
      [
        sys.executable,
        str(_ROOT / "main.py"),
        "--config=" + str(_ROOT / "experiments/enas_ptb.py") + ":smoke",
        "--data_dir=/nonexistent/ptb",
        f"--workdir={tempfile.mkdtemp()}/w",
      ],
      capture_output=True,
      text=True,
      cwd=_ROOT,
      check=False,
    )
    self.assertNotEqual(r.returncode, 0)
    self.assertNotIn("Traceback", r.stderr)
    self.assertIn("ptb", r.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
  absltest.main()


class ReinforceFormTest(parameterized.TestCase):
  """controller_step against REINFORCE written out by hand.

  Independent path: the sampled cell (same key, `sampler`), its
  per-decision log-probs and entropies (`controller.decision_log_probs`,
  itself checked against NumPy in controller_test), the reward and baseline
  formulas of each form, `jax.grad` of −Σ_t log p_t · adv_t, one Adam step.
  """

  @parameterized.parameters("per_decision", "sequence")
  def test_step_is_the_hand_written_update(self, form):
    from wpl_jax.enas import controller as controller_lib
    from wpl_jax.enas import sampler

    config = _tiny_config()
    config.controller.reward_form = form
    config.controller.entropy_coef = 0.3  # large, so the forms differ
    _, steps, state, x, y, h, _ = _setup(config)
    c, n = config.controller, config.model.num_nodes
    ctrl = state["controller"]
    shape = (2 * n - 1,) if form == "per_decision" else ()
    self.assertEqual(ctrl.baseline.shape, shape)
    base = jnp.linspace(0.1, 0.5, 2 * n - 1)[: shape[0] if shape else 1]
    ctrl = ctrl.replace(baseline=base.reshape(shape), step=jnp.int32(3))
    key = jax.random.key(5)
    new, _, m = steps.controller_step(ctrl, state["shared"], x, y, h, key=key)

    kw = steps.policy_kw()
    archs, _, _ = sampler.sample_architectures(
      ctrl.params, key=key, k=1, num_nodes=n, **kw
    )
    arch = jax.tree.map(lambda a: a[0], archs)
    _, ent = controller_lib.decision_log_probs(ctrl.params, arch, **kw)
    r = c.reward_c / m["ppl"]
    reward = r + c.entropy_coef * (ent if form == "per_decision" else ent.sum())
    want_b = c.baseline_decay * ctrl.baseline + (1 - c.baseline_decay) * reward
    adv = reward - want_b

    def hand_loss(p):
      logp, _ = controller_lib.decision_log_probs(p, arch, **kw)
      return (
        -jnp.sum(logp * adv) if form == "per_decision" else -logp.sum() * adv
      )

    grads = jax.grad(hand_loss)(ctrl.params)
    tx = enas_setup.controller_optimizer(c.lr)
    updates, _ = tx.update(grads, ctrl.opt_state, ctrl.params)
    want = jax.tree.map(jnp.add, ctrl.params, updates)
    np.testing.assert_allclose(new.baseline, want_b, rtol=1e-5)
    for a, b in zip(
      jax.tree.leaves(new.params), jax.tree.leaves(want), strict=True
    ):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    self.assertGreater(float(jnp.max(jnp.abs(adv))), 0.0)

  def test_unknown_form_is_refused(self):
    config = _tiny_config()
    config.controller.reward_form = "per_token"
    with self.assertRaisesRegex(ValueError, "reward_form"):
      enas_search.validate(config)
