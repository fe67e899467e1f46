"""The search's shared step with the edges' gradient formed after the scan.

An experiment that did not pay, kept to be re-measured on other machines
(`python benchmarks/step_ab.py --what=grad`): the arch's fused edges
[N-1, H, 2H] become a leaf of their own, read only through the model's
"edge" tap, so their gradient is one [H, T·B] × [T·B, 2H] GEMM per edge
after the time scan (`wpl_jax.tapped_grad.value_and_grad`) instead of 35
small GEMMs and 35 accumulations inside the scan's backward. The same
gradient (tests/enas_search_test.py); on quiet 2-core CPUs it
measured 1.02× the autodiff step at H = 200 and 400 and 0.87–0.97× at
H = 1000 (WORKSPACE §6.1), so the search uses plain autodiff.
"""

import dataclasses

from wpl_jax import tapped_grad
from wpl_jax.enas import search_space, supernet
from wpl_jax.enas.train import steps as enas_steps


@dataclasses.dataclass(frozen=True)
class TappedSteps(enas_steps.Steps):
  """`Steps` whose shared step forms the edges' gradient after the scan."""

  def shared_grads(self, loss_fn, params, arch):
    leaves = {
      "params": params,
      "edges": supernet.arch_edges(params["cell"], arch),
    }
    (_, aux), g = tapped_grad.value_and_grad(
      lambda q, _, tap: loss_fn(q["params"], q["edges"], tap),
      leaves,
      None,
      has_aux=True,
    )
    ids = search_space.edge_ids(arch)
    hidden = self.config.model.hidden
    cell = dict(g["params"]["cell"])  # the penalty's part, [E, H, H]
    cell["edge_c"] = cell["edge_c"].at[ids].add(g["edges"][..., :hidden])
    cell["edge_h"] = cell["edge_h"].at[ids].add(g["edges"][..., hidden:])
    return {**g["params"], "cell": cell}, aux
