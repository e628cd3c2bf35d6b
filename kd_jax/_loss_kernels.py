"""The fused loss kernels behind `kd_jax.losses` (private: call the public losses).

Each is a per-row function of float32 logits with a hand-written derivative rule (a custom
JVP): reverse mode, forward mode and higher derivatives all work. Equations and the reason
for the fused form are in each kernel's docstring and in the comment below.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Custom-JVP kernels behind the public losses (CE, soft cross entropy / kl_to_targets, KD,
# entropy, TSD, DKD). Each forward pass computes `exp((z - max z) / T)` once per logits
# (XLA's CPU loop emitter; an exp inside its YNNPACK row reductions was measured slower),
# reduces it, and keeps `p` for the backward pass, which is one elementwise expression (no
# log-probabilities, no gather transpose / scatter). Differentiating the log-softmax forms
# instead makes XLA write log p, exp(log p) and each product with a target as separate
# `[B, C]` arrays; on a CPU those writes are what a loss costs. Values agree with the
# log-softmax forms to float32 rounding. Measurements: experiments/results/perf_losses/.


def is_one(x):
  return isinstance(x, (int, float)) and x == 1


def inv(temperature):
  """`1 / T`: a Python float for a Python-number T (1 for T = 1), else an array."""
  if isinstance(temperature, (int, float)):
    return 1 if temperature == 1 else 1.0 / temperature
  return 1.0 / temperature


def row_lse(z, inv_t):
  """`(max_c z_c, log sum_c exp((z_c - max) / T))`, both `[..., 1]`."""
  m = jnp.max(z, axis=-1, keepdims=True)
  e = jnp.exp(z - m) if is_one(inv_t) else jnp.exp(z * inv_t - m * inv_t)
  return m, jnp.log(jnp.sum(e, axis=-1, keepdims=True))


def exp_shifted(z, inv_t=1):
  """`(max_c z_c, exp((z - max) / T))`: the one exp pass of a row softmax, `[..., 1]`, `[..., C]`.

  Every kernel below computes it with the same expression, so XLA computes it once when
  several terms (CE, a soft cross entropy at T = 1, the entropy, TSD) read the same logits.
  """
  m = jnp.max(z, axis=-1, keepdims=True)
  return m, jnp.exp(z - m) if is_one(inv_t) else jnp.exp((z - m) * inv_t)


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


def _rank_weights(primary, order):
  """Per-rank weights of `primary_minus_secondary`: +1 for the primary, -1/K per secondary."""
  n = order.shape[-1]
  if primary is None:  # order[..., 0] is the primary, the K = n - 1 others the secondaries
    return np.array([1.0] + [-1.0 / (n - 1)] * (n - 1), np.float32)
  return np.full((n,), -1.0 / n, np.float32)


@jax.custom_jvp
def primary_minus_secondary(z, primary, order):
  """`p_a - (1/K) sum_k p_{b_k}` per row, `p = p(z, 1)` (float32 `z`).

  `primary=None`: `a = order[..., 0]`, `b = order[..., 1:]`; else `a = primary [...]`,
  `b = order [..., K]` (ints, no gradient). Gradient `p (w - value)` with `w` the weights at
  `a` and the `b_k`, in one elementwise pass (no gather transpose / scatter). `order` is not
  sliced before an optimization barrier: XLA turns `top_k` into its fast TopK kernel only
  when the sort's result is used whole.
  """
  return _primary_minus_secondary_fwd(z, primary, order)[0]


def _primary_minus_secondary_fwd(z, primary, order):
  _, e = exp_shifted(z)
  total = jnp.sum(e, axis=-1)
  weighted = jnp.sum(jnp.take_along_axis(e, order, axis=-1) * _rank_weights(primary, order),
                     axis=-1)
  if primary is not None:
    weighted = weighted + jnp.take_along_axis(e, primary[..., None], axis=-1)[..., 0]
  value = weighted / total
  return value, (e / total[..., None], primary, order, value)


def _primary_minus_secondary_bwd(res, g):
  p, primary, order, value = res
  # The barrier keeps these column slices from merging into the sort that made `order`.
  columns = jax.lax.optimization_barrier(order)
  w = 0.0
  for k, weight in enumerate(_rank_weights(primary, order)):
    w = w + jnp.where(one_hot_mask(columns[..., k], p.shape), float(weight), 0.0)
  if primary is not None:
    w = w + one_hot_mask(primary, p.shape).astype(p.dtype)
  return g[..., None] * p * (w - value[..., None]), None, None


_defjvp(primary_minus_secondary, _primary_minus_secondary_fwd,
        _primary_minus_secondary_bwd)


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
  m = jax.lax.stop_gradient(m)
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
  m = jnp.max(jnp.where(is_target, -jnp.inf, scores), axis=-1, keepdims=True)
  e = jnp.where(is_target, 0.0, jnp.exp(scores - m))
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
