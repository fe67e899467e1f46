"""Device meshes and shardings for data parallelism (`jax.sharding` helpers).

The loops place their inputs with these and jit their steps with pinned
`out_shardings`; XLA's SPMD partitioner does the rest (no pmap, no psum):
with the batch sharded on its example axis and the params replicated, the
gradient of a mean loss is reduced across devices by the compiler, and a
batch statistic (ENAS's training-mode batch-norm) is a global mean.

The mesh has two axes, `("data", "edge")`, of shape [D / k, k]:
  * examples (and the K archs of a vmapped evaluation) are split over both
    axes, i.e. over all D devices (`BATCH`);
  * with k > 1 the ENAS edge stacks [E, H, H] (and their Fisher and
    anchor) are split over "edge" along E, so each device holds E / k of
    them; everything else is replicated. k = 1 (the default) replicates
    every parameter.

Multi-host (`jax.distributed.initialize()` first): the mesh spans every
process's devices; `shard_batch` takes the global batch (every host
computes the same windows from the same files), keeps this process's rows
of the example axis and assembles the global array with
`jax.make_array_from_process_local_data`, so a host only transfers its own
shard; `put` places host values that every process holds identically.

What to split at paper size (H = 1000, N = 12, E = 66, V = 10k; B = 64 on
a TPU v2/v3-8, 8/16 GiB per core): the batch (activations) and the K archs
of the vmapped evaluation (16 cells: 3.6 GiB on one device, 1.0 split 8
ways) must be split; the largest replicated state is the edge stacks
2 × [66, 1000, 1000] with their Fisher and anchor, 1.58 GB together, then
the 40 MB embedding. Replicated, the Fisher step peaks at ~3.7 GiB per
device (XLA's estimate, `python -m benchmarks.sharding_bench --paper`), so
it fits; `edge_shards=2` (the largest k dividing both 66 and 8) saves
~1 GiB per device. 66 does not split 4 or 8 ways, and the model's stacks
cannot be padded here, so such a k is refused (`check_edges`).
"""

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wpl_jax import partition
from wpl_jax.types import PyTree

DATA, EDGE = "data", "edge"
# Examples (and archs) are split over every device of the mesh.
BATCH = (DATA, EDGE)
# Path regex of the ENAS edge stacks [E, H, H] (params, Fisher, anchor).
EDGE_LEAVES = r"(^|/)edge_[hc]$"


def make_mesh(num_devices: int = 0, *, edge_shards: int = 1) -> Mesh:
  """A [D / k, k] mesh with axes ("data", "edge") over D devices.

  Args:
    num_devices: D; 0 = every device (all processes' devices after
      `jax.distributed.initialize()`); n > 0 = the first n local devices
      (single process only).
    edge_shards: k, the devices the edge stacks are split over (must
      divide D); 1 replicates them.

  Raises:
    ValueError: D exceeds the devices present or k does not divide D.
  """
  if num_devices:
    if jax.process_count() > 1 and num_devices != jax.device_count():
      raise ValueError(
        f"num_devices={num_devices}: with {jax.process_count()} processes "
        f"use 0 (all {jax.device_count()} devices)"
      )
    if num_devices > jax.local_device_count():
      raise ValueError(
        f"num_devices={num_devices} but only {jax.local_device_count()} "
        f"local devices exist ({jax.default_backend()})"
      )
    devices = jax.local_devices()[:num_devices]
  else:
    # Process-major order: each host's devices are one contiguous block
    # of the example axis, so its rows of a batch are contiguous too.
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  d = len(devices)
  k = max(int(edge_shards), 1)
  if d % k:
    raise ValueError(
      f"model.shard_edges={k} does not divide the {d} devices; use a divisor"
    )
  grid = np.asarray(devices, dtype=object).reshape(d // k, k)
  return Mesh(grid, (DATA, EDGE))


def num_shards(mesh: Mesh) -> int:
  """D, the devices an example (or arch) axis is split over."""
  return int(mesh.devices.size)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Axis `axis` split over all D devices, the other axes whole.

  For [B, ...] arrays use axis 0; ENAS's time-major [T, B] batches use 1
  (each device gets [T, B / D]); the carried hidden state [B, H] uses 0.
  """
  return NamedSharding(mesh, PartitionSpec(*([None] * axis), BATCH))


def edge_sharding(mesh: Mesh) -> NamedSharding:
  """[E, H, H] split along E over the "edge" axis (replicated over "data")."""
  return NamedSharding(mesh, PartitionSpec(EDGE))


def check_divisible(size: int, mesh: Mesh, what: str) -> None:
  """Raises ValueError unless `size` (of `what`) splits over the devices."""
  d = num_shards(mesh)
  if size % d:
    raise ValueError(
      f"{what}={size} is not divisible by the {d} devices it is split "
      f"over; use a multiple of {d} or set num_devices (e.g. "
      "--config.num_devices=1)"
    )


def tree_shardings(
  tree: PyTree, mesh: Mesh, rules: Sequence[tuple[str, PartitionSpec]] = ()
) -> PyTree:
  """A NamedSharding per leaf: the first rule whose regex matches its path.

  Paths are `partition.path_str` strings ("shared/params/cell/edge_h");
  leaves no rule matches are replicated.
  """
  compiled = [(re.compile(p), spec) for p, spec in rules]

  def one(path, leaf):
    del leaf
    name = partition.path_str(path)
    for pattern, spec in compiled:
      if pattern.search(name):
        return NamedSharding(mesh, spec)
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, tree)


def edge_rules(mesh: Mesh) -> list[tuple[str, PartitionSpec]]:
  """`tree_shardings` rules: edge stacks over "edge" when k > 1, else none."""
  if mesh.shape[EDGE] == 1:
    return []
  return [(EDGE_LEAVES, PartitionSpec(EDGE))]


def check_edges(num_edges: int, mesh: Mesh) -> None:
  """Raises ValueError unless E = N(N-1)/2 splits over the "edge" axis."""
  k = mesh.shape[EDGE]
  if num_edges % k:
    divisors = [i for i in range(1, num_edges + 1) if num_edges % i == 0]
    raise ValueError(
      f"model.shard_edges={k} does not divide the E={num_edges} edges "
      f"(the [E, H, H] stacks cannot be split evenly); use one of "
      f"{divisors} that also divides the device count, or 0"
    )


def put(tree: PyTree, shardings: PyTree | NamedSharding) -> PyTree:
  """Places host or device values that every process holds identically.

  `shardings` is one sharding or a tree of them like `tree`. One process:
  `jax.device_put`. Several: each process builds its addressable shards
  from its own copy (`jax.make_array_from_callback`).
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def one(x, s):
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
      data = put(jax.random.key_data(x), s)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

  return jax.tree.map(one, tree, shardings)


def process_rows(global_size: int, mesh: Mesh, axis: int = 0) -> slice:
  """This process's contiguous rows of an example axis of `global_size`.

  With one process: all of them. With P processes on a process-major mesh:
  rows [p·B/P, (p+1)·B/P) for process p (what `shard_batch` keeps).
  """
  sharding = batch_sharding(mesh, axis)
  shape = (1,) * axis + (global_size,)
  spans = [
    idx[axis]
    for idx in sharding.addressable_devices_indices_map(shape).values()
  ]
  lo = min(s.start or 0 for s in spans)
  hi = max(global_size if s.stop is None else s.stop for s in spans)
  return slice(lo, hi)


def shard_batch(tree: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
  """Global arrays split on `axis` over all devices, from host batches.

  Args:
    tree: a pytree of host arrays holding the global batch, e.g. the
      int32[T, B] inputs and targets (axis=1) or a float32[B, H] hidden
      state (axis=0); B must be divisible by the device count.
    mesh: from `make_mesh`.
    axis: the example axis.

  Returns:
    The same tree of `jax.Array`s with `batch_sharding(mesh, axis)`: each
    of the D devices holds B / D examples. Each process transfers only its
    own rows (`process_rows`).
  """
  sharding = batch_sharding(mesh, axis)

  def one(x):
    x = np.asarray(x)
    check_divisible(x.shape[axis], mesh, f"batch axis {axis} of {x.shape}")
    rows = process_rows(x.shape[axis], mesh, axis)
    local = x[(slice(None),) * axis + (rows,)]
    return jax.make_array_from_process_local_data(sharding, local, x.shape)

  return jax.tree.map(one, tree)


def cpu_sync(tree: PyTree, mesh: Mesh) -> PyTree:
  """Waits for `tree` on a multi-device CPU mesh; a no-op elsewhere.

  XLA:CPU runs each device of a program on a shared thread pool; with many
  collective programs in flight (async dispatch of a loop's steps) the
  threads can all wait in one program's all-reduce while another device
  of it never gets a thread: measured with 4 fake devices on 2 cores,
  ~100 queued steps deadlock, waiting after each step never did. Loops
  call this once per step; GPUs and TPUs keep their async dispatch.
  """
  if num_shards(mesh) > 1 and mesh.devices.flat[0].platform == "cpu":
    jax.block_until_ready(tree)
  return tree


def shardings_of(tree: PyTree) -> PyTree:
  """The `.sharding` of every leaf (for `jax.jit(out_shardings=...)`)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def describe(mesh: Mesh) -> str:
  """One log line: the devices and the mesh shape."""
  kinds = sorted({d.device_kind for d in mesh.devices.flat})
  return (
    f"{num_shards(mesh)} device(s) ({', '.join(kinds)}; "
    f"{jax.process_count()} process(es)), mesh {dict(mesh.shape)}"
  )
