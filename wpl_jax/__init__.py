"""wpl_jax: weight plasticity loss for weight sharing without forgetting."""

from wpl_jax import _versions

_versions.check()  # a jax/flax pair that is known not to work: say so now

from wpl_jax import fisher, loss, partition  # noqa: E402
from wpl_jax.fisher import FisherState, fisher_diagonal  # noqa: E402
from wpl_jax.loss import add_wpl, l2_penalty, wpl_penalty  # noqa: E402
from wpl_jax.partition import make_mask  # noqa: E402

__version__ = "0.1.0"

__all__ = [
  "FisherState",
  "add_wpl",
  "fisher",
  "fisher_diagonal",
  "l2_penalty",
  "loss",
  "make_mask",
  "partition",
  "wpl_penalty",
]
