"""Platform-aware config defaults ("auto") and the matmul precision setting.

Some settings only trade speed and memory for one another; the best value
differs between a 2-core CPU and an accelerator, and the numbers they
produce differ by float rounding at most. Such a field may hold "auto",
resolved once the backend is up (`jax.default_backend()`):

| field | CPU | GPU / TPU | what it trades |
|---|---|---|---|
| `search.eval_vmap` | 1 | 0 (all) | archs per vmap in an evaluation call |
| `wpl.chunk_size` | 16 | 64 | sequences per chunk of a per-example Fisher |
| `truth.arch_batch` | 1 | 32 | ground-truth cells vmapped per training step |
| `truth.checkpoint_every` | 50 | 0 (epoch ends) | ground-truth save cadence |

On the CPU the values are the ones measured best there (WORKSPACE §6.3,
§7); on an H200 one vmapped K = 16 evaluation took 52.8 ms against 124 ms
mapped one arch at a time (WORKSPACE §10.4), and a ground-truth step of
all 32 cells vmapped ran at ≥ 17 steps/s at H = 256 (§10.7), where a
50-step checkpoint cadence would save every 3 s.

`precision` (a top-level config field) sets JAX's default matmul precision
for the run (`jax_default_matmul_precision`): "float32" (exact float32, the
default: what the reference's PyTorch code computes and what the tests'
tolerances assume), "tf32" (TensorFloat-32 matmuls where the device has
them: JAX's own default on NVIDIA Ampere and later, 1.37× the paper epoch
on an H200, WORKSPACE §10.5), "bf16" (bfloat16 matmul inputs) or "default"
(whatever the platform does). It changes numerics by more than rounding, so
it is not resumable: a workdir keeps the precision it started with.

`resolve` returns the config with every "auto" replaced and a record of
what was resolved (for `run.json` and the log); `get` resolves one field
where code reads the config directly (steps built outside a run, tests).
"""

from typing import Any

import ml_collections

AUTO = "auto"
# Dotted field -> (CPU value, accelerator value).
DEFAULTS: dict[str, tuple[int, int]] = {
  "search.eval_vmap": (1, 0),
  "wpl.chunk_size": (16, 64),
  "truth.arch_batch": (1, 32),
  "truth.checkpoint_every": (50, 0),
  # From this hidden size on, the shared step forms the edges' gradient
  # after the time scan (0 = never): 0.87–0.97× the autodiff step at
  # H = 1000 on two CPUs, 1.02× at H ≤ 400 (WORKSPACE §6.4); not measured
  # on accelerators.
  "search.grad_after_scan_from": (800, 0),
}
# config.precision -> jax_default_matmul_precision.
PRECISIONS = {
  "float32": "highest",
  "tf32": "tensorfloat32",
  "bf16": "bfloat16",
  "default": None,
}


def backend() -> str:
  """ "cpu", "gpu" or "tpu" (starts the backend if it is not up yet)."""
  import jax  # noqa: PLC0415 (workdir and main.py read DEFAULTS without it)

  return jax.default_backend()


def value_for(field: str, platform: str) -> int:
  """The "auto" value of `field` on `platform`."""
  if field not in DEFAULTS:
    raise ValueError(f"config.{field} has no platform default; set a value")
  cpu, accelerator = DEFAULTS[field]
  return cpu if platform == "cpu" else accelerator


def lookup(config: ml_collections.ConfigDict, field: str):
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    if p not in node:
      return None, None
    node = node[p]
  return node, leaf


def with_precision(fn):
  """Decorates `train_and_evaluate(config, workdir)`: runs it at the
  config's matmul precision (`jax.default_matmul_precision`), restored
  afterwards, so runs in one process do not leak it into one another.
  """
  import functools  # noqa: PLC0415

  @functools.wraps(fn)
  def run(config, *args, **kwargs):
    import jax  # noqa: PLC0415

    precision = PRECISIONS[check_precision(config)]
    if precision is None:
      return fn(config, *args, **kwargs)
    with jax.default_matmul_precision(precision):
      return fn(config, *args, **kwargs)

  return run


def _coerce(field: str, value, platform: str | None = None):
  """A field's value: "auto" resolved, a number given as text made an int.

  A field whose default is "auto" is a string field to ml_collections, so
  `--config.search.eval_vmap=0` arrives as "0".
  """
  if not isinstance(value, str):
    return value
  if value == AUTO:
    return value_for(field, platform or backend())
  try:
    return int(value)
  except ValueError:
    raise ValueError(
      f"config.{field} must be an integer or {AUTO!r}: {value!r}"
    ) from None


def get(config: ml_collections.ConfigDict, field: str, default=None):
  """`config.<field>`, with "auto" resolved for the current backend.

  `default` when the field (or a section above it) is absent.
  """
  node, leaf = lookup(config, field)
  if node is None or leaf not in node:
    return default
  return _coerce(field, node[leaf])


def check_precision(config: ml_collections.ConfigDict) -> str:
  """config.precision ("float32" when absent); ValueError if unknown."""
  p = config.get("precision", "float32")
  if p not in PRECISIONS:
    raise ValueError(
      f"config.precision must be one of {', '.join(PRECISIONS)}: {p!r}"
    )
  return p


def resolved_config(
  config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """A copy of `config` with "auto" fields resolved (no other effect)."""
  return _resolved(config, backend())[0]


def _resolved(config, platform):
  d = config.to_dict()
  resolved = {}
  for field in DEFAULTS:
    node = d
    *parents, leaf = field.split(".")
    for p in parents:
      node = node.get(p, {})
    if isinstance(node.get(leaf), str):
      node[leaf] = _coerce(field, node[leaf], platform)
      resolved[field] = node[leaf]
  return ml_collections.ConfigDict(d), resolved


def resolve(
  config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """A copy of `config` with "auto" fields resolved, and what was resolved.

  The precision is applied by `with_precision` (around the whole run).

  Returns:
    `(resolved config, record)`; the record ({"backend", "device_kind",
    "precision", "jax_default_matmul_precision", "resolved": {field:
    value}}) is what `run.json` stores beside the config as given.

  Raises:
    ValueError: an unknown precision, or "auto" in a field without a
      platform default (one line naming it).
  """
  import jax  # noqa: PLC0415

  precision = check_precision(config)
  platform = backend()
  out, resolved = _resolved(config, platform)
  record = {
    "backend": platform,
    "device_kind": jax.devices()[0].device_kind,
    "precision": precision,
    "jax_default_matmul_precision": PRECISIONS[precision],
    "resolved": resolved,
  }
  return out, record
