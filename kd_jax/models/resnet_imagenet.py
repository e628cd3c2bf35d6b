"""Four-stage ResNets: torchvision's ImageNet ResNet18/34/50 and RepDistiller's CIFAR ResNet50.

| name           | reference                              | stem                          | final |
|----------------|----------------------------------------|-------------------------------|-------|
| ResNet18       | torchvision resnet18 (BasicBlock 2222) | conv7x7 s2 - BN - ReLU - max pool 3 s2 | fc |
| ResNet34       | torchvision resnet34 (BasicBlock 3463) | same                          | fc    |
| ResNet50       | torchvision resnet50 (Bottleneck 3463, stride on the 3x3: "v1.5") | same | fc |
| ResNet50_cifar | RepDistiller `resnetv2.ResNet50` (Bottleneck 3463) | conv3x3 s1 - BN - ReLU | linear |

Stages have 64, 128, 256, 512 planes (Bottleneck outputs 4x), stride 1, 2, 2, 2; then a
global average pool and the classifier. The name "ResNet50" is torchvision's ImageNet model
(mdistiller's `imagenet_model_dict` name); RepDistiller's CIFAR "ResNet50" is registered as
"ResNet50_cifar".

Torch names: `conv1`, `bn1`, `layer{s}_{i}` with `conv1..3`, `bn1..3` and the projection
shortcut `downsample_0`/`downsample_1` (torchvision) or `shortcut_0`/`shortcut_1`
(RepDistiller resnetv2). Conv init kaiming_normal(fan_out) as both references.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.registry import register
from kd_jax.models.resnet_cifar import BasicBlock


class Bottleneck(nn.Module):
  """conv1x1 - BN - ReLU - conv3x3(stride) - BN - ReLU - conv1x1(4x) - BN, + shortcut, ReLU."""
  planes: int
  stride: int = 1
  shortcut_name: str = "downsample"
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(layers.conv, dtype=self.dtype, precision=self.precision)
    bn = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    out = nn.relu(bn(name="bn1")(conv(self.planes, 1, name="conv1")(x)))
    out = nn.relu(bn(name="bn2")(conv(self.planes, 3, self.stride, 1, name="conv2")(out)))
    out = bn(name="bn3")(conv(4 * self.planes, 1, name="conv3")(out))
    if self.stride != 1 or x.shape[-1] != 4 * self.planes:
      x = conv(4 * self.planes, 1, self.stride, name=f"{self.shortcut_name}_0")(x)
      x = bn(name=f"{self.shortcut_name}_1")(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """Four-stage ResNet; `imagenet_stem` picks torchvision's stem over RepDistiller's CIFAR one."""
  num_classes: int
  blocks: Sequence[int]
  bottleneck: bool
  imagenet_stem: bool = True
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if self.imagenet_stem:
      x = layers.conv(64, 7, 2, 3, name="conv1", dtype=self.dtype, precision=self.precision)(x)
    else:
      x = layers.conv(64, 3, 1, 1, name="conv1", dtype=self.dtype, precision=self.precision)(x)
    x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    if self.imagenet_stem:
      x = layers.max_pool(x, 3, 2, 1)
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), self.blocks)):
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        name = f"layer{stage + 1}_{i}"
        if self.bottleneck:
          shortcut = "downsample" if self.imagenet_stem else "shortcut"
          x = Bottleneck(planes, stride, shortcut, self.dtype, self.precision,
                         name=name)(x, train)
        else:
          x = BasicBlock(planes, stride, self.dtype, self.precision, name=name)(x, train)
    features = layers.global_avg_pool(x)
    logits = layers.linear(self.num_classes, name="classifier", dtype=self.dtype,
                           precision=self.precision)(features)
    return (logits, features) if return_features else logits


@register("ResNet18", torch_classifier="fc", input_shape=(224, 224, 3))
def resnet18(num_classes: int, **options) -> nn.Module:
  return ResNet(num_classes, (2, 2, 2, 2), bottleneck=False, **options)


@register("ResNet34", torch_classifier="fc", input_shape=(224, 224, 3))
def resnet34(num_classes: int, **options) -> nn.Module:
  return ResNet(num_classes, (3, 4, 6, 3), bottleneck=False, **options)


@register("ResNet50", torch_classifier="fc", input_shape=(224, 224, 3))
def resnet50(num_classes: int, **options) -> nn.Module:
  return ResNet(num_classes, (3, 4, 6, 3), bottleneck=True, **options)


@register("ResNet50_cifar", torch_classifier="linear")
def resnet50_cifar(num_classes: int, **options) -> nn.Module:
  return ResNet(num_classes, (3, 4, 6, 3), bottleneck=True, imagenet_stem=False, **options)
