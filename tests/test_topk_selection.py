"""The exact top-k selection behind TSD and KD-topk (`kd_jax._loss_kernels.top_k_sets`).

Every path (the rounds, the two-level "columns", lax.top_k, and what "auto" picks) must
select what `jax.lax.top_k` selects, ties to the lowest index, with its fallback when a row
ties at the k-th value or holds a NaN; TSD built on it must match TSD built on lax.top_k,
value and gradient. pmap / shard_map: test_losses_parallel.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import _loss_kernels as kernels
from kd_jax import losses


def _tied_rows(b, c, seed):
  """Rows of a few distinct values (ties everywhere, at the k-th value too) and one row of
  distinct values, float32."""
  rng = np.random.default_rng([seed, b, c])
  x = rng.integers(0, 4, size=(b, c)).astype(np.float32)
  x[0] = rng.permutation(c).astype(np.float32)
  return x


@pytest.mark.parametrize("c", [2, 3, 7, 10, 100, 1000])
@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
def test_top_k_sets_select_what_lax_top_k_selects(c, tied):
  """Every path of `top_k_sets` (rounds, columns where they apply, lax.top_k, and what "auto"
  picks), with its fallback when ties reach the k-th value: the same values and the same set
  as lax.top_k, ties to the lowest index."""
  x = _tied_rows(6, c, 1) if tied else np.random.default_rng(c).normal(size=(6, c)).astype(
      np.float32)
  k_sets = [(k,) for k in sorted({1, min(5, c), min(16, c), max(1, c - 1), c})]
  k_sets.append((1, min(6, c)))  # as TSD asks: the primary and the top K+1 together

  @functools.partial(jax.jit, static_argnums=(1, 2))
  def sets(x, ks, path):
    values, pairs = kernels.top_k_sets(x, ks, path)
    return values, [kernels.in_top_set(x, *pair) for pair in pairs]

  for ks in k_sets:
    paths = ["auto", "top_k", "rounds"]
    if kernels._column_height(c, max(ks)) is not None:
      paths.append("columns")
    for path in paths:
      values, masks = sets(x, ks, path)
      for k, mask in zip(ks, masks):
        ref_values, ref_index = jax.lax.top_k(x, k)
        ref_mask = np.zeros(x.shape, bool)
        np.put_along_axis(ref_mask, np.asarray(ref_index), True, axis=-1)
        where = f"k={k} of {ks}, path {path}"
        np.testing.assert_array_equal(np.asarray(mask), ref_mask, err_msg=where)
        np.testing.assert_array_equal(np.asarray(values)[:, :k], ref_values, err_msg=where)


def test_selection_path_follows_the_measured_costs():
  """On CPU: lax.top_k for few rows, the rounds for [1024, 100], the columns from 128K
  entries; and an unknown path is refused."""
  assert kernels._selection_path(8, 100, 6) == "top_k"
  assert kernels._selection_path(64, 1000, 6) == "rounds"
  assert kernels._selection_path(1024, 100, 6) == "rounds"
  assert kernels._selection_path(1024, 1000, 6) == "columns"
  assert kernels._selection_path(1024, 1000, 999) == "top_k"  # too many columns to pick
  with pytest.raises(ValueError, match="path='sort'"):
    kernels.top_k_sets(jnp.zeros((2, 10)), (3,), "sort")


def _column_rows(c, width):
  """Rows that stress the two-level selection. Distinct values (the check passes): three
  random rows, the top 8 all in one column (class c mod W), +-inf. Ties or NaN (the check
  fails): two column maxima tied, a tie inside a column, a NaN, few distinct values."""
  rng = np.random.default_rng(c)
  rows = [rng.normal(size=c) for _ in range(3)]
  same_column = rng.normal(size=c)
  same_column[np.arange(8) * width + 3] = 10.0 + np.arange(8)
  tied_maxima = rng.normal(size=c)
  tied_maxima[[1, 2]] = 9.0
  tied_inside = rng.normal(size=c)
  tied_inside[[5, width + 5, 2 * width + 5]] = [9.0, 8.0, 8.0]
  with_nan = rng.normal(size=c)
  with_nan[7] = np.nan
  infinite = rng.normal(size=c)
  infinite[[0, 11]] = [np.inf, -np.inf]
  few_values = rng.integers(0, 3, size=c).astype(float)
  rows += [same_column, infinite, tied_maxima, tied_inside, with_nan, few_values]
  return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("c", [1000, 1001, 2047])
def test_top_k_sets_by_columns_match_lax_top_k(c):
  """The two-level path: same values and set as lax.top_k on rows built to break it; its
  check passes on the clean rows and refuses the others."""
  height = kernels._column_height(c, 6)
  assert height is not None
  width = -(-c // height)  # W columns: class c in column c mod W
  x = _column_rows(c, width)
  for ks in [(5,), (1, 6), (8,)]:
    values, pairs = jax.jit(kernels.top_k_sets, static_argnums=(1, 2))(x, ks, "columns")
    for k, pair in zip(ks, pairs):
      mask = np.asarray(kernels.in_top_set(x, *pair))
      rows = ~np.isnan(x).any(-1)   # lax.top_k's order among NaNs is its own
      ref_values, ref_index = jax.lax.top_k(x, k)
      ref_mask = np.zeros(x.shape, bool)
      np.put_along_axis(ref_mask, np.asarray(ref_index), True, axis=-1)
      np.testing.assert_array_equal(mask[rows], ref_mask[rows], err_msg=f"k={k} of {ks}")
      np.testing.assert_array_equal(np.asarray(values)[rows, :k], np.asarray(ref_values)[rows])
  top = jax.jit(kernels._top_values_by_columns, static_argnums=(1, 2))
  values, clean = top(x[:5], 6, height)
  assert bool(clean)
  np.testing.assert_array_equal(np.stack(values, -1), np.sort(x[:5], -1)[:, ::-1][:, :6])
  for row in range(5, len(x)):  # each of the others alone fails the check
    assert not bool(top(x[[0, row]], 6, height)[1]), row


def _tsd_with_lax_top_k(z, num_secondary, labels=None):
  """TSD with the classes chosen by lax.top_k and picked by gather: its value and gradient
  fix which of several tied classes are primary and secondary."""
  p = jax.nn.softmax(z)
  e = jax.lax.stop_gradient(jnp.exp(z - jnp.max(z, -1, keepdims=True)))
  if labels is None:
    _, order = jax.lax.top_k(e, num_secondary + 1)
    ranked = jnp.take_along_axis(p, order, -1)
    return ranked[:, 0] - ranked[:, 1:].mean(-1)
  _, order = jax.lax.top_k(jnp.where(jax.nn.one_hot(labels, z.shape[-1]) > 0, -1.0, e),
                           num_secondary)
  primary = jnp.take_along_axis(p, labels[:, None], -1)[:, 0]
  return primary - jnp.take_along_axis(p, order, -1).mean(-1)


@pytest.mark.parametrize("c", [2, 10, 100, 1000])
@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
def test_tsd_ties_pick_the_classes_lax_top_k_picks(c, tied):
  k = min(5, c - 1)
  z = _tied_rows(5, c, 2) if tied else np.random.default_rng(c).normal(size=(5, c)).astype(
      np.float32)
  y = jnp.asarray(np.arange(5) % c, jnp.int32)
  for labels in (None, y):
    ours = jax.jit(jax.value_and_grad(
        lambda z, labels=labels: losses.tsd(z, k, labels=labels).sum()))(z)
    plain = jax.value_and_grad(
        lambda z, labels=labels: _tsd_with_lax_top_k(z, k, labels).sum())(z)
    np.testing.assert_allclose(ours[0], plain[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], plain[1], rtol=1e-5, atol=1e-6)
