"""Tests of the published 32-cell order and its id-sequence statistic."""

import json
import pathlib
import tempfile

import numpy as np
from absl.testing import absltest

from wpl_jax.enas import ranking, search_space

_PUBLISHED = (
  pathlib.Path(__file__).resolve().parents[1]
  / "experiments"
  / "results"
  / "space32_published.json"
)


def _tau_by_pairs(x, y):
  """Kendall τ-a of paired sequences, counted pair by pair (no ties)."""
  n, score = len(x), 0
  for p in range(n):
    for q in range(p + 1, n):
      score += np.sign(x[p] - x[q]) * np.sign(y[p] - y[q])
  return score / (n * (n - 1) / 2)


def _space_names():
  space = search_space.enumerate_space(3, fixed_first_activation="tanh")
  return [search_space.to_string(a) for a in search_space.unstack(space)]


class IdSequenceTauTest(absltest.TestCase):
  """A 4-cell toy order: cells a..d, best first, with ids 2, 0, 3, 1."""

  def setUp(self):
    super().setUp()
    self.pub = ranking.PublishedOrder(
      archs=["a", "b", "c", "d"], genotype_ids=np.array([2, 0, 3, 1])
    )

  def test_by_hand(self):
    names, shared = ["d", "c", "b", "a"], [5.0, 7.0, 6.0, 9.0]
    # Shared order d, b, c, a: ids w = 1, 0, 3, 2 against g = 2, 0, 3, 1.
    # Position pairs (0,1) C, (0,2) C, (0,3) D, (1,2) C, (1,3) C, (2,3) C.
    got = ranking.id_sequence_tau(shared, names, self.pub)
    self.assertAlmostEqual(got, (5 - 1) / 6)
    self.assertAlmostEqual(got, _tau_by_pairs([2, 0, 3, 1], [1, 0, 3, 2]))
    # The rank correlation of the same data: only (b, c) agrees.
    ranks = ranking.published_ranks(self.pub, names)
    np.testing.assert_array_equal(ranks, [3, 2, 1, 0])
    self.assertAlmostEqual(ranking.kendall_tau(shared, ranks), (1 - 5) / 6)

  def test_ties_broken_by_id(self):
    # All equal: sorted by id, w = 0, 1, 2, 3; g has 3 C and 3 D pairs.
    got = ranking.id_sequence_tau([1.0] * 4, ["a", "b", "c", "d"], self.pub)
    self.assertAlmostEqual(got, 0.0)
    self.assertAlmostEqual(got, _tau_by_pairs([2, 0, 3, 1], [0, 1, 2, 3]))

  def test_names_must_match(self):
    with self.assertRaisesRegex(ValueError, "published cells"):
      ranking.id_sequence_tau([1.0, 2.0, 3.0], ["a", "b", "c"], self.pub)
    with self.assertRaisesRegex(ValueError, "published cells"):
      ranking.id_sequence_tau([1.0] * 4, ["a", "b", "c", "e"], self.pub)
    with self.assertRaisesRegex(ValueError, "finite"):
      ranking.id_sequence_tau([1.0, 2.0, np.nan, 3.0], list("abcd"), self.pub)


class AsOrderTest(absltest.TestCase):
  def test_a_truth_as_an_order(self):
    names = _space_names()
    rng = np.random.default_rng(3)
    ppl = rng.uniform(100, 300, len(names))
    order = ranking.as_order(ppl, names)
    # Best first, the public ids of those cells.
    self.assertEqual(order.archs[0], names[int(np.argmin(ppl))])
    self.assertEqual(
      list(order.genotype_ids),
      [ranking.public_genotype_id(n) for n in order.archs],
    )
    np.testing.assert_array_equal(order.valid_ppl, np.sort(ppl))
    # A ranking scored against itself: 1; against its reverse, the
    # pair-by-pair count of the id sequences.
    self.assertAlmostEqual(ranking.id_sequence_tau(ppl, names, order), 1.0)
    got = ranking.id_sequence_tau(-ppl, names, order)
    ws = list(reversed(list(order.genotype_ids)))
    self.assertAlmostEqual(got, _tau_by_pairs(order.genotype_ids, ws))
    with self.assertRaisesRegex(ValueError, "perplexities"):
      ranking.as_order(ppl[:3], names)


class PublishedFileTest(absltest.TestCase):
  def test_the_32_cells_of_our_space(self):
    pub = ranking.load_published(_PUBLISHED)
    self.assertLen(pub.archs, 32)
    self.assertLen(set(pub.archs), 32)
    self.assertCountEqual(pub.archs, _space_names())
    self.assertEqual(sorted(pub.genotype_ids.tolist()), list(range(32)))
    self.assertIsNone(pub.valid_ppl)  # none published
    # Both ends of the transcribed order (eval-nas best_configs.py).
    self.assertEqual(pub.archs[0], "tanh|0:tanh|0:sigmoid")
    self.assertEqual(pub.archs[-1], "tanh|0:identity|1:identity")

  def test_ids_follow_the_public_rule(self):
    pub = ranking.load_published(_PUBLISHED)
    for name, gid in zip(pub.archs, pub.genotype_ids, strict=True):
      self.assertEqual(ranking.public_genotype_id(name), gid, name)
    raw = json.loads(_PUBLISHED.read_text())
    for name, ((a1, p1), (a2, p2)) in zip(
      raw["archs"], raw["public_genotypes"], strict=True
    ):
      self.assertEqual(name, f"tanh|{p1}:{a1}|{p2}:{a2}")

  def test_public_ids_by_hand(self):
    # 8·op1 + 4·p2 + op2, ops tanh 0, relu 1, sigmoid 2, identity 3.
    cases = {
      "tanh|0:tanh|0:tanh": 0,
      "tanh|0:tanh|0:sigmoid": 2,
      "tanh|0:tanh|0:identity": 3,
      "tanh|0:relu|1:tanh": 12,
      "tanh|0:sigmoid|0:tanh": 16,
      "tanh|0:identity|1:identity": 31,
      # 4 nodes: ((2·8 + 4 + 3)·12 + 0 + 0) for sigmoid, 1:identity, 0:tanh.
      "tanh|0:sigmoid|1:identity|0:tanh": 276,
    }
    for name, gid in cases.items():
      self.assertEqual(ranking.public_genotype_id(name), gid, name)
    with self.assertRaisesRegex(ValueError, "node 0 must be tanh"):
      ranking.public_genotype_id("relu|0:tanh")

  def test_public_ids_are_a_bijection(self):
    space = search_space.enumerate_space(4, fixed_first_activation="tanh")
    names = [search_space.to_string(a) for a in search_space.unstack(space)]
    ids = sorted(ranking.public_genotype_id(n) for n in names)
    self.assertEqual(ids, list(range(len(names))))

  def test_loader_rejects_bad_files(self):
    bad = {"archs": ["x", "y"], "genotype_ids": [1, 1]}
    with tempfile.TemporaryDirectory() as d:
      path = pathlib.Path(d) / "p.json"
      path.write_text(json.dumps(bad))
      with self.assertRaisesRegex(ValueError, "distinct"):
        ranking.load_published(path)
      bad = {"archs": ["x", "y"], "genotype_ids": [0, 1], "valid_ppl": [1.0]}
      path.write_text(json.dumps(bad))
      with self.assertRaisesRegex(ValueError, "valid_ppl"):
        ranking.load_published(path)
      with self.assertRaisesRegex(ValueError, "not found"):
        ranking.load_published(pathlib.Path(d) / "absent.json")


class SanityTest(absltest.TestCase):
  """No simulation: shared perplexities made from the published order."""

  def setUp(self):
    super().setUp()
    self.pub = ranking.load_published(_PUBLISHED)
    self.names = _space_names()
    self.ranks = ranking.published_ranks(self.pub, self.names)

  def test_same_order_is_one(self):
    shared = 100.0 + self.ranks  # better published rank, lower ppl
    tau = ranking.id_sequence_tau(shared, self.names, self.pub)
    self.assertAlmostEqual(tau, 1.0)
    self.assertAlmostEqual(ranking.kendall_tau(shared, self.ranks), 1.0)

  def test_reversed_order_is_not_minus_one(self):
    shared = 100.0 - self.ranks
    self.assertAlmostEqual(ranking.kendall_tau(shared, self.ranks), -1.0)
    ids = self.pub.genotype_ids
    expected = _tau_by_pairs(ids, ids[::-1])
    tau = ranking.id_sequence_tau(shared, self.names, self.pub)
    self.assertAlmostEqual(tau, expected)
    self.assertGreater(tau, -0.5)  # far from the rank correlation's -1

  def test_depends_on_the_id_labels(self):
    shared = 100.0 + np.roll(self.ranks, 5)
    relabel = np.random.default_rng(0).permutation(32)
    other = ranking.PublishedOrder(
      self.pub.archs, relabel[self.pub.genotype_ids]
    )
    a = ranking.id_sequence_tau(shared, self.names, self.pub)
    b = ranking.id_sequence_tau(shared, self.names, other)
    self.assertNotAlmostEqual(a, b)
    # The rank correlation does not see the ids.
    self.assertAlmostEqual(
      ranking.kendall_tau(
        shared, ranking.published_ranks(self.pub, self.names)
      ),
      ranking.kendall_tau(shared, ranking.published_ranks(other, self.names)),
    )


if __name__ == "__main__":
  absltest.main()
