"""wpl_jax: weight plasticity loss for weight sharing without forgetting."""

from wpl_jax import fisher, loss, partition
from wpl_jax.fisher import FisherState, fisher_diagonal
from wpl_jax.loss import add_wpl, l2_penalty, wpl_penalty
from wpl_jax.partition import make_mask

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
