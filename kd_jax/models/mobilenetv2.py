"""RepDistiller's CIFAR MobileNetV2 (`mobile_half`), registered as "MobileNetV2".

RepDistiller / CRD (Tian et al. 2020) and mdistiller call the width-0.5, expansion-6 CIFAR
MobileNetV2 `mobile_half`; mdistiller's model table names it "MobileNetV2", and so do we.
Differences from the ImageNet MobileNetV2: the second stage has stride 1 (32x32 input ends at
2x2), every block keeps its 1x1 expansion conv even when the expansion ratio is 1, and the last
conv has 1280 channels whatever the width (the width multiplier only scales it above 1.0).
100 classes: 812,836 trainable parameters (the 0.81M of the CRD tables).

Submodule names follow the PyTorch module paths with '.' -> '_' so that a RepDistiller
checkpoint imports key by key: `blocks.2.1.conv.3.weight` <-> params['blocks_2_1']['conv_3']
['kernel'], `conv1.1.running_mean` <-> batch_stats['conv1_1']['mean']. The torch classifier is
`classifier.0` (a Linear inside an nn.Sequential); here it is the Dense `classifier`.

Pooling: RepDistiller uses AvgPool2d(input_size // 16, ceil_mode=True) on the final 2x2 map of a
32x32 input, i.e. the global mean; we take the global mean for every input size.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.registry import register

# RepDistiller's `_initialize_weights`: conv N(0, 2 / (k*k*out_channels)) (layers.conv_init),
# BN scale 1 and bias 0, Linear N(0, 0.01^2) with zero bias.
_classifier_init = nn.initializers.normal(stddev=0.01)


def _conv(features, kernel, stride=1, groups=1, *, dtype, name, precision=None):
  return layers.conv(features, kernel, stride, kernel // 2, groups=groups, dtype=dtype, name=name,
                     precision=precision)


class InvertedResidual(nn.Module):
  """1x1 expand -> BN-ReLU -> 3x3 depthwise (stride) -> BN-ReLU -> 1x1 project -> BN (+ input).

  Names conv_{0,1,3,4,6,7} are the torch nn.Sequential indices (2 and 5 are the ReLUs).
  """
  features: int
  stride: int
  expand_ratio: int
  dtype: Any = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train=False):
    in_features = x.shape[-1]
    hidden = in_features * self.expand_ratio
    conv = functools.partial(_conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    y = nn.relu(bn(name="conv_1")(conv(hidden, 1, name="conv_0")(x)))
    y = conv(hidden, 3, self.stride, groups=hidden, name="conv_3")(y)
    y = nn.relu(bn(name="conv_4")(y))
    y = bn(name="conv_7")(conv(self.features, 1, name="conv_6")(y))
    if self.stride == 1 and in_features == self.features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """CIFAR MobileNetV2 of RepDistiller; defaults give `mobile_half`.

  Attributes:
    num_classes: outputs of the `classifier` Dense.
    expand_ratio: expansion T of all stages but the first (RepDistiller's `T`).
    width_mult: channel multiplier W (`mobilenetv2_T_w(T, W)`).
  """
  num_classes: int
  expand_ratio: int = 6
  width_mult: float = 0.5
  dtype: Any = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train=False, return_features=False):
    """x: [B, H, W, 3] (CIFAR: 32x32; stride 16) -> logits [B, C] (or (logits, [B, 1280]))."""
    t, w = self.expand_ratio, self.width_mult
    # (expansion, channels, blocks, first stride) per stage.
    setting = [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1),
               (t, 160, 3, 2), (t, 320, 1, 1)]
    conv = functools.partial(_conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    x = nn.relu(bn(name="conv1_1")(conv(int(32 * w), 3, 2, name="conv1_0")(x)))
    for i, (expand, channels, blocks, stride) in enumerate(setting):
      for j in range(blocks):
        x = InvertedResidual(int(channels * w), stride if j == 0 else 1, expand,
                             dtype=self.dtype, precision=self.precision,
                             name=f"blocks_{i}_{j}")(x, train)
    last = int(1280 * w) if w > 1.0 else 1280
    x = nn.relu(bn(name="conv2_1")(conv(last, 1, name="conv2_0")(x)))
    features = layers.global_avg_pool(x)
    logits = layers.linear(self.num_classes, "classifier", self.dtype,
                           kernel_init=_classifier_init, precision=self.precision)(features)
    return (logits, features) if return_features else logits


@register("MobileNetV2", input_kind="image", torch_classifier="classifier.0")
def mobilenetv2(num_classes: int, **options) -> nn.Module:
  """RepDistiller's `mobile_half` (T=6, W=0.5); options: expand_ratio, width_mult, dtype,
  precision."""
  return MobileNetV2(num_classes, **options)

