"""wpl_jax.train."""
