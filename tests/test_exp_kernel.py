"""`kd_jax._exp_kernel.exp_nonpositive`, the exp of every shifted softmax in the losses:
against float64 NumPy, at its special values, with its derivative, under jit / vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax._exp_kernel import exp_nonpositive

TINY = np.finfo(np.float32).tiny  # 2^-126, the smallest normal float32


def test_relative_error_over_the_whole_domain():
  x = np.linspace(-87.3, 0.0, 1_000_001, dtype=np.float32)
  x = np.concatenate([x, -np.logspace(-12, 1, 10_001).astype(np.float32)])
  got = np.asarray(jax.jit(exp_nonpositive)(x), np.float64)
  want = np.exp(x.astype(np.float64))
  rel = np.abs(got - want) / want
  # Measured 7.4e-8; XLA's own exp measures 8.2e-8 here. 2 ulp at most:
  assert rel.max() < 1.2e-7, (rel.max(), x[np.argmax(rel)])


def test_special_values():
  x = jnp.array([0.0, -0.0, np.nan, -np.inf, -88.0, -1e30, -87.0, -1e-30], jnp.float32)
  got = np.asarray(jax.jit(exp_nonpositive)(x))
  assert got[0] == 1.0 and got[1] == 1.0           # exactly, so a row's maximum gives 1
  assert np.isnan(got[2])                           # NaN logits stay visible to the checks
  assert got[3] == 0.0 and got[4] == 0.0 and got[5] == 0.0
  np.testing.assert_allclose(got[6], np.exp(-87.0), rtol=2e-7)
  assert got[7] == 1.0
  # Below 2^-126 the value is 0 or (without flush-to-zero) a subnormal, as with jnp.exp:
  tiny_side = np.asarray(exp_nonpositive(jnp.linspace(-100.0, -87.34, 1001)))
  assert np.all((tiny_side >= 0) & (tiny_side < TINY))


def test_uses_its_own_polynomial_on_cpu_and_jnp_exp_otherwise():
  x = jnp.zeros((4, 8), jnp.float32)
  hlo = jax.jit(exp_nonpositive).lower(x).as_text()
  if jax.default_backend() == "cpu":
    assert "exponential" not in hlo and "round_nearest_even" in hlo, hlo
  else:
    assert "exponential" in hlo
  # Other dtypes are not float32 bit tricks: jnp.exp, in their own dtype.
  half = jnp.linspace(-5, 0, 7, dtype=jnp.bfloat16)
  assert exp_nonpositive(half).dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(exp_nonpositive(half), np.float32),
                                np.asarray(jnp.exp(half), np.float32))


def test_derivative_is_the_value_and_matches_finite_differences():
  x = np.linspace(-20.0, -0.01, 97).astype(np.float32)
  grad = jax.vmap(jax.grad(exp_nonpositive))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(grad), np.exp(x.astype(np.float64)), rtol=2e-7)
  h = 1e-3
  fd = (np.asarray(exp_nonpositive(x + h), np.float64)
        - np.asarray(exp_nonpositive(x - h), np.float64)) / (2 * h)
  np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-3, atol=1e-6)
  # Forward mode and second derivatives go through the same rule.
  _, tangent = jax.jvp(exp_nonpositive, (jnp.float32(-1.5),), (jnp.float32(2.0),))
  np.testing.assert_allclose(float(tangent), 2 * np.exp(-1.5), rtol=2e-7)
  second = jax.grad(jax.grad(exp_nonpositive))(jnp.float32(-1.5))
  np.testing.assert_allclose(float(second), np.exp(-1.5), rtol=2e-7)


@pytest.mark.parametrize("shape", [(3,), (5, 7), (2, 3, 100)])
def test_vmap_and_shapes_match_elementwise(shape):
  rng = np.random.default_rng(sum(shape))
  x = -np.abs(rng.normal(size=shape) * 10).astype(np.float32)
  whole = np.asarray(jax.jit(exp_nonpositive)(x))
  rows = np.asarray(jax.jit(jax.vmap(exp_nonpositive))(x))
  np.testing.assert_array_equal(whole, rows)
  # Op by op (no fusion, so no fused multiply-adds) it may differ by an ulp:
  np.testing.assert_allclose(np.asarray(exp_nonpositive(x)), whole, rtol=1.2e-7)
  np.testing.assert_allclose(whole, np.exp(x.astype(np.float64)), rtol=1.2e-7)
