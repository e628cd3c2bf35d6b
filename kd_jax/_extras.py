"""Optional dependencies: a missing one is reported with the pip extra that installs it.

`pip install kd_jax` installs only what `kd_jax.losses`, `targets`, `methods`, `metrics` and
`selection` import (JAX, optax, NumPy, ml_collections). The models, data, trainer and
reports live behind extras; a package `__init__` wraps its imports in `requires`:

  with requires("train", "kd_jax.models"):
    from kd_jax.models.registry import create
"""

import contextlib

# The top-level modules each extra provides (only these are reported as a missing extra; any
# other missing module, e.g. a typo inside kd_jax, propagates unchanged).
PROVIDES = {
    "train": ("flax", "orbax", "tensorflow_datasets", "array_record", "sklearn", "mnist1d",
              "matplotlib", "tensorboardX", "tqdm", "absl", "PIL", "etils"),
    "torch": ("torch",),
    "notebooks": ("nbclient", "nbformat", "ipykernel"),
}


class MissingExtraError(ModuleNotFoundError):
  """A module of an optional extra is not installed; the message names the extra."""


@contextlib.contextmanager
def requires(extra: str, feature: str):
  """Re-raises a missing module of `extra` as MissingExtraError naming `pip install` it."""
  try:
    yield
  except MissingExtraError:
    raise
  except ModuleNotFoundError as error:
    module = (error.name or "").split(".")[0]
    if module not in PROVIDES[extra]:
      raise
    raise MissingExtraError(
        f"{feature} needs {module!r}, which is not installed. Install the extra: "
        f"pip install 'kd_jax[{extra}]'", name=error.name) from error
