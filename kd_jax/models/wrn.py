"""Wide ResNets of RepDistiller / mdistiller (`models/wrn.py`), layer for layer.

`WideResNet(depth, widen_factor)`: conv3x3(3 -> 16), three `NetworkBlock`s of
n = (depth - 4) / 6 pre-activation BasicBlocks with 16k, 32k (stride 2), 64k (stride 2)
channels, BN - ReLU, 8x8 average pool, Linear `fc` (Flax: `classifier`). A block whose input
and output widths differ applies BN - ReLU to its input first and uses a 1x1 conv
`convShortcut` on that activated input (exactly RepDistiller's `equalInOut` logic).
RepDistiller's wrn_* use dropRate 0, so there is no dropout.

Torch names: `conv1`, `block{s}_layer_{i}` with `bn1`, `conv1`, `bn2`, `conv2`,
`convShortcut`; final `bn1`. Convolutions have no bias, init N(0, 2 / (k*k*out)).
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.registry import register


class BasicBlock(nn.Module):
  """Pre-activation block: BN - ReLU - conv3x3(stride) - BN - ReLU - conv3x3, plus shortcut."""
  out_planes: int
  stride: int = 1
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(layers.conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    equal_in_out = x.shape[-1] == self.out_planes
    activated = nn.relu(bn(name="bn1")(x))
    out = conv(self.out_planes, 3, self.stride, 1, name="conv1")(activated)
    out = conv(self.out_planes, 3, 1, 1, name="conv2")(nn.relu(bn(name="bn2")(out)))
    if equal_in_out:
      return x + out
    return conv(self.out_planes, 1, self.stride, 0, name="convShortcut")(activated) + out


class WideResNet(nn.Module):
  """RepDistiller's WRN-depth-widen_factor; depth = 6n + 4."""
  num_classes: int
  depth: int
  widen_factor: int
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"depth={self.depth} must be 6n + 4 for Wide ResNets")
    n = (self.depth - 4) // 6
    widths = [16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
    x = layers.conv(16, 3, 1, 1, name="conv1", dtype=self.dtype, precision=self.precision)(x)
    for stage, (width, stride) in enumerate(zip(widths, (1, 2, 2))):
      for i in range(n):
        x = BasicBlock(width, stride if i == 0 else 1, self.dtype, self.precision,
                       name=f"block{stage + 1}_layer_{i}")(x, train)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    features = layers.flatten(layers.avg_pool(x, 8))  # F.avg_pool2d(out, 8)
    logits = layers.linear(self.num_classes, name="classifier", dtype=self.dtype,
                           precision=self.precision)(features)
    return (logits, features) if return_features else logits


def _register(depth: int, widen_factor: int):
  name = f"wrn_{depth}_{widen_factor}"

  @register(name, torch_classifier="fc")
  def constructor(num_classes: int, **options) -> nn.Module:
    return WideResNet(num_classes, depth, widen_factor, **options)

  constructor.__name__ = name
  return constructor


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
  _register(_depth, _widen)
