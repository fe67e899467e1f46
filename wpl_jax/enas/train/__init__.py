"""wpl_jax.enas.train: the ENAS search, its ground truth and the retraining.

The programs above the ENAS model (`wpl_jax.enas`), which never imports them.
"""
