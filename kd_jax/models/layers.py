"""Layers that behave like their PyTorch namesakes, shared by every model family.

Why not plain `nn.Conv(padding="SAME")`: for stride 2 "SAME" pads (0, 1) where torch pads
(1, 1), so a converted torch checkpoint would compute something else. Every helper here
takes torch's arguments (kernel, stride, padding, bias, groups) and sets Flax's accordingly.

Initialisation follows RepDistiller where it sets one: convolutions draw from
N(0, 2 / fan_out) (`kaiming_normal_(mode="fan_out")`, equal to VGG/WRN's
`normal_(0, sqrt(2 / (k*k*out)))`); BatchNorm starts at scale 1, bias 0; Linear layers use
torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight (bias starts at 0).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out * k * k)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default weight init, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# torch BatchNorm defaults: eps=1e-5, momentum=0.1 (torch) == 0.9 (Flax's decay convention).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def conv(features: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
         use_bias: bool = False, groups: int = 1, spatial_dims: int = 2, name: str | None = None,
         dtype: Dtype = jnp.float32, kernel_init=conv_init) -> nn.Conv:
  """torch.nn.Conv{1,2}d(in, features, kernel_size, stride, padding, bias, groups).

  Inputs are channels-last ([B, H, W, C] or [B, L, C]); the kernel is
  [k, (k,) C_in / groups, features]. Padding is explicit and symmetric like torch.
  """
  return nn.Conv(features, (kernel_size,) * spatial_dims, strides=(stride,) * spatial_dims,
                 padding=((padding, padding),) * spatial_dims, use_bias=use_bias,
                 feature_group_count=groups, kernel_init=kernel_init, name=name, dtype=dtype)


def batch_norm(train: bool, name: str | None = None, dtype: Dtype = jnp.float32) -> nn.BatchNorm:
  """torch.nn.BatchNorm{1,2}d: batch statistics when `train`, running averages otherwise."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      name=name, dtype=dtype)


def linear(features: int, name: str | None = None, dtype: Dtype = jnp.float32,
           kernel_init=linear_init, use_bias: bool = True) -> nn.Dense:
  """torch.nn.Linear(in, features): kernel [in, features] (torch stores [features, in])."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init, name=name, dtype=dtype)


def max_pool(x, kernel_size: int, stride: int | None = None, padding: int = 0):
  """torch.nn.MaxPool{1,2}d(kernel_size, stride, padding): pads with -inf like torch."""
  dims = x.ndim - 2
  stride = kernel_size if stride is None else stride
  return nn.max_pool(x, (kernel_size,) * dims, strides=(stride,) * dims,
                     padding=((padding, padding),) * dims)


def avg_pool(x, kernel_size: int, stride: int | None = None):
  """torch.nn.AvgPool{1,2}d(kernel_size, stride) without padding (floor of the output size)."""
  dims = x.ndim - 2
  stride = kernel_size if stride is None else stride
  return nn.avg_pool(x, (kernel_size,) * dims, strides=(stride,) * dims, padding="VALID")


def global_avg_pool(x):
  """torch.nn.AdaptiveAvgPool2d(1) followed by flatten: [B, H, W, C] -> [B, C]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def flatten(x):
  """[B, ...] -> [B, prod(...)] in channels-last order (torch flattens channels-first)."""
  return x.reshape((x.shape[0], -1))
