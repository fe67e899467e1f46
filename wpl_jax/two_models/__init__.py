"""wpl_jax.two_models: the two-model study (model, config, steps, train,
report).
"""
