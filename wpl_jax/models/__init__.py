"""wpl_jax.models."""
