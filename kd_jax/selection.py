"""Data selection (DS): influence scores of training examples and subset selection.

The model scored is a softmax classifier on fixed features (in KD: the student's penultimate
features and its final Dense layer), `logits = x @ kernel + bias`, with parameters
`theta = (kernel [D, C], bias [C])`, trained on the objective

  L(theta) = (1/N) sum_i CE_i(theta) + (l2/2) ||kernel||^2        (bias unregularised)

where `CE_i = -sum_c t_ic log p(x_i)_c` for a target `t_i` (the one-hot label, or any
distribution, e.g. the revised teacher's, so the trainer may score teacher supervision).
The reference loss is the mean cross entropy over a held-out set,
`R(theta) = (1/M) sum_j CE_j^ref(theta)`.

Influence (Koh & Liang 2017). Up-weighting example i by epsilon, `L + epsilon * CE_i`, moves
the minimiser by `d theta / d epsilon = -H^{-1} g_i`, `H` the Hessian of L and
`g_i = grad CE_i` (the per-example CE gradient only: the regulariser is not per example). So

  dR / d epsilon = -g_ref^T H^{-1} g_i,   g_ref = grad R.

Sign convention used everywhere here: **higher score = more helpful**,

  score_i = g_ref^T H^{-1} g_i = -dR/d epsilon,

i.e. a positive score means up-weighting example i DECREASES the reference loss. Removing
example i (epsilon = -1/N, the 1/N normalisation kept) changes the reference loss by about
`+score_i / N`. Data selection keeps the examples with the highest scores, those whose
up-weighting most decreases the reference loss.

Per-example gradients have the closed form `g_i = (x_i (p_i - t_i)^T, p_i - t_i)`, so
`v^T g_i = (x_i @ V_kernel + v_bias) . (p_i - t_i)`: scoring N examples costs one
`[N, D] @ [D, C]` product and never materialises `[N, D, C]`. `per_example_grads` is the
`jax.vmap(jax.grad(...))` version of the same gradients (tests check they agree).

Hessian options (`HESSIANS`): "exact" solves `(H + damping I) v = g_ref` once with a
Jacobi-preconditioned conjugate gradient whose Hessian-vector products are `jax.jvp` of
`jax.grad` over chunks of the data; H is never formed (for D=256, C=100 it would be a
25,700^2 matrix). "diagonal" uses the exact diagonal of H in closed form. "identity" uses
H = I (a TracIn-style gradient dot product). H is symmetric, so one solve serves all N
examples: `influence_scores` = `influence_vector` (the solve) + `example_scores` (the
O(N D C) pass), and callers may reuse a vector to rescore.

Every pass over the N examples loops over fixed-size chunks (the last padded and masked, so
each jitted kernel compiles once); features may be a host NumPy array (copied chunk by chunk)
or a device array. The numerics are in `kd_jax._influence`.

Arguments follow `kd_jax.losses` (its module docstring): integer labels in `[0, C)` and
`[N, C]` target distributions are checked eagerly (ValueError naming the first bad label, or
saying whether a distribution looks like logits; float `[N]` labels are refused, not read as
classes). The jittable functions (`per_example_grads`, `example_scores`,
`teacher_margin_scores`, `teacher_correct_scores`) give NaN for that example when a traced
label is bad. `influence_vector` and `influence_scores` solve on the host (a conjugate
gradient loop that tests convergence) and refuse traced inputs. An empty training set gives
empty scores. This module imports nothing else of kd_jax but `targets` (through
`_influence`) and the private checks (`_validation`).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from kd_jax import _influence as core
from kd_jax import _validation as v

Array = jax.Array

HESSIANS = ("exact", "diagonal", "identity")
CRITERIA = ("influence", "teacher_correct", "teacher_margin", "random")
DEFAULT_CHUNK_SIZE = 8192


def _check_problem(features, labels, kernel, bias, name=""):
  """Shapes, labels (ints `[N]` in `[0, C)`) or target distributions `[N, C]`; `name` ""
  for the training set (N = 0 allowed), "ref_" for the reference set (N >= 1)."""
  if np.ndim(kernel) != 2 or np.shape(bias) != (np.shape(kernel)[1],):
    raise ValueError(f"kernel.shape={np.shape(kernel)!r}, bias.shape={np.shape(bias)!r} are "
                     "not allowed: need kernel [D, C] and bias [C]")
  if np.ndim(features) != 2 or np.shape(features)[1] != np.shape(kernel)[0]:
    v.fail(f"{name}features.shape", np.shape(features),
           f"need [N, D] with D={np.shape(kernel)[0]} (kernel.shape[0])")
  num, classes = np.shape(features)[0], np.shape(kernel)[1]
  if np.shape(labels) not in ((num,), (num, classes)):
    v.fail(f"{name}labels.shape", np.shape(labels),
           f"need [{num}] integer labels or [{num}, {classes}] target distributions")
  if num == 0 and name:
    v.fail(f"{name}features.shape", np.shape(features), "need at least one example")
  if np.ndim(labels) == 1:
    v.checked_labels(labels, classes, name=f"{name}labels")
  else:
    v.checked_distribution(f"{name}labels", labels)


def _check_chunk_size(chunk_size):
  if int(chunk_size) != chunk_size or chunk_size < 1:
    v.fail("chunk_size", chunk_size, "must be a positive integer")


def _check_nonnegative(name, value):
  if not float(value) >= 0:
    v.fail(name, value, "must be >= 0")


def _check_host(function, *arrays):
  if not all(v.is_concrete(a) for a in arrays):
    raise TypeError(f"{function} solves on the host (a conjugate gradient loop that tests "
                    "convergence): call it outside jax.jit / vmap with concrete arrays")


def hessian_vector_product(features: ArrayLike, labels: ArrayLike, kernel: ArrayLike,
                           bias: ArrayLike, vector: tuple, *, l2: float, damping: float = 0.0,
                           chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Array, Array]:
  """`(H + damping I) v` for `H` the Hessian of the training objective L (module docstring).

  Computed as `jax.jvp` of `jax.grad` of the summed CE over chunks of the data, plus
  `l2 * V_kernel`; exact, H never formed.

  Args:
    features: `[N, D]` NumPy or JAX array.
    labels: `[N]` ints in `[0, C)` or `[N, C]` distributions.
    kernel: `[D, C]`. bias: `[C]`. vector: `(V_kernel [D, C], v_bias [C])`.
    l2: the L2 coefficient on the kernel. damping: added to every diagonal entry.
    chunk_size: examples per device pass.

  Returns:
    `(HV_kernel [D, C], Hv_bias [C])` float32.

  >>> import numpy as np
  >>> from kd_jax import selection
  >>> x, y = np.eye(2, dtype=np.float32), np.array([0, 1])
  >>> w, b = np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
  >>> hv_kernel, hv_bias = selection.hessian_vector_product(x, y, w, b, (w, np.ones(2)), l2=0.0)
  >>> print(hv_bias)         # the bias direction (1, 1) is a null direction of the softmax
  [0. 0.]
  """
  _check_chunk_size(chunk_size)
  _check_problem(features, labels, kernel, bias, name="")
  if not np.shape(features)[0]:
    v.fail("features.shape", np.shape(features), "need at least one example")
  return core.hessian_vector_product(features, labels, kernel, bias, vector, l2=l2,
                                 damping=damping, chunk_size=chunk_size)


def influence_vector(features: ArrayLike, labels: ArrayLike, kernel: ArrayLike,
                     bias: ArrayLike, ref_features: ArrayLike, ref_labels: ArrayLike, *,
                     l2: float, hessian: str = "exact", damping: float = 1e-3,
                     chunk_size: int = DEFAULT_CHUNK_SIZE, cg_tol: float = 1e-5,
                     cg_maxiter: int = 500) -> tuple[Array, Array]:
  """`v = (H + damping I)^{-1} g_ref`, the one solve behind every influence score.

  Args: as `influence_scores`.

  Returns:
    `(V_kernel [D, C], v_bias [C])` float32; `example_scores(..., v)` gives the scores.

  >>> import numpy as np
  >>> from kd_jax import selection
  >>> x, y = np.eye(2, dtype=np.float32), np.array([0, 1])
  >>> w, b = np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
  >>> v_kernel, _ = selection.influence_vector(x, y, w, b, x, y, l2=0.1, hessian="identity")
  >>> print(v_kernel)        # H = I: the mean reference gradient
  [[-0.25  0.25]
   [ 0.25 -0.25]]
  """
  v.check_choice("hessian", hessian, HESSIANS)
  _check_nonnegative("l2", l2)
  _check_nonnegative("damping", damping)
  _check_chunk_size(chunk_size)
  _check_host("influence_vector", features, labels, kernel, bias, ref_features, ref_labels)
  _check_problem(features, labels, kernel, bias)
  _check_problem(ref_features, ref_labels, kernel, bias, name="ref_")
  params = (jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))

  ref_sum = core.sum_over_chunks(core.chunk_grad_sum, ref_features, ref_labels, chunk_size, params)
  ref_grad = jax.tree.map(lambda g: g / ref_features.shape[0], ref_sum)
  if hessian == "identity" or not features.shape[0]:
    return ref_grad
  diagonal = core.hessian_diagonal(features, labels, params, l2, damping, chunk_size)
  if hessian == "diagonal":
    if any(bool(jnp.any(d <= 0)) for d in diagonal):
      v.fail("damping", damping, "the Hessian diagonal has zero entries (l2=0 and saturated "
             "softmax); use damping > 0")
    return jax.tree.map(jnp.divide, ref_grad, diagonal)
  hvp = lambda u: core.hessian_vector_product(features, labels, *params, u, l2=l2,
                                          damping=damping, chunk_size=chunk_size)
  return core.conjugate_gradient(hvp, ref_grad, diagonal, cg_tol, cg_maxiter)


def example_scores(features: ArrayLike, labels: ArrayLike, kernel: ArrayLike, bias: ArrayLike,
                   vector: tuple, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Array:
  """`v^T g_i` for every example, `[N]` float32, in O(N D C) without `[N, D, C]`.

  `v^T g_i = (x_i @ V_kernel + v_bias) . (p_i - t_i)` (closed-form per-example gradient).
  Jittable: traced arguments are scored in one pass (a bad traced label: NaN for that example);
  concrete ones in chunks of `chunk_size`.

  >>> import numpy as np
  >>> from kd_jax import selection
  >>> x, y = np.eye(2, dtype=np.float32), np.array([0, 1])
  >>> w, b = np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
  >>> print(selection.example_scores(x, y, w, b, (np.eye(2), np.zeros(2))))
  [-0.5 -0.5]
  """
  _check_chunk_size(chunk_size)
  _check_problem(features, labels, kernel, bias)
  params = (jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))
  vector = jax.tree.map(lambda u: jnp.asarray(u, jnp.float32), tuple(vector))
  if not all(v.is_concrete(a) for a in (features, labels, *params, *vector)):
    targets = core.as_targets(jnp.asarray(labels), params[1].shape[0], check=True)
    grads = core.logit_grads(params, features, targets)
    return jnp.sum(core.logits(vector, features) * grads, axis=-1)
  scores = [jnp.zeros((0,), jnp.float32)]
  for valid, _, x, y in core.chunks(np.shape(features)[0], chunk_size, features, labels):
    scores.append(core.chunk_scores(params, vector, x, y)[:valid])
  return jnp.concatenate(scores)


def influence_scores(features: ArrayLike, labels: ArrayLike, kernel: ArrayLike,
                     bias: ArrayLike, ref_features: ArrayLike, ref_labels: ArrayLike, *,
                     l2: float, hessian: str = "exact", damping: float = 1e-3,
                     chunk_size: int = DEFAULT_CHUNK_SIZE, cg_tol: float = 1e-5,
                     cg_maxiter: int = 500) -> Array:
  """Influence of up-weighting each training example on the reference loss; higher = helpful.

  `score_i = g_ref^T (H + damping I)^{-1} g_i = -dR/d epsilon_i` (module docstring): a
  positive score means up-weighting example i decreases the mean reference CE; removing it
  changes the reference loss by about `+score_i / N`. Solved on the host: not jittable.

  Args:
    features: `[N, D]` training features (NumPy on host or a JAX array; any float dtype,
      computed in float32). labels: `[N]` integer labels in `[0, C)` or `[N, C]` target
      distributions (e.g. the teacher's, to score teacher supervision); they define both
      g_i and H.
    kernel, bias: `[D, C]`, `[C]`, the classifier at which everything is evaluated
      (ideally a minimiser of L, where the influence approximation holds).
    ref_features, ref_labels: the reference set, `[M, D]` and `[M]` or `[M, C]`, M >= 1.
    l2: the training objective's L2 coefficient on the kernel, `(l2/2)||kernel||^2`.
    hessian: one of `HESSIANS`: "exact" (CG solve), "diagonal", "identity" (H = I,
      damping ignored).
    damping: lambda added to H's diagonal for "exact" and "diagonal". The default 1e-3 keeps
      H positive definite when l2 = 0 (the bias direction `(0, 1_C)` is always a null
      direction of the unregularised softmax Hessian) and bounds CG's iterations; Koh & Liang
      used 0.01 for non-convex models. Use 0 for the exact influence of a problem with l2 > 0.
    chunk_size: examples per device pass; memory is O(chunk_size * (D + C)).
    cg_tol, cg_maxiter: CG stops at relative residual `cg_tol` (warns after `cg_maxiter`).

  Returns:
    `[N]` float32.

  >>> import numpy as np
  >>> from kd_jax import selection
  >>> x, y = np.eye(2, dtype=np.float32), np.array([0, 1])
  >>> w, b = np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
  >>> print(selection.influence_scores(x, y, w, b, x, y, l2=0.1, hessian="identity"))
  [0.25 0.25]
  """
  vector = influence_vector(features, labels, kernel, bias, ref_features, ref_labels, l2=l2,
                            hessian=hessian, damping=damping, chunk_size=chunk_size,
                            cg_tol=cg_tol, cg_maxiter=cg_maxiter)
  return example_scores(features, labels, kernel, bias, vector, chunk_size=chunk_size)


def per_example_grads(features: ArrayLike, labels: ArrayLike, kernel: ArrayLike,
                      bias: ArrayLike) -> tuple[Array, Array]:
  """Per-example CE gradients by `jax.vmap(jax.grad(...))`; jittable.

  Args:
    features: `[B, D]`. labels: `[B]` ints or `[B, C]` distributions. kernel: `[D, C]`.
    bias: `[C]`.

  Returns:
    `(kernel_grads [B, D, C], bias_grads [B, C])` with `g_i = grad_theta CE_i`
    (`x_i (p_i - t_i)^T` and `p_i - t_i`), no regulariser term. A bad label or target row:
    ValueError when concrete, NaN gradients for that example when traced.

  >>> import numpy as np
  >>> from kd_jax import selection
  >>> x, y = np.eye(2, dtype=np.float32), np.array([0, 1])
  >>> w, b = np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
  >>> print(selection.per_example_grads(x, y, w, b)[1])      # p_i - e_y
  [[-0.5  0.5]
   [ 0.5 -0.5]]
  """
  if v.is_concrete(labels):
    _check_problem(features, labels, kernel, bias)
  params = (jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))
  targets = core.as_targets(jnp.asarray(labels), params[1].shape[0], check=True)
  ones = jnp.ones((1,), jnp.float32)

  def one_example(x, t):
    return jax.grad(core.weighted_ce_sum)(params, x[None], t[None], ones)

  return jax.vmap(one_example)(jnp.asarray(features), targets)


def select(scores: ArrayLike, ratio: float, *, higher_is_better: bool = True) -> np.ndarray:
  """Boolean mask `[N]` keeping the `k = floor(ratio * N + 0.5)` best-scored examples.

  `k` is `ratio * N` rounded half up (so ratio=0.5, N=3 keeps 2; a ratio with
  `ratio * N < 0.5` keeps none). Ties are broken by index, lower index first (a stable sort),
  so the mask is deterministic. Runs on the host (the mask indexes a dataset).

  Args:
    scores: `[N]` finite scores. ratio: the kept share, in (0, 1].
    higher_is_better: keep the highest scores (the convention of every `*_scores` here);
      False keeps the lowest.

  Returns:
    `[N]` NumPy bool array with exactly k True entries.

  >>> from kd_jax import selection
  >>> print(selection.select([0.3, -1.0, 2.0, 0.5], 0.5))
  [False False  True  True]
  """
  scores = np.asarray(scores)
  if scores.ndim != 1:
    v.fail("scores.shape", scores.shape, "need [N]")
  if not 0.0 < ratio <= 1.0:
    v.fail("ratio", ratio, "must be in (0, 1]")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"scores has {int(np.sum(~np.isfinite(scores)))} non-finite entries; "
                     "all must be finite")
  keep = int(np.floor(ratio * scores.shape[0] + 0.5))
  keys = -scores if higher_is_better else scores
  order = np.argsort(keys, kind="stable")
  mask = np.zeros(scores.shape[0], bool)
  mask[order[:keep]] = True
  return mask


def _margins(logits, labels, space):
  """`y`'s score minus the best other class's, per row, in "prob" or "logit" space."""
  values = jax.nn.softmax(logits, axis=-1) if space == "prob" else logits
  is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  true_value = jnp.sum(jnp.where(is_true, values, 0.0), axis=-1)
  return true_value - jnp.max(jnp.where(is_true, -jnp.inf, values), axis=-1)


_chunk_margins = jax.jit(_margins, static_argnums=2)


def teacher_margin_scores(teacher_logits: ArrayLike, labels: ArrayLike, *, space: str = "prob",
                          chunk_size: int = DEFAULT_CHUNK_SIZE,
                          where: ArrayLike | None = None) -> Array:
  """Teacher margin of the true class over the best other class; higher = more confident.

  space="prob" (default): `p_y - max_{c != y} p_c` in [-1, 1] with `p = softmax(z_t)`, the
  quantity label revision's `beta` is built from (`max_c q_c - q_y` when the teacher is
  wrong). space="logit": `z_y - max_{c != y} z_c`. Positive iff the teacher is correct
  (up to exact ties).

  Args:
    teacher_logits: `[..., C]` (NumPy or JAX), C >= 2. labels: `[...]` integers in `[0, C)`.
    space: "prob" or "logit".
    chunk_size: rows per device pass for concrete (host) arrays; traced ones (jit, vmap) are
      scored in one pass, a bad label giving NaN for that example.
    where: optional bool `[...]`; 0 where False.

  Returns:
    `[...]` float32 (an empty batch gives an empty array).

  >>> import numpy as np
  >>> from kd_jax import selection
  >>> logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
  >>> print(selection.teacher_margin_scores(logits, np.array([0, 0]), space="logit"))
  [ 1. -3.]
  """
  v.check_choice("space", space, ("prob", "logit"))
  _check_chunk_size(chunk_size)
  z = v.classes_last(teacher_logits, -1, "teacher_logits")
  v.check_shapes("teacher_logits", z.shape, labels=labels, where=where)
  v.check_num_classes(z.shape[-1], "a margin over the best other class", "teacher_logits")
  where = v.checked_where(where, z.shape[:-1])
  labels, valid = v.checked_labels(labels, z.shape[-1], where=where)
  if not all(v.is_concrete(a) for a in (z, labels, where)):
    return v.finish(_margins(z, labels, space), where, valid)
  rows, shape = z.reshape(-1, z.shape[-1]), z.shape[:-1]
  scores = [jnp.zeros((0,), jnp.float32)]
  for num, _, chunk, y in core.chunks(rows.shape[0], chunk_size, rows, labels.reshape(-1)):
    scores.append(_chunk_margins(chunk, y, space)[:num])
  return v.finish(jnp.concatenate(scores).reshape(shape), where)


def teacher_correct_scores(teacher_logits: ArrayLike, labels: ArrayLike, *,
                           chunk_size: int = DEFAULT_CHUNK_SIZE,
                           where: ArrayLike | None = None) -> Array:
  """1.0 where the teacher's argmax is the label, else 0.0; `[...]` float32.

  Only two values, so `select` keeps correct examples in index order when there are more
  than it needs; `teacher_margin_scores` is the graded version (arguments as there).

  >>> import numpy as np
  >>> from kd_jax import selection
  >>> logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
  >>> print(selection.teacher_correct_scores(logits, np.array([0, 0])))
  [1. 0.]
  """
  margins = teacher_margin_scores(teacher_logits, labels, space="logit",
                                  chunk_size=chunk_size, where=where)
  return jnp.where(jnp.isnan(margins), jnp.nan, (margins > 0).astype(jnp.float32))


def random_scores(n: int, seed: int | Sequence[int]) -> Array:
  """`[n]` float32 uniform [0, 1) scores from `np.random.default_rng(seed)`: the DS control.

  >>> from kd_jax import selection
  >>> selection.random_scores(3, 0).shape
  (3,)
  """
  if int(n) != n or n < 0:
    v.fail("n", n, "must be a non-negative integer")
  return jnp.asarray(np.random.default_rng(seed).random(int(n), dtype=np.float32))


def criterion_scores(criterion: str, **kwargs: Any) -> Array:
  """Scores of one selection criterion, all with higher = keep.

  criterion (one of `CRITERIA`) and its keyword arguments:
    "influence": those of `influence_scores`.
    "teacher_correct": teacher_logits, labels.
    "teacher_margin": teacher_logits, labels, optional space.
    "random": n, seed.

  Returns:
    `[N]` float32, ready for `select(scores, ratio)`.

  >>> from kd_jax import selection
  >>> selection.criterion_scores("random", n=4, seed=0).shape
  (4,)
  """
  functions = {"influence": influence_scores, "teacher_correct": teacher_correct_scores,
               "teacher_margin": teacher_margin_scores, "random": random_scores}
  v.check_choice("criterion", criterion, CRITERIA)
  return functions[criterion](**kwargs)
