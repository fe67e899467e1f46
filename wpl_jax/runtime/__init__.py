"""wpl_jax.runtime: experiment plumbing shared by the studies.

Checkpoints, workdirs, metrics, sharding, config validation, platform
defaults and figures; it imports no study.
"""
