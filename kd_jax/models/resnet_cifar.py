"""CIFAR ResNets of RepDistiller / mdistiller (`models/resnet.py`), layer for layer.

`ResNet(depth, num_filters)`: conv3x3(3 -> f0) - BN - ReLU, three stages of
n = (depth - 2) / 6 BasicBlocks with f1, f2 (stride 2), f3 (stride 2) channels, 8x8 average
pool, Linear `fc` (Flax: `classifier`). A block gets a 1x1-conv + BN `downsample` shortcut
when its stride is 2 or its input width differs. resnet8..resnet110 use
f = [16, 16, 32, 64]; resnet8x4 and resnet32x4 use [32, 64, 128, 256].

Torch names are kept (rule in `torch_import`): `conv1`, `bn1`, `layer{s}_{i}` with
`conv1`, `bn1`, `conv2`, `bn2`, `downsample_0`, `downsample_1`. Convolutions have no bias
and start from kaiming_normal(fan_out) like RepDistiller.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.registry import register


class BasicBlock(nn.Module):
  """conv3x3(stride) - BN - ReLU - conv3x3 - BN, plus shortcut, then ReLU."""
  planes: int
  stride: int = 1
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(layers.conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    out = nn.relu(bn(name="bn1")(conv(self.planes, 3, self.stride, 1, name="conv1")(x)))
    out = bn(name="bn2")(conv(self.planes, 3, 1, 1, name="conv2")(out))
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, 1, self.stride, 0, name="downsample_0")(x)
      x = bn(name="downsample_1")(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """RepDistiller's CIFAR ResNet with BasicBlocks; depth = 6n + 2."""
  num_classes: int
  depth: int
  num_filters: Sequence[int]
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if (self.depth - 2) % 6:
      raise ValueError(f"depth={self.depth} must be 6n + 2 for BasicBlock ResNets")
    n = (self.depth - 2) // 6
    x = layers.conv(self.num_filters[0], 3, 1, 1, name="conv1", dtype=self.dtype,
                    precision=self.precision)(x)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    for stage, (planes, stride) in enumerate(zip(self.num_filters[1:], (1, 2, 2))):
      for i in range(n):
        x = BasicBlock(planes, stride if i == 0 else 1, self.dtype, self.precision,
                       name=f"layer{stage + 1}_{i}")(x, train)
    features = layers.flatten(layers.avg_pool(x, 8))  # nn.AvgPool2d(8): 8x8 -> 1x1 at 32x32
    logits = layers.linear(self.num_classes, name="classifier", dtype=self.dtype,
                           precision=self.precision)(features)
    return (logits, features) if return_features else logits


def _register(name: str, depth: int, num_filters: Sequence[int]):
  @register(name, torch_classifier="fc")
  def constructor(num_classes: int, **options) -> nn.Module:
    return ResNet(num_classes, depth, tuple(num_filters), **options)

  constructor.__name__ = name
  return constructor


for _depth in (8, 14, 20, 32, 44, 56, 110):
  _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
_register("resnet8x4", 8, (32, 64, 128, 256))
_register("resnet32x4", 32, (32, 64, 128, 256))
