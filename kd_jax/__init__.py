"""kd_jax: knowledge distillation in JAX/Flax.

`kd_jax.losses` and `kd_jax.targets` are pure functions that import nothing of the rest of
the project, so they drop into any JAX training step.
"""

__version__ = "0.1.0"
