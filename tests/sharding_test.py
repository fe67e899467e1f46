"""Tests of data parallelism: 4 fake CPU devices give the 1-device numbers.

The 4-device side runs in a subprocess (XLA's host-device count is fixed
when JAX starts), which builds a 1-device and a 4-device mesh of the same
process and runs the loops' own jitted steps on both (`_child_*`); this
process checks the JSON it writes. Run a case by hand with

  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
    python tests/sharding_test.py --child=steps --out=/tmp/steps.json
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from conftest import DATA_DIR
from jax.sharding import PartitionSpec

from wpl_jax.runtime import sharding

_ROOT = pathlib.Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6


def _env(devices: int) -> dict:
  """This process's environment with `devices` fake CPU devices."""
  env = dict(os.environ)
  flags = re.sub(
    r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")
  )
  if devices > 1:  # first: XLA stops reading at a malformed flag
    flags = f"--xla_force_host_platform_device_count={devices} {flags}"
  env["XLA_FLAGS"] = flags
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run_child(case: str, devices: int = 4, **opts) -> dict:
  """Runs `_child_<case>` in a subprocess; returns its JSON."""
  out = pathlib.Path(tempfile.mkdtemp()) / f"{case}.json"
  args = [f"--{k}={v}" for k, v in opts.items()]
  r = subprocess.run(
    [sys.executable, __file__, f"--child={case}", f"--out={out}", *args],
    env=_env(devices),
    cwd=_ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  if r.returncode:
    raise AssertionError(f"child {case} failed:\n{r.stderr[-3000:]}")
  return json.loads(out.read_text())


# -- the 4-device side (runs in the subprocess) ---------------------------


def _diff(a, b) -> dict:
  """Max |a - b|, max over leaves of max |a - b| / max |b|, and allclose."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb), (len(la), len(lb))
  abs_, rel, close = 0.0, 0.0, True
  for u, v in zip(la, lb, strict=True):
    u = np.asarray(jax.device_get(u), np.float64)
    v = np.asarray(jax.device_get(v), np.float64)
    assert u.shape == v.shape, (u.shape, v.shape)
    d = np.abs(u - v)
    abs_ = max(abs_, float(d.max(initial=0.0)))
    scale = float(np.abs(v).max(initial=0.0))
    if scale > 0:
      rel = max(rel, float(d.max(initial=0.0)) / scale)
    close = close and bool(np.allclose(u, v, rtol=RTOL, atol=ATOL))
  return {"abs": abs_, "rel": rel, "close": close}


def _spec(x) -> str:
  return str(x.sharding.spec)


def _shards(x) -> list:
  return [list(s.data.shape) for s in x.addressable_shards]


def _enas_config(num_devices: int, *, nodes: int = 3, shard_edges: int = 0):
  from experiments import enas_ptb  # noqa: PLC0415

  c = enas_ptb.get_config("smoke,wpl")  # dropout and batch-norm on
  c.model.vocab_size = 20
  c.model.hidden = 8
  c.model.num_nodes = nodes
  c.model.shard_edges = shard_edges
  # Cells and batches far apart in reward: the controller's advantage is
  # then well-conditioned (see `_enas_steps`).
  c.model.init_range = 1.0
  c.data.batch_size = 8
  c.data.bptt = 4
  c.num_devices = num_devices
  return c


def _enas_steps(config, *, k_archs: int = 0) -> dict:
  """Shared step, Fisher step, shared step (penalty on), 2 controller steps.

  The controller's K = 1 (the reference's): its first step only sets the
  baseline, the second one's advantage is 0.95 (r2 − r1). The config's
  large init spreads the rewards; with the usual 0.025 every cell of an
  untrained supernet scores ppl ≈ V, r2 − r1 ≈ 1e-4 r and the float
  reordering's 1e-7 shows as 2e-3 relative in the controller's Adam
  moments (measured; a conditioning effect, not a sharding one).

  With `k_archs` > 0 also the vmapped evaluation of K archs, the arch axis
  split over the devices. Returns the state, metrics and placements.
  """
  import jax.numpy as jnp  # noqa: PLC0415

  from wpl_jax.enas import search_space  # noqa: PLC0415
  from wpl_jax.enas.train import setup as enas_setup  # noqa: PLC0415
  from wpl_jax.enas.train import steps as enas_steps

  mesh = enas_setup.make_mesh(config)
  model = enas_setup.make_model(config)
  # As the search: archs split over devices share one vmap.
  steps = enas_steps.Steps(model=model, config=config, eval_vmap=0)
  init = jax.jit(lambda k: enas_setup.init_state(config, model, k))
  state = enas_setup.place_state(init(jax.random.key(0)), mesh)
  fns = enas_setup.jit_steps(steps, state, mesh)
  rng = np.random.default_rng(0)
  t, b = config.data.bptt, config.data.batch_size
  host = [rng.integers(0, 20, size=(t, b)).astype(np.int32) for _ in range(6)]
  x, y, fx, fy, vx, vy = sharding.shard_batch(host, mesh, axis=1)
  n = config.model.num_nodes
  arch = search_space.from_string(
    "tanh|0:relu|1:sigmoid" if n == 3 else "tanh|0:relu|1:sigmoid|1:tanh"
  )
  arch = sharding.put(arch, sharding.replicated(mesh))
  one = jnp.float32(1.0)
  shared, state["train_hidden"], m1 = fns["shared"](
    state["shared"],
    state["wpl"],
    arch,
    x,
    y,
    state["train_hidden"],
    one,
    one,
    key=jax.random.key(1),
  )
  state["shared"] = shared
  state["wpl"], state["fisher_hidden"] = fns["fisher"](
    state["shared"],
    state["wpl"],
    arch,
    fx,
    fy,
    state["fisher_hidden"],
    jnp.float32(60.0),
    key=jax.random.key(2),
  )
  shared, state["train_hidden"], m2 = fns["shared"](
    state["shared"],
    state["wpl"],
    arch,
    y,
    x,
    state["train_hidden"],
    one,
    one,
    key=jax.random.key(3),
  )
  state["shared"] = shared
  cms = []
  for i, (cx, cy) in enumerate(((vx, vy), (fy, fx))):
    state["controller"], state["ctrl_hidden"], cm = fns["ctrl"](
      state["controller"],
      state["shared"],
      cx,
      cy,
      state["ctrl_hidden"],
      key=jax.random.key(4 + i),
    )
    cms.append(cm)
  hlo = fns["shared"].lower(
    state["shared"],
    state["wpl"],
    arch,
    x,
    y,
    state["train_hidden"],
    one,
    one,
    key=jax.random.key(3),
  )
  out = {
    "mesh": mesh,
    "state": state,
    "all_reduces": hlo.compile().as_text().count("all-reduce("),
    "metrics": {"m1": m1, "m2": m2, "ctrl": cms},
    "placed": {"x": x, "hidden": state["train_hidden"]},
  }
  if k_archs:
    from wpl_jax.enas.train import search_eval as enas_search_eval  # noqa: PLC0415

    archs = jax.device_get(
      fns["sample"](state["controller"].params, key=jax.random.key(5), k=8)
    )
    zero = np.zeros((b, config.model.hidden), np.float32)
    rep = sharding.put((host[0], host[1], zero), sharding.replicated(mesh))
    out["ppl"] = enas_search_eval.eval_chunked(
      fns["eval_archs"],
      state["shared"],
      archs,
      *rep,
      k_archs,
      arch_sharding=sharding.batch_sharding(mesh, 0),
    )
    part = jax.tree.map(lambda a: a[:k_archs], archs)
    part = sharding.put(part, sharding.batch_sharding(mesh, 0))
    out["placed"]["archs"] = part.parents
    out["compiles"] = fns["eval_archs"]._cache_size()
  return out


def _cross_restore(state_4, mesh_1, state_1, mesh_4, workdir) -> dict:
  """Saves from one mesh, restores onto the other (both ways)."""
  from wpl_jax.enas.train import setup as enas_setup  # noqa: PLC0415
  from wpl_jax.runtime import checkpoint  # noqa: PLC0415

  out = {}
  for name, saved, mesh in (
    ("4to1", state_4, mesh_1),
    ("1to4", state_1, mesh_4),
  ):
    ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / name)
    ckpt.save(0, saved, {"step": 0})
    like = enas_setup.place_state(jax.tree.map(np.zeros_like, saved), mesh)
    restored, meta = ckpt.restore(like)
    ckpt.close()
    same = jax.tree.map(
      lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
      restored,
      saved,
    )
    on_mesh = jax.tree.map(
      lambda r, w: r.sharding.is_equivalent_to(w.sharding, r.ndim),
      restored,
      like,
    )
    out[name] = {
      "equal": all(jax.tree.leaves(same)),
      "on_mesh": all(jax.tree.leaves(on_mesh)),
      "hidden_shards": _shards(restored["train_hidden"]),
      "edge_shards": _shards(restored["wpl"].fisher["edge_h"]),
      "meta": meta,
    }
  return out


def _two_models_hlo() -> str:
  """Compiled HLO of two vmapped runs' data-parallel step on 4 devices."""
  import functools  # noqa: PLC0415

  import jax.numpy as jnp  # noqa: PLC0415

  from experiments import two_models  # noqa: PLC0415
  from wpl_jax.two_models import model as model_lib  # noqa: PLC0415
  from wpl_jax.two_models import steps as tm  # noqa: PLC0415
  from wpl_jax.two_models import train as two_models_train  # noqa: PLC0415

  c = two_models.get_config("smoke")
  mesh = two_models_train.make_mesh(c)
  tx = tm.make_optimizer(c.opt_a)
  params = model_lib.init_a(
    jax.random.key(0), in_dim=64, width=16, num_classes=10, depth=2
  )
  state = tm.TrainState(params, tx.init(params), jnp.zeros([]))
  state = jax.tree.map(lambda a: jnp.stack([a, a]), state)
  step = two_models_train.data_parallel(
    functools.partial(
      tm.train_step, loss_fn=lambda q, b: (tm.loss_a(q, b), {}), tx=tx
    ),
    mesh,
  )
  chunk = functools.partial(
    tm.train_chunk, step_fn=step, num_steps=1, batch_size=32
  )
  fn = jax.jit(jax.vmap(chunk, in_axes=(0, 0, None, None)))
  x, y = np.zeros((50, 64), np.float32), np.zeros(50, np.int32)
  keys = jax.random.split(jax.random.key(1), 2)
  return fn.lower(state, keys, x, y).compile().as_text()


def _two_models(num_devices: int) -> dict:
  from experiments import two_models  # noqa: PLC0415
  from wpl_jax import data as data_lib  # noqa: PLC0415
  from wpl_jax.two_models import train as two_models_train  # noqa: PLC0415

  c = two_models.get_config("smoke")
  c.num_devices = num_devices
  c.model.width = 16
  c.protocol.a_steps_converged = 4
  c.protocol.a_steps_weak = 2
  c.protocol.a_log_every = 2
  c.protocol.batch_size = 8
  data = data_lib.load_digits(test_fraction=0.2, seed=0)
  return two_models_train.train_a(c, data, [0, 1])


def _child_steps() -> dict:
  """ENAS steps, two-model A, checkpoint cross-restore: 1 vs 4 devices."""
  one, four = (_enas_steps(_enas_config(d)) for d in (1, 4))
  out = {
    "devices": jax.device_count(),
    "enas": {k: _diff(four[k], one[k]) for k in ("state", "metrics")},
    "specs": {k: _spec(v) for k, v in four["placed"].items()},
    "shards": {k: _shards(v) for k, v in four["placed"].items()},
    "param_spec": _spec(four["state"]["shared"].params["cell"]["edge_h"]),
    "ctrl_reward": [
      [float(m["reward"]) for m in one["metrics"]["ctrl"]],
      [float(m["reward"]) for m in four["metrics"]["ctrl"]],
    ],
  }
  with tempfile.TemporaryDirectory() as tmp:
    out["restore"] = _cross_restore(
      four["state"], one["mesh"], one["state"], four["mesh"], tmp
    )
  a1, a4 = _two_models(1), _two_models(4)
  out["two_models"] = _diff(a4, a1)
  out["all_reduces"] = [one["all_reduces"], four["all_reduces"]]
  hlo = _two_models_hlo()
  out["two_models_hlo"] = {
    "all_reduces": hlo.count("all-reduce("),
    # The first layer's forward: [2 runs, B / 4 = 8 examples, 16 units].
    "per_device_batch": "f32[2,8,16]" in hlo,
  }
  out["refused"] = []
  for field, value in (("data.batch_size", 6), ("num_devices", 5)):
    c = _enas_config(4)
    c.update_from_flattened_dict({field: value})
    try:
      from wpl_jax.enas.train import setup as enas_setup  # noqa: PLC0415

      enas_setup.make_mesh(c)
      out["refused"].append("")
    except ValueError as e:
      out["refused"].append(str(e))
  return out


def _child_edges() -> dict:
  """Edge stacks split 2 ways on a 2 × 2 mesh; K archs split 4 ways."""
  one = _enas_steps(_enas_config(1, nodes=4), k_archs=4)
  four = _enas_steps(_enas_config(4, nodes=4, shard_edges=2), k_archs=4)
  out = {
    "enas": {k: _diff(four[k], one[k]) for k in ("state", "metrics", "ppl")},
    "specs": {k: _spec(v) for k, v in four["placed"].items()},
    "shards": {k: _shards(v) for k, v in four["placed"].items()},
    "edge_spec": _spec(four["state"]["shared"].params["cell"]["edge_h"]),
    "edge_shards": _shards(four["state"]["shared"].params["cell"]["edge_h"]),
    "fisher_spec": _spec(four["state"]["wpl"].fisher["edge_h"]),
    "anchor_shards": _shards(four["state"]["wpl"].anchor["edge_c"]),
    "eval_compiles": four["compiles"],
  }
  with tempfile.TemporaryDirectory() as tmp:
    out["restore"] = _cross_restore(
      four["state"], one["mesh"], one["state"], four["mesh"], tmp
    )
  try:  # E = 6 does not split over 4 devices
    from wpl_jax.enas.train import setup as enas_setup  # noqa: PLC0415

    enas_setup.make_mesh(_enas_config(4, nodes=4, shard_edges=4))
    out["refused"] = ""
  except ValueError as e:
    out["refused"] = str(e)
  return out


def _global(tree):
  """Host copies of (possibly multi-process) global arrays."""
  from jax.experimental import multihost_utils  # noqa: PLC0415

  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def _child_single(ckpt: str, ref: str) -> dict:
  """1 device: the steps' state saved to `ckpt`/single and `ref` (npz)."""
  from wpl_jax.runtime import checkpoint  # noqa: PLC0415

  run = _enas_steps(_enas_config(1))
  leaves = jax.tree.leaves(jax.device_get(run["state"]))
  np.savez(ref, *leaves)
  c = checkpoint.Checkpointer(pathlib.Path(ckpt) / "single")
  c.save(0, run["state"], {"step": 0})
  c.close()
  return {}


def _child_restore_multi(ckpt: str, ref: str) -> dict:
  """1 device: restores the 2-process run's checkpoint."""
  from wpl_jax.enas.train import setup as enas_setup
  from wpl_jax.runtime import checkpoint  # noqa: PLC0415

  mesh = enas_setup.make_mesh(_enas_config(1))
  like = _zeros_like_state(mesh)
  c = checkpoint.Checkpointer(pathlib.Path(ckpt) / "multi")
  restored, _ = c.restore(like)
  c.close()
  want = np.load(ref)
  got = jax.tree.leaves(jax.device_get(restored))
  return {"close": _diff(got, [want[f"arr_{i}"] for i in range(len(got))])}


def _zeros_like_state(mesh):
  from wpl_jax.enas.train import setup as enas_setup

  config = _enas_config(0)
  model = enas_setup.make_model(config)
  shapes = jax.eval_shape(
    lambda k: enas_setup.init_state(config, model, k), jax.random.key(0)
  )
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  return enas_setup.place_state(zeros, mesh)


def _child_multi(ckpt: str, ref: str, port: str, pid: str) -> dict | None:
  """One of 2 processes × 2 CPU devices (gloo): steps, save, restore."""
  from wpl_jax.runtime import checkpoint  # noqa: PLC0415

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f"localhost:{port}",
    num_processes=2,
    process_id=int(pid),
  )
  run = _enas_steps(_enas_config(0))  # all 4 devices of both processes
  got = jax.tree.leaves(_global(run["state"]))
  want = np.load(ref)
  want = [want[f"arr_{i}"] for i in range(len(got))]
  c = checkpoint.Checkpointer(pathlib.Path(ckpt) / "multi")
  c.save(0, run["state"], {"step": 0})
  c.close()
  c = checkpoint.Checkpointer(pathlib.Path(ckpt) / "single")
  restored, _ = c.restore(_zeros_like_state(run["mesh"]))
  c.close()
  hidden = restored["train_hidden"]
  out = {
    "processes": jax.process_count(),
    "devices": jax.device_count(),
    "steps": _diff(got, want),
    "restored": _diff(jax.tree.leaves(_global(restored)), want),
    "x_local_shards": _shards(run["placed"]["x"]),
    "hidden_local_shards": _shards(hidden),
    "hidden_global": list(hidden.shape),
  }
  return out if jax.process_index() == 0 else None


# -- this process ----------------------------------------------------------


class ShardingHelpersTest(parameterized.TestCase):
  """The pure helpers, on this process's device(s)."""

  def test_mesh_axes_and_specs(self):
    mesh = sharding.make_mesh(1)
    self.assertEqual(dict(mesh.shape), {"data": 1, "edge": 1})
    self.assertEqual(
      sharding.batch_sharding(mesh, 1).spec,
      PartitionSpec(None, ("data", "edge")),
    )
    self.assertEqual(sharding.replicated(mesh).spec, PartitionSpec())
    self.assertEqual(sharding.process_rows(8, mesh, 1), slice(0, 8))

  def test_tree_shardings_rules(self):
    mesh = sharding.make_mesh(1)
    tree = {"params": {"cell": {"edge_h": 0, "w": 0}}, "fisher": {"edge_c": 0}}
    rules = [(sharding.EDGE_LEAVES, PartitionSpec("edge"))]
    got = sharding.tree_shardings(tree, mesh, rules)
    self.assertEqual(
      got["params"]["cell"]["edge_h"].spec, PartitionSpec("edge")
    )
    self.assertEqual(got["fisher"]["edge_c"].spec, PartitionSpec("edge"))
    self.assertEqual(got["params"]["cell"]["w"].spec, PartitionSpec())
    self.assertEqual(sharding.edge_rules(mesh), [])  # k = 1: replicated

  def test_batch_not_divisible_is_one_clear_error(self):
    mesh = sharding.make_mesh(1)
    sharding.check_divisible(6, mesh, "data.batch_size")
    with self.assertRaisesRegex(ValueError, "num_devices"):
      sharding.check_divisible(6, _FakeMesh(4), "data.batch_size")

  def test_too_many_devices_refused(self):
    with self.assertRaisesRegex(ValueError, "local devices"):
      sharding.make_mesh(jax.local_device_count() + 1)

  def test_edges_not_divisible_refused(self):
    sharding.check_edges(6, _FakeMesh(4, edge=2))
    with self.assertRaisesRegex(ValueError, r"E=66 edges.*\[1, 2, 3, 6"):
      sharding.check_edges(66, _FakeMesh(8, edge=4))


class _FakeMesh:
  """Stands in for a mesh of `d` devices (only sizes are read)."""

  def __init__(self, d, edge=1):
    self.devices = np.zeros((d // edge, edge))
    self.shape = {"data": d // edge, "edge": edge}


class FourDevicesTest(absltest.TestCase):
  """ENAS and two-model steps and checkpoints on 4 fake CPU devices."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.r = _run_child("steps")

  def test_four_devices_present(self):
    self.assertEqual(self.r["devices"], 4)

  def test_enas_steps_equal_one_device(self):
    """Shared + Fisher + shared (WPL on) + controller: params and metrics."""
    for k, d in self.r["enas"].items():
      self.assertTrue(d["close"], f"{k}: {d}")
    reward_1, reward_4 = self.r["ctrl_reward"]
    np.testing.assert_allclose(reward_4, reward_1, rtol=RTOL)

  def test_batches_really_split(self):
    # inputs [T=4, B=8] -> 4 shards [4, 2]; hidden [8, 8] -> [2, 8].
    self.assertEqual(
      self.r["specs"]["x"], str(PartitionSpec(None, ("data", "edge")))
    )
    self.assertEqual(self.r["shards"]["x"], [[4, 2]] * 4)
    self.assertEqual(self.r["shards"]["hidden"], [[2, 8]] * 4)
    self.assertEqual(self.r["param_spec"], str(PartitionSpec()))

  def test_two_models_train_equal_one_device(self):
    d = self.r["two_models"]
    self.assertTrue(d["close"], d)

  def test_compiler_splits_the_work_and_reduces(self):
    """The partitioned programs: per-device batch slices and all-reduces."""
    one, four = self.r["all_reduces"]  # ENAS shared step
    self.assertEqual(one, 0)
    self.assertGreater(four, 0)
    hlo = self.r["two_models_hlo"]
    self.assertGreater(hlo["all_reduces"], 0)
    self.assertTrue(hlo["per_device_batch"])

  def test_bad_device_counts_refused(self):
    batch, devices = self.r["refused"]
    self.assertIn("data.batch_size=6 is not divisible by the 4 devices", batch)
    self.assertIn("num_devices=5 but only 4 local devices", devices)

  def test_checkpoints_cross_restore(self):
    for way in ("4to1", "1to4"):
      r = self.r["restore"][way]
      self.assertTrue(r["equal"], way)
      self.assertTrue(r["on_mesh"], way)
    self.assertEqual(self.r["restore"]["4to1"]["hidden_shards"], [[8, 8]])
    self.assertEqual(self.r["restore"]["1to4"]["hidden_shards"], [[2, 8]] * 4)


class EdgeShardingTest(absltest.TestCase):
  """Edge stacks split along E; the K-arch evaluation split along K."""

  @pytest.mark.slow
  def test_edges_and_archs_split_and_equal(self):
    r = _run_child("edges")
    for k, d in r["enas"].items():
      self.assertTrue(d["close"], f"{k}: {d}")
    self.assertEqual(r["edge_spec"], str(PartitionSpec("edge")))
    self.assertEqual(r["fisher_spec"], str(PartitionSpec("edge")))
    self.assertEqual(r["edge_shards"], [[3, 8, 8]] * 4)  # E = 6 over k = 2
    self.assertEqual(r["anchor_shards"], [[3, 8, 8]] * 4)
    self.assertEqual(r["shards"]["archs"], [[1, 4]] * 4)  # K = 4 over 4
    self.assertEqual(r["eval_compiles"], 1)
    for way in ("4to1", "1to4"):
      self.assertTrue(r["restore"][way]["equal"], way)
      self.assertTrue(r["restore"][way]["on_mesh"], way)
    self.assertEqual(r["restore"]["1to4"]["edge_shards"], [[3, 8, 8]] * 4)
    self.assertIn("does not divide the E=6 edges", r["refused"])


class TwoProcessesTest(absltest.TestCase):
  """The multi-host path on one machine: 2 processes × 2 CPU devices."""

  @pytest.mark.slow
  def test_two_processes_equal_one_device_and_checkpoints_cross(self):
    """jax.distributed (gloo CPU collectives): each process feeds its own
    rows of the batch (`shard_batch`); the steps give the 1-device state;
    checkpoints cross between 1 device and 2 processes both ways."""
    tmp = pathlib.Path(tempfile.mkdtemp())
    opts = {"ckpt": tmp, "ref": tmp / "ref.npz"}
    _run_child("single", devices=1, **opts)
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    out = tmp / "multi.json"
    procs = [
      subprocess.Popen(
        [
          sys.executable,
          __file__,
          "--child=multi",
          f"--out={out}",
          f"--ckpt={tmp}",
          f"--ref={tmp / 'ref.npz'}",
          f"--port={port}",
          f"--pid={pid}",
        ],
        env=_env(2),
        cwd=_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      )
      for pid in (0, 1)
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
      self.assertEqual(p.returncode, 0, err[-3000:])
    r = json.loads(out.read_text())
    self.assertEqual((r["processes"], r["devices"]), (2, 4))
    self.assertTrue(r["steps"]["close"], r["steps"])
    self.assertTrue(r["restored"]["close"], r["restored"])
    # Process 0 holds rows 0-3 of B = 8 on its 2 devices.
    self.assertEqual(r["x_local_shards"], [[4, 2], [4, 2]])
    self.assertEqual(r["hidden_local_shards"], [[2, 8], [2, 8]])
    self.assertEqual(r["hidden_global"], [8, 8])
    back = _run_child("restore_multi", devices=1, **opts)
    self.assertTrue(back["close"]["close"], back)
    print(f"2 processes vs 1 device: {r['steps']}; restored {r['restored']}")


class DistributedMainTest(absltest.TestCase):
  """main.py --distributed: 2 processes × 2 CPU devices, one workdir."""

  @pytest.mark.slow
  def test_two_models_smoke_on_two_processes(self):
    tmp = pathlib.Path(tempfile.mkdtemp())
    config = f"--config={_ROOT / 'experiments/two_models.py'}:smoke"
    r = _main([config], 1, tmp / "one")
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    with socket.socket() as s:
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    procs = []
    for pid in (0, 1):
      env = _env(2)
      env.update(
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(pid),
      )
      procs.append(
        subprocess.Popen(
          [
            sys.executable,
            str(_ROOT / "main.py"),
            config,
            f"--workdir={tmp / 'multi'}",
            "--distributed",
          ],
          env=env,
          cwd=_ROOT,
          stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE,
          text=True,
        )
      )
    errs = [p.communicate(timeout=900)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
      self.assertEqual(p.returncode, 0, err[-3000:])
      self.assertIn("A: 4 device(s) (cpu; 2 process(es))", err)
    key = lambda r: (r["k"], r["a_setting"], r["run"], r["seed"], r["step"])
    one = {key(r): r for r in _jsonl(tmp / "one" / "metrics.jsonl")}
    # Only process 0 writes the workdir's files: each line once.
    multi = _jsonl(tmp / "multi" / "metrics.jsonl")
    self.assertEqual(sorted(map(key, multi)), sorted(one))
    self.assertTrue((tmp / "multi" / "results.md").exists())
    record = json.loads((tmp / "multi" / "run.json").read_text())
    self.assertEqual(record["status"], "finished")
    for r in multi:
      for k in ("acc_a", "acc_b"):
        self.assertAlmostEqual(r[k], one[key(r)][k], delta=2e-3)


def _main(args: list[str], devices: int, workdir: pathlib.Path, **kw):
  return subprocess.run(
    [sys.executable, str(_ROOT / "main.py"), f"--workdir={workdir}", *args],
    env=_env(devices),
    cwd=_ROOT,
    capture_output=True,
    text=True,
    check=False,
    **kw,
  )


def _jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


class SmokeRunsTest(absltest.TestCase):
  """main.py on 4 fake devices gives the 1-device run's metrics."""

  @pytest.mark.slow
  def test_two_models_smoke_same_metrics(self):
    tmp = pathlib.Path(tempfile.mkdtemp())
    config = f"--config={_ROOT / 'experiments/two_models.py'}:smoke"
    for d in (1, 4):
      r = _main([config], d, tmp / f"d{d}")
      self.assertEqual(r.returncode, 0, r.stderr[-2000:])
      self.assertIn(f"A: {d} device(s)", r.stderr)
    one, four = (_jsonl(tmp / f"d{d}" / "metrics.jsonl") for d in (1, 4))
    self.assertEqual(len(one), len(four))
    diff = max(
      abs(a[k] - b[k])
      for a, b in zip(one, four, strict=True)
      for k in ("acc_a", "acc_b")
    )
    print(f"two_models smoke: max |acc diff| {diff:.2e} over {len(one)} lines")
    for a, b in zip(one, four, strict=True):
      self.assertEqual(a["run"], b["run"])
      np.testing.assert_allclose(b["acc_a"], a["acc_a"], atol=2e-3)
      np.testing.assert_allclose(b["acc_b"], a["acc_b"], atol=2e-3)

  @pytest.mark.slow
  def test_enas_smoke_same_metrics_and_resumes_across_devices(self):
    """Search 2 epochs + retrain on 1 device, against the same run split
    over device counts: epoch 0 on 4 devices, epoch 1 resumed on 1, the
    retrain resumed on 4 (both ways of a checkpoint through main.py).

    Epoch 0 agrees to ~5e-6 (the Fisher norm to 2e-4: a batch-mean
    gradient of an untrained net is a sum of cancelling terms, and F = g²
    shows its relative rounding; permuting the batch on one device moves
    it as much). The smoke trains at lr 20 with ppl in the thousands, so
    by epoch 1 the reordered sums' 1e-7 have grown to ~2e-3 (measured on
    err2, the same without the resume); the sampled cells are identical.
    """
    tmp = pathlib.Path(tempfile.mkdtemp())
    base = [
      f"--config={_ROOT / 'experiments/enas_ptb.py'}:smoke,wpl",
      f"--data_dir={DATA_DIR / 'ptb'}",
      "--config.retrain.random_archs=0",
      "--config.search.eval_chunk=4",
    ]
    runs = (
      ("one", 1, ["--config.search.epochs=2"]),
      ("mixed", 4, ["--config.search.epochs=1", "--config.retrain.epochs=0"]),
      ("mixed", 1, ["--config.search.epochs=2", "--config.retrain.epochs=0"]),
      ("mixed", 4, ["--config.search.epochs=2"]),
    )
    for i, (name, devices, args) in enumerate(runs):
      r = _main([*base, *args], devices, tmp / name)
      self.assertEqual(r.returncode, 0, r.stderr[-2000:])
      self.assertIn(f"{devices} device(s)", r.stderr)
      # Split over devices, each evaluation's archs share one vmap.
      ignored = "search.eval_vmap=1 ignored" in r.stderr
      self.assertEqual(ignored, devices > 1)
      if i >= 2:
        self.assertIn("resumed from epoch", r.stderr)
    one, mixed = (_jsonl(tmp / w / "metrics.jsonl") for w in ("one", "mixed"))
    self.assertEqual([m["epoch"] for m in mixed], [0, 1])
    for a, b in zip(one, mixed, strict=True):
      rtol = 1e-4 if a["epoch"] == 0 else 1e-2
      for k in ("train_loss", "err1_mean", "err2_mean", "reward"):
        print(f"epoch {a['epoch']} {k}: rel diff {abs(b[k] / a[k] - 1):.2e}")
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, err_msg=k)
      np.testing.assert_allclose(b["fisher_norm"], a["fisher_norm"], rtol=1e-2)
      self.assertEqual(a["archs"], b["archs"])
      self.assertTrue(all(v == 1 for v in b["compiles"].values()))
    (ra,), (rb,) = (
      json.loads((tmp / w / "results.json").read_text())["retrained"]
      for w in ("one", "mixed")
    )
    self.assertEqual(ra["arch"], rb["arch"])
    for k in ("valid_ppl", "test_ppl"):
      print(f"retrain {k}: rel diff {abs(rb[k] / ra[k] - 1):.2e}")
      np.testing.assert_allclose(rb[k], ra[k], rtol=1e-2, err_msg=k)


def _child(argv: list[str]) -> None:
  """`--child=CASE --out=PATH [--k=v ...]`: runs `_child_CASE(**opts)`."""
  opts = dict(a[2:].split("=", 1) for a in argv)
  sys.path[:0] = [str(_ROOT)]
  case, out = opts.pop("child"), opts.pop("out")
  result = globals()[f"_child_{case}"](**opts)
  if result is not None:
    pathlib.Path(out).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
  if any(a.startswith("--child=") for a in sys.argv[1:]):
    _child(sys.argv[1:])
  else:
    absltest.main()
