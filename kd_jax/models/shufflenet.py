"""RepDistiller's CIFAR ShuffleNets: "ShuffleV1" (groups 3) and "ShuffleV2" (net size 1).

Both follow RepDistiller's `models/ShuffleNetv1.py` / `ShuffleNetv2.py` (themselves from
kuangliu's pytorch-cifar): a 1x1 stem conv (3 -> 24, stride 1, no max-pool), three stride-2
stages, average pooling of the final 4x4 map of a 32x32 input, a Linear named `linear` in torch
and `classifier` here. Trainable parameters for 100 classes: ShuffleV1 949,258 (0.95M),
ShuffleV2 1,355,528 (1.36M), the figures of the CRD tables.

Submodule names are the torch module paths with '.' -> '_' (`layer2.3.conv1.weight` <->
params['layer2_3']['conv1']['kernel']), so RepDistiller checkpoints import key by key.

Channel shuffle. torch, NCHW: `x.view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)`
sends input channel `i*(C/g) + j` to output channel `j*g + i`. In NHWC the same permutation is
`x.reshape(N, H, W, g, C/g).swapaxes(-1, -2).reshape(N, H, W, C)` (see `channel_shuffle`).

Pooling: RepDistiller's F.avg_pool2d(out, 4) on the 4x4 map of a 32x32 input is the global
mean; we take the global mean for every input size.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.registry import register

# RepDistiller's ShuffleNets keep torch's default init: conv weights U(+-1/sqrt(fan_in))
# (layers.linear_init is that same rule), BN scale 1 / bias 0; the classifier is layers.linear.


def _conv(features, kernel, stride=1, groups=1, *, dtype, name, precision=None):
  return layers.conv(features, kernel, stride, kernel // 2, groups=groups, dtype=dtype, name=name,
                     kernel_init=layers.linear_init, precision=precision)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle on the last axis, the same permutation as torch's on NCHW.

  Args:
    x: [..., C] with C divisible by `groups`.
    groups: g.
  Returns:
    [..., C] where output channel `j*g + i` is input channel `i*(C/g) + j`.
  """
  *lead, channels = x.shape
  if channels % groups:
    raise ValueError(f"channels={channels} must be divisible by groups={groups}")
  return x.reshape(*lead, groups, channels // groups).swapaxes(-1, -2).reshape(*lead, channels)


class ShuffleV1Unit(nn.Module):
  """torch `Bottleneck`: 1x1 group conv -> shuffle -> 3x3 depthwise -> 1x1 group conv.

  Stride 1 adds the input; stride 2 concatenates a 3x3/2 average pool of the input (torch's
  AvgPool2d(3, 2, padding=1), zero padding counted in the divisor). `features` is the unit's
  own output width (stage width minus the input width for stride 2, as in RepDistiller).
  """
  features: int
  stride: int
  groups: int
  dtype: Any = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train=False):
    mid = int(self.features / 4)
    first_groups = 1 if x.shape[-1] == 24 else self.groups  # the 24-channel stem is not grouped
    conv = functools.partial(_conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(conv(mid, 1, groups=first_groups, name="conv1")(x)))
    y = channel_shuffle(y, first_groups)
    y = nn.relu(bn(name="bn2")(conv(mid, 3, self.stride, groups=mid, name="conv2")(y)))
    y = bn(name="bn3")(conv(self.features, 1, groups=self.groups, name="conv3")(y))
    if self.stride == 2:
      shortcut = layers.avg_pool(x, 3, 2, padding=1)
      return nn.relu(jnp.concatenate([y, shortcut], axis=-1))
    return nn.relu(y + x)


class ShuffleV1(nn.Module):
  """RepDistiller's ShuffleV1: stage widths (240, 480, 960), blocks (4, 8, 4), groups 3."""
  num_classes: int
  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3
  dtype: Any = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train=False, return_features=False):
    """x: [B, H, W, 3] (H, W multiples of 8) -> logits [B, C] (or (logits, [B, 960]))."""
    x = _conv(24, 1, dtype=self.dtype, precision=self.precision, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, "bn1", self.dtype)(x))
    for stage, (planes, blocks) in enumerate(zip(self.out_planes, self.num_blocks)):
      for j in range(blocks):
        features = planes - x.shape[-1] if j == 0 else planes
        x = ShuffleV1Unit(features, 2 if j == 0 else 1, self.groups, dtype=self.dtype,
                          precision=self.precision,
                          name=f"layer{stage + 1}_{j}")(x, train)
    features = layers.global_avg_pool(x)
    logits = layers.linear(self.num_classes, "classifier", self.dtype,
                           precision=self.precision)(features)
    return (logits, features) if return_features else logits


class ShuffleV2Unit(nn.Module):
  """torch `BasicBlock`: split channels in halves (x1, x2), x2 -> 1x1 -> 3x3 dw -> 1x1,
  concatenate [x1, x2'] and shuffle with 2 groups."""
  dtype: Any = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train=False):
    half = int(x.shape[-1] * 0.5)
    x1, x2 = x[..., :half], x[..., half:]
    conv = functools.partial(_conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    y = nn.relu(bn(name="bn1")(conv(half, 1, name="conv1")(x2)))
    y = bn(name="bn2")(conv(half, 3, groups=half, name="conv2")(y))
    y = nn.relu(bn(name="bn3")(conv(half, 1, name="conv3")(y)))
    return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class ShuffleV2Down(nn.Module):
  """torch `DownBlock`: two stride-2 branches of `features // 2` channels, concat, shuffle."""
  features: int
  dtype: Any = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train=False):
    channels, mid = x.shape[-1], self.features // 2
    conv = functools.partial(_conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    left = bn(name="bn1")(conv(channels, 3, 2, groups=channels, name="conv1")(x))
    left = nn.relu(bn(name="bn2")(conv(mid, 1, name="conv2")(left)))
    right = nn.relu(bn(name="bn3")(conv(mid, 1, name="conv3")(x)))
    right = bn(name="bn4")(conv(mid, 3, 2, groups=mid, name="conv4")(right))
    right = nn.relu(bn(name="bn5")(conv(mid, 1, name="conv5")(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


# RepDistiller's `configs` of ShuffleNetV2 by net size: stage widths + final conv, blocks.
SHUFFLEV2_SIZES = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class ShuffleV2(nn.Module):
  """RepDistiller's ShuffleV2 (net size 1): stages (116, 232, 464), blocks (3, 7, 3), 1024-d head.

  Each stage is one `ShuffleV2Down` (torch index 0) then `num_blocks` units (indices 1..n).
  """
  num_classes: int
  out_channels: Sequence[int] = (116, 232, 464, 1024)
  num_blocks: Sequence[int] = (3, 7, 3)
  dtype: Any = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train=False, return_features=False):
    """x: [B, H, W, 3] (H, W multiples of 8) -> logits [B, C] (or (logits, [B, 1024]))."""
    conv = functools.partial(_conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    x = nn.relu(bn(name="bn1")(conv(24, 1, name="conv1")(x)))
    for stage in range(3):
      x = ShuffleV2Down(self.out_channels[stage], dtype=self.dtype, precision=self.precision,
                        name=f"layer{stage + 1}_0")(x, train)
      for j in range(self.num_blocks[stage]):
        x = ShuffleV2Unit(dtype=self.dtype, precision=self.precision,
                          name=f"layer{stage + 1}_{j + 1}")(x, train)
    x = nn.relu(bn(name="bn2")(conv(self.out_channels[3], 1, name="conv2")(x)))
    features = layers.global_avg_pool(x)
    logits = layers.linear(self.num_classes, "classifier", self.dtype,
                           precision=self.precision)(features)
    return (logits, features) if return_features else logits


@register("ShuffleV1", input_kind="image", torch_classifier="linear")
def shufflev1(num_classes: int, **options) -> nn.Module:
  """RepDistiller's ShuffleV1; options: out_planes, num_blocks, groups, dtype,
  precision."""
  return ShuffleV1(num_classes, **options)


@register("ShuffleV2", input_kind="image", torch_classifier="linear")
def shufflev2(num_classes: int, net_size: float = 1, **options) -> nn.Module:
  """RepDistiller's ShuffleV2; `net_size` picks a row of SHUFFLEV2_SIZES (default 1)."""
  if net_size not in SHUFFLEV2_SIZES:
    raise ValueError(f"net_size={net_size!r} is not one of {sorted(SHUFFLEV2_SIZES)}")
  out_channels, num_blocks = SHUFFLEV2_SIZES[net_size]
  return ShuffleV2(num_classes, out_channels, num_blocks, **options)
