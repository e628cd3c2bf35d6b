"""`exp_nonpositive`: the exp of every shifted softmax in the loss kernels (private).

On XLA:CPU it is written out in elementwise ops, half the work of XLA's `exp`; elsewhere it
is `jnp.exp`. Why and the measurements: experiments/results/perf_losses/results.md, Set 6.
"""

import jax
import jax.numpy as jnp
import numpy as np

# exp(r) = 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3 + c6 r^4) on |r| <= ln(2) / 2: a
# minimax fit of the relative error (3e-9, below float32 rounding); ln 2 = LN2_HI + LN2_LO
# with LN2_HI exact in 9 bits, so n * LN2_HI is exact for |n| <= 127 (Cody and Waite).
_EXP_POLY = (0.4999999403953552, 0.1666652113199234, 0.04166838899254799,
             0.008368710055947304, 0.001381461275741458)
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
# n + 1.5 * 2^23 + 127 is exact for integer n in [-127, 0], and its low 9 mantissa bits are
# n + 127: shifted left by 23 they are the float32 2^n (0 for n = -127).
_EXP2_MAGIC = 12582912.0 + 127.0


def _exp_nonpositive_cpu(x):
  x = jnp.where(x < -88.0, -88.0, x)  # NaN compares false and stays NaN
  n = jnp.round(x * np.float32(1.4426950408889634))
  r = (x - n * _LN2_HI) - n * _LN2_LO
  q = _EXP_POLY[-1]
  for c in _EXP_POLY[-2::-1]:
    q = q * r + c
  p = 1.0 + r * (1.0 + r * q)
  bits = jax.lax.bitcast_convert_type(n + _EXP2_MAGIC, jnp.int32) << 23
  return p * jax.lax.bitcast_convert_type(bits, jnp.float32)


@jax.custom_jvp
def exp_nonpositive(x):
  """`exp(x)` for float32 `x <= 0` (or NaN, or -inf): the exp of every shifted softmax here.

  On XLA:CPU it is written out in elementwise ops: `x = n ln 2 + r` with `n = round(x /
  ln 2)`, a degree-6 polynomial for `exp(r)`, and `2^n` built from the bits of `n + 1.5 *
  2^23 + 127`. Its relative error measures 7.4e-8 (XLA's `exp`: 8.2e-8), values below 2^-126
  are 0 as with XLA's `exp`, NaN stays NaN and `exp(-inf) = 0`; `x > 0` is outside its
  domain. It is about 20 ops a vector against about 35 for XLA's `exp` (which also handles
  `x > 0` and converts with saturation), which halves the exp pass of a `[1024, 100]` softmax
  on a CPU (experiments/results/perf_losses/). Other backends, and other dtypes, use `jnp.exp`.
  Derivative: `exp(x) dx`.
  """
  if x.dtype != jnp.float32:
    return jnp.exp(x)
  return jax.lax.platform_dependent(x, cpu=_exp_nonpositive_cpu, default=jnp.exp)


@exp_nonpositive.defjvp
def _exp_nonpositive_jvp(primals, tangents):
  value = exp_nonpositive(primals[0])
  return value, value * tangents[0]
