"""wpl_jax.enas: ENAS architectures as data and the vmapped sampler."""

from wpl_jax.enas.sampler import evaluate_architectures, sample_architectures
from wpl_jax.enas.search_space import (
  ACTIVATIONS,
  NO_PARENT,
  NUM_ACTIVATIONS,
  Arch,
  edge_ids,
  edge_index,
  edge_mask,
  enumerate_space,
  from_string,
  leaf_mask,
  num_edges,
  sample_uniform,
  space_size,
  stack,
  to_string,
  unstack,
  validate,
)

__all__ = [
  "ACTIVATIONS",
  "NO_PARENT",
  "NUM_ACTIVATIONS",
  "Arch",
  "edge_ids",
  "edge_index",
  "edge_mask",
  "enumerate_space",
  "evaluate_architectures",
  "from_string",
  "leaf_mask",
  "num_edges",
  "sample_architectures",
  "sample_uniform",
  "space_size",
  "stack",
  "to_string",
  "unstack",
  "validate",
]
