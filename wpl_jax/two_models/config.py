"""Two-model study: what a config asks for, checked before any work.

The variants and A settings; the B runs a config expands to (`Run`,
`make_runs`) and the headline ones that are drawn and logged (`headline_runs`);
`validate` (the config) and `check_data` (the data against the config), which
raise one-line ValueErrors. The configs are in experiments/two_models.py.
"""

import dataclasses

import ml_collections

from wpl_jax import fisher as fisher_lib
from wpl_jax.runtime import validation
from wpl_jax.two_models.steps import OPTIMIZERS

VARIANTS = ("plain", "l2", "wpl")


A_SETTINGS = ("converged", "weak")


@dataclasses.dataclass(frozen=True)
class Run:
  """One B training run: a variant, its estimator and strength, a seed."""

  variant: str
  estimator: str  # "" unless variant == "wpl".
  alpha: float
  seed: int

  @property
  def name(self) -> str:
    if self.variant == "plain":
      return "plain"
    if self.variant == "l2":
      return f"l2(a={self.alpha:g})"
    return f"wpl[{self.estimator}](a={self.alpha:g})"


def make_runs(config: ml_collections.ConfigDict) -> list[Run]:
  """Every (variant, estimator, alpha, seed) that B is trained with."""
  runs = []
  for s in range(config.num_seeds):
    seed = config.seed + s
    for variant in config.variants:
      if variant == "plain":
        runs.append(Run("plain", "", 0.0, seed))
      elif variant == "l2":
        for a in _grid(config.l2.strength, config.l2.strengths):
          runs.append(Run("l2", "", a, seed))
      else:
        for est in config.fisher.estimators:
          for a in _grid(config.wpl.alpha, config.wpl.alphas):
            runs.append(Run("wpl", est, a, seed))
  return runs


def _grid(headline: float, sweep) -> list[float]:
  """The headline strength plus the sweep, sorted, without duplicates."""
  return sorted({float(headline), *(float(a) for a in sweep)})


def headline_runs(config) -> dict[str, str]:
  """Run names drawn in the figure and logged on the terminal."""
  names = {}
  if "plain" in config.variants:
    names["plain"] = Run("plain", "", 0.0, 0).name
  if "l2" in config.variants:
    names["l2"] = Run("l2", "", float(config.l2.strength), 0).name
  if "wpl" in config.variants and config.wpl.estimator in (
    config.fisher.estimators
  ):
    names["wpl"] = Run(
      "wpl", config.wpl.estimator, float(config.wpl.alpha), 0
    ).name
  return names


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) on an inconsistent config, before any work."""
  v = validation
  for path in ("model.width", "model.depth_a", "model.depth_b"):
    v.integer(config, path, min=1)
  for path in ("opt_a.lr", "opt_b.lr"):
    v.number(config, path, min=0, open_min=True)
  v.number(config, "wpl.alpha", min=0)
  v.numbers_in(config, "wpl.alphas", min=0)
  v.number(config, "l2.strength", min=0)
  v.numbers_in(config, "l2.strengths", min=0)
  for path in (
    "protocol.batch_size",
    "fisher.batch_size",
    "fisher.num_examples",
  ):
    v.integer(config, path, min=1)
  for path in ("protocol.a_log_every", "protocol.early_step"):
    v.integer(config, path, min=1)
  v.integer(config, "protocol.eval_examples", min=0)
  v.number(
    config, "data.test_fraction", min=0, max=1, open_min=True, open_max=True
  )
  p = config.protocol
  checks = [
    (
      set(config.variants) <= set(VARIANTS) and config.variants,
      f"variants {tuple(config.variants)} must be a non-empty subset of "
      f"{VARIANTS}",
    ),
    (
      set(p.a_settings) <= set(A_SETTINGS) and p.a_settings,
      f"protocol.a_settings {tuple(p.a_settings)} must be a non-empty subset "
      f"of {A_SETTINGS}",
    ),
    (
      set(config.fisher.estimators) <= set(fisher_lib.ESTIMATORS),
      f"fisher.estimators {tuple(config.fisher.estimators)} must be a subset "
      f"of {fisher_lib.ESTIMATORS}",
    ),
    (
      config.fisher.normalize in ("mean", "none"),
      f"fisher.normalize={config.fisher.normalize!r} must be 'mean' or 'none'",
    ),
    (
      config.opt_a.name in OPTIMIZERS and config.opt_b.name in OPTIMIZERS,
      f"optimiser names must be in {tuple(OPTIMIZERS)}",
    ),
    (
      all(
        1 <= k <= min(config.model.depth_a, config.model.depth_b)
        for k in p.shared_layers
      )
      and p.shared_layers,
      f"protocol.shared_layers {tuple(p.shared_layers)} must lie in [1, "
      f"{min(config.model.depth_a, config.model.depth_b)}]",
    ),
    (config.num_seeds >= 1, f"num_seeds={config.num_seeds} must be >= 1"),
    (
      isinstance(config.seed, int) and config.seed >= 0,
      f"seed={config.seed} must be an integer >= 0",
    ),
    (
      p.get("checkpoint_every", 0) >= 0
      and p.get("checkpoint_every", 0) % p.eval_every == 0,
      f"protocol.checkpoint_every={p.get('checkpoint_every', 0)} must be 0 "
      f"or a positive multiple of protocol.eval_every={p.eval_every}",
    ),
    (
      p.b_steps >= 1 and p.eval_every >= 1 and p.b_steps % p.eval_every == 0,
      f"protocol.b_steps={p.b_steps} must be a positive multiple of "
      f"protocol.eval_every={p.eval_every}",
    ),
    (
      0 < p.a_steps_weak < p.a_steps_converged,
      f"need 0 < protocol.a_steps_weak={p.a_steps_weak} < "
      f"protocol.a_steps_converged={p.a_steps_converged}",
    ),
    (
      config.fisher.num_examples % config.fisher.batch_size == 0,
      f"fisher.num_examples={config.fisher.num_examples} must be a multiple "
      f"of fisher.batch_size={config.fisher.batch_size}",
    ),
    (
      config.data.name in ("digits", "mnist"),
      f"data.name={config.data.name!r} must be 'digits' or 'mnist'",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


def check_data(config: ml_collections.ConfigDict, data) -> None:
  """Raises ValueError (one line) if the data cannot serve the config.

  Run before anything is written: the Fisher needs `fisher.num_examples`
  distinct training examples (`protocol.eval_examples` is an upper bound:
  a smaller test set is used whole).
  """
  n_train = len(data.x_train)
  n_fisher = config.fisher.num_examples
  if "wpl" in config.variants and n_fisher > n_train:
    raise ValueError(
      f"fisher.num_examples={n_fisher} exceeds the {n_train} training "
      f"examples of {config.data.name}"
    )
