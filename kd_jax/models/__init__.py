"""Model zoo: `create(name, num_classes)`, `names()`, `info(name)`, torch checkpoint import.

Every module of this package that defines models registers them with
`registry.register` at import time; importing `kd_jax.models` imports them all, so a new
family is a new file here and nothing else. Inputs are channels-last: images [B, H, W, C],
signals [B, L, 1], vectors [B, D]. `model.apply(variables, x, train=False)` gives logits
[B, C]; `return_features=True` gives (logits, penultimate features [B, D]).
"""

import importlib
import pkgutil

from kd_jax._extras import requires

with requires("train", "kd_jax.models"):  # Flax: a missing extra is named in the error
  from kd_jax.models.registry import ModelInfo, create, info, names, register
  from kd_jax.models.torch_import import convert_state_dict, load_torch_checkpoint

  _NOT_MODEL_FILES = ("layers", "registry", "torch_import")

  for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_MODEL_FILES:
      importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ModelInfo", "convert_state_dict", "create", "info", "load_torch_checkpoint", "names",
           "register"]
