"""The two MLPs of the paper's MNIST study: A and B share their first layers."""

import jax
import jax.numpy as jnp

from wpl_jax import fisher_fast
from wpl_jax.types import Array, Params, PRNGKey

SHARED_REGEX = r"^shared_"  # Paths of the leaves that A and B share.

# Layer names in the single params tree (each leaf is held once):
#   shared_0 .. shared_{k-1}  hidden layers used by both A and B;
#   a_k .. a_{depth_a-1}      A's private hidden layers; a_head: A's classifier;
#   b_k .. b_{depth_b-1}      B's private hidden layers; b_head: B's classifier.
# Each layer is {"kernel": [in, out], "bias": [out]}.

_INIT = jax.nn.initializers.lecun_normal()


def _dense_init(key: PRNGKey, d_in: int, d_out: int) -> dict[str, Array]:
  """LeCun-normal kernel, zero bias (Flax Linen's nn.Dense defaults)."""
  return {
    "kernel": _INIT(key, (d_in, d_out), jnp.float32),
    "bias": jnp.zeros((d_out,), jnp.float32),
  }


def init_a(
  key: PRNGKey, *, in_dim: int, width: int, num_classes: int, depth: int = 4
) -> Params:
  """Initialises model A alone, with no sharing yet.

  Layer l uses `fold_in(key, l)`, so A's initial weights do not depend on how
  many layers B later shares.

  Args:
    key: PRNG key.
    in_dim: input size D.
    width: hidden width H of every hidden layer.
    num_classes: number of classes C.
    depth: number of hidden layers of A.

  Returns:
    {"a_0": ..., "a_{depth-1}": ..., "a_head": ...}; kernels [D or H, H] and
    [H, C].
  """
  params = {}
  for layer in range(depth):
    d_in = in_dim if layer == 0 else width
    params[f"a_{layer}"] = _dense_init(
      jax.random.fold_in(key, layer), d_in, width
    )
  params["a_head"] = _dense_init(
    jax.random.fold_in(key, depth), width, num_classes
  )
  return params


def attach_b(
  params_a: Params,
  key: PRNGKey,
  *,
  num_shared: int,
  depth: int = 6,
) -> Params:
  """Builds the joint tree: B takes A's first `num_shared` hidden layers.

  A's layers a_0 .. a_{k-1} are renamed shared_0 .. shared_{k-1} (values are
  unchanged); B gets fresh private layers b_k .. b_{depth-1} and b_head.

  Args:
    params_a: A's params, as returned by `init_a` (or trained from it).
    key: PRNG key for B's private layers (layer l uses `fold_in(key, l)`).
    num_shared: k, the number of shared hidden layers, 1 <= k <= depth of A.
    depth: number of hidden layers of B.

  Returns:
    The joint params tree described at the top of this module.
  """
  depth_a = len(_numbered(params_a, "a_"))
  if not 1 <= num_shared <= min(depth_a, depth):
    raise ValueError(
      f"num_shared={num_shared} must be in [1, {min(depth_a, depth)}]"
    )
  width = params_a["a_0"]["kernel"].shape[1]
  num_classes = params_a["a_head"]["kernel"].shape[1]
  params = {}
  for name, layer in params_a.items():
    if name.startswith("a_") and name != "a_head":
      index = int(name[2:])
      if index < num_shared:
        name = f"shared_{index}"
    params[name] = layer
  for layer in range(num_shared, depth):
    params[f"b_{layer}"] = _dense_init(
      jax.random.fold_in(key, layer), width, width
    )
  params["b_head"] = _dense_init(
    jax.random.fold_in(key, depth), width, num_classes
  )
  return params


def _numbered(params: Params, prefix: str) -> list[str]:
  """Names `prefix<int>` in params, sorted by their integer."""
  names = [
    n for n in params if n.startswith(prefix) and n[len(prefix) :].isdigit()
  ]
  return sorted(names, key=lambda n: int(n[len(prefix) :]))


def _mlp(
  params: Params, names: list[str], x: Array, tap: fisher_fast.Tap
) -> Array:
  """ReLU hidden layers `names[:-1]`, then the linear classifier `names[-1]`.

  Each layer is `tap.dense` (plain `h @ kernel + bias` with the default
  tap), so the per-example Fisher of these weights can take the fast exact
  path of `wpl_jax.fisher_fast`.
  """
  h = x
  for name in names[:-1]:
    layer = params[name]
    h = jax.nn.relu(tap.dense(name, h, layer["kernel"], layer["bias"]))
  head = params[names[-1]]
  return tap.dense(names[-1], h, head["kernel"], head["bias"])


def forward_a(
  params: Params, x: Array, tap: fisher_fast.Tap = fisher_fast.PLAIN
) -> Array:
  """Model A: shared layers, A's private layers, A's classifier.

  Works on the joint tree and on A's tree alone (before `attach_b`).

  Args:
    params: joint params tree (or A's alone).
    x: inputs [B, D], float32.
    tap: `wpl_jax.fisher_fast` tap (plain by default).

  Returns:
    logits [B, C].
  """
  names = _numbered(params, "shared_") + _numbered(params, "a_") + ["a_head"]
  return _mlp(params, names, x, tap)


def forward_b(params: Params, x: Array) -> Array:
  """Model B: shared layers, B's private layers, B's classifier.

  Args:
    params: joint params tree.
    x: inputs [B, D], float32.

  Returns:
    logits [B, C].
  """
  names = _numbered(params, "shared_") + _numbered(params, "b_") + ["b_head"]
  return _mlp(params, names, x, fisher_fast.PLAIN)
