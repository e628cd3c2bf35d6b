"""Target transforms: the distributions a student is trained toward.

Each function maps labels `[...]` and/or teacher probabilities `[..., C]` to float32 targets
`[..., C]` that are distributions (rows `>= 0` summing to 1); teacher probabilities are under
`jax.lax.stop_gradient`. Pair a target with `losses.kl_to_targets` (T^2 KL at temperature T)
or `losses.soft_cross_entropy`.

Arguments follow `kd_jax.losses` (its module docstring): shapes checked at trace time, a
single example `[C]` with a scalar label allowed, `where` (bool `[...]`) gives an all-zero
row where False (which the losses turn into a value of 0), concrete labels and teacher
probabilities checked eagerly (ValueError; `teacher_probs` that look like logits are named as
such), traced ones giving a NaN row for that example, and scalar arguments (epsilon, eta,
temperature) checked eagerly when concrete, the whole output NaN when traced and invalid.
`k` and `spread` are static.

Methods: label smoothing (`smooth`), Label Revision of Lan et al. (`revise`), and the
partial-knowledge variants of Tang et al.: KD-pt (`pt`), KD-sim (`class_similarity` +
`sim`), KD-pt+sim (`pt_sim`) and KD-topk (`topk`).
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from kd_jax import _validation as v

Array = jax.Array


def _labels(labels: ArrayLike, num_classes: int, where, batch_shape=None):
  """`(labels, valid, where)`: checked labels of `batch_shape` (default: their own shape)."""
  batch_shape = jnp.shape(labels) if batch_shape is None else tuple(batch_shape)
  if jnp.shape(labels) != batch_shape:
    v.fail("labels.shape", jnp.shape(labels), f"need {batch_shape}, the batch shape of "
           f"teacher_probs.shape={(*batch_shape, num_classes)}")
  where = v.checked_where(where, batch_shape)
  labels, valid = v.checked_labels(labels, num_classes, where=where)
  return labels, valid, where


def _teacher(teacher_probs: ArrayLike, labels: ArrayLike | None, where):
  """`(q, labels, ok, where)`: checked teacher probabilities `[..., C]` and labels `[...]`."""
  shape = jnp.shape(teacher_probs)
  v.check_shapes("teacher_probs", shape, where=where)
  where = v.checked_where(where, shape[:-1])
  q, ok = v.checked_distribution("teacher_probs", teacher_probs, where)
  valid = None
  if labels is not None:
    labels, valid, _ = _labels(labels, shape[-1], where, shape[:-1])
  return jax.lax.stop_gradient(q), labels, v.both(ok, valid), where


def _true_class_prob(q: Array, labels: Array) -> Array:
  return jnp.take_along_axis(q, labels[..., None], axis=-1)[..., 0]


def one_hot(labels: ArrayLike, num_classes: int, *, where: ArrayLike | None = None) -> Array:
  """`e_y`: integer labels `[...]` in `[0, C)` -> `[..., C]` float32.

  >>> import jax.numpy as jnp
  >>> from kd_jax import targets
  >>> print(targets.one_hot(jnp.array([2, 0]), 3))
  [[0. 0. 1.]
   [1. 0. 0.]]
  """
  labels, valid, where = _labels(labels, num_classes, where)
  return v.finish(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), where, valid)


def smooth(labels: ArrayLike, num_classes: int, epsilon: ArrayLike, spread: str = "all", *,
           where: ArrayLike | None = None) -> Array:
  """Label smoothing.

  `spread="all"`: `(1 - eps) e_y + eps / C` (Szegedy et al.; optax's convention).
  `spread="others"`: `(1 - eps) e_y + eps / (C - 1)` on the C - 1 other classes (C >= 2).

  Args:
    labels: `[...]` integers in `[0, C)`.
    num_classes: C.
    epsilon: smoothing mass in `[0, 1]`.
    spread: "all" or "others".
    where: optional bool `[...]`; a zero row where False.

  Returns:
    `[..., C]` float32 distributions.

  >>> from kd_jax import targets
  >>> print(targets.smooth(1, 4, 0.2))
  [0.05 0.85 0.05 0.05]
  """
  v.check_choice("spread", spread, ("all", "others"))
  epsilon = v.check_unit_interval("epsilon", epsilon)
  if spread == "others":
    v.check_num_classes(num_classes, "spread='others'", "num_classes")
  labels, valid, where = _labels(labels, num_classes, where)
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if spread == "all":
    target = (1.0 - epsilon) * hot + epsilon / num_classes
  else:
    target = (1.0 - epsilon) * hot + epsilon / (num_classes - 1) * (1.0 - hot)
  return v.finish(target, where, valid)


def _revision_beta(q: Array, labels: Array, eta) -> Array:
  return eta / (jnp.max(q, axis=-1) - _true_class_prob(q, labels) + 1.0)


def revision_beta(teacher_probs: ArrayLike, labels: ArrayLike, eta: ArrayLike, *,
                  where: ArrayLike | None = None) -> Array:
  """Label Revision's mixing weight `beta = eta / (max_c q_c - q_y + 1)`, `[...]`.

  `beta == eta` when the teacher is right (`argmax q = y`) and is smaller the more wrong it is.
  Arguments as `revise`; 0 where `where` is False.

  >>> import jax.numpy as jnp
  >>> from kd_jax import targets
  >>> q = jnp.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
  >>> print(targets.revision_beta(q, jnp.array([1, 0]), 0.8))  # [8/13, 0.8]
  [0.6154 0.8   ]
  """
  eta = v.check_unit_interval("eta", eta, open_interval=True)
  q, labels, ok, where = _teacher(teacher_probs, labels, where)
  return v.finish(_revision_beta(q, labels, eta), where, ok)


def revise(teacher_probs: ArrayLike, labels: ArrayLike, eta: ArrayLike, *,
           where: ArrayLike | None = None) -> Array:
  """Label Revision (Lan et al. 2024): `q' = beta q + (1 - beta) e_y`, `beta` as `revision_beta`.

  Since `eta < 1`, `q'_y - q'_c = beta (q_y - q_c) + 1 - beta > 0` for every `c != y`, so the
  revised argmax is always the true class; `q'` is a distribution.

  Args:
    teacher_probs: `[..., C]` teacher distribution (usually at the distillation temperature);
      logits are refused (ValueError when concrete, NaN rows when traced).
    labels: `[...]` integers in `[0, C)`.
    eta: in `(0, 1)`.
    where: optional bool `[...]`; a zero row where False.

  Returns:
    `[..., C]` float32 revised distributions.

  >>> import jax.numpy as jnp
  >>> from kd_jax import targets
  >>> print(targets.revise(jnp.array([0.6, 0.3, 0.1]), 0, 0.8))
  [0.68 0.24 0.08]
  """
  eta = v.check_unit_interval("eta", eta, open_interval=True)
  q, labels, ok, where = _teacher(teacher_probs, labels, where)
  beta = _revision_beta(q, labels, eta)[..., None]
  hot = jax.nn.one_hot(labels, q.shape[-1], dtype=jnp.float32)
  return v.finish(beta * q + (1.0 - beta) * hot, where, ok)


def pt(teacher_probs: ArrayLike, labels: ArrayLike, *,
       where: ArrayLike | None = None) -> Array:
  """KD-pt: the teacher's confidence on the true class only.

  Target `q_y` at `y` and `(1 - q_y) / (C - 1)` on every other class (C >= 2). Teacher
  probabilities `[..., C]`, labels `[...]` in `[0, C)`; returns `[..., C]` float32.

  >>> import jax.numpy as jnp
  >>> from kd_jax import targets
  >>> print(targets.pt(jnp.array([0.6, 0.3, 0.1]), 1))
  [0.35 0.3  0.35]
  """
  q, labels, ok, where = _teacher(teacher_probs, labels, where)
  num_classes = q.shape[-1]
  v.check_num_classes(num_classes, "pt", "teacher_probs")
  q_y = _true_class_prob(q, labels)[..., None]
  hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return v.finish(hot * q_y + (1.0 - hot) * (1.0 - q_y) / (num_classes - 1), where, ok)


def class_similarity(kernel: ArrayLike, temperature: ArrayLike) -> Array:
  """Class relationships from a final Dense layer, for KD-sim (Tang et al.).

  `rho(y)_j = softmax_{j != y}(cos(w_y, w_j) / tau)` with `w_c` the kernel's column c.

  Args:
    kernel: `[D, C]` final-layer kernel (flax Dense layout, C >= 2), under stop_gradient.
    temperature: `tau > 0` and finite.

  Returns:
    `[C, C]` float32: row y is `rho(y)`, zero on the diagonal, summing to 1.

  >>> import jax.numpy as jnp
  >>> from kd_jax import targets
  >>> kernel = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])   # columns 0 and 2 alike
  >>> print(targets.class_similarity(kernel, 1.0))
  [[0.     0.2689 0.7311]
   [0.5    0.     0.5   ]
   [0.7311 0.2689 0.    ]]
  """
  if jnp.ndim(kernel) != 2:
    v.fail("kernel.shape", jnp.shape(kernel), "need [D, C]")
  v.check_num_classes(jnp.shape(kernel)[1], "class_similarity", "kernel")
  temperature = v.check_temperature(temperature)
  w = jax.lax.stop_gradient(jnp.asarray(kernel).astype(jnp.float32))
  w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
  cosine = w.T @ w
  off_diagonal = ~jnp.eye(cosine.shape[0], dtype=bool)
  return jax.nn.softmax(jnp.where(off_diagonal, cosine / temperature, -jnp.inf), axis=-1)


def _similarity(similarity: ArrayLike, num_classes: int | None = None) -> Array:
  """`similarity` `[C, C]` (with `C = num_classes` when given) as float32, no gradient."""
  shape = jnp.shape(similarity)
  if len(shape) != 2 or shape[0] != shape[1] or num_classes not in (None, shape[0]):
    need = "[C, C]" if num_classes is None else f"[C, C] = ({num_classes}, {num_classes})"
    v.fail("similarity.shape", shape, f"need {need}")
  v.check_num_classes(shape[0], "a class similarity", "similarity")
  return jax.lax.stop_gradient(jnp.asarray(similarity).astype(jnp.float32))


def sim(labels: ArrayLike, similarity: ArrayLike, epsilon: ArrayLike, *,
        where: ArrayLike | None = None) -> Array:
  """KD-sim: `(1 - eps) e_y + eps * rho(y)`, the same target for every example of a class.

  Args:
    labels: `[...]` integers in `[0, C)`.
    similarity: `[C, C]` from `class_similarity`.
    epsilon: in `[0, 1]`.
    where: optional bool `[...]`; a zero row where False.

  Returns:
    `[..., C]` float32.

  >>> import jax.numpy as jnp
  >>> from kd_jax import targets
  >>> rho = jnp.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
  >>> print(targets.sim(0, rho, 0.2))
  [0.8 0.1 0.1]
  """
  epsilon = v.check_unit_interval("epsilon", epsilon)
  similarity = _similarity(similarity)
  labels, valid, where = _labels(labels, similarity.shape[0], where)
  hot = jax.nn.one_hot(labels, similarity.shape[0], dtype=jnp.float32)
  return v.finish((1.0 - epsilon) * hot + epsilon * similarity[labels], where, valid)


def pt_sim(teacher_probs: ArrayLike, labels: ArrayLike, similarity: ArrayLike, *,
           where: ArrayLike | None = None) -> Array:
  """KD-pt+sim: `q_y` at `y` and `(1 - q_y) * rho(y)` elsewhere; `[..., C]` float32.

  Teacher probabilities `[..., C]`, labels `[...]` in `[0, C)`, similarity `[C, C]` from
  `class_similarity`.

  >>> import jax.numpy as jnp
  >>> from kd_jax import targets
  >>> rho = jnp.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
  >>> print(targets.pt_sim(jnp.array([0.6, 0.3, 0.1]), 1, rho))
  [0.35 0.3  0.35]
  """
  q, labels, ok, where = _teacher(teacher_probs, labels, where)
  similarity = _similarity(similarity, q.shape[-1])
  q_y = _true_class_prob(q, labels)[..., None]
  hot = jax.nn.one_hot(labels, q.shape[-1], dtype=jnp.float32)
  return v.finish(hot * q_y + (1.0 - q_y) * similarity[labels], where, ok)


def topk(teacher_probs: ArrayLike, k: int, *, where: ArrayLike | None = None) -> Array:
  """KD-topk: keep the teacher's k largest probabilities; spread the rest uniformly.

  The `C - k` other classes each get `max(0, 1 - sum of the top k) / (C - k)` (the max: when
  the top k hold all the mass, float32 rounding could make it slightly negative). The top k
  are `jax.lax.top_k`'s: ties at the k-th value go to the lowest index.

  Args:
    teacher_probs: `[..., C]`, C >= 2.
    k: in `[1, C - 1]`, static.
    where: optional bool `[...]`; a zero row where False.

  Returns:
    `[..., C]` float32.

  >>> import jax.numpy as jnp
  >>> from kd_jax import targets
  >>> print(targets.topk(jnp.array([0.2, 0.5, 0.0, 0.3]), 2))
  [0.1 0.5 0.1 0.3]
  """
  q, _, ok, where = _teacher(teacher_probs, None, where)
  num_classes = q.shape[-1]
  v.check_num_classes(num_classes, "topk", "teacher_probs")
  v.check_int_range("k", k, 1, num_classes - 1)
  values, index = jax.lax.top_k(q, k)
  kept = jnp.put_along_axis(jnp.zeros(q.shape, bool), index, True, axis=-1, inplace=False)
  rest = jnp.maximum(1.0 - jnp.sum(values, axis=-1, keepdims=True), 0.0) / (num_classes - k)
  return v.finish(jnp.where(kept, q, rest), where, ok)
