"""wpl_jax.enas."""
