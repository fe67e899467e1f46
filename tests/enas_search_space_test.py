"""Tests for wpl_jax.enas.search_space."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from wpl_jax.enas import search_space as ss

# Hand-worked cell with 4 nodes: 0 -> 1, 0 -> 2, 1 -> 3.
_HAND = "tanh|0:relu|0:identity|1:sigmoid"


class SearchSpaceTest(parameterized.TestCase):
  def test_sizes(self):
    self.assertEqual(ss.num_edges(12), 66)
    self.assertEqual(ss.space_size(12), 4**12 * math.factorial(11))
    self.assertEqual(ss.space_size(3, fixed_first_activation="tanh"), 32)

  def test_edge_index_is_a_bijection(self):
    n = 6
    ids = [ss.edge_index(i, j) for j in range(1, n) for i in range(j)]
    self.assertEqual(sorted(ids), list(range(ss.num_edges(n))))
    # Same on arrays.
    np.testing.assert_array_equal(
      ss.edge_index(jnp.array([0, 1, 2]), jnp.array([3, 3, 3])), [3, 4, 5]
    )

  def test_hand_worked_masks(self):
    arch = ss.from_string(_HAND)
    np.testing.assert_array_equal(arch.activations, [0, 1, 2, 3])
    np.testing.assert_array_equal(arch.parents, [-1, 0, 0, 1])
    # Edges (0->1)=0, (0->2)=1, (1->3)=3+1=4.
    np.testing.assert_array_equal(ss.edge_ids(arch), [0, 1, 4])
    np.testing.assert_array_equal(
      ss.edge_mask(arch), [True, True, False, False, True, False]
    )
    # In a 5-node supernet the same cell uses the same first ids.
    self.assertEqual(ss.edge_mask(arch, 5).shape, (10,))
    np.testing.assert_array_equal(ss.edge_mask(arch, 5).nonzero()[0], [0, 1, 4])
    # Nodes 0 and 1 feed others; 2 and 3 are leaves.
    np.testing.assert_array_equal(
      ss.leaf_mask(arch), [False, False, True, True]
    )

  def test_masks_under_jit_vmap_match_numpy(self):
    archs = ss.enumerate_space(4, fixed_first_activation=0)
    masks = jax.jit(jax.vmap(ss.edge_mask))(archs)
    leaves = jax.jit(jax.vmap(ss.leaf_mask))(archs)
    pars = np.asarray(archs.parents)
    for k in range(0, pars.shape[0], 37):
      want = np.zeros(6, bool)
      for j in range(1, 4):
        want[j * (j - 1) // 2 + pars[k, j]] = True
      np.testing.assert_array_equal(masks[k], want)
      want_leaf = np.array([i not in pars[k, 1:] for i in range(4)])
      np.testing.assert_array_equal(leaves[k], want_leaf)
    # Batched calls without vmap agree.
    np.testing.assert_array_equal(ss.edge_mask(archs), masks)
    np.testing.assert_array_equal(ss.leaf_mask(archs), leaves)

  def test_reduced_space_of_reference_section_5(self):
    archs = ss.enumerate_space(3, fixed_first_activation="tanh")
    self.assertEqual(archs.activations.shape, (32, 3))
    ss.validate(archs)
    np.testing.assert_array_equal(archs.activations[:, 0], 0)
    np.testing.assert_array_equal(archs.parents[:, 1], 0)
    self.assertEqual(set(np.asarray(archs.parents[:, 2]).tolist()), {0, 1})
    names = [ss.to_string(a) for a in ss.unstack(archs)]
    self.assertLen(set(names), 32)
    for name, arch in zip(names, ss.unstack(archs), strict=True):
      back = ss.from_string(name)
      np.testing.assert_array_equal(back.activations, arch.activations)
      np.testing.assert_array_equal(back.parents, arch.parents)
      self.assertEqual(back.activations.dtype, jnp.int32)

  @parameterized.parameters(1, 2, 3)
  def test_enumerate_full_space_is_complete(self, n):
    archs = ss.enumerate_space(n)
    self.assertEqual(archs.activations.shape, (ss.space_size(n), n))
    ss.validate(archs)
    rows = np.concatenate([archs.activations, archs.parents], axis=1)
    self.assertLen(np.unique(rows, axis=0), ss.space_size(n))

  def test_enumerate_refuses_huge_space(self):
    with self.assertRaisesRegex(ValueError, "too large"):
      ss.enumerate_space(12)

  @parameterized.parameters(
    "relu",
    _HAND,
    "sigmoid|0:tanh|1:tanh|0:relu|2:identity",
  )
  def test_codec_round_trip(self, s):
    self.assertEqual(ss.to_string(ss.from_string(s)), s)

  @parameterized.parameters(
    "",
    "swish",
    "tanh|1:relu",  # parent of node 1 must be 0
    "tanh|0:relu|2:relu",  # parent of node 2 must be < 2
    "tanh|0-relu",
    "tanh|x:relu",
    "tanh|0:gelu",
  )
  def test_from_string_rejects(self, s):
    with self.assertRaises(ValueError):
      ss.from_string(s)

  @parameterized.named_parameters(
    ("act_range", [0, 4, 0], [-1, 0, 0], "activation ids"),
    ("parent0", [0, 0, 0], [0, 0, 0], r"parents\[0\]"),
    ("parent_late", [0, 0, 0], [-1, 0, 2], r"parents\[2\]"),
    ("parent_negative", [0, 0, 0], [-1, -1, 0], r"parents\[1\]"),
    ("shape", [0, 0], [-1, 0, 0], "shape"),
  )
  def test_validate_rejects(self, acts, parents, msg):
    arch = ss.Arch(activations=np.array(acts), parents=np.array(parents))
    with self.assertRaisesRegex(ValueError, msg):
      ss.validate(arch)

  def test_validate_rejects_floats(self):
    arch = ss.Arch(activations=np.zeros(2), parents=np.array([-1, 0]))
    with self.assertRaisesRegex(ValueError, "integers"):
      ss.validate(arch)

  @parameterized.parameters((None, None), ("sigmoid", 3))
  def test_sample_uniform_is_valid_and_covers(self, fixed, fixed_id):
    n = 5
    keys = jax.random.split(jax.random.key(0), 400)
    archs = jax.jit(
      jax.vmap(lambda k: ss.sample_uniform(k, n, fixed_first_activation=fixed))
    )(keys)
    self.assertEqual(archs.activations.shape, (400, n))
    self.assertEqual(archs.parents.dtype, jnp.int32)
    ss.validate(archs)
    for j in range(1, n):
      self.assertEqual(
        set(np.asarray(archs.parents[:, j]).tolist()), set(range(j))
      )
    firsts = set(np.asarray(archs.activations[:, 0]).tolist())
    if fixed is None:
      self.assertEqual(firsts, {0, 1, 2, 3})
    else:
      self.assertEqual(firsts, {fixed_id})

  def test_stack_unstack(self):
    a, b = ss.from_string(_HAND), ss.from_string("relu|0:relu|1:relu|2:relu")
    both = ss.stack([a, b])
    self.assertEqual(both.activations.shape, (2, 4))
    self.assertEqual(both.num_nodes, 4)
    self.assertEqual(ss.to_string(ss.unstack(both)[1]), ss.to_string(b))

  def test_arch_is_a_pytree(self):
    arch = ss.from_string(_HAND)
    leaves = jax.tree.leaves(arch)
    self.assertLen(leaves, 2)
    same = jax.jit(lambda a: a)(arch)
    self.assertIsInstance(same, ss.Arch)


if __name__ == "__main__":
  absltest.main()
