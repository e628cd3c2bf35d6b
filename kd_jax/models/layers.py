"""Layers that behave like their PyTorch namesakes, shared by every model family.

Why not plain `nn.Conv(padding="SAME")`: for stride 2 "SAME" pads (0, 1) where torch pads
(1, 1), so a converted torch checkpoint would compute something else. Every helper here
takes torch's arguments (kernel, stride, padding, bias, groups) and sets Flax's accordingly.

Numerics. Every model has `dtype` (the compute dtype of activations and conv/matmul inputs;
parameters stay float32) and `precision` (`precision=` of its convolutions and Dense layers:
None, the backend's default, "high" or "highest"; see kd_jax/config_defaults.py). Whatever
`dtype` is, sums that lose precision in bfloat16 are at least float32 (`_accumulation_dtype`:
float32, or float64 for float64 inputs): average pooling sums in it, and Dense layers
accumulate their matmul and add their bias in it and return it (so logits are float32 and the
bias gradient, a sum over the batch, accumulates in float32); the next layer casts its input
to its own `dtype`.

Initialisation follows RepDistiller where it sets one: convolutions draw from
N(0, 2 / fan_out) (`kaiming_normal_(mode="fan_out")`, equal to VGG/WRN's
`normal_(0, sqrt(2 / (k*k*out)))`); BatchNorm starts at scale 1, bias 0; Linear layers use
torch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight (bias starts at 0).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

Dtype = Any
Precision = Any  # None, "default", "high", "highest" or a jax.lax.Precision

# kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out * k * k)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default weight init, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in)).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# torch BatchNorm defaults: eps=1e-5, momentum=0.1 (torch) == 0.9 (Flax's decay convention).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def conv(features: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
         use_bias: bool = False, groups: int = 1, spatial_dims: int = 2, name: str | None = None,
         dtype: Dtype = jnp.float32, precision: Precision = None,
         kernel_init=conv_init) -> nn.Conv:
  """torch.nn.Conv{1,2}d(in, features, kernel_size, stride, padding, bias, groups).

  Inputs are channels-last ([B, H, W, C] or [B, L, C]); the kernel is
  [k, (k,) C_in / groups, features]. Padding is explicit and symmetric like torch.
  """
  return nn.Conv(features, (kernel_size,) * spatial_dims, strides=(stride,) * spatial_dims,
                 padding=((padding, padding),) * spatial_dims, use_bias=use_bias,
                 feature_group_count=groups, kernel_init=kernel_init, name=name, dtype=dtype,
                 precision=precision)


def batch_norm(train: bool, name: str | None = None, dtype: Dtype = jnp.float32) -> nn.BatchNorm:
  """torch.nn.BatchNorm{1,2}d: batch statistics when `train`, running averages otherwise."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      name=name, dtype=dtype)


def _accumulation_dtype(*dtypes) -> jnp.dtype:
  """float32 for 16-bit and float32 inputs, float64 for float64 ones (x64 mode)."""
  return jnp.result_type(*dtypes, jnp.float32)


def _dot_general_float32(lhs, rhs, dimension_numbers, precision=None, **kwargs):
  """`lax.dot_general` accumulating into at least float32 whatever the inputs' dtype."""
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=_accumulation_dtype(lhs.dtype, rhs.dtype),
                         **kwargs)


def _promote_inputs_only(inputs, kernel, bias, *, dtype=None, inexact=True):
  """Flax's promote_dtype for the input and kernel; the (float32) bias is left as it is."""
  inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=dtype, inexact=inexact)
  return inputs, kernel, bias


def linear(features: int, name: str | None = None, dtype: Dtype = jnp.float32,
           kernel_init=linear_init, use_bias: bool = True,
           precision: Precision = None) -> nn.Dense:
  """torch.nn.Linear(in, features): kernel [in, features] (torch stores [features, in]).

  Inputs and kernel in `dtype`, accumulated in float32, plus the float32 bias: the output is
  float32 (see the module docstring)."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init, name=name, dtype=dtype,
                  precision=precision, dot_general=_dot_general_float32,
                  promote_dtype=_promote_inputs_only)


def max_pool(x, kernel_size: int, stride: int | None = None, padding: int = 0):
  """torch.nn.MaxPool{1,2}d(kernel_size, stride, padding): pads with -inf like torch."""
  dims = x.ndim - 2
  stride = kernel_size if stride is None else stride
  return nn.max_pool(x, (kernel_size,) * dims, strides=(stride,) * dims,
                     padding=((padding, padding),) * dims)


def avg_pool(x, kernel_size: int, stride: int | None = None, padding: int = 0):
  """torch.nn.AvgPool{1,2}d(kernel_size, stride, padding) (count_include_pad, floor of the
  output size), summed in at least float32 and returned in x's dtype."""
  dims = x.ndim - 2
  stride = kernel_size if stride is None else stride
  out = nn.avg_pool(x.astype(_accumulation_dtype(x.dtype)), (kernel_size,) * dims,
                    strides=(stride,) * dims, padding=((padding, padding),) * dims,
                    count_include_pad=True)
  return out.astype(x.dtype)


def global_avg_pool(x):
  """torch.nn.AdaptiveAvgPool2d(1) followed by flatten: [B, H, W, C] -> [B, C], summed in
  at least float32 and returned in x's dtype."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)),
                  dtype=_accumulation_dtype(x.dtype)).astype(x.dtype)


def flatten(x):
  """[B, ...] -> [B, prod(...)] in channels-last order (torch flattens channels-first)."""
  return x.reshape((x.shape[0], -1))
