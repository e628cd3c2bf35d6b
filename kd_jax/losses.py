"""Per-example classification and distillation losses, with optax's conventions.

Every loss maps logits `[..., C]` (one example `[C]`, a batch `[B, C]`, tokens `[B, T, C]`)
to one float32 value per example, shape `[...]`; nothing is reduced over examples, so the
caller chooses the reduction (mean, masked mean, weights) and `jax.vmap` works over any axis.
Logits may be float32 or bfloat16: every softmax is computed in float32. Teacher inputs
(teacher logits, target distributions) are under `jax.lax.stop_gradient`. All functions
are jittable, vmappable, differentiable in forward and reverse mode, and stable for logits
of magnitude 1e4. A teacher logit of -inf (a masked class) is a probability of 0.

Notation: `p(z, T) = softmax(z / T)`; `e_y` the one-hot label; sums run over classes.

Arguments (`kd_jax._validation` holds the checks; `kd_jax.targets` follows the same rules):
- `where`: optional bool `[...]`. The value is 0 where False; those examples' inputs are
  replaced by harmless values before anything is computed, so a NaN or infinite row there (a
  padding token's teacher row) never reaches the value or gradient of the others, and they
  are not checked (a padding label may be -100).
- Shapes are checked when the function is traced (free under jit): student and teacher logits
  (or logits and targets) have the same shape, labels and `where` the batch shape. Nothing is
  broadcast.
- Labels are integers in `[0, C)`; target distributions are rows `>= 0` summing to 1 (within
  1e-3). Given as concrete arrays they are checked eagerly: a ValueError names the argument,
  the first bad label, or says whether a distribution looks like logits. Traced (jit, vmap,
  grad, pmap, shard_map), a bad row makes that example's value NaN and leaves the others'
  values and gradients unchanged; `jnp.where(ok, loss, 0)` (not `loss * ok`) removes it.
- A temperature must be finite and `> 0`; Python numbers and traced arrays go through the same
  code. Concrete and invalid: ValueError; traced and invalid: every output NaN.
`jax.experimental.checkify.checkify(f, errors=checkify.nan_checks)` finds such NaNs.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kd_jax import _validation as v

Array = jax.Array


def _lse(z: Array) -> Array:
  """`log sum_c exp(z_c)`, keeping the class axis."""
  return jax.nn.logsumexp(z, axis=-1, keepdims=True)


def _softmax_and_lse(z: Array) -> tuple[Array, Array]:
  """`(softmax(z), logsumexp(z))` from one exp pass (the max under stop_gradient, as in
  `jax.nn.logsumexp`: it cancels in both)."""
  m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  e = jnp.exp(z - m)
  total = jnp.sum(e, axis=-1, keepdims=True)
  return e / total, m + jnp.log(total)


def _kl_terms(q: Array, log_q: Array, log_p: Array) -> Array:
  """`q_c (log q_c - log p_c)` per class, 0 (and no gradient) where `q_c = 0`."""
  return jnp.where(q > 0, q * (log_q - log_p), 0.0)


def _student(logits: ArrayLike, axis: int, name: str = "logits", where=None, **others):
  """Float32 `[..., C]` logits with checked shapes and `where`, their masked rows zeroed."""
  z = v.classes_last(logits, axis, name)
  v.check_shapes(name, z.shape, where=where, **others)
  where = v.checked_where(where, z.shape[:-1])
  return v.mask_rows(where, z, 0.0), where


def _teacher(teacher_logits: ArrayLike, axis: int, where) -> Array:
  t = jax.lax.stop_gradient(v.classes_last(teacher_logits, axis, "teacher_logits"))
  return v.mask_rows(where, t, 0.0)


def _targets(targets: ArrayLike, axis: int, where):
  """Checked target distributions `[..., C]` (float32, under stop_gradient) and their mask."""
  if axis != -1:
    targets = jnp.moveaxis(jnp.asarray(targets), axis, -1)
  q, ok = v.checked_distribution("targets", targets, where)
  return jax.lax.stop_gradient(q), ok


def _shape(x: ArrayLike, axis: int) -> tuple:
  """The shape of `x` with the class axis `axis` moved last."""
  shape = list(jnp.shape(x))
  if shape:
    shape.append(shape.pop(axis))
  return tuple(shape)


def softmax(logits: ArrayLike, temperature: ArrayLike = 1.0, *, axis: int = -1,
            where: ArrayLike | None = None) -> Array:
  """`p(z, T) = softmax(z / T)` in float32, the shape of `logits` (rows 0 where `where` is False).

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> print(losses.softmax(jnp.array([0.0, 2.0 * jnp.log(3.0)]), 2.0))
  [0.25 0.75]
  """
  temperature = v.check_temperature(temperature)
  z, where = _student(logits, axis, where=where)
  return jnp.moveaxis(v.finish(jax.nn.softmax(z / temperature, axis=-1), where), -1, axis)


def log_softmax(logits: ArrayLike, temperature: ArrayLike = 1.0, *, axis: int = -1,
                where: ArrayLike | None = None) -> Array:
  """`log p(z, T)` in float32, stable for logits of any magnitude (0 where `where` is False).

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> print(losses.log_softmax(jnp.array([0.0, 0.0])))
  [-0.6931 -0.6931]
  """
  temperature = v.check_temperature(temperature)
  z, where = _student(logits, axis, where=where)
  z = z / temperature
  return jnp.moveaxis(v.finish(z - _lse(z), where), -1, axis)


def cross_entropy(logits: ArrayLike, labels: ArrayLike, *, axis: int = -1,
                  where: ArrayLike | None = None) -> Array:
  """Cross entropy with integer labels: `CE(z, y) = -log p(z, 1)_y = logsumexp(z) - z_y`.

  Args:
    logits: `[..., C]` float32 or bfloat16 (class axis `axis`).
    labels: `[...]` integers in `[0, C)`.
    axis: the class axis of `logits`.
    where: optional bool `[...]`; 0 where False.

  Returns:
    `[...]` float32; nothing is reduced.

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  >>> print(losses.cross_entropy(logits, jnp.array([0, 2])))
  [0.4076 1.0986]
  """
  z, where = _student(logits, axis, labels=labels, where=where)
  labels, valid = v.checked_labels(labels, z.shape[-1], where=where)
  z_y = jnp.take_along_axis(z, labels[..., None], axis=-1)
  return v.finish((_lse(z) - z_y)[..., 0], where, valid)


def label_smoothing_cross_entropy(logits: ArrayLike, labels: ArrayLike, epsilon: ArrayLike,
                                  spread: str = "all", *,
                                  where: ArrayLike | None = None) -> Array:
  """Cross entropy toward the label-smoothed target, in closed form (no `[..., C]` target).

  `H((1 - eps) e_y + eps / C, p(z, 1)) = (1 - eps) CE(z, y) + eps (logsumexp(z) - mean_c z_c)`
  for `spread="all"` (`kd_jax.targets.smooth`); for `spread="others"` (`eps / (C - 1)` on the
  C - 1 other classes, so C >= 2) the mean runs over `c != y`. Equal, to float32 rounding, to
  `soft_cross_entropy(logits, targets.smooth(labels, C, epsilon, spread))`.

  Args:
    logits: `[..., C]`. labels: `[...]` integers in `[0, C)`.
    epsilon: smoothing mass in `[0, 1]`.
    spread: "all" or "others".
    where: optional bool `[...]`; 0 where False.

  Returns:
    `[...]` float32.

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> z = jnp.zeros(4)          # uniform: every target gives log 4
  >>> print(f"{losses.label_smoothing_cross_entropy(z, 1, 0.1):.4f}")
  1.3863
  """
  v.check_choice("spread", spread, ("all", "others"))
  epsilon = v.check_unit_interval("epsilon", epsilon)
  z, where = _student(logits, -1, labels=labels, where=where)
  num_classes = z.shape[-1]
  if spread == "others":
    v.check_num_classes(num_classes, "spread='others'")
  labels, valid = v.checked_labels(labels, num_classes, where=where)
  lse = _lse(z)[..., 0]
  z_y = jnp.take_along_axis(z, labels[..., None], axis=-1)[..., 0]
  if spread == "all":
    rest = lse - jnp.mean(z, axis=-1)
  else:
    rest = lse - (jnp.sum(z, axis=-1) - z_y) / (num_classes - 1)
  return v.finish((1.0 - epsilon) * (lse - z_y) + epsilon * rest, where, valid)


def soft_cross_entropy(logits: ArrayLike, targets: ArrayLike, *, axis: int = -1,
                       where: ArrayLike | None = None) -> Array:
  """Cross entropy with a target distribution: `H(q, z) = -sum_c q_c log p(z, 1)_c`.

  Args:
    logits: `[..., C]` student logits.
    targets: `[..., C]` distribution `q`, the shape of `logits` (under stop_gradient).
    axis: the class axis of both.
    where: optional bool `[...]`; 0 where False.

  Returns:
    `[...]` float32, summed over classes only.

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> logits = jnp.array([0.0, jnp.log(3.0)])          # p = [1/4, 3/4]
  >>> print(f"{losses.soft_cross_entropy(logits, jnp.array([0.5, 0.5])):.4f}")
  0.8370
  """
  z, where = _student(logits, axis, other_name="targets", other_shape=_shape(targets, axis),
                      where=where)
  q, ok = _targets(targets, axis, where)
  return v.finish(jnp.sum(q * (_lse(z) - z), axis=-1), where, ok)


def kd(student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: ArrayLike, *,
       axis: int = -1, where: ArrayLike | None = None) -> Array:
  """Hinton's distillation loss, with the T^2 factor.

  `KD_T = T^2 * KL(p(z_t,T) || p(z_s,T)) = T^2 * sum_c q_c (log q_c - log p(z_s,T)_c)` with
  `q = p(z_t, T)`: the KL divergence summed over classes, times `T^2` so the gradient's scale
  does not shrink as `1/T^2` (Hinton et al. 2015). A teacher logit of -inf gives `q_c = 0`,
  which contributes 0.

  Args:
    student_logits: `[..., C]`.
    teacher_logits: `[..., C]`, the same shape, under stop_gradient.
    temperature: `T > 0` and finite (a Python number or an array).
    axis: the class axis of both.
    where: optional bool `[...]`; 0 where False.

  Returns:
    `[...]` float32; summed over classes, not over examples.

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> student = jnp.array([0.0, 2.0 * jnp.log(3.0)])   # p(z_s, 2) = [1/4, 3/4]
  >>> print(f"{losses.kd(student, jnp.zeros(2), 2.0):.4f}")   # 4 * (1/2) log(4/3)
  0.5754
  """
  temperature = v.check_temperature(temperature)
  s, where = _student(student_logits, axis, "student_logits", other_name="teacher_logits",
                      other_shape=_shape(teacher_logits, axis), where=where)
  t = _teacher(teacher_logits, axis, where) / temperature
  s = s / temperature
  q, lse_t = _softmax_and_lse(t)
  kl = jnp.sum(_kl_terms(q, t - lse_t, s - _lse(s)), axis=-1)
  return v.finish(temperature**2 * kl, where)


def kl_to_targets(student_logits: ArrayLike, targets: ArrayLike, temperature: ArrayLike, *,
                  axis: int = -1, where: ArrayLike | None = None) -> Array:
  """Distillation toward a given target distribution, with the T^2 factor.

  `T^2 * KL(q || p(z_s, T)) = T^2 * sum_c q_c (log q_c - log p(z_s,T)_c)`, with `0 log 0 = 0`.
  For `q = p(z_t, T)` this is `kd`. Use it for transformed targets (label revision, KD-pt,
  KD-sim, KD-topk); at `T = 1` its gradient equals that of `soft_cross_entropy`.

  Args:
    student_logits: `[..., C]`.
    targets: `[..., C]` distribution `q`, the same shape (under stop_gradient).
    temperature: `T > 0` and finite, applied to the student only.
    axis: the class axis of both.
    where: optional bool `[...]`; 0 where False.

  Returns:
    `[...]` float32; summed over classes.

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> student = jnp.array([0.0, 2.0 * jnp.log(3.0)])   # p(z_s, 2) = [1/4, 3/4]
  >>> print(f"{losses.kl_to_targets(student, jnp.array([1.0, 0.0]), 2.0):.4f}")  # 4 log 4
  5.5452
  """
  temperature = v.check_temperature(temperature)
  s, where = _student(student_logits, axis, "student_logits", other_name="targets",
                      other_shape=_shape(targets, axis), where=where)
  q, ok = _targets(targets, axis, where)
  s = s / temperature
  kl = jnp.sum(_kl_terms(q, jnp.log(q), s - _lse(s)), axis=-1)
  return v.finish(temperature**2 * kl, where, ok)


def entropy(logits: ArrayLike, *, axis: int = -1, where: ArrayLike | None = None) -> Array:
  """Shannon entropy of the model's distribution, `H(p(z, 1)) = -sum_c p_c log p_c`.

  The confidence penalty of Pereyra et al. (2017) trains `CE(z, y) - beta * entropy(z)`.

  Returns:
    `[...]` float32 in `[0, log C]`; summed over classes only (0 where `where` is False).

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> print(f"{losses.entropy(jnp.log(jnp.array([4.0, 2.0, 1.0, 1.0]))):.4f}")  # 7/4 log 2
  1.2130
  """
  z, where = _student(logits, axis, where=where)
  # With e = exp(z - m), S = sum e: -sum p log p = log S - sum_c e_c (z_c - m) / S; a class
  # of probability 0 (z = -inf) contributes 0.
  m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  e = jnp.exp(z - m)
  total = jnp.sum(e, axis=-1)
  value = jnp.log(total) - jnp.sum(e * jnp.where(e > 0, z - m, 0.0), axis=-1) / total
  return v.finish(value, where)


def tsd(logits: ArrayLike, num_secondary: int = 5, labels: ArrayLike | None = None, *,
        where: ArrayLike | None = None) -> Array:
  """Top score difference of Yang et al. (2019), the tolerant teacher's extra term.

  With `p = p(z, 1)`, `TSD = p_(1) - (1/K) sum_{k=2}^{K+1} p_(k)` for `K = num_secondary`:
  `p_(1)` the primary class's probability, `p_(2..K+1)` the K largest of the others. The
  primary class is the argmax of `p` (`labels=None`) or the label (Yang et al.'s alternative).
  The classes are chosen by `jax.lax.top_k` under stop_gradient (ties: the lowest index);
  the probabilities are differentiable, so minimising TSD lowers the primary score and raises
  the K secondary ones.

  Args:
    logits: `[..., C]`, C >= 2.
    num_secondary: `K` in `[1, C-1]`, static (a Python int).
    labels: optional `[...]` integers in `[0, C)`: each example's primary class.
    where: optional bool `[...]`; 0 where False.

  Returns:
    `[...]` float32 in `[-1, 1]`.

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> z = jnp.log(jnp.array([4.0, 2.0, 1.0, 1.0]))     # p = [1/2, 1/4, 1/8, 1/8]
  >>> print(f"{losses.tsd(z, num_secondary=2):.4f}")   # 1/2 - (1/4 + 1/8) / 2
  0.3125
  """
  z, where = _student(logits, -1, labels=labels, where=where)
  num_classes = z.shape[-1]
  v.check_num_classes(num_classes, "tsd")
  v.check_int_range("num_secondary", num_secondary, 1, num_classes - 1)
  p = jax.nn.softmax(z, axis=-1)
  ranked = jax.lax.stop_gradient(p)
  if labels is None:
    top = jnp.take_along_axis(p, jax.lax.top_k(ranked, num_secondary + 1)[1], axis=-1)
    return v.finish(top[..., 0] - jnp.mean(top[..., 1:], axis=-1), where)
  labels, valid = v.checked_labels(labels, num_classes, where=where)
  is_primary = jax.nn.one_hot(labels, num_classes, dtype=bool)
  # The primary class ranks below every other class when the secondary ones are chosen.
  secondary = jax.lax.top_k(jnp.where(is_primary, -1.0, ranked), num_secondary)[1]
  value = (jnp.take_along_axis(p, labels[..., None], axis=-1)[..., 0]
           - jnp.mean(jnp.take_along_axis(p, secondary, axis=-1), axis=-1))
  return v.finish(value, where, valid)


def _target_split(scores: Array, is_target: Array):
  """`(log p_y, log(1 - p_y), q, log R)` for `p = softmax(scores)` split at the label, from
  one exp pass over the other classes shifted by their own maximum (so `1 - p_y` cannot
  underflow): `R = sum_{c != y} exp(scores_c)` in log form and `q` the distribution over the
  other classes (0 at the label; all 0 when they all have probability 0)."""
  rest = jnp.where(is_target, -jnp.inf, scores)
  m = jax.lax.stop_gradient(jnp.max(rest, axis=-1, keepdims=True))
  e = jnp.exp(rest - jnp.where(m > -jnp.inf, m, 0.0))
  total = jnp.sum(e, axis=-1, keepdims=True)
  log_rest = m + jnp.log(total)
  score_y = jnp.sum(jnp.where(is_target, scores, 0.0), axis=-1, keepdims=True)
  lse = jnp.logaddexp(score_y, log_rest)
  return score_y - lse, log_rest - lse, e / jnp.where(total > 0, total, 1.0), log_rest


def _dkd(student: Array, teacher: Array, is_target: Array, alpha, beta) -> Array:
  """`alpha TCKD + beta NCKD` (no T^2) from the student's scaled logits and the teacher's
  log-scores (`z_t / T` or `log q`; -inf is a probability of 0)."""
  s_y, s_rest, _, s_log_rest = _target_split(student, is_target)
  t_y, t_rest, q, t_log_rest = _target_split(teacher, is_target)
  tckd = _kl_terms(jnp.exp(t_y), t_y, s_y) + _kl_terms(jnp.exp(t_rest), t_rest, s_rest)
  # Over the other classes, log q_c = t_c - log R_t and log p_c = s_c - log R_s.
  nckd = jnp.sum(_kl_terms(q, teacher - t_log_rest, student - s_log_rest), axis=-1,
                 keepdims=True)
  nckd = jnp.where(t_log_rest > -jnp.inf, nckd, 0.0)  # no teacher mass off the label
  return (alpha * tckd + beta * nckd)[..., 0]


def dkd(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike,
        alpha: ArrayLike, beta: ArrayLike, temperature: ArrayLike, *,
        where: ArrayLike | None = None) -> Array:
  """Decoupled KD (Zhao et al. 2022), mdistiller's definition, per example.

  `DKD = T^2 (alpha TCKD + beta NCKD)` at temperature T, with `p = p(z_s, T)`, `q = p(z_t, T)`:
  - `TCKD = KL([q_y, 1 - q_y] || [p_y, 1 - p_y])`, the binary target-vs-rest KL;
  - `NCKD = KL(q^{\\y} || p^{\\y})` between the distributions over the C - 1 other classes,
    each renormalised (`p^{\\y}_c = p_c / (1 - p_y)`), computed as the softmax of the other
    classes' logits (no `-1000` logit offset), so it stays exact when `1 - q_y` underflows.
  A teacher with no probability off the label (every other teacher logit -inf) has no
  non-target distribution: its NCKD is 0. mdistiller divides the batch sum by B; here
  nothing is reduced.

  Args:
    student_logits: `[..., C]`, C >= 2.
    teacher_logits: `[..., C]`, the same shape, under stop_gradient.
    labels: `[...]` integers in `[0, C)`.
    alpha: weight of TCKD. beta: weight of NCKD.
    temperature: `T > 0` and finite.
    where: optional bool `[...]`; 0 where False.

  Returns:
    `[...]` float32.

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> student = jnp.log(jnp.array([2.0, 1.0, 1.0]))    # p = [1/2, 1/4, 1/4]
  >>> teacher = jnp.log(jnp.array([1.0, 1.0, 2.0]))    # q = [1/4, 1/4, 1/2]
  >>> print(f"{losses.dkd(student, teacher, 0, 1.0, 8.0, 1.0):.4f}")
  0.5839
  """
  return _checked_dkd(student_logits, "teacher_logits", teacher_logits, labels, alpha, beta,
                      temperature, where)


def dkd_to_targets(student_logits: ArrayLike, targets: ArrayLike, labels: ArrayLike,
                   alpha: ArrayLike, beta: ArrayLike, temperature: ArrayLike, *,
                   where: ArrayLike | None = None) -> Array:
  """`dkd` with the teacher given as a distribution `q` (e.g. a revised one) instead of logits.

  `q` (`[..., C]`, the shape of `student_logits`) is taken as the teacher's distribution at
  temperature T (a zero entry is a teacher logit of -inf). Labels, temperature, `where` and
  the result as `dkd`.

  >>> import jax.numpy as jnp
  >>> from kd_jax import losses
  >>> student = jnp.log(jnp.array([2.0, 1.0, 1.0]))
  >>> q = jnp.array([0.25, 0.25, 0.5])
  >>> print(f"{losses.dkd_to_targets(student, q, 0, 1.0, 8.0, 1.0):.4f}")
  0.5839
  """
  return _checked_dkd(student_logits, "targets", targets, labels, alpha, beta, temperature,
                      where)


def _checked_dkd(student_logits, teacher_name, teacher, labels, alpha, beta, temperature,
                 where) -> Array:
  """`dkd` (`teacher_name` "teacher_logits") or `dkd_to_targets` ("targets"): the checks, then
  `T^2 _dkd` with the teacher's log-scores `z_t / T` or `log q`."""
  temperature = v.check_temperature(temperature)
  s, where = _student(student_logits, -1, "student_logits", other_name=teacher_name,
                      other_shape=jnp.shape(teacher), labels=labels, where=where)
  v.check_num_classes(s.shape[-1], "dkd", "student_logits")
  labels, valid = v.checked_labels(labels, s.shape[-1], where=where)
  if teacher_name == "targets":
    q, ok = _targets(teacher, -1, where)
    scores = jnp.log(q)
  else:
    scores, ok = _teacher(teacher, -1, where) / temperature, None
  is_target = jax.nn.one_hot(labels, s.shape[-1], dtype=bool)
  value = _dkd(s / temperature, scores, is_target, alpha, beta)
  return v.finish(temperature**2 * value, where, v.both(valid, ok))
