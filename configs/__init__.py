"""The shipped experiment configs (ml_collections): `--config=<name>` (this directory is
installed with the package as kd_jax/configs); shared defaults in kd_jax/config_defaults.py."""
