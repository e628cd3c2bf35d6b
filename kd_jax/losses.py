"""Per-example classification and distillation losses.

Every loss here returns one value per example, shape `[B]` (or the batch shape of the
inputs): reducing over the batch (mean, masked mean, weights) is the caller's choice, so the
losses compose with padding masks, data selection and any parallelism. Logits may be float32
or bfloat16; every softmax is computed in float32 and the result is float32. Teacher inputs
(teacher logits, soft targets) are wrapped in `jax.lax.stop_gradient`, so gradients flow to
the student only. All functions are jittable and vmappable; static arguments (temperature,
num_secondary) are validated eagerly when they are Python numbers. Gradients w.r.t. the
student logits come from hand-written derivative rules (custom JVPs, `kd_jax._loss_kernels`):
reverse mode (`jax.grad`), forward mode (`jax.jvp`) and higher derivatives all work.

Notation: `p(z, T) = softmax(z / T)`; `e_y` the one-hot label; sums run over classes.

Invalid inputs (the same rules in `kd_jax.targets`):
- Shapes are checked when the function is traced, so the check is free under jit: logits are
  at least 2-D `[..., B, C]`, student and teacher logits (or logits and targets) have the same
  shape, and labels have the logits' batch shape `[..., B]`. Nothing is broadcast: `[B, 1, C]`
  against `[B, C]` would otherwise silently give a `[B, B]` loss.
- Labels are integers in `[0, C)`. Concrete labels (NumPy or jax arrays, also constants closed
  over by a jitted function) are checked eagerly: a ValueError names the first bad label, its
  index and the range. Traced labels (under jit, vmap, grad, pmap, shard_map) cannot raise:
  the loss of each example with a bad label is NaN, the other examples' values and gradients
  are unchanged, and the bad example's gradient is zero, so `jnp.where(ok, loss, 0)` (not
  `loss * ok`, as `0 * NaN = NaN`) removes it cleanly. -1 is not an "ignore" label.
- A temperature given as a Python number or a concrete array must be finite and `> 0`
  (ValueError otherwise). A traced temperature that is not makes every output of the call
  NaN (one scalar select, no per-element cost).
A NaN produced this way is caught by `jax.experimental.checkify`:
`checkify.checkify(f, errors=checkify.nan_checks)`.

This module imports nothing else of kd_jax but its fused kernels (`kd_jax._loss_kernels`).
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax

from kd_jax import _loss_kernels as kernels


def _as_float32(x):
  return jnp.asarray(x).astype(jnp.float32)


def _concrete(value):
  """`float(value)`, or None when `value` is a tracer (validated by the caller's caller)."""
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def _nan_unless(ok, value):
  """`value` where `ok`, else NaN: how invalid traced arguments show up (they cannot raise).

  `ok` (None: all valid, nothing added) indexes the leading axes of `value`, so a `[B]` label
  mask turns whole rows of a `[B, C]` target to NaN. NaN is a constant of the unselected
  branch, so it never reaches a gradient: `value` gets the cotangent where `ok`, else zero.
  """
  if ok is None:
    return value
  ok = jnp.asarray(ok)
  value = jnp.asarray(value)
  ok = ok.reshape(ok.shape + (1,) * (value.ndim - ok.ndim))
  return jnp.where(ok, value, jnp.nan)


def check_temperature(temperature, name="temperature"):
  """Returns the temperature to use: validated eagerly when concrete, NaN when traced and invalid.

  A Python number or concrete array must be finite and `> 0` (ValueError otherwise) and is
  returned unchanged; a traced one is returned as `where(0 < T < inf, T, NaN)`.
  """
  t = _concrete(temperature)
  if t is None:
    return _nan_unless((temperature > 0) & jnp.isfinite(temperature), temperature)
  if not t > 0:
    raise ValueError(f"{name}={temperature!r} is not allowed: must be > 0")
  if t == float("inf"):
    raise ValueError(f"{name}={temperature!r} is not allowed: must be finite")
  return temperature


def check_int_range(name, value, low, high):
  """Raises unless `low <= value <= high` (inclusive)."""
  if int(value) != value or not low <= value <= high:
    raise ValueError(f"{name}={value!r} is not allowed: must be an integer in [{low}, {high}]")


def _check_shapes(logits_name, logits, other_name=None, other=None, labels=None):
  """Trace-time shape checks: logits `[..., B, C]`, `other` the same shape, labels `[..., B]`."""
  shape = np.shape(logits)
  if len(shape) < 2:
    raise ValueError(f"{logits_name}.shape={shape} is not allowed: need at least 2-D "
                     "[B, C] (for a single example, add a batch axis: x[None])")
  if other is not None and np.shape(other) != shape:
    raise ValueError(f"{logits_name}.shape={shape} and {other_name}.shape="
                     f"{np.shape(other)} differ: both must be the same [..., C] shape "
                     "(nothing is broadcast)")
  if labels is not None and np.shape(labels) != shape[:-1]:
    raise ValueError(f"labels.shape={np.shape(labels)} is not allowed: need {shape[:-1]}, "
                     f"the batch shape of {logits_name}.shape={shape}")


def _checked_labels(labels, num_classes, name="labels"):
  """`(labels, valid)`: the one check of integer class labels for losses, targets, selection.

  Concrete labels are checked on the host (ValueError naming the first bad label, its index
  and the range) and returned with `valid=None`, so the caller adds nothing to the
  computation. Traced labels cannot raise: `valid` is the bool mask `0 <= y < C` and bad
  labels are replaced by 0, so the caller computes finite values (and finite gradients) for
  every example and then masks the bad ones to NaN (`_nan_unless`).
  """
  if not isinstance(labels, (jax.Array, np.ndarray)):
    labels = np.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name}.dtype={labels.dtype} is not allowed: need integer class "
                     f"indices in [0, {num_classes})")
  # A global array spread over several hosts cannot be read here: treated as traced.
  concrete = not isinstance(labels, jax.core.Tracer) and (
      not isinstance(labels, jax.Array) or labels.is_fully_addressable)
  if not concrete:
    valid = (labels >= 0) & (labels < num_classes)
    return jnp.where(valid, labels, 0), valid
  host = np.asarray(labels)
  bad = (host < 0) | (host >= num_classes)
  if bad.any():
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    at = f"[{', '.join(map(str, index))}]" if index else ""
    raise ValueError(f"{name}{at}={host[index]} is not allowed: class labels must be in "
                     f"[0, {num_classes}) ({int(bad.sum())} of the {bad.size} labels are "
                     "outside; -1 is not an 'ignore' label: give an ignored example any "
                     "valid label and a zero weight)")
  return labels, None


def _teacher_log_probs_sum(teacher_logits, inv_t):
  """`(q, sum_c q_c log q_c)` for `q = p(z_t, T)`."""
  t = _as_float32(teacher_logits)
  shifted = t - jnp.max(t, axis=-1, keepdims=True)
  if not kernels.is_one(inv_t):
    shifted = shifted * inv_t
  e = kernels.exp_nonpositive(shifted)
  total = jnp.sum(e, axis=-1, keepdims=True)
  q = e / total
  return q, jnp.sum(q * (shifted - jnp.log(total)), axis=-1)


def softmax(logits, temperature=1.0):
  """`p(z, T)` in float32, `[..., C]`: `exp((z - max z) / T)` over its row sum.

  (Scaling after the shift rather than `softmax(z / T)`: the same value to rounding, and on
  XLA's CPU backend it does not write a `[B, C]` broadcast of `1 / T`.)"""
  _, e = kernels.exp_shifted(_as_float32(logits), kernels.inv(temperature))
  return e / jnp.sum(e, axis=-1, keepdims=True)


def log_softmax(logits, temperature=1.0):
  """`log p(z, T)` in float32, `[..., C]`; stable for logits of any magnitude."""
  return jax.nn.log_softmax(_as_float32(logits) / temperature, axis=-1)


def cross_entropy(logits, labels):
  """Cross entropy with integer labels: `CE(z, y) = -log p(z, 1)_y`.

  Args:
    logits: `[B, C]` float32 or bfloat16.
    labels: `[B]` integers in `[0, C)`; out of range: ValueError when concrete, NaN for that
      example when traced (module docstring).

  Returns:
    `[B]` float32; nothing is reduced.
  """
  _check_shapes("logits", logits, labels=labels)
  labels, valid = _checked_labels(labels, np.shape(logits)[-1])
  return _nan_unless(valid, kernels.label_xent(_as_float32(logits), labels))


def label_smoothing_cross_entropy(logits, labels, epsilon, spread="all"):
  """Cross entropy toward the label-smoothed target, in closed form (no `[B, C]` target).

  `H((1 - eps) e_y + eps / C, p(z, 1)) = (1 - eps) CE(z, y) + eps (logsumexp(z) - mean_c z_c)`
  for `spread="all"` (`kd_jax.targets.smooth`); for `spread="others"` (`eps / (C - 1)` on the
  C - 1 non-target classes) the last mean runs over `c != y`. Equal, to float32 rounding, to
  `soft_cross_entropy(logits, targets.smooth(labels, C, epsilon, spread))`.

  Args:
    logits: `[B, C]`.
    labels: `[B]` integers in `[0, C)`; out of range: ValueError when concrete, NaN for that
      example when traced.
    epsilon: smoothing mass in `[0, 1]`: a Python number is checked eagerly (ValueError); a
      traced one outside makes every output NaN.
    spread: "all" or "others".

  Returns:
    `[B]` float32.
  """
  _check_shapes("logits", logits, labels=labels)
  num_classes = np.shape(logits)[-1]
  eps = _concrete(epsilon)
  if eps is None:
    epsilon = _nan_unless((0 <= epsilon) & (epsilon <= 1), epsilon)
  elif not 0 <= eps <= 1:
    raise ValueError(f"epsilon={epsilon!r} is not allowed: must be in [0, 1]")
  if spread not in ("all", "others"):
    raise ValueError(f"spread={spread!r} is not allowed: must be 'all' or 'others'")
  labels, valid = _checked_labels(labels, num_classes)
  z = _as_float32(logits)
  ce = optax.softmax_cross_entropy_with_integer_labels(z, labels)  # logsumexp(z) - z_y
  lse = jax.nn.logsumexp(z, axis=-1)
  if spread == "all":
    rest = lse - jnp.mean(z, axis=-1)
  else:
    rest = lse - (jnp.sum(z, axis=-1) - (lse - ce)) / (num_classes - 1)
  loss = (1.0 - epsilon) * ce + epsilon * rest
  return _nan_unless(valid, loss)


def soft_cross_entropy(logits, targets):
  """Cross entropy with soft targets: `H(q, z) = -sum_c q_c log p(z, 1)_c`.

  Args:
    logits: `[B, C]` student logits.
    targets: `[B, C]` target distribution (under stop_gradient), the same shape as `logits`.
      A NaN row (a `kd_jax.targets` transform given a bad traced label) gives NaN for that
      example, and NaN in its gradient.

  Returns:
    `[B]` float32, summed over classes only.
  """
  _check_shapes("logits", logits, "targets", targets)
  targets = jax.lax.stop_gradient(_as_float32(targets))
  return kernels.soft_xent(_as_float32(logits), targets, 1)


def kd(student_logits, teacher_logits, temperature):
  """Hinton's distillation loss, with the T^2 factor.

  `KD_T = T^2 * sum_c p(z_t,T)_c * (log p(z_t,T)_c - log p(z_s,T)_c)`, the KL divergence
  `KL(p(z_t,T) || p(z_s,T))` summed over classes and multiplied by `T^2` so the gradient's
  scale does not shrink as `1/T^2` (Hinton et al. 2015). Computed from the max-shifted
  logits of both sides (one `exp` pass each, their row sums, no `log(softmax)`), so it stays
  finite for logits of magnitude 1e4; the gradient `T (p(z_s,T) - p(z_t,T))` is one pass.

  Args:
    student_logits: `[B, C]`.
    teacher_logits: `[B, C]`, the same shape, under stop_gradient.
    temperature: `T > 0` and finite: a Python number is checked eagerly (ValueError); a
      traced invalid T makes every output NaN.

  Returns:
    `[B]` float32; summed over classes, not over the batch.
  """
  _check_shapes("student_logits", student_logits, "teacher_logits", teacher_logits)
  temperature = check_temperature(temperature)
  inv_t = kernels.inv(temperature)
  teacher_logits = jax.lax.stop_gradient(_as_float32(teacher_logits))
  if isinstance(inv_t, (int, float)):
    return temperature**2 * kernels.kd_fused(_as_float32(student_logits), teacher_logits,
                                             inv_t)
  # A traced temperature: KL(q || p_s) = sum q log q - sum q log p_s, differentiated by JAX.
  q, neg_entropy = jax.lax.stop_gradient(_teacher_log_probs_sum(teacher_logits, inv_t))
  return temperature**2 * (neg_entropy
                           + kernels.soft_xent(_as_float32(student_logits), q, inv_t))


def kl_to_targets(student_logits, targets, temperature):
  """Distillation toward a given target distribution, with the T^2 factor.

  `T^2 * KL(q || p(z_s, T)) = T^2 * sum_c q_c (log q_c - log p(z_s,T)_c)`, with `0 log 0 = 0`.
  For `q = p(z_t, T)` this equals `kd`. Use it for transformed targets (label revision,
  KD-pt, KD-sim, KD-topk); at `T = 1` its gradient equals that of `soft_cross_entropy`.

  Args:
    student_logits: `[B, C]`.
    targets: `[B, C]` distribution `q`, the same shape (under stop_gradient). A NaN row (a
      target built from a bad traced label) gives NaN for that example and its gradient.
    temperature: `T > 0` and finite, applied to the student only: a Python number is checked
      eagerly (ValueError); a traced invalid T makes every output NaN.

  Returns:
    `[B]` float32; summed over classes.
  """
  _check_shapes("student_logits", student_logits, "targets", targets)
  temperature = check_temperature(temperature)
  targets = jax.lax.stop_gradient(_as_float32(targets))
  neg_entropy = jnp.sum(targets * jnp.where(targets == 0, 0.0, jnp.log(targets)), axis=-1)
  return temperature**2 * (neg_entropy + kernels.soft_xent(
      _as_float32(student_logits), targets, kernels.inv(temperature)))


def tsd(logits, num_secondary=5, labels=None):
  """Top score difference of Yang et al. (2019), the tolerant teacher's extra term.

  With `p = p(z, 1)`, `TSD = p_(1) - (1/K) sum_{k=2}^{K+1} p_(k)` for `K = num_secondary`,
  where `p_(1)` is the primary class's probability and `p_(2..K+1)` the K largest of the
  others. The primary class is the argmax of `p` (`labels=None`, the default) or the label
  (`labels` given: Yang et al.'s alternative; on an example the model gets wrong the label's
  probability is then the primary and the K largest others, the argmax among them, are the
  secondary ones). Which classes are primary and secondary is chosen under stop_gradient;
  the probabilities themselves are differentiable, so minimising TSD lowers the primary score
  and raises the K secondary ones.

  Args:
    logits: `[B, C]`.
    num_secondary: `K` in `[1, C-1]`, static (a Python int).
    labels: optional `[B]` integers in `[0, C)`: the primary class of each example; out of
      range: ValueError when concrete, NaN for that example when traced.

  Returns:
    `[B]` float32 in `[-1, 1]`.
  """
  _check_shapes("logits", logits, labels=labels)
  num_classes = logits.shape[-1]
  check_int_range("num_secondary", num_secondary, 1, num_classes - 1)
  z = _as_float32(logits)
  # Classes are ranked by exp(z - max z), which orders them as p does (p divides it by the
  # row sum); the ranking is under stop_gradient, the probabilities are differentiable.
  _, e = kernels.exp_shifted(z)
  e = jax.lax.stop_gradient(e)
  secondary = np.float32(-1.0 / num_secondary)
  if labels is None:  # the primary is the top 1 of e; the secondaries the rest of the top K+1
    values, (first, top) = kernels.top_k_sets(e, (1, num_secondary + 1))
    w = jnp.where(kernels.in_top_set(e, *first), 1.0,
                  jnp.where(kernels.in_top_set(e, *top), secondary, 0.0))
    weights = np.array([1.0] + [secondary] * num_secondary, np.float32)
    return kernels.primary_minus_secondary(z, w, jnp.sum(values * weights, axis=-1))
  labels, valid = _checked_labels(labels, num_classes)
  # The primary's own entry ranks below every other class when choosing the secondary ones.
  is_primary = kernels.one_hot_mask(labels, z.shape)
  ranked = jnp.where(is_primary, -1.0, e)
  values, (top,) = kernels.top_k_sets(ranked, (num_secondary,))
  w = jnp.where(is_primary, 1.0, jnp.where(kernels.in_top_set(ranked, *top), secondary, 0.0))
  weighted = (jnp.sum(values * secondary, axis=-1)
              + jnp.take_along_axis(e, labels[..., None], axis=-1)[..., 0])
  return _nan_unless(valid, kernels.primary_minus_secondary(z, w, weighted))


def entropy(logits):
  """Shannon entropy of the model's distribution, `H(p(z, 1)) = -sum_c p_c log p_c`.

  The confidence penalty of Pereyra et al. (2017) trains `CE(z, y) - beta * entropy(z)`.
  Computed from the max-shifted logits, `log S - sum_c e_c (z_c - max z) / S` with
  `e = exp(z - max z)`, `S = sum e` (stable for logits of magnitude 1e4, `0 log 0 = 0`).

  Args:
    logits: `[B, C]`.

  Returns:
    `[B]` float32 in `[0, log C]`; summed over classes only.
  """
  _check_shapes("logits", logits)
  return kernels.entropy(_as_float32(logits))


def _target_and_rest(log_probs, is_target):
  """Log of the target's probability and of the rest's total mass, both `[B]`."""
  log_target = jnp.sum(jnp.where(is_target, log_probs, 0.0), axis=-1)
  log_rest = jax.nn.logsumexp(log_probs, axis=-1, where=~is_target)
  return log_target, log_rest


def _dkd_from_log_probs(student_logits, log_teacher, labels, alpha, beta, temperature):
  labels, valid = _checked_labels(labels, student_logits.shape[-1])
  is_target = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=bool)
  log_student = log_softmax(student_logits, temperature)
  t_target, t_rest = _target_and_rest(log_teacher, is_target)
  s_target, s_rest = _target_and_rest(log_student, is_target)
  tckd = kernels.binary_kl(t_target, t_rest, s_target, s_rest)
  # Non-target distributions renormalised in log space; the target entry is replaced by a
  # finite 0 (not -inf) so no NaN can reach the gradient through the masked branch.
  t_non = jnp.where(is_target, 0.0, log_teacher - t_rest[..., None])
  s_non = jnp.where(is_target, 0.0, log_student - s_rest[..., None])
  nckd = jnp.sum(jnp.where(is_target, 0.0, jnp.exp(t_non) * (t_non - s_non)), axis=-1)
  return _nan_unless(valid, temperature**2 * (alpha * tckd + beta * nckd))


def _dkd_fast(student_logits, log_scores, labels, alpha, beta, temperature):
  """`_dkd_from_log_probs` through the fused kernel, when alpha, beta and T are numbers."""
  labels, valid = _checked_labels(labels, student_logits.shape[-1])
  value = kernels.dkd_fused(_as_float32(student_logits), jax.lax.stop_gradient(log_scores),
                            labels, float(alpha), float(beta), kernels.inv(temperature))
  return _nan_unless(valid, temperature**2 * value)


def _numbers(*values):
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def dkd(student_logits, teacher_logits, labels, alpha, beta, temperature):
  """Decoupled KD (Zhao et al. 2022), mdistiller's definition, per example.

  `DKD = alpha * TCKD + beta * NCKD`, both at temperature T and multiplied by `T^2`:
  - `TCKD = KL([p_t^y, 1-p_t^y] || [p_s^y, 1-p_s^y])`, the binary target-vs-rest KL;
  - `NCKD = KL(p_t^{\\y} || p_s^{\\y})` between the distributions over the C-1 non-target
    classes, each renormalised (`p^{\\y}_c = p_c / (1 - p^y)`).
  mdistiller divides the batch sum by B; here nothing is reduced. Computed from one `exp`
  pass per side over the non-target classes, shifted by their own maximum, with
  `logaddexp` for the target's share (no `-1000` logit offset, no `log(softmax)`), so it
  stays exact in bfloat16 and for logits of magnitude 1e4. (A traced alpha, beta or T
  takes the equivalent masked log-sum-exp form.)

  Args:
    student_logits: `[B, C]`.
    teacher_logits: `[B, C]`, the same shape, under stop_gradient.
    labels: `[B]` integers in `[0, C)`; out of range: ValueError when concrete, NaN for that
      example when traced.
    alpha: weight of TCKD.
    beta: weight of NCKD.
    temperature: `T > 0` and finite: a Python number is checked eagerly (ValueError); a
      traced invalid T makes every output NaN.

  Returns:
    `[B]` float32.
  """
  _check_shapes("student_logits", student_logits, "teacher_logits", teacher_logits, labels)
  temperature = check_temperature(temperature)
  if _numbers(alpha, beta, temperature):
    scores = _as_float32(teacher_logits)
    scores = scores if temperature == 1 else scores * kernels.inv(temperature)
    return _dkd_fast(student_logits, scores, labels, alpha, beta, temperature)
  log_teacher = jax.lax.stop_gradient(log_softmax(teacher_logits, temperature))
  return _dkd_from_log_probs(student_logits, log_teacher, labels, alpha, beta, temperature)


def dkd_to_targets(student_logits, targets, labels, alpha, beta, temperature):
  """`dkd` with the teacher given as a distribution `q` (e.g. a revised one) instead of logits.

  `q` (`[B, C]`, the shape of `student_logits`) is taken as the teacher's distribution at
  temperature T; zeros in `q` are clipped to the smallest normal float32 before the log (their
  contribution `q log q` is 0 either way). Labels, temperature and the result as `dkd`
  (bad traced labels or temperature: NaN).
  """
  _check_shapes("student_logits", student_logits, "targets", targets, labels)
  temperature = check_temperature(temperature)
  targets = jax.lax.stop_gradient(_as_float32(targets))
  log_teacher = jnp.log(jnp.maximum(targets, jnp.finfo(jnp.float32).tiny))
  if _numbers(alpha, beta, temperature):
    return _dkd_fast(student_logits, log_teacher, labels, alpha, beta, temperature)
  return _dkd_from_log_probs(student_logits, log_teacher, labels, alpha, beta, temperature)
