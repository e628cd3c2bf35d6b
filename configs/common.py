"""Deprecated: the shared defaults moved to `kd_jax.config_defaults`, so that a config file
works from any directory. This re-export keeps `from configs import common` working from the
repository root (experiments/ scripts); new code imports `from kd_jax import config_defaults`.
"""

from kd_jax.config_defaults import (  # noqa: F401
  VARIANT_KEYS,
  ConfigError,
  apply_variant,
  get_config,
  method,
  set_fields,
  student,
  teacher,
)
