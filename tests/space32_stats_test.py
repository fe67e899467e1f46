"""Tests of experiments/space32_stats.py on synthetic runs (no training)."""

import json
import math
import pathlib
import tempfile

import numpy as np
from absl.testing import absltest

from experiments import space32_stats
from wpl_jax.enas import ranking

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PUBLISHED = _ROOT / "experiments" / "results" / "space32_published.json"

# (policy, wpl, seed): primary τ (None = diverged). Seed 1 of uniform / off
# diverged, and every uniform / reference run did; ENAS / reference has no
# seed 2.
_TAU = {
  ("enas", "off", 0): 0.5,
  ("enas", "off", 1): 0.4,
  ("enas", "off", 2): 0.3,
  ("random", "off", 0): 0.2,
  ("random", "off", 1): None,
  ("random", "off", 2): 0.4,
  ("enas", "reference", 0): 0.1,
  ("enas", "reference", 1): 0.6,
  ("random", "reference", 0): None,
  ("random", "reference", 1): None,
  ("random", "reference", 2): None,
}


def _runs():
  """Run dicts as `analyse` leaves them: metrics set, records not needed."""
  runs = []
  for (policy, wpl, seed), tau in _TAU.items():
    runs.append(
      {
        "policy": policy,
        "wpl": wpl,
        "seed": seed,
        "diverged": None if tau is not None else "error: diverged at epoch 3",
        "metrics": (
          None
          if tau is None
          else {space32_stats.PRIMARY: tau, space32_stats.SECONDARY: tau / 2}
        ),
      }
    )
  return runs


class VersusRandomTest(absltest.TestCase):
  def test_against_hand(self):
    rows = {r["arm"]: r for r in space32_stats.versus_random(_runs())}
    # ENAS / off: τ 0.5, 0.4, 0.3: mean 0.4, sd 0.1, t(0.975, 2) = 4.302653
    # (tables): 0.4 ± 4.302653 · 0.1 / √3; all 3 above 0: exact p 2/2³.
    r = rows[space32_stats.arm_label(("enas", "off"))]
    self.assertEqual(r["n"], 3)
    self.assertAlmostEqual(r["mean"], 0.4)
    half = 4.302653 * 0.1 / math.sqrt(3)
    np.testing.assert_allclose(r["ci_t"], [0.4 - half, 0.4 + half], rtol=1e-6)
    self.assertAlmostEqual(r["p"], 0.25)
    lo, hi = r["ci_boot"]  # resampled means of {0.3, 0.4, 0.5}
    self.assertTrue(0.3 <= lo < 0.4 < hi <= 0.5)
    # No finished run: nothing to test, Holm counts it as p = 1.
    none = rows[space32_stats.arm_label(("random", "reference"))]
    self.assertEqual((none["n"], none["p"], none["ci_t"]), (0, None, None))
    # Two positive τ's: exact two-sided p 2/2² = 0.5 (uniform / off, ENAS /
    # reference). Holm over 4 (None as 1): 4 · 0.25 = 1, then 1 for all.
    for arm in (("random", "off"), ("enas", "reference")):
      self.assertAlmostEqual(rows[space32_stats.arm_label(arm)]["p"], 0.5)
    self.assertEqual(
      [r["p_holm"] for r in rows.values()], [1.0, 1.0, 1.0, None]
    )


class HolmTest(absltest.TestCase):
  def test_against_hand(self):
    # Sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1: 0.04, 0.09, 0.08 →
    # 0.09 (monotone), 0.2.
    got = space32_stats.holm([0.01, 0.04, 0.03, 0.2])
    np.testing.assert_allclose(got, [0.04, 0.09, 0.09, 0.2])
    self.assertEqual(space32_stats.holm([0.5, 0.6]), [1.0, 1.0])

  def test_missing_counts_as_one(self):
    # The family stays 4: 0.01·4, 0.02·3, 0.03·2.
    got = space32_stats.holm([0.01, None, 0.03, 0.02])
    self.assertIsNone(got[1])
    np.testing.assert_allclose([got[0], got[2], got[3]], [0.04, 0.06, 0.06])


class PairingTest(absltest.TestCase):
  def test_complete_cases(self):
    runs = _runs()
    p = space32_stats.PRIMARY
    off = space32_stats.paired(runs, ("enas", "off"), ("random", "off"), p)
    self.assertEqual(off["seeds"], [0, 2])
    self.assertEqual(off["dropped"], [1])
    np.testing.assert_allclose(off["diffs"], [0.3, -0.1])
    ref = space32_stats.paired(
      runs, ("enas", "reference"), ("random", "reference"), p
    )
    self.assertEqual((ref["seeds"], ref["dropped"]), ([], [0, 1]))
    enas = space32_stats.paired(runs, ("enas", "reference"), ("enas", "off"), p)
    self.assertEqual(enas["seeds"], [0, 1])  # no seed 2 in reference
    np.testing.assert_allclose(enas["diffs"], [-0.4, 0.2])

    rows = space32_stats.compare(runs, p)
    self.assertEqual([r["n"] for r in rows], [2, 0, 2, 0])
    self.assertIsNone(rows[1]["p"])
    self.assertIsNone(rows[1]["p_holm"])
    self.assertTrue(all(r["too_few"] for r in rows))
    # Exact signed-rank p of two differences of mixed sign: 1.
    self.assertAlmostEqual(rows[0]["p"], 1.0)
    self.assertEqual(
      [r["p_holm"] for r in rows], space32_stats.holm([r["p"] for r in rows])
    )
    self.assertAlmostEqual(rows[0]["diff_mean"], 0.1)
    self.assertAlmostEqual(rows[0]["diff_sd"], math.sqrt(0.08))

  def test_sensitivity_sets_diverged_to_minus_one(self):
    runs = _runs()
    rows = space32_stats.compare(runs, space32_stats.PRIMARY, -1.0)
    got = {r["comparison"]: r for r in rows}
    off = got["WPL off: ENAS − uniform"]
    self.assertEqual((off["seeds"], off["substituted"]), ([0, 1, 2], 1))
    np.testing.assert_allclose(off["diffs"], [0.3, 1.4, -0.1])
    # |d| ranks 2, 3, 1; W+ = 5 of 6: P(W+ >= 5) = 2/8, two-sided 0.5.
    self.assertAlmostEqual(off["p"], 0.5)
    ref = got["WPL reference: ENAS − uniform"]
    np.testing.assert_allclose(ref["diffs"], [1.1, 1.6])
    self.assertEqual(ref["substituted"], 2)
    uni = got["uniform: reference − off"]
    np.testing.assert_allclose(uni["diffs"], [-1.2, 0.0, -1.4])
    self.assertEqual(uni["substituted"], 3)
    # The secondary metric gets the same substitution.
    rows = space32_stats.compare(runs, space32_stats.SECONDARY, -1.0)
    np.testing.assert_allclose(rows[0]["diffs"], [0.15, 1.2, -0.05])

  def test_divergence_and_sign_test(self):
    d = space32_stats.divergence(_runs())
    self.assertEqual(
      [(a["arm"], a["runs"], a["diverged"]) for a in d["arms"]],
      [
        ("ENAS / WPL off", 3, 0),
        ("uniform / WPL off", 3, 1),
        ("ENAS / WPL reference", 2, 0),
        ("uniform / WPL reference", 3, 3),
      ],
    )
    enas, uniform = d["sign_tests"]
    self.assertEqual(enas["pairs"], 2)
    self.assertIsNone(enas["p"])  # no discordant pair
    self.assertEqual(
      (uniform["only_reference"], uniform["only_off"], uniform["both"]),
      (2, 0, 1),
    )
    self.assertAlmostEqual(uniform["p"], 0.5)  # 2 · (1/2)²


class PowerTest(absltest.TestCase):
  def test_against_hand(self):
    # mean 0.1, sd 0.2: (1.959964 + 0.841621)² · 4 / 0.955 = 32.87 → 33.
    self.assertEqual(space32_stats.pairs_for_power([-0.1, 0.1, 0.3]), 33)
    # mean 0.5, sd 0.5: 7.8489 / 0.955 = 8.22 → 9.
    self.assertEqual(space32_stats.pairs_for_power([0.0, 0.5, 1.0]), 9)

  def test_not_available(self):
    self.assertIsNone(space32_stats.pairs_for_power([0.1, 0.3]))
    self.assertIsNone(space32_stats.pairs_for_power([0.1, 0.1, 0.1]))


class AnalyseTest(absltest.TestCase):
  def test_end_to_end_on_synthetic_records(self):
    pub = ranking.load_published(_PUBLISHED)
    names = sorted(pub.archs)
    rng = np.random.default_rng(0)
    truth = rng.uniform(100, 200, size=32)

    def records(noise, epochs=6, inf=False):
      out = []
      for e in range(epochs):
        shared = truth + rng.normal(scale=noise, size=32)
        ppl = shared.tolist()
        if inf:
          ppl[3] = "inf"  # as the stored runs write an overflow
        out.append(
          {
            "epoch": e,
            "rank_shared_ppl": ppl,
            "rank_tau": ranking.kendall_tau(shared, truth),
            "rank_top3_hit": 1.0,
            "rank_regret": 0.0,
            "policy_entropy": 3.0,
            "uniform_entropy": math.log(32),
            "wpl_start_epoch": 2,
            "diff_mean": float(e),
            "diff_best5": 2.0 * e,
            "diff_max": 3.0 * e,
          }
        )
      return out

    runs = []
    for policy in ("enas", "random"):
      for wpl in ("off", "reference"):
        for seed in (0, 1):
          diverged = (policy, wpl, seed) == ("random", "reference", 0)
          runs.append(
            {
              "policy": policy,
              "wpl": wpl,
              "seed": seed,
              "diverged": "error: diverged at epoch 2" if diverged else None,
              "records": [] if diverged else records(20, inf=seed == 1),
              "path": "",
              "commit": None,
              "seconds": None,
            }
          )
    refs = [("t", "truth", truth), ("pub", "published", pub)]
    result = space32_stats.analyse(runs, names, truth, refs)
    m = result["runs"][0]["metrics"]
    recs = runs[0]["records"]
    self.assertAlmostEqual(
      m[space32_stats.PRIMARY], np.mean([r["rank_tau"] for r in recs[-4:]])
    )
    self.assertAlmostEqual(m["forget_mean"], np.mean([2, 3, 4, 5]))
    self.assertAlmostEqual(m["forget_best5"], np.mean([4, 6, 8, 10]))
    self.assertAlmostEqual(m["forget_max"], np.mean([6, 9, 12, 15]))
    self.assertTrue(-1 <= m["idseq"] <= 1)
    # The public code's statistic against our truth: the last epoch's
    # shared perplexities ranked, against the truth sorted with its ids.
    want = space32_stats.ranking.id_sequence_tau(
      space32_stats.shared_ppl(recs[-1]),
      names,
      space32_stats.ranking.as_order(truth, names),
    )
    self.assertAlmostEqual(m["idseq_truth"], want)
    arms = {a["arm"]: a for a in result["arms"]}
    # Both ENAS / off seeds forget 3.5 on average (epochs 2-5): median 3.5.
    self.assertAlmostEqual(arms["ENAS / WPL off"]["forget_median"], 3.5)
    self.assertEqual(arms["uniform / WPL reference"]["diverged"], 1)
    self.assertEqual(
      arms["uniform / WPL reference"][space32_stats.PRIMARY]["n"], 1
    )
    rows = result["comparisons"]["complete"]
    self.assertEqual([r["n"] for r in rows[:4]], [2, 1, 2, 1])
    rows = result["comparisons"]["sensitivity"]
    self.assertEqual([r["n"] for r in rows[:4]], [2, 2, 2, 2])
    truths = {r["arm"]: r for r in result["truths"]}
    self.assertGreater(truths["ENAS / WPL off"]["t"], 0.5)
    self.assertIn("pub id-seq", truths["ENAS / WPL off"])
    self.assertIn("t id-seq", truths["ENAS / WPL off"])
    table = space32_stats.render(result, "# synthetic")
    self.assertIn("too few pairs", table)
    self.assertIn("diverged at epoch 2", table)
    with tempfile.TemporaryDirectory() as tmp:  # JSON-ready (inf included)
      path = pathlib.Path(tmp) / "stats.json"
      space32_stats.metrics_lib.write_json(path, result)
      self.assertIn("arms", json.loads(path.read_text()))


if __name__ == "__main__":
  absltest.main()
