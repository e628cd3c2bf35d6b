"""CIFAR VGGs with BatchNorm of RepDistiller / mdistiller (`models/vgg.py`, the `*_bn` ones).

Five blocks of conv3x3(pad 1, bias) - BN - ReLU (block widths below); a 2x2 max pool after
blocks 0, 1, 2 (and after block 3 only for 64x64 inputs, as RepDistiller's `h == 64`), then a
global average pool (`AdaptiveAvgPool2d(1)`) and Linear `classifier` (512 -> C).

| name  | cfg | convs per block   |
|-------|-----|-------------------|
| vgg8  | S   | 1, 1, 1, 1, 1     |
| vgg11 | A   | 1, 1, 2, 2, 2     |
| vgg13 | B   | 2, 2, 2, 2, 2     |
| vgg16 | D   | 2, 2, 3, 3, 3     |
| vgg19 | E   | 2, 2, 4, 4, 4     |

Torch names: `block{b}` is an `nn.Sequential` [conv, bn, relu, conv, bn, relu, ...], so the
j-th conv is `block{b}_{3j}` and its BN `block{b}_{3j+1}`. Init as RepDistiller: convs
N(0, 2 / (k*k*out)) with zero bias, classifier N(0, 0.01) with zero bias.
"""

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.registry import register

CFG = {
    "S": ((64,), (128,), (256,), (512,), (512,)),
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
          (512, 512, 512, 512)),
}


class VGG(nn.Module):
  """RepDistiller VGG with BatchNorm; `cfg` is one of CFG's keys."""
  num_classes: int
  cfg: str
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    height = x.shape[1]
    for b, widths in enumerate(CFG[self.cfg]):
      for j, width in enumerate(widths):
        x = layers.conv(width, 3, 1, 1, use_bias=True, name=f"block{b}_{3 * j}",
                        kernel_init=layers.conv_init, dtype=self.dtype,
                        precision=self.precision)(x)
        x = nn.relu(layers.batch_norm(train, name=f"block{b}_{3 * j + 1}", dtype=self.dtype)(x))
      if b < 3 or (b == 3 and height == 64):
        x = layers.max_pool(x, 2, 2)
    features = layers.global_avg_pool(x)
    logits = layers.linear(self.num_classes, name="classifier", dtype=self.dtype,
                           precision=self.precision,
                           kernel_init=nn.initializers.normal(0.01))(features)
    return (logits, features) if return_features else logits


def _register(name: str, cfg: str):
  @register(name, torch_classifier="classifier")
  def constructor(num_classes: int, **options) -> nn.Module:
    return VGG(num_classes, cfg, **options)

  constructor.__name__ = name
  return constructor


for _name, _cfg in (("vgg8", "S"), ("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"),
                    ("vgg19", "E")):
  _register(_name, _cfg)
