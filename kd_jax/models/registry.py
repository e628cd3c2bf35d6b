"""Model registry: name -> constructor, plus what the trainer and the torch importer need.

Every registered constructor takes `num_classes` (and optional keyword options) and returns a
`flax.linen.Module` whose `__call__(x, train=False, return_features=False)` gives logits
`[B, C]`, or `(logits, features)` with the penultimate features `[B, D]`. The final Dense
layer is always named `classifier`; `torch_classifier` records what the PyTorch reference
implementation (RepDistiller / mdistiller / torchvision) calls it, for checkpoint import.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  name: str
  constructor: Callable[..., nn.Module]
  input_kind: str  # "image" (NHWC), "signal" ([B, L, 1]) or "vector" ([B, D])
  torch_classifier: str | None  # name of the final Linear in the PyTorch reference
  # One example's shape (no batch dim) that the model accepts, for shape inference without
  # data (e.g. checkpoint import); None: (32, 32, 3) for images, (40, 1) for signals.
  input_shape: tuple[int, ...] | None = None


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, *, input_kind: str = "image", torch_classifier: str | None = "fc",
             input_shape: tuple[int, ...] | None = None):
  """Decorator registering `constructor(num_classes, **options) -> nn.Module` under `name`."""
  if input_kind not in ("image", "signal", "vector"):
    raise ValueError(f"input_kind={input_kind!r} must be 'image', 'signal' or 'vector'")

  def wrap(constructor):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelInfo(name, constructor, input_kind, torch_classifier,
                                None if input_shape is None else tuple(input_shape))
    return constructor

  return wrap


def names() -> list[str]:
  return sorted(_REGISTRY)


def info(name: str) -> ModelInfo:
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; available: {', '.join(names())}")
  return _REGISTRY[name]


def create(name: str, num_classes: int, **options) -> nn.Module:
  """Builds model `name` with `num_classes` outputs; raises ValueError for an unknown name."""
  if int(num_classes) < 2:
    raise ValueError(f"num_classes={num_classes} must be >= 2")
  return info(name).constructor(int(num_classes), **options)
