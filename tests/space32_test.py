"""Tests of the 32-cell study: space, ranking metrics, ground truth, search."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest, parameterized
from conftest import DATA_DIR

from experiments import space32, space32_truth
from wpl_jax.data import ptb
from wpl_jax.enas import controller, losses, ranking, sampler, search_space
from wpl_jax.enas import supernet as supernet
from wpl_jax.enas.train import search as enas_search
from wpl_jax.enas.train import setup as enas_setup
from wpl_jax.enas.train import steps as enas_steps
from wpl_jax.enas.train import truth as enas_truth

_ROOT = pathlib.Path(__file__).resolve().parents[1]


class RankingTest(parameterized.TestCase):
  """Against values computed by hand from the definitions."""

  def test_one_swap(self):
    a, b = [1, 2, 3, 4], [1, 3, 2, 4]
    # 6 pairs, 1 discordant: (5 - 1) / 6.
    self.assertAlmostEqual(ranking.kendall_tau(a, b), 4 / 6)
    # 1 - 6 Σd² / (n (n² - 1)) = 1 - 6·2 / 60.
    self.assertAlmostEqual(ranking.spearman_rho(a, b), 0.8)

  def test_reversed(self):
    a = [3.0, 1.0, 2.0, 5.0, 4.0]
    b = [-v for v in a]
    self.assertAlmostEqual(ranking.kendall_tau(a, b), -1.0)
    self.assertAlmostEqual(ranking.spearman_rho(a, b), -1.0)

  def test_ties(self):
    a, b = [1, 2, 2, 3], [1, 2, 3, 4]
    # τ-b: 5 concordant, 0 discordant, 1 pair tied in a only:
    # 5 / sqrt((6 - 1)(6 - 0)).
    self.assertAlmostEqual(ranking.kendall_tau(a, b), 5 / np.sqrt(30))
    # Average ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: 4.5 / sqrt(4.5 · 5).
    self.assertAlmostEqual(ranking.spearman_rho(a, b), 4.5 / np.sqrt(22.5))

  def test_top_k_and_regret(self):
    truth = [10.0, 20.0, 30.0, 40.0, 50.0]  # cell 0 is best
    shared = [5.0, 1.0, 3.0, 2.0, 4.0]  # shared order: 1, 3, 2, 4, 0
    self.assertFalse(ranking.top_k_hit(shared, truth, 3))
    self.assertFalse(ranking.top_k_hit(shared, truth, 4))
    self.assertTrue(ranking.top_k_hit(shared, truth, 5))
    self.assertAlmostEqual(ranking.regret(shared, truth), 20.0 - 10.0)
    self.assertAlmostEqual(ranking.regret(truth, truth), 0.0)
    stats = ranking.ranking_stats(shared, truth, k=3)
    self.assertEqual(stats["top3_hit"], 0.0)
    self.assertAlmostEqual(stats["regret"], 10.0)

  def test_tied_best(self):
    truth = [1.0, 1.0, 3.0]
    self.assertTrue(ranking.top_k_hit([9.0, 0.0, 5.0], truth, 1))
    self.assertAlmostEqual(ranking.regret([9.0, 0.0, 5.0], truth), 0.0)

  def test_seed_ceiling(self):
    v = np.array([[1, 2, 3, 4], [1, 3, 2, 4], [1, 2, 3, 4]], float)
    c = ranking.seed_ceiling(v)
    self.assertEqual(c["pairs"], 3)
    # Pairs (0,1), (0,2), (1,2): τ = 2/3, 1, 2/3.
    self.assertAlmostEqual(c["tau_mean"], (4 / 6 + 1 + 4 / 6) / 3)
    self.assertAlmostEqual(c["tau_min"], 4 / 6)
    self.assertAlmostEqual(c["tau_max"], 1.0)

  @parameterized.parameters(([1.0], [1.0]), ([1.0, 2.0], [1.0, 2.0, 3.0]))
  def test_bad_shapes(self, a, b):
    with self.assertRaises(ValueError):
      ranking.kendall_tau(a, b)

  def test_load_truth_errors(self):
    with tempfile.TemporaryDirectory() as d:
      path = pathlib.Path(d) / "t.json"
      with self.assertRaisesRegex(ValueError, "not found"):
        ranking.load_truth(path)
      path.write_text(json.dumps({"archs": ["a", "b"], "valid_ppl": [[1.0]]}))
      with self.assertRaisesRegex(ValueError, r"\[seeds, 2\]"):
        ranking.load_truth(path)
      path.write_text(
        json.dumps({"archs": ["a", "b"], "valid_ppl": [[1.0, 3.0], [3.0, 5.0]]})
      )
      names, ppl = ranking.load_truth(path)
      self.assertEqual(names, ["a", "b"])
      np.testing.assert_allclose(ppl, [2.0, 4.0])
      np.testing.assert_allclose(
        ranking.truth_for(path, ["b", "a"]), [4.0, 2.0]
      )
      with self.assertRaisesRegex(ValueError, "does not list"):
        ranking.truth_for(path, ["a", "c"])
      with self.assertRaisesRegex(ValueError, "does not list"):
        ranking.truth_for(path, ["a"])


def _space():
  c = space32.get_config("enas,smoke")
  return c, enas_truth.space_archs(c)


class SpaceTest(absltest.TestCase):
  def test_enumeration_complete_and_unique(self):
    _, archs = _space()
    names = [search_space.to_string(a) for a in search_space.unstack(archs)]
    self.assertLen(names, 32)
    self.assertLen(set(names), 32)
    # Independently: every (act1, parent2, act2) with node 0 tanh.
    acts = search_space.ACTIVATIONS
    expected = {
      f"tanh|0:{a1}|{p2}:{a2}" for a1 in acts for p2 in (0, 1) for a2 in acts
    }
    self.assertEqual(set(names), expected)

  def test_samplers_stay_in_the_space(self):
    c, archs = _space()
    names = {search_space.to_string(a) for a in search_space.unstack(archs)}
    first = enas_setup.fixed_first_activation(c)
    uni = sampler.sample_uniform_architectures(
      key=jax.random.key(0), k=400, num_nodes=3, fixed_first_activation=first
    )
    params = controller.init_params(key=jax.random.key(1), num_nodes=3)
    ctrl, logp, ent = sampler.sample_architectures(
      params,
      key=jax.random.key(2),
      k=400,
      num_nodes=3,
      fixed_first_activation=first,
    )
    for batch in (uni, ctrl):
      got = {search_space.to_string(a) for a in search_space.unstack(batch)}
      self.assertContainsSubset(got, names)
      self.assertGreater(len(got), 24)  # both reach most of the space
    # Node 0 is not a decision: its log-prob and entropy are zero.
    lps, ents = controller.decision_log_probs(
      params,
      jax.tree.map(lambda a: a[0], ctrl),
      fixed_first_activation=first,
    )
    self.assertEqual(float(lps[0]), 0.0)
    self.assertEqual(float(ents[0]), 0.0)
    # And the sampled log-prob equals the teacher-forced score.
    lp0, _ = controller.log_prob(
      params, jax.tree.map(lambda a: a[0], ctrl), fixed_first_activation=first
    )
    np.testing.assert_allclose(lp0, logp[0], rtol=1e-5)

  def test_controller_probabilities_sum_to_one_over_the_space(self):
    c, archs = _space()
    params = controller.init_params(key=jax.random.key(3), num_nodes=3)
    logp = jax.vmap(
      lambda a: controller.log_prob(
        params, a, fixed_first_activation=enas_setup.fixed_first_activation(c)
      )[0]
    )(archs)
    np.testing.assert_allclose(jnp.sum(jnp.exp(logp)), 1.0, rtol=1e-5)

  def test_policy_entropy(self):
    c, archs = _space()
    c.model.vocab_size = 20
    model = enas_setup.make_model(c)
    # Sharpened logits: the policy is far from uniform.
    params = controller.init_params(key=jax.random.key(4), num_nodes=3)
    params = jax.tree.map(lambda x: 30.0 * x, params)
    steps = enas_steps.Steps(model=model, config=c)
    got = float(steps.policy_entropy(params, archs))
    # Independently: one teacher-forced score per cell, in a Python loop.
    first = enas_setup.fixed_first_activation(c)
    p = np.exp(
      [
        float(
          controller.log_prob(
            params,
            a,
            temperature=c.controller.temperature,
            tanh_constant=c.controller.tanh_constant,
            fixed_first_activation=first,
          )[0]
        )
        for a in search_space.unstack(archs)
      ]
    )
    self.assertAlmostEqual(p.sum(), 1.0, places=4)
    want = -np.sum(p * np.log(p))
    self.assertAlmostEqual(got, want, places=4)
    self.assertLess(got, np.log(32) - 0.1)
    c.search.policy = "random"
    steps = enas_steps.Steps(model=model, config=c)
    self.assertAlmostEqual(
      float(steps.policy_entropy(params, archs)), np.log(32), places=5
    )

  def test_unknown_first_activation(self):
    c = space32.get_config("enas,smoke")
    c.search.fixed_first_activation = "gelu"
    with self.assertRaisesRegex(ValueError, "fixed_first_activation"):
      enas_search.validate(c)


class ChunkedCrossEntropyTest(parameterized.TestCase):
  @parameterized.parameters(1, 5, 7, 12)
  def test_equals_full_logits(self, chunk):
    rng = np.random.default_rng(0)
    params = {
      "embedding": jnp.asarray(rng.normal(size=(11, 3)), jnp.float32),
      "decoder_bias": jnp.asarray(rng.normal(size=(11,)), jnp.float32),
    }
    out = jnp.asarray(rng.normal(size=(4, 3, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 11, size=(4, 3)), jnp.int32)

    def full(p, o):
      logits = jnp.einsum("tbh,vh->tbv", o, p["embedding"])
      logits = logits + p["decoder_bias"][None, None]
      return losses.cross_entropy(logits, y)

    def chunked(p, o):
      return losses.chunked_cross_entropy(p, o, y, chunk=chunk)

    np.testing.assert_allclose(
      chunked(params, out), full(params, out), rtol=1e-6
    )
    g1 = jax.grad(full, argnums=(0, 1))(params, out)
    g2 = jax.grad(chunked, argnums=(0, 1))(params, out)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


class ChunkedEvaluationTest(parameterized.TestCase):
  """Search evaluations with `ce_chunk` equal the full-logits path."""

  def _steps(self, chunk, eval_bn):
    c = space32.get_config("enas,reference,smoke")
    c.model.vocab_size, c.model.hidden, c.model.ce_chunk = 20, 4, chunk
    c.data.batch_size, c.data.bptt = 3, 4
    c.search.eval_bn = eval_bn
    c.search.eval_chunk = 2
    model = enas_setup.make_model(c)
    return c, model, enas_steps.Steps(model=model, config=c)

  @parameterized.parameters("batch", "running")
  def test_windows_and_batch_evaluations(self, eval_bn):
    c, model, full = self._steps(0, eval_bn)
    _, _, chunked = self._steps(5, eval_bn)
    v = supernet.init_variables(model, key=jax.random.key(0))
    shared = enas_setup.SharedState(
      params=v["params"], batch_stats=v["batch_stats"], opt_state=()
    )
    archs = jax.tree.map(lambda a: a[:3], enas_truth.space_archs(c))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=(2, 4, 3)).astype(np.int32)
    y = rng.integers(0, 20, size=(2, 4, 3)).astype(np.int32)
    m = np.ones((2, 4, 3), np.float32)
    m[1, 2:] = 0.0  # padding at the end of the last window
    got = chunked.eval_archs_windows(shared, archs, x, y, m)
    want = full.eval_archs_windows(shared, archs, x, y, m)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Independently: a Python loop over archs and windows, full logits.
    variables = {"params": shared.params, "batch_stats": shared.batch_stats}
    for k in range(3):
      arch = jax.tree.map(lambda a, k=k: a[k], archs)
      hidden, total = jnp.zeros((3, 4)), 0.0
      for w in range(2):
        logits, hidden = full.eval_logits(variables, arch, x[w], hidden)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y[w])
        total += float(jnp.sum(nll * m[w]))
      np.testing.assert_allclose(got[k], total, rtol=1e-5)
    h = jnp.zeros((3, 4))
    p1, h1 = chunked.eval_many(shared, archs, x[0], y[0], h)
    p2, h2 = full.eval_many(shared, archs, x[0], y[0], h)
    np.testing.assert_allclose(p1, p2, rtol=1e-5)
    np.testing.assert_allclose(h1, h2, rtol=1e-5, atol=1e-6)

  def test_fisher_step_chunked_equals_full(self):
    _, model, full = self._steps(0, "batch")
    _, _, chunked = self._steps(5, "batch")
    v = supernet.init_variables(model, key=jax.random.key(0))
    shared = enas_setup.SharedState(
      params=v["params"], batch_stats=v["batch_stats"], opt_state=()
    )
    from wpl_jax.enas import wpl as enas_wpl

    state = enas_wpl.init_state(v["params"])
    arch = search_space.from_string("tanh|0:relu|1:sigmoid")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 20, size=(4, 3)).astype(np.int32)
    y = rng.integers(0, 20, size=(4, 3)).astype(np.int32)
    h = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    key = jax.random.key(5)
    s1, h1 = chunked.fisher_step(shared, state, arch, x, y, h, 60.0, key=key)
    s2, h2 = full.fisher_step(shared, state, arch, x, y, h, 60.0, key=key)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(h1, h2, rtol=1e-5, atol=1e-6)


def _tiny_truth_config():
  c = space32.get_config("truth,smoke")
  c.model.vocab_size = 20
  c.model.hidden = 4
  c.model.ce_chunk = 5
  c.data.batch_size = 3
  c.data.bptt = 4
  return c


class TruthTrainerTest(parameterized.TestCase):
  @parameterized.parameters(1, 2)
  def test_mapped_step_equals_a_loop_of_single_cells(self, arch_batch):
    c = _tiny_truth_config()
    c.truth.arch_batch = arch_batch
    trainer = enas_truth.TruthTrainer(c)
    archs = jax.tree.map(
      lambda a: a[jnp.array([3, 20])], enas_truth.space_archs(c)
    )
    init_keys = jax.random.split(jax.random.key(0), 2)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 20, size=(3, 4, 3)).astype(np.int32)
    ys = rng.integers(0, 20, size=(3, 4, 3)).astype(np.int32)
    step_keys = [jax.random.split(jax.random.key(10 + i), 2) for i in range(3)]

    shared = trainer.init(init_keys)
    hidden = jnp.zeros((2, 3, 4), jnp.float32)
    for i in range(3):
      shared, hidden, loss = trainer.train_step(
        shared, hidden, archs, xs[i], ys[i], jnp.float32(1.0), step_keys[i]
      )

    # Independently: one model per cell, its own steps, in a Python loop.
    for cell in range(2):
      arch = jax.tree.map(lambda a, cell=cell: a[cell], archs)
      v = supernet.init_variables(trainer.model, key=init_keys[cell])
      one = enas_setup.SharedState(
        params=v["params"],
        batch_stats=v["batch_stats"],
        opt_state=trainer.tx.init(v["params"]),
      )
      h = jnp.zeros((3, 4), jnp.float32)
      for i in range(3):
        one, h, m = trainer.steps.shared_step(
          one,
          None,
          arch,
          xs[i],
          ys[i],
          h,
          jnp.float32(1.0),
          jnp.float32(0.0),
          key=step_keys[i][cell],
        )
      got = jax.tree.map(lambda a, cell=cell: a[cell], shared.params)
      for a, b in zip(
        jax.tree.leaves(got), jax.tree.leaves(one.params), strict=True
      ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
      np.testing.assert_allclose(loss[cell], m["loss"], rtol=1e-5)
      np.testing.assert_allclose(hidden[cell], h, rtol=1e-5, atol=1e-6)

  def test_evaluation_scores_every_token(self):
    c = _tiny_truth_config()
    trainer = enas_truth.TruthTrainer(c)
    archs = jax.tree.map(lambda a: a[:2], enas_truth.space_archs(c))
    shared = trainer.init(jax.random.split(jax.random.key(0), 2))
    ids = np.random.default_rng(1).integers(0, 20, size=23).astype(np.int32)
    x, y, m = ptb.eval_windows(ids, 1, 4)
    self.assertEqual(m.sum(), 22)  # every token but the first is a target
    nll = trainer.evaluate(shared, archs, x, y, m)
    # Independently: one window of all 22 targets per cell.
    for cell in range(2):
      p = jax.tree.map(lambda a, cell=cell: a[cell], shared.params)
      st = jax.tree.map(lambda a, cell=cell: a[cell], shared.batch_stats)
      arch = jax.tree.map(lambda a, cell=cell: a[cell], archs)
      logits, _ = trainer.model.apply(
        {"params": p, "batch_stats": st},
        ids[:-1, None],
        jnp.zeros((1, 4)),
        arch,
      )
      want = 22 * losses.cross_entropy(logits, ids[1:, None])
      np.testing.assert_allclose(nll[cell], want, rtol=1e-5)


_SHARDED = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
from experiments import space32
from wpl_jax.enas.train import truth as enas_truth
assert jax.local_device_count() == 4, jax.devices()
c = space32.get_config("truth,smoke")
c.model.vocab_size, c.model.hidden, c.model.ce_chunk = 20, 4, 5
c.data.batch_size, c.data.bptt = 3, 4
c.truth.arch_batch, c.truth.eval_arch_batch = 1, 2
rng = np.random.default_rng(0)
x = rng.integers(0, 20, size=(2, 4, 3)).astype(np.int32)
ex = rng.integers(0, 20, size=(2, 4, 3)).astype(np.int32)
em = np.ones((2, 4, 3), np.float32)
out = []
for d in (4, 1):
  tr = enas_truth.TruthTrainer(c, num_devices=d)
  archs = jax.tree.map(lambda a: a[:8], enas_truth.space_archs(c))
  st = tr.init(jax.random.split(jax.random.key(0), 8))
  h = jnp.zeros((8, 3, 4))
  for i in range(2):
    keys = jax.random.split(jax.random.key(i), 8)
    lr = jnp.float32(1.0)
    st, h, loss = tr.train_step(st, h, archs, x[i], x[i], lr, keys)
  if d == 4:
    leaf = st.params["cell"]["edge_h"]
    assert len(leaf.sharding.device_set) == 4, leaf.sharding
  nll = tr.evaluate(st, archs, ex, ex, em)
  out.append((jax.device_get(st.params), np.asarray(loss), np.asarray(nll)))
diff = max(
  float(np.max(np.abs(a - b)))
  for a, b in zip(jax.tree.leaves(out[0]), jax.tree.leaves(out[1]))
)
print("maxdiff", diff)
"""


class ShardedTruthTest(absltest.TestCase):
  def test_four_devices_equal_one(self):
    r = subprocess.run(
      [sys.executable, "-c", _SHARDED, str(_ROOT)],
      capture_output=True,
      text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      timeout=600,
      check=False,
    )
    self.assertEqual(r.returncode, 0, r.stderr[-3000:])
    diff = float(r.stdout.split("maxdiff")[-1])
    self.assertLess(diff, 1e-5)


@pytest.mark.skipif(not (DATA_DIR / "ptb").exists(), reason="no PTB data")
class SeedAxisTest(absltest.TestCase):
  """K seeds side by side in one program equal K one-seed runs."""

  def test_two_seeds_equal_two_runs(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)

    def run(seed, num_seeds, name):
      c = space32.get_config("truth,published,smoke")
      c.data_dir = str(DATA_DIR / "ptb")
      c.seed = seed
      c.truth.num_seeds = num_seeds
      return enas_truth.train_and_evaluate(c, str(tmp / name))

    both = run(0, 2, "both")
    self.assertEqual(both["seeds"], [0, 1])
    merged = space32_truth.merge([tmp / "both"])
    self.assertEqual(merged["seeds"], [0, 1])
    for k in (0, 1):
      one = run(k, 1, f"s{k}")
      self.assertNotIn("seeds", one)
      np.testing.assert_allclose(
        both["valid_ppl"][k], one["valid_ppl"], rtol=1e-5
      )
      for h_both, h_one in zip(both["history"], one["history"], strict=True):
        np.testing.assert_allclose(
          h_both["valid_ppl"][k], h_one["valid_ppl"], rtol=1e-5
        )
      np.testing.assert_allclose(
        merged["valid_ppl"][k], one["valid_ppl"], rtol=1e-5
      )
    # The seeds really differ (init and dropout keys).
    self.assertGreater(np.max(np.abs(np.subtract(*both["valid_ppl"]))), 1e-3)
    # Two one-seed runs merge to the same ground truth; a seed twice is
    # refused, also when one run trained several seeds.
    singles = space32_truth.merge([tmp / "s0", tmp / "s1"])
    np.testing.assert_allclose(
      singles["valid_ppl"], merged["valid_ppl"], rtol=1e-5
    )
    with self.assertRaisesRegex(ValueError, "duplicate seeds"):
      space32_truth.merge([tmp / "s0", tmp / "both"])


class ValidSplitTest(absltest.TestCase):
  def test_forget_stream_and_heldout_are_disjoint(self):
    c = space32.get_config("enas,smoke")
    ids = np.arange(5000, dtype=np.int32)  # token value = its position
    s = enas_search.valid_splits(c, ids)
    fx, fy = s["forget"]
    forget = set(np.concatenate([fx.ravel(), fy.ravel()]))
    stream = set(s["stream"].ravel())
    hx, hy, hm = s["heldout"]
    held = set(hx.ravel()[hm.ravel() > 0]) | set(hy.ravel()[hm.ravel() > 0])
    self.assertEmpty(forget & stream)
    self.assertEmpty(held & (forget | stream))
    self.assertTrue(all(t >= 5000 - c.search.heldout_tokens for t in held))

  def test_too_much_heldout(self):
    c = space32.get_config("enas,smoke")
    c.search.heldout_tokens = 4990
    with self.assertRaisesRegex(ValueError, "heldout_tokens"):
      enas_search.valid_splits(c, np.arange(5000))


def _run_main(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, str(_ROOT / "main.py"), *flags],
    capture_output=True,
    text=True,
    cwd=str(_ROOT),
    env=env,
    timeout=900,
    check=False,
  )


@pytest.mark.skipif(not (DATA_DIR / "ptb").exists(), reason="no PTB data")
class SmokeTest(absltest.TestCase):
  """main.py end to end on real PTB at tiny sizes."""

  def test_truth_merge_search_report(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    data = f"--data_dir={DATA_DIR / 'ptb'}"
    cfg = str(_ROOT / "experiments/space32.py")
    r = _run_main(f"--config={cfg}:truth,smoke", data, f"--workdir={tmp}/t0")
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    truth = json.loads((tmp / "t0" / "truth.json").read_text())
    self.assertLen(truth["archs"], 32)
    self.assertLen(truth["valid_ppl"], 32)
    self.assertTrue(np.all(np.isfinite(truth["valid_ppl"])))
    self.assertIn("| rank | cell | valid ppl |", r.stdout)

    # A second "seed": the same run's file with another seed and values,
    # to exercise the merge without a second training run.
    (tmp / "t1").mkdir()
    other = dict(
      truth, seed=1, valid_ppl=list(np.array(truth["valid_ppl"])[::-1])
    )
    (tmp / "t1" / "truth.json").write_text(json.dumps(other))
    merged = space32_truth.merge([tmp / "t0", tmp / "t1"])
    self.assertEqual(merged["seeds"], [0, 1])
    self.assertEqual(merged["ceiling"]["pairs"], 1)
    path = tmp / "truth.json"
    path.write_text(json.dumps(merged))

    r = _run_main(
      f"--config={cfg}:random,reference,smoke",
      data,
      f"--workdir={tmp}/s",
      f"--config.search.truth_path={path}",
    )
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    recs = [json.loads(x) for x in (tmp / "s" / "metrics.jsonl").open()]
    self.assertLen(recs, 2)
    for rec in recs:
      self.assertEqual((rec["policy"], rec["wpl"]), ("random", "reference"))
      self.assertBetween(rec["rank_tau"], -1.0, 1.0)
      self.assertLen(rec["rank_shared_ppl"], 32)
      self.assertIn(rec["rank_top3_hit"], (0.0, 1.0))
      self.assertGreaterEqual(rec["rank_regret"], 0.0)
      # A random search trains no controller.
      self.assertIsNone(rec["reward"])
      self.assertAlmostEqual(rec["policy_entropy"], np.log(32), places=5)
      self.assertAlmostEqual(rec["uniform_entropy"], np.log(32), places=5)
    r = subprocess.run(
      [
        sys.executable,
        str(_ROOT / "experiments/space32_report.py"),
        f"--runs={tmp}/s",
        f"--out={tmp}/report",
        f"--truth={path}",
      ],
      capture_output=True,
      text=True,
      check=False,
    )
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    self.assertIn("random / WPL reference", r.stdout)
    self.assertIn("seed-to-seed", r.stdout)
    self.assertTrue((tmp / "report" / "figure.png").exists())


class ReportLoadTest(absltest.TestCase):
  def test_seed_from_the_run_folder_name(self):
    # `space32_report.load_runs` reads a run's seed from its folder: the
    # driver's NAME_sN, or seed_N of a search over seeds in one program.
    tmp = pathlib.Path(self.create_tempdir().full_path)
    rec = {"policy": "enas", "wpl": "off", "rank_tau": 0.1}
    rec["rank_shared_ppl"] = [1.0] * 32
    for name in ("enas_off_s3", "seed_5", "other"):
      (tmp / name).mkdir()
      (tmp / name / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
    # A subprocess: space32_report defines absl flags that others share.
    code = (
      "import json, sys; from experiments import space32_report as r; "
      "g = r.load_runs(sys.argv[1:]); "
      "print(json.dumps(sorted(str(x[0]['seed']) for x in g[('enas', 'off')])))"
    )
    runs = [str(tmp / n) for n in ("enas_off_s3", "seed_5", "other")]
    r = subprocess.run(
      [sys.executable, "-c", code, *runs],
      capture_output=True,
      text=True,
      cwd=_ROOT,
      check=False,
    )
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    self.assertEqual(json.loads(r.stdout), ["3", "5", "None"])


if __name__ == "__main__":
  absltest.main()
