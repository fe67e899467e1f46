"""Tests for wpl_jax.partition: masks, labels, split and merge."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest, parameterized
from flax import nnx

from wpl_jax import partition


def _params():
  return {
    "shared_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)},
    "a_head": {"kernel": jnp.ones((3, 4))},
    "cell": {"edge_h": jnp.ones((3, 2, 2)), "layers": (jnp.ones(1),)},
  }


class PartitionTest(parameterized.TestCase):
  def test_leaf_paths(self):
    self.assertEqual(
      partition.leaf_paths(_params()),
      [
        "a_head/kernel",
        "cell/edge_h",
        "cell/layers/0",
        "shared_0/bias",
        "shared_0/kernel",
      ],
    )

  @parameterized.parameters(
    dict(spec=r"^shared_", want=["shared_0/bias", "shared_0/kernel"]),
    dict(
      spec=[r"kernel$", r"edge_"],
      want=["a_head/kernel", "cell/edge_h", "shared_0/kernel"],
    ),
    dict(spec=lambda path, leaf: leaf.ndim == 3, want=["cell/edge_h"]),
  )
  def test_make_mask(self, spec, want):
    params = _params()
    mask = partition.make_mask(params, spec)
    got = [
      p
      for p, m in zip(partition.leaf_paths(params), _leaves(mask), strict=True)
      if m
    ]
    self.assertEqual(got, want)

  def test_mask_selecting_nothing_raises(self):
    with self.assertRaisesRegex(
      ValueError,
      r"mask '\^nope' selects none of the 5 leaves .*'a_head/kernel'",
    ):
      partition.make_mask(_params(), r"^nope")
    mask = partition.make_mask(_params(), r"^nope", allow_empty=True)
    self.assertFalse(any(_leaves(mask)))

  def test_nnx_state_paths_drop_value(self):
    # nnx.State leaves end in a `.value` attribute: `kernel$` must still
    # select the kernels (it silently selected nothing before).
    model = nnx.Sequential(
      nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1))
    )
    state = nnx.state(model, nnx.Param)
    self.assertEqual(
      partition.leaf_paths(state),
      ["layers/0/bias", "layers/0/kernel", "layers/1/bias", "layers/1/kernel"],
    )
    mask = partition.make_mask(state, r"kernel$")
    self.assertEqual(_leaves(mask), [False, True, False, True])

  def test_label_params_exhaustive_raises_naming_leaf(self):
    groups = {"shared": r"^shared_", "edges": r"edge_"}
    with self.assertRaisesRegex(ValueError, r"'a_head/kernel' matches no"):
      partition.label_params(_params(), groups)
    labels = partition.label_params(_params(), groups, default="private")
    self.assertEqual(labels["a_head"]["kernel"], "private")
    self.assertEqual(labels["cell"]["edge_h"], "edges")

  def test_split_merge_round_trip(self):
    params = _params()
    mask = partition.make_mask(params, r"^shared_")
    shared, private = partition.split(params, mask)
    self.assertIsInstance(shared["a_head"]["kernel"], optax.MaskedNode)
    self.assertIsInstance(private["shared_0"]["bias"], optax.MaskedNode)
    self.assertLen(_leaves(shared), 2)
    self.assertLen(_leaves(private), 3)
    chex.assert_trees_all_equal(partition.merge(shared, private), params)

  def test_split_rejects_array_mask(self):
    params = {"w": jnp.ones(3)}
    with self.assertRaisesRegex(ValueError, "Python bool per leaf"):
      partition.split(params, {"w": np.array([True, False, True])})


def _leaves(tree):
  return jax.tree.leaves(tree)


if __name__ == "__main__":
  absltest.main()
