"""Experiments: one module each, with ``run(config) -> xarray.Dataset`` and ``plot(dataset)``.

They use only the public API of `mirrorflow_jax`, exactly as a user would.
"""
