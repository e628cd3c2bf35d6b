"""Target transforms: functions that build the distribution a student is trained toward.

Each function maps labels and/or teacher probabilities `[B, C]` to targets `[B, C]` that are
distributions (non-negative, rows sum to 1), in float32. Teacher probabilities are wrapped
in `jax.lax.stop_gradient`. Pair a target with `losses.kl_to_targets` (T^2 KL at temperature
T) or `losses.soft_cross_entropy`.

Invalid inputs follow `kd_jax.losses` (its module docstring):
- Labels must be integers in `[0, C)` with the batch shape of the teacher probabilities
  (shapes are checked at trace time). Concrete labels are checked eagerly (ValueError naming
  the first bad label, its index and the range); with traced labels (jit, vmap, grad, pmap,
  shard_map) the target row of each bad label is all NaN, so the loss built from it is NaN
  for that example and the other rows are unchanged.
- Scalar arguments (epsilon, eta, temperature) given as Python numbers are validated
  eagerly; traced ones outside their range make the whole output NaN. `k` and `spread` are
  static.

Methods: label smoothing (`smooth`), Label Revision of Lan et al. (`revise`), and the
partial-knowledge variants of Tang et al.: KD-pt (`pt`), KD-sim (`class_similarity` +
`sim`), KD-pt+sim (`pt_sim`) and KD-topk (`topk`).

This module imports nothing else of kd_jax but `losses`' validators and the top-k selection
of its kernels (`kd_jax._loss_kernels`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import _loss_kernels as _kernels
from kd_jax.losses import (
  _checked_labels,
  _concrete,
  _nan_unless,
  check_int_range,
  check_temperature,
)


def _unit_interval(name, value, *, open_interval=False):
  """`value`, checked eagerly when concrete; a traced value outside the interval -> NaN."""
  v = _concrete(value)
  if v is None:
    ok = (0 < value) & (value < 1) if open_interval else (0 <= value) & (value <= 1)
    return _nan_unless(ok, value)
  ok = 0 < v < 1 if open_interval else 0 <= v <= 1
  if not ok:
    allowed = "(0, 1)" if open_interval else "[0, 1]"
    raise ValueError(f"{name}={value!r} is not allowed: must be in {allowed}")
  return value


def _check_batch(teacher_probs, labels):
  if np.shape(labels) != np.shape(teacher_probs)[:-1]:
    raise ValueError(f"labels.shape={np.shape(labels)} is not allowed: need "
                     f"{np.shape(teacher_probs)[:-1]}, the batch shape of "
                     f"teacher_probs.shape={np.shape(teacher_probs)}")


def _check_similarity(similarity, num_classes=None):
  """`similarity` is `[C, C]` (with `C = num_classes` when given); returns C."""
  shape = np.shape(similarity)
  if len(shape) != 2 or shape[0] != shape[1] or num_classes not in (None, shape[0]):
    need = "[C, C]" if num_classes is None else f"[C, C] = ({num_classes}, {num_classes})"
    raise ValueError(f"similarity.shape={shape} is not allowed: need {need}")
  return shape[0]


def _teacher(teacher_probs):
  return jax.lax.stop_gradient(jnp.asarray(teacher_probs).astype(jnp.float32))


def _true_class_prob(probs, labels):
  return jnp.take_along_axis(probs, labels[..., None], axis=-1)[..., 0]


def _one_hot(labels, valid, num_classes):
  return _nan_unless(valid, jax.nn.one_hot(labels, num_classes, dtype=jnp.float32))


def one_hot(labels, num_classes):
  """`e_y`: `[B]` integer labels in `[0, C)` -> `[B, C]` float32 (NaN rows: bad traced labels)."""
  labels, valid = _checked_labels(labels, num_classes)
  return _one_hot(labels, valid, num_classes)


def smooth(labels, num_classes, epsilon, spread="all"):
  """Label smoothing.

  `spread="all"`: `(1 - eps) e_y + eps / C` (Szegedy et al.; optax's convention).
  `spread="others"`: `(1 - eps) e_y + eps / (C - 1)` on the C-1 non-target classes.

  Args:
    labels: `[B]` integers in `[0, C)` (a NaN row for each bad traced label).
    num_classes: C.
    epsilon: smoothing mass in `[0, 1]` (traced and outside: all NaN).
    spread: "all" or "others".

  Returns:
    `[B, C]` float32 distributions.
  """
  epsilon = _unit_interval("epsilon", epsilon)
  hot = one_hot(labels, num_classes)
  if spread == "all":
    return (1.0 - epsilon) * hot + epsilon / num_classes
  if spread == "others":
    return (1.0 - epsilon) * hot + epsilon / (num_classes - 1) * (1.0 - hot)
  raise ValueError(f"spread={spread!r} is not allowed: must be 'all' or 'others'")


def _revision_beta(q, labels, eta):
  return eta / (jnp.max(q, axis=-1) - _true_class_prob(q, labels) + 1.0)


def revision_beta(teacher_probs, labels, eta):
  """Label Revision's mixing weight `beta = eta / (max_c q_c - q_y + 1)`, `[B]`.

  `beta == eta` when the teacher is right (`argmax q = y`) and is smaller the more wrong it is.
  Arguments as `revise`; NaN for a bad traced label (that example) or eta (all).
  """
  eta = _unit_interval("eta", eta, open_interval=True)
  q = _teacher(teacher_probs)
  _check_batch(q, labels)
  labels, valid = _checked_labels(labels, q.shape[-1])
  return _nan_unless(valid, _revision_beta(q, labels, eta))


def revise(teacher_probs, labels, eta):
  """Label Revision (Lan et al. 2024): `q' = beta q + (1 - beta) e_y`, `beta` as `revision_beta`.

  Since `eta < 1`, `q'_y - q'_c = beta (q_y - q_c) + 1 - beta > 0` for every `c != y`, so the
  revised argmax is always the true class; `q'` is a distribution.

  Args:
    teacher_probs: `[B, C]` teacher distribution (usually at the distillation temperature).
    labels: `[B]` integers in `[0, C)` (a NaN row for each bad traced label).
    eta: in `(0, 1)` (traced and outside: all NaN).

  Returns:
    `[B, C]` float32 revised distributions.
  """
  eta = _unit_interval("eta", eta, open_interval=True)
  q = _teacher(teacher_probs)
  _check_batch(q, labels)
  labels, valid = _checked_labels(labels, q.shape[-1])
  beta = _revision_beta(q, labels, eta)[..., None]
  return beta * q + (1.0 - beta) * _one_hot(labels, valid, q.shape[-1])


def pt(teacher_probs, labels):
  """KD-pt: the teacher's confidence on the true class only.

  Target `q_y` at `y` and `(1 - q_y) / (C - 1)` on every other class. `[B, C]` float32;
  labels `[B]` in `[0, C)` (a NaN row for each bad traced label).
  """
  q = _teacher(teacher_probs)
  _check_batch(q, labels)
  num_classes = q.shape[-1]
  labels, valid = _checked_labels(labels, num_classes)
  q_y = _true_class_prob(q, labels)[..., None]
  hot = _one_hot(labels, valid, num_classes)
  return hot * q_y + (1.0 - hot) * (1.0 - q_y) / (num_classes - 1)


def class_similarity(kernel, temperature):
  """Class relationships from a final Dense layer, for KD-sim (Tang et al.).

  `rho(y)_j = softmax_{j != y}(cos(w_y, w_j) / tau)` with `w_c` the kernel's column c.

  Args:
    kernel: `[D, C]` final-layer kernel (flax Dense layout), under stop_gradient.
    temperature: `tau > 0` and finite (traced and invalid: all NaN).

  Returns:
    `[C, C]` float32: row y is `rho(y)`, zero on the diagonal, summing to 1.
  """
  if np.ndim(kernel) != 2:
    raise ValueError(f"kernel.shape={np.shape(kernel)} is not allowed: need [D, C]")
  temperature = check_temperature(temperature)
  w = jax.lax.stop_gradient(jnp.asarray(kernel).astype(jnp.float32))
  w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
  cosine = w.T @ w
  off_diagonal = ~jnp.eye(cosine.shape[0], dtype=bool)
  return jax.nn.softmax(jnp.where(off_diagonal, cosine / temperature, -jnp.inf), axis=-1)


def sim(labels, similarity, epsilon):
  """KD-sim: `(1 - eps) e_y + eps * rho(y)`, the same target for every example of a class.

  Args:
    labels: `[B]` integers in `[0, C)` (a NaN row for each bad traced label).
    similarity: `[C, C]` from `class_similarity`.
    epsilon: in `[0, 1]` (traced and outside: all NaN).

  Returns:
    `[B, C]` float32.
  """
  epsilon = _unit_interval("epsilon", epsilon)
  num_classes = _check_similarity(similarity)
  similarity = jax.lax.stop_gradient(jnp.asarray(similarity).astype(jnp.float32))
  labels, valid = _checked_labels(labels, num_classes)
  hot = _one_hot(labels, valid, num_classes)
  return (1.0 - epsilon) * hot + epsilon * similarity[labels]


def pt_sim(teacher_probs, labels, similarity):
  """KD-pt+sim: `q_y` at `y` and `(1 - q_y) * rho(y)` elsewhere. `[B, C]` float32.

  teacher_probs `[B, C]`; labels `[B]` in `[0, C)` (a NaN row for each bad traced label);
  similarity `[C, C]` from `class_similarity`.
  """
  q = _teacher(teacher_probs)
  _check_batch(q, labels)
  num_classes = q.shape[-1]
  _check_similarity(similarity, num_classes)
  similarity = jax.lax.stop_gradient(jnp.asarray(similarity).astype(jnp.float32))
  labels, valid = _checked_labels(labels, num_classes)
  q_y = _true_class_prob(q, labels)[..., None]
  return _one_hot(labels, valid, num_classes) * q_y + (1.0 - q_y) * similarity[labels]


def topk(teacher_probs, k):
  """KD-topk: keep the teacher's k largest probabilities; spread the rest uniformly.

  The `C - k` other classes each get `(1 - sum of the top k) / (C - k)`. Ties at the k-th
  value are broken by `jax.lax.top_k` (lowest index first).

  Args:
    teacher_probs: `[B, C]`.
    k: in `[1, C - 1]`.

  Returns:
    `[B, C]` float32.
  """
  q = _teacher(teacher_probs)
  num_classes = q.shape[-1]
  check_int_range("k", k, 1, num_classes - 1)
  top_values, (top,) = _kernels.top_k_sets(q, (k,))  # top_k's set, without its sort
  kept = _kernels.in_top_set(q, *top)
  rest = (1.0 - jnp.sum(top_values, axis=-1, keepdims=True)) / (num_classes - k)
  # When the top k hold all the mass, float32 rounding can make 1 - sum slightly negative;
  # a negative target entry makes kl_to_targets nan (log of a negative number).
  rest = jnp.maximum(rest, 0.0)
  return jnp.where(kept, q, rest)
