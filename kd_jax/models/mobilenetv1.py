"""ImageNet MobileNetV1, the student of the ResNet50 -> MobileNetV1 setting (CRD, mdistiller).

The network of mdistiller's `models/imagenet/mobilenetv1.py` (from the AT/Overhaul
distillation codebases): a 3x3/2 stem conv of 32 channels, 13 depthwise-separable blocks
(3x3 depthwise -> BN-ReLU -> 1x1 -> BN-ReLU), AvgPool2d(7) over the final 7x7 map of a 224x224
input, Linear(1024, num_classes). 1000 classes: 4,231,976 trainable parameters (4.23M).

Names are the torch module paths with '.' -> '_': torch keeps everything in one nn.Sequential
`model`, so `model.5.3.weight` (block 5's 1x1 conv) <-> params['model_5_3']['kernel'] and
`model.0.1.running_var` <-> batch_stats['model_0_1']['var']; torch's `fc` is the Dense
`classifier` here.

Pooling: the global mean, equal to torch's AvgPool2d(7) at 224x224 and defined for any input
size (torch's module needs a 7x7 final map).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.registry import register

# (output channels, stride) of the 13 depthwise-separable blocks model.1 .. model.13.
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
           (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

# mdistiller keeps torch's default init: U(+-1/sqrt(fan_in)) for conv weights (the rule of
# layers.linear_init) and the Linear weight; BN scale 1 / bias 0.


class MobileNetV1(nn.Module):
  """ImageNet MobileNetV1 (width 1.0)."""
  num_classes: int = 1000
  dtype: Any = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train=False, return_features=False):
    """x: [B, H, W, 3] (224x224 for ImageNet) -> logits [B, C] (or (logits, [B, 1024]))."""

    def conv_bn_relu(x, features, kernel, stride, groups, block, position):
      # torch: model.{block}.{position} is the conv, model.{block}.{position + 1} its BN.
      x = layers.conv(features, kernel, stride, kernel // 2, groups=groups, dtype=self.dtype,
                      precision=self.precision,
                      kernel_init=layers.linear_init, name=f"model_{block}_{position}")(x)
      return nn.relu(layers.batch_norm(train, f"model_{block}_{position + 1}", self.dtype)(x))

    x = conv_bn_relu(x, 32, 3, 2, 1, 0, 0)
    for block, (features, stride) in enumerate(_BLOCKS, start=1):
      channels = x.shape[-1]
      x = conv_bn_relu(x, channels, 3, stride, channels, block, 0)  # depthwise
      x = conv_bn_relu(x, features, 1, 1, 1, block, 3)  # pointwise
    features = layers.global_avg_pool(x)
    logits = layers.linear(self.num_classes, "classifier", self.dtype,
                           precision=self.precision)(features)
    return (logits, features) if return_features else logits


@register("MobileNetV1", input_kind="image", torch_classifier="fc", input_shape=(224, 224, 3))
def mobilenetv1(num_classes: int, **options) -> nn.Module:
  """mdistiller's ImageNet MobileNetV1; options: dtype, precision."""
  return MobileNetV1(num_classes, **options)

