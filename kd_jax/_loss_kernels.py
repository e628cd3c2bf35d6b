"""The fused loss kernels behind `kd_jax.losses` (private: call the public losses).

Each is a per-row function of float32 logits with a hand-written derivative rule (a custom
JVP): reverse mode, forward mode and higher derivatives all work. Equations and the reason
for the fused form are in each kernel's docstring and in the comment below.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp

from kd_jax._exp_kernel import exp_nonpositive

# Custom-JVP kernels behind the public losses (CE, soft cross entropy / kl_to_targets, KD,
# entropy, TSD, DKD). Each forward pass computes `exp((z - max z) / T)` once per logits
# (`exp_nonpositive`, in XLA's CPU loop emitter; an exp inside its YNNPACK row reductions
# was measured slower), reduces it, and keeps `p` for the backward pass, which is one
# elementwise expression (no log-probabilities, no gather transpose / scatter).
# Differentiating the log-softmax forms instead makes XLA write log p, exp(log p) and each
# product with a target as separate `[B, C]` arrays; on a CPU those writes are what a loss
# costs. Values agree with the log-softmax forms to float32 rounding. Measurements:
# experiments/results/perf_losses/.


def is_one(x):
  return isinstance(x, (int, float)) and x == 1


def inv(temperature):
  """`1 / T`: a Python float for a Python-number T (1 for T = 1), else an array."""
  if isinstance(temperature, (int, float)):
    return 1 if temperature == 1 else 1.0 / temperature
  return 1.0 / temperature


def row_lse(z, inv_t):
  """`(max_c z_c, log sum_c exp((z_c - max) / T))`, both `[..., 1]`, the max under
  stop_gradient: a caller's `lse(z / T) = l + max / T` must add it back with the same
  stop_gradient, so that derivatives flow through the exp alone (`p / T` for z)."""
  m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  e = exp_nonpositive(z - m) if is_one(inv_t) else exp_nonpositive(z * inv_t - m * inv_t)
  return m, jnp.log(jnp.sum(e, axis=-1, keepdims=True))


def exp_shifted(z, inv_t=1):
  """`(max_c z_c, exp((z - max) / T))`: the one exp pass of a row softmax, `[..., 1]`, `[..., C]`.

  Every kernel below computes it with the same expression, so XLA computes it once when
  several terms (CE, a soft cross entropy at T = 1, the entropy, TSD) read the same logits.
  """
  m = jnp.max(z, axis=-1, keepdims=True)
  return m, exp_nonpositive(z - m) if is_one(inv_t) else exp_nonpositive((z - m) * inv_t)


def _defjvp(kernel, fwd, bwd, num_static=0):
  """Gives the custom-JVP `kernel` its rule: the value from `fwd(*args, *static)`, and the
  tangent `sum_c coef_c dz_c` with `coef = d value / dz = bwd(*static, residuals, 1)[0]`.

  The first argument is the logits (the only one with a tangent; the others are targets under
  stop_gradient, labels or ranks); trailing `num_static` arguments are Python numbers.
  Reverse mode transposes the tangent map into `g * coef`, one elementwise pass; forward mode
  and higher derivatives (`jax.jvp`, `jax.hessian`) differentiate through the rule.
  """
  def rule(*args):
    static, (primals, tangents) = args[:num_static], args[num_static:]
    value, res = fwd(*primals, *static)
    coef = bwd(*static, res, jnp.ones_like(value))[0]
    return value, jnp.sum(coef * tangents[0], axis=-1)
  kernel.defjvp(rule)


def one_hot_mask(labels, shape):
  return jax.lax.broadcasted_iota(labels.dtype, shape, len(shape) - 1) == labels[..., None]


@jax.custom_jvp
def label_xent(z, labels):
  """`CE(z, y) = logsumexp(z) - z_y` per row (float32 `z`, int `labels` in range).

  Gradient `p(z, 1) - e_y` in one elementwise pass (no scatter)."""
  return _label_xent_fwd(z, labels)[0]


def _label_xent_fwd(z, labels):
  m, e = exp_shifted(z)
  total = jnp.sum(e, axis=-1, keepdims=True)
  z_y = jnp.take_along_axis(z, labels[..., None], axis=-1)
  return ((m - z_y) + jnp.log(total))[..., 0], (e / total, labels)


def _label_xent_bwd(res, g):
  p, labels = res
  g = g[..., None]
  return g * p - jnp.where(one_hot_mask(labels, p.shape), g, 0.0), None


_defjvp(label_xent, _label_xent_fwd, _label_xent_bwd)


@jax.custom_jvp
def entropy(z):
  """`H(p(z, 1)) = log S - sum_c e_c (z_c - m) / S` per row (`e = exp(z - m)`, `S = sum e`).

  Gradient `-p (log p + H)` in one elementwise pass."""
  return _entropy_fwd(z)[0]


def _entropy_fwd(z):
  m, e = exp_shifted(z)
  total = jnp.sum(e, axis=-1, keepdims=True)
  log_total = jnp.log(total)
  h = log_total - jnp.sum(e * (z - m), axis=-1, keepdims=True) / total
  return h[..., 0], (z, e / total, m + log_total - h)


def _entropy_bwd(res, g):
  z, p, shift = res  # log p + H = z - (m + log S - H)
  return (-g[..., None] * p * (z - shift),)


_defjvp(entropy, _entropy_fwd, _entropy_bwd)


@jax.custom_jvp
def primary_minus_secondary(z, w, weighted):
  """`sum_c w_c p(z, 1)_c` per row for float32 `z`, given rank weights `w [..., C]` and
  `weighted = sum_c w_c exp(z_c - max z)` `[...]` (both no gradient; the caller has the
  few ranked values): TSD's `p_a - (1/K) sum_k p_{b_k}` with `w` = 1 at the primary class
  `a`, -1/K at the K secondary ones `b_k`, 0 elsewhere. Gradient `p (w - value)` in one
  elementwise pass (no gather transpose / scatter)."""
  return _primary_minus_secondary_fwd(z, w, weighted)[0]


def _primary_minus_secondary_fwd(z, w, weighted):
  _, e = exp_shifted(z)
  total = jnp.sum(e, axis=-1)
  value = weighted / total
  return value, (e / total[..., None], w, value)


def _primary_minus_secondary_bwd(res, g):
  p, w, value = res
  return g[..., None] * p * (w - value[..., None]), None, None


_defjvp(primary_minus_secondary, _primary_minus_secondary_fwd,
        _primary_minus_secondary_bwd)


# Top-k selection without XLA's CPU TopK custom call, which costs about 0.6 us per row plus
# 3 ns per entry (1 ms at [1024, 100], 3.5 ms at [1024, 1000]; most of a TSD or KD-topk step).
# Two exact alternatives, each checked, with lax.top_k as the fallback when a check fails:
#
# rounds   k rounds of "the largest value below the last one", each one elementwise pass and
#          one row max, then one count: exactly k entries must reach the k-th value.
# columns  two levels, for large arrays (below).
#
# When some row ties at the k-th value (or holds a NaN) the whole call takes lax.top_k, so the
# selected set is always top_k's, ties to the lowest index included. Which path runs is
# chosen from the array's size by `_selection_path`, with costs measured on this project's
# CPU (1 thread; experiments/bench_topk.py, results in experiments/results/perf_losses/
# topk_paths.md): the rounds cost about 10 us per round plus 0.4 ns per entry per round, and
# from 128K entries on, the columns beat both.
COLUMNS_MIN_ENTRIES = 131072


def _selection_path(rows, num_classes, k):
  """"top_k", "rounds" or "columns": the cheapest exact top-k selection of `[rows, C]` on
  this backend (the alternatives are measured and used on CPU only)."""
  if jax.default_backend() != "cpu" or k >= num_classes:
    return "top_k"
  entries = rows * num_classes
  if entries >= COLUMNS_MIN_ENTRIES and _column_height(num_classes, k) is not None:
    return "columns"
  rounds_us = k * (10.0 + 0.0004 * entries)
  top_k_us = rows * (0.6 + 0.003 * num_classes)
  return "rounds" if rounds_us < top_k_us else "top_k"


def _distinct_top_values(x, m):
  """The m largest distinct values of each row of `x [..., C]`, descending (a list of m
  `[...]` arrays; -inf once a row has no more)."""
  v = jnp.max(x, axis=-1)
  values = [v]
  for _ in range(m - 1):
    # `x <= nextafter(v, -inf)` is `x < v`; comparing with v itself lets XLA fuse the
    # broadcast of v into the max reduction, which then writes a [..., C] array.
    below = jnp.nextafter(v, jnp.float32(-jnp.inf))[..., None]
    v = jnp.max(jnp.where(x <= below, x, -jnp.inf), axis=-1)
    values.append(v)
  return values


# The columns: lay each row out as a grid of S rows and W >= 50 columns, class c in column
# c mod W (S = C / W classes per column), and take each column's maximum (the only pass over
# [..., C]). The k largest entries lie in the k columns with the largest maxima (a column
# holding one of them has a maximum at least that large, and fewer than k columns can beat
# it), so the rounds run on the W column maxima, then on the S * k entries of the k winning
# columns (one gather). Checks as for the rounds, plus: exactly k columns reach the k-th
# column maximum.
MIN_COLUMNS = 50  # W at least: the rounds and column picks cost per column, the gather per S


def _column_height(num_classes, k_max):
  """S, the classes per column of the two-level selection for `C = num_classes`, or None
  when the k winning columns would not shrink the rows (S * k above C / 2)."""
  num_columns = max(MIN_COLUMNS, math.isqrt(num_classes))
  height = -(-num_classes // num_columns)
  return height if height * k_max <= num_classes // 2 else None


def _top_values_by_columns(x, k, height):
  """`(values, clean)`: the k largest distinct values of each row of `x [..., C]` (a list of
  k `[...]` arrays, descending) found in two levels with `height` classes per column, and a
  bool telling that every row has exactly k entries >= its k-th value and they are these
  values (else the values are not to be used)."""
  num_classes = x.shape[-1]
  num_columns = -(-num_classes // height)
  pad = height * num_columns - num_classes
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
  grid = x.reshape(*x.shape[:-1], height, num_columns)   # grid[..., s, w] = x[..., s W + w]
  # A chain of maximum (XLA's loop fusion) rather than a max reduction: the YNNPACK one drops
  # NaNs, which the checks below must see.
  column_max = functools.reduce(jnp.maximum, [grid[..., s, :] for s in range(height)])
  best = _distinct_top_values(column_max, k)
  # The column of each of the k best maxima (one each once the check below holds).
  index = jax.lax.broadcasted_iota(jnp.float32, column_max.shape, column_max.ndim - 1)
  columns = jnp.stack([jnp.max(jnp.where(column_max == v[..., None], index, 0.0), axis=-1)
                       for v in best], axis=-1).astype(jnp.int32)          # [..., k]
  picked = jnp.take_along_axis(
      grid, jnp.broadcast_to(columns[..., None, :], (*grid.shape[:-1], k)), axis=-1)
  candidates = picked.reshape(*x.shape[:-1], height * k)
  values = _distinct_top_values(candidates, k)
  return values, _all_clean(values, _count_reaching(column_max, best[-1]) == k,
                            _count_reaching(candidates, values[-1]) == k)


def _top_values_by_rounds(x, k):
  """`(values, clean)` as `_top_values_by_columns`, from k rounds over the whole rows.

  Strictly decreasing values (each an entry of x) and exactly k entries >= the last: the k
  largest entries are these values, once each, and each top-k' set (k' <= k) is the k'
  entries >= the k'-th. Rows with a tie, a NaN (it fails the count) or a flushed denormal
  fail the check.
  """
  values = _distinct_top_values(x, k)
  return values, _all_clean(values, _count_reaching(x, values[-1]) == k)


def _all_clean(values, *row_checks):
  """True when every row passes `row_checks` and its `values` strictly decrease."""
  clean = functools.reduce(jnp.logical_and, row_checks)
  for above, below in itertools.pairwise(values):
    clean = clean & (above > below)
  return jnp.all(clean)


def _count_reaching(x, t):
  """Entries of each row of `x` that are >= t (a NaN counts more than the row holds)."""
  size = x.shape[-1]
  reach = jnp.where(x >= t[..., None], 1.0, jnp.where(jnp.isnan(x), size + 1.0, 0.0))
  return jnp.sum(reach, axis=-1)


def top_k_sets(x, ks, path="auto"):
  """Which entries `jax.lax.top_k(x, k)` selects (ties: lowest index first), for each k of
  `ks` (each in `[1, C]`), without its sort where a faster exact path exists; float32
  `x [..., C]`. `path`: "auto" (`_selection_path`), or "top_k", "rounds", "columns" (tests,
  benchmarks).

  Returns `(values, sets)`: `values [..., max(ks)]` the largest entries, descending (as
  top_k's), and per k a pair `(t, cut)` of `[...]` arrays: the selected entries are
  `in_top_set(x, t, cut)`, i.e. `(x > t) | ((x == t) & (index <= cut))`.
  """
  num_classes, k_max = x.shape[-1], max(ks)
  if path == "auto":
    path = _selection_path(math.prod(x.shape[:-1]), num_classes, k_max)

  def from_top_k():
    values, index = jax.lax.top_k(x, k_max)
    # The barriers keep the slices from merging into the sort (a full sort, not XLA's TopK);
    # one barrier on the pair crashes XLA's TopK decomposer.
    values, index = jax.lax.optimization_barrier(values), jax.lax.optimization_barrier(index)
    sets = []
    for k in ks:
      t = values[..., k - 1]
      tied = values[..., :k] == t[..., None]
      sets.append((t, jnp.max(jnp.where(tied, index[..., :k], -1), axis=-1)))
    return values, sets

  if path == "top_k" or k_max >= num_classes:
    return from_top_k()
  if path == "rounds":
    distinct, clean = _top_values_by_rounds(x, k_max)
  elif path == "columns":
    height = _column_height(num_classes, k_max)
    if height is None:
      raise ValueError(f"path='columns' needs S * k <= C / 2; C={num_classes}, k={k_max}")
    distinct, clean = _top_values_by_columns(x, k_max, height)
  else:
    raise ValueError(f"path={path!r}: must be 'auto', 'top_k', 'rounds' or 'columns'")

  def from_distinct():
    # (Like the values: under shard_map the cond's two branches must vary alike.)
    last = jax.lax.full_like(distinct[0], num_classes - 1, jnp.int32)
    return jnp.stack(distinct, axis=-1), [(distinct[k - 1], last) for k in ks]

  return jax.lax.cond(clean, from_distinct, from_top_k)


def in_top_set(x, t, cut):
  """The bool mask `(x > t) | ((x == t) & (index <= cut))` of a `top_k_sets` pair."""
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  t, cut = t[..., None], cut[..., None]
  return (x > t) | ((x == t) & (index <= cut))


def soft_xent(z, w, inv_t):
  """`-sum_c w_c log p(z, T)_c = sum(w) * logsumexp(z / T) - sum_c w_c z_c / T` per row.

  `z` float32 logits, `w` float32 weights (a target distribution; no gradient), `inv_t` is
  `1 / T`. Gradient w.r.t. z: `(sum(w) p(z, T) - w) / T`. A Python-number `inv_t` uses the
  custom-JVP kernel; a traced one (a traced temperature) the same equation differentiated
  by JAX (so the temperature gets its gradient too).
  """
  if isinstance(inv_t, (int, float)):
    return _soft_xent_fused(z, w, inv_t)
  m, l = row_lse(z, inv_t)
  return (jnp.sum(w, axis=-1, keepdims=True) * l
          + inv_t * jnp.sum(w * (m - z), axis=-1, keepdims=True))[..., 0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _soft_xent_fused(z, w, inv_t):
  return _soft_xent_fwd(z, w, inv_t)[0]


def _soft_xent_fwd(z, w, inv_t):
  m, e = exp_shifted(z, inv_t)
  total = jnp.sum(e, axis=-1, keepdims=True)
  sw = jnp.sum(w, axis=-1, keepdims=True)
  # sum(w) lse(z/T) - sum(w z)/T = sum(w) log(total) + (sum(w) m - sum(w z))/T. (Summing
  # w (m - z) instead would be exact for huge logits but makes XLA write the broadcast max;
  # the difference is float32 rounding of |z|, e.g. 3e-3 at logits of 3e4.)
  cross = sw * m - jnp.sum(w * z, axis=-1, keepdims=True)
  value = sw * jnp.log(total) + inv_t * cross
  return value[..., 0], (w, e, sw / total)


def _soft_xent_bwd(inv_t, res, g):
  w, e, scale = res  # e / total = p(z, T)
  return g[..., None] * inv_t * (scale * e - w), None


_defjvp(_soft_xent_fused, _soft_xent_fwd, _soft_xent_bwd, num_static=1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def kd_fused(z, t, inv_t):
  """`KL(p(t, T) || p(z, T))` per row for float32 logits and a Python `inv_t = 1 / T`.

  With `e_s = exp((z - max z) / T)`, `e_t = exp((t - max t) / T)` and their row sums S_s, S_t:
  `KL = sum_c e_t (t - z)_c / (T S_t) + (max z - max t) / T + log S_s - log S_t` (the
  teacher's probabilities sum to 1). Gradient w.r.t. z: `(e_s / S_s - e_t / S_t) / T`.
  Written: `e_s`, `e_t` and the gradient; no log-probabilities or products.
  """
  return _kd_fused_fwd(z, t, inv_t)[0]


def _kd_fused_fwd(z, t, inv_t):
  m_s, e_s = exp_shifted(z, inv_t)
  m_t, e_t = exp_shifted(t, inv_t)
  total_s = jnp.sum(e_s, axis=-1, keepdims=True)
  total_t = jnp.sum(e_t, axis=-1, keepdims=True)
  cross = jnp.sum(e_t * (t - z), axis=-1, keepdims=True)
  kl = (cross / total_t + (m_s - m_t)) * inv_t + (jnp.log(total_s) - jnp.log(total_t))
  return kl[..., 0], (e_s / total_s, e_t / total_t)


def _kd_fused_bwd(inv_t, res, g):
  p_s, p_t = res
  return g[..., None] * inv_t * (p_s - p_t), None


_defjvp(kd_fused, _kd_fused_fwd, _kd_fused_bwd, num_static=1)


def binary_kl(log_p, log_not_p, log_q, log_not_q):
  """KL([p, 1-p] || [q, 1-q]) from log-probabilities."""
  return jnp.exp(log_p) * (log_p - log_q) + jnp.exp(log_not_p) * (log_not_p - log_not_q)


def _dkd_rest_stats(scores, is_target):
  """`(max, exp(scores - max), log sum)` over the non-target classes; exp is 0 at the target."""
  rest = jnp.where(is_target, -jnp.inf, scores)
  m = jnp.max(rest, axis=-1, keepdims=True)
  e = exp_nonpositive(rest - m)
  return m, e, jnp.log(jnp.sum(e, axis=-1, keepdims=True))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def dkd_fused(z, a, labels, alpha, beta, inv_t):
  """`alpha TCKD + beta NCKD` per row (no T^2) for float32 student logits `z` at `T = 1/inv_t`
  and teacher log-scores `a` (`t / T`, or log-probabilities; no gradient); Python-number
  `alpha`, `beta`, `inv_t`; valid int labels.

  Everything comes from one exp pass over the non-target classes of each side, shifted by
  their own maximum (so a dominant target logit cannot underflow the rest): with `R` the
  non-target sums, `log p_y` and `log(1 - p_y)` follow from `logaddexp(z_y / T, log R)`, and
  `NCKD = sum_{c != y} e^t_c (a_c - z_c / T) / R^t + (max' z / T - max' a) + log R^s - log R^t`.
  Gradient w.r.t. z, over T: `alpha (p_y - q_y)` at y and `alpha (q_y - p_y) pn_c + beta (pn_c -
  qn_c)` elsewhere (`pn`, `qn` the renormalised non-target distributions).
  """
  return _dkd_fused_fwd(z, a, labels, alpha, beta, inv_t)[0]


def _dkd_fused_fwd(z, a, labels, alpha, beta, inv_t):
  is_target = one_hot_mask(labels, z.shape)
  zs = z if is_one(inv_t) else z * inv_t
  m_s, e_s, log_rest_s = _dkd_rest_stats(zs, is_target)
  m_t, e_t, log_rest_t = _dkd_rest_stats(a, is_target)
  z_y = jnp.take_along_axis(zs, labels[..., None], axis=-1)
  a_y = jnp.take_along_axis(a, labels[..., None], axis=-1)
  log_all_s = jnp.logaddexp(z_y, m_s + log_rest_s)
  log_all_t = jnp.logaddexp(a_y, m_t + log_rest_t)
  s_target, s_rest = z_y - log_all_s, m_s + log_rest_s - log_all_s
  t_target, t_rest = a_y - log_all_t, m_t + log_rest_t - log_all_t
  tckd = binary_kl(t_target, t_rest, s_target, s_rest)
  rest_t = jnp.exp(log_rest_t)
  cross = jnp.sum(e_t * (a - zs), axis=-1, keepdims=True) / rest_t
  nckd = cross + (m_s - m_t) + (log_rest_s - log_rest_t)
  value = (alpha * tckd + beta * nckd)[..., 0]
  res = (is_target, e_s / jnp.exp(log_rest_s), e_t / rest_t, jnp.exp(s_target),
         jnp.exp(t_target))
  return value, res


def _dkd_fused_bwd(alpha, beta, inv_t, res, g):
  is_target, p_rest, q_rest, p_y, q_y = res
  g = g[..., None] * inv_t
  non_target = alpha * (q_y - p_y) * p_rest + beta * (p_rest - q_rest)
  dz = g * jnp.where(is_target, alpha * (p_y - q_y), non_target)
  return dz, None, None


_defjvp(dkd_fused, _dkd_fused_fwd, _dkd_fused_bwd, num_static=3)
