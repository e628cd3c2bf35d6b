"""Small teacher/student pairs for the offline datasets; each trains in seconds on a CPU.

| name              | input              | layers                                                  |
|-------------------|--------------------|---------------------------------------------------------|
| mlp_large         | vectors [B, D]     | Dense 256 - ReLU - Dense 256 - ReLU - classifier        |
| mlp_small         | vectors [B, D]     | Dense 32 - ReLU - classifier                            |
| cnn1d_large       | signals [B, 40, 1] | 3 x (Conv1d 64, BN, ReLU) - Dense 128 - ReLU - classifier |
| cnn1d_small       | signals [B, 40, 1] | 3 x (Conv1d 8, ReLU) - classifier                        |
| cnn_digits_large  | images [B, 8, 8, 1]| 3 x (Conv 3x3, BN, ReLU): 32, 64 s2, 128 s2 - avg pool - classifier |
| cnn_digits_small  | images [B, 8, 8, 1]| Conv 3x3 8 - ReLU - max pool 2 - classifier              |

The 1-D CNNs follow the MNIST-1D paper's `ConvBase` (Greydanus 2020): three convolutions,
kernel 5 then 3, 3, stride 2, padding 1 (length 40 -> 19 -> 10 -> 5), then a Dense layer.
The paper's 25-channel version reaches about 0.94 test accuracy on the 4000/1000 split; the
large one is wider and has BatchNorm, the small one is narrower (8 channels).

Every model returns logits [B, C], or with `return_features=True` (logits, features) where
the features are the input of the `classifier` Dense layer. Only the `*_large` CNNs have
BatchNorm (so only they have 'batch_stats').
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.registry import register


class MLP(nn.Module):
  """ReLU multilayer perceptron on [B, D] vectors (inputs of more dims are flattened)."""
  num_classes: int
  hidden: Sequence[int] = (256, 256)
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    del train  # no BatchNorm or dropout
    x = layers.flatten(x)
    for i, width in enumerate(self.hidden):
      x = nn.relu(layers.linear(width, name=f"fc{i + 1}", dtype=self.dtype,
                                precision=self.precision)(x))
    logits = layers.linear(self.num_classes, name="classifier", dtype=self.dtype,
                           precision=self.precision)(x)
    return (logits, x) if return_features else logits


class CNN1D(nn.Module):
  """MNIST-1D ConvBase: Conv1d(k=5,s=2,p=1), 2 x Conv1d(k=3,s=2,p=1), flatten, Dense."""
  num_classes: int
  channels: int = 25
  hidden: int | None = None  # optional Dense layer between the flatten and the classifier
  use_bn: bool = False
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if x.ndim == 2:  # [B, L] -> [B, L, 1]
      x = x[..., None]
    for i, kernel in enumerate((5, 3, 3)):
      x = layers.conv(self.channels, kernel, stride=2, padding=1, use_bias=not self.use_bn,
                      spatial_dims=1, name=f"conv{i + 1}", dtype=self.dtype,
                      precision=self.precision)(x)
      if self.use_bn:
        x = layers.batch_norm(train, name=f"bn{i + 1}", dtype=self.dtype)(x)
      x = nn.relu(x)
    x = layers.flatten(x)
    if self.hidden:
      x = nn.relu(layers.linear(self.hidden, name="fc1", dtype=self.dtype,
                                precision=self.precision)(x))
    logits = layers.linear(self.num_classes, name="classifier", dtype=self.dtype,
                           precision=self.precision)(x)
    return (logits, x) if return_features else logits


class DigitsCNN(nn.Module):
  """CNN for 8x8x1 digits: BN conv stack + global average pool, or one conv + max pool."""
  num_classes: int
  large: bool = True
  dtype: layers.Dtype = jnp.float32
  precision: layers.Precision = None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if self.large:
      for i, (width, stride) in enumerate(((32, 1), (64, 2), (128, 2))):  # 8 -> 8 -> 4 -> 2
        x = layers.conv(width, 3, stride, padding=1, name=f"conv{i + 1}", dtype=self.dtype,
                        precision=self.precision)(x)
        x = nn.relu(layers.batch_norm(train, name=f"bn{i + 1}", dtype=self.dtype)(x))
      x = layers.global_avg_pool(x)
    else:
      x = layers.conv(8, 3, 1, padding=1, use_bias=True, name="conv1", dtype=self.dtype,
                      precision=self.precision)(x)
      x = layers.flatten(layers.max_pool(nn.relu(x), 2))  # 8x8x8 -> 4x4x8 -> 128
    logits = layers.linear(self.num_classes, name="classifier", dtype=self.dtype,
                           precision=self.precision)(x)
    return (logits, x) if return_features else logits


@register("mlp_large", input_kind="vector", torch_classifier=None)
def mlp_large(num_classes: int, **options) -> nn.Module:
  return MLP(num_classes, hidden=(256, 256), **options)


@register("mlp_small", input_kind="vector", torch_classifier=None)
def mlp_small(num_classes: int, **options) -> nn.Module:
  return MLP(num_classes, hidden=(32,), **options)


@register("cnn1d_large", input_kind="signal", torch_classifier=None)
def cnn1d_large(num_classes: int, **options) -> nn.Module:
  return CNN1D(num_classes, channels=64, hidden=128, use_bn=True, **options)


@register("cnn1d_small", input_kind="signal", torch_classifier=None)
def cnn1d_small(num_classes: int, **options) -> nn.Module:
  return CNN1D(num_classes, channels=8, **options)


@register("cnn_digits_large", input_kind="image", torch_classifier=None)
def cnn_digits_large(num_classes: int, **options) -> nn.Module:
  return DigitsCNN(num_classes, large=True, **options)


@register("cnn_digits_small", input_kind="image", torch_classifier=None)
def cnn_digits_small(num_classes: int, **options) -> nn.Module:
  return DigitsCNN(num_classes, large=False, **options)
