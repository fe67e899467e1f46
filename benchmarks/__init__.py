"""Speed and memory benchmarks of wpl_jax (run: python -m benchmarks.run)."""
