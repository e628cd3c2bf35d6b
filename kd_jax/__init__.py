"""kd_jax: knowledge distillation in JAX/Flax.

`kd_jax.losses` and `kd_jax.targets` are pure functions that import nothing of the rest of
the project but its private argument checks (`kd_jax._validation`), so they drop into any JAX
training step.

`pip install kd_jax` installs only what the library modules need (JAX, optax, NumPy,
ml_collections: `losses`, `targets`, `methods`, `metrics`, `selection`); the models, data,
trainer and reports need the `train` extra (`pip install 'kd_jax[train]'`), and importing
them without it says so (`kd_jax._extras.requires`).
"""

__version__ = "0.1.0"
