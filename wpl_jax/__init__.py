"""wpl_jax: weight plasticity loss for weight sharing without forgetting."""

__version__ = "0.1.0"
