"""Group 2: the PyTorch peer (torch.func per-sample gradients), same models.

PyTorch is a benchmark-only dependency (`pip install torch numpy`), never a
runtime dependency of wpl_jax. The peers get the same weights and batches
as the JAX cases (copied through NumPy) and their Fisher is checked against
`wpl_jax.fisher_fast` before anything is timed.
"""

import numpy as np

from benchmarks import fisher_bench
from benchmarks.common import Case, measure
from wpl_jax import fisher_fast
from wpl_jax.enas import edge_fisher, search_space

BASELINE = "torch autograd (batch)"


def _t(torch, x, dtype=None):
  return torch.tensor(np.asarray(x), dtype=dtype)


def _rel_diff(got: dict, want: dict) -> float:
  """Largest leafwise max|got − want| / max|want|."""
  worst = 0.0
  for k, w in want.items():
    w = np.asarray(w, np.float64)
    g = np.asarray(got[k], np.float64)
    worst = max(worst, float(np.max(np.abs(g - w)) / np.max(np.abs(w))))
  return worst


def mlp_cases(torch, params, batch):
  """Per-sample squared gradients and the batch gradient of model A."""
  func = torch.func
  x, y = _t(torch, batch[0]), _t(torch, batch[1], torch.long)
  depth = len(params) - 1
  names = [f"a_{i}" for i in range(depth)] + ["a_head"]
  flat = {f"{n}/{k}": _t(torch, params[n][k]) for n in names for k in params[n]}

  def loss(p, xb, yb):
    h = xb
    for n in names[:-1]:
      h = torch.relu(h @ p[f"{n}/kernel"] + p[f"{n}/bias"])
    logits = h @ p["a_head/kernel"] + p["a_head/bias"]
    return torch.nn.functional.cross_entropy(logits, yb)

  def one(p, xi, yi):
    return loss(p, xi[None], yi[None])

  per_sample = func.vmap(func.grad(one), in_dims=(None, 0, 0))

  def fisher():
    with torch.no_grad():
      g = per_sample(flat, x, y)
      return {k: v.square().mean(0) for k, v in g.items()}

  leaves = [v.clone().requires_grad_(True) for v in flat.values()]

  def batch_grad():
    p = dict(zip(flat, leaves, strict=True))
    return torch.autograd.grad(loss(p, x, y), leaves)

  want = fisher_fast.per_example_fisher(fisher_bench.mlp_loss.fn, params, batch)
  want = {f"{n}/{k}": want[n][k] for n in names for k in params[n]}
  note = f"Fisher = JAX's to {_rel_diff(fisher(), want):.0e}"
  cases = [
    Case(BASELINE, batch_grad, jax=False),
    Case("torch.func vmap(grad) per-sample", fisher, jax=False),
  ]
  backpack_fisher = _backpack_mlp(torch, params, names, x, y)
  if backpack_fisher is not None:
    err = _rel_diff(backpack_fisher(), want)
    cases.append(
      Case(
        f"BackPACK SumGradSquared (Fisher = JAX's to {err:.0e})",
        backpack_fisher,
        jax=False,
      )
    )
  return cases, note


def _backpack_mlp(torch, params, names, x, y):
  """BackPACK's `SumGradSquared` on model A: the same algorithmic idea as
  the taps (per-example squared gradients from the layer inputs and output
  cotangents of one backward pass), in PyTorch. None if not installed
  (`pip install backpack-for-pytorch`)."""
  try:
    import backpack  # noqa: PLC0415
    from backpack.extensions import SumGradSquared  # noqa: PLC0415
  except ImportError:
    return None
  layers = []
  for n in names:
    kernel = np.asarray(params[n]["kernel"])
    lin = torch.nn.Linear(*kernel.shape)
    with torch.no_grad():
      lin.weight.copy_(_t(torch, kernel.T))
      lin.bias.copy_(_t(torch, params[n]["bias"]))
    layers += [lin, torch.nn.ReLU()]
  net = backpack.extend(torch.nn.Sequential(*layers[:-1]))
  lossf = backpack.extend(torch.nn.CrossEntropyLoss())
  b = x.shape[0]

  def fisher():
    net.zero_grad()
    with backpack.backpack(SumGradSquared()):
      lossf(net(x), y).backward()
    # The mean loss's per-example gradients are ∇ℓ_b / B: Σ_b (·)² · B is
    # the empirical Fisher 1/B Σ_b (∇ℓ_b)².
    out = {}
    for i, n in enumerate(names):
      lin = net[2 * i]
      out[f"{n}/kernel"] = (b * lin.weight.sum_grad_squared).T
      out[f"{n}/bias"] = b * lin.bias.sum_grad_squared
    return {k: v.detach().numpy() for k, v in out.items()}

  return fisher


def _enas_torch(torch, model, variables, arch):
  """Eval-mode ENAS child loss in PyTorch, on the arch's gathered edges."""
  p = {
    k: _t(torch, v)
    for k, v in {
      "embedding": variables["params"]["embedding"],
      "decoder_bias": variables["params"]["decoder_bias"],
      **variables["params"]["node0"],
      "bn_scale": variables["params"]["batch_norm"]["scale"],
      "bn_bias": variables["params"]["batch_norm"]["bias"],
      "bn_mean": variables["batch_stats"]["batch_norm"]["mean"],
      "bn_var": variables["batch_stats"]["batch_norm"]["var"],
    }.items()
  }
  acts = [int(a) for a in np.asarray(arch.activations)]
  parents = [int(a) for a in np.asarray(arch.parents)]
  leaf = np.asarray(search_space.leaf_mask(arch))
  leaves = [j for j in range(len(acts)) if leaf[j]]
  funcs = [torch.tanh, torch.relu, lambda z: z, torch.sigmoid]
  w_x = torch.cat([p["w_xc"], p["w_xh"]], 1)
  b_x = torch.cat([p["b_xc"], p["b_xh"]])
  w_h0 = torch.cat([p["w_hc"], p["w_hh"]], 1)
  inv_std = torch.rsqrt(p["bn_var"] + model.bn_epsilon)
  hid, clip = model.hidden_size, model.clip_norm

  def highway(z, h_in, act):
    c = torch.sigmoid(z[:, :hid])
    return c * funcs[act](z[:, hid:]) + (1 - c) * h_in

  def loss(edges, inputs_TxB, targets_TxB, hidden_BxH):
    # One [H, 2H] matrix per node, as the reference keeps one Linear per
    # edge: gradients then accumulate per node, not into a stacked copy.
    w_e = [
      torch.cat([edges[f"c{j}"], edges[f"h{j}"]], 1)
      for j in range(1, len(acts))
    ]
    xz = p["embedding"][inputs_TxB] @ w_x + b_x
    h, outs = hidden_BxH, []
    for t in range(inputs_TxB.shape[0]):
      nodes = [highway(xz[t] + h @ w_h0, h, acts[0])]
      for j in range(1, len(acts)):
        h_in = nodes[parents[j]]
        nodes.append(highway(h_in @ w_e[j - 1], h_in, acts[j]))
      out = sum(nodes[j] for j in leaves) / len(leaves)
      outs.append((out - p["bn_mean"]) * inv_std * p["bn_scale"] + p["bn_bias"])
      new_h = nodes[-1]
      norm = new_h.norm(dim=-1, keepdim=True)
      factor = torch.where(norm > clip, clip / norm.clamp_min(1e-12), 1.0)
      h = new_h * factor.detach()
    logits = torch.stack(outs) @ p["embedding"].T + p["decoder_bias"]
    return torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]), targets_TxB.reshape(-1)
    )

  return loss


def enas_cases(torch, model, variables, arch, batch, chunk):
  """Per-sample squared edge gradients and the batch edge gradient."""
  func = torch.func
  loss = _enas_torch(torch, model, variables, arch)
  ids = np.asarray(search_space.edge_ids(arch))
  cell = variables["params"]["cell"]
  edges = {
    f"{k[-1]}{j + 1}": _t(torch, np.asarray(cell[k])[i])
    for k in ("edge_c", "edge_h")
    for j, i in enumerate(ids)
  }
  inputs = _t(torch, batch["inputs"], torch.long)  # [B, T]
  targets = _t(torch, batch["targets"], torch.long)
  hidden = _t(torch, batch["hidden"])

  def one(e, inp, tgt, hid):
    return loss(e, inp[:, None], tgt[:, None], hid[None])

  per_sample = func.vmap(
    func.grad(one), in_dims=(None, 0, 0, 0), chunk_size=chunk
  )

  def fisher():
    with torch.no_grad():
      g = per_sample(edges, inputs, targets, hidden)
      return {k: v.square().mean(0) for k, v in g.items()}

  leaves = {k: v.clone().requires_grad_(True) for k, v in edges.items()}

  def batch_grad():
    value = loss(leaves, inputs.T, targets.T, hidden)
    return torch.autograd.grad(value, list(leaves.values()))

  want, _ = edge_fisher.enas_edge_fisher(model, variables, arch, batch)
  want = {
    f"{k[-1]}{j + 1}": np.asarray(want[k])[i]
    for k in ("edge_c", "edge_h")
    for j, i in enumerate(ids)
  }
  note = f"Fisher = JAX's to {_rel_diff(fisher(), want):.0e}"
  cases = [
    Case(BASELINE, batch_grad, jax=False),
    Case(f"torch.func vmap(grad) per-sample chunk {chunk}", fisher, jax=False),
  ]
  return cases, note


def run(sizes: list[str], reps: int) -> list:
  try:
    import torch  # Optional and benchmark-only: imported on use.
  except ImportError:
    print("PyTorch not installed: skipping the PyTorch peer")
    return []
  rows = []
  for size in sizes:
    width, b = fisher_bench.MLP_SIZES[size]
    params, batch = fisher_bench.mlp_setup(width, b)
    cases, note = mlp_cases(torch, params, batch)
    label = f"{size}: 784-{width}×4-10, B={b}"
    new = measure(
      "PyTorch peer, MLP", label, cases, reps=reps, baseline=BASELINE
    )
    new[-1].note = note
    rows += new
  for size in sizes:
    hidden, nodes = fisher_bench.ENAS_SIZES[size]
    model, variables, arch, batch = fisher_bench.enas_setup(hidden, nodes)
    cases, note = enas_cases(
      torch, model, variables, arch, batch, fisher_bench.ENAS_CHUNK
    )
    label = (
      f"{size}: H={hidden}, N={nodes}, B={fisher_bench.ENAS_BATCH}"
      f"×T={fisher_bench.ENAS_BPTT}, V={fisher_bench.VOCAB}"
    )
    new = measure(
      "PyTorch peer, ENAS child", label, cases, reps=reps, baseline=BASELINE
    )
    new[-1].note = note
    rows += new
  return rows
