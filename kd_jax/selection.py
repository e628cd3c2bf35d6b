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
or a device array.

Integer labels are checked eagerly by the same rule as `kd_jax.losses`: integers in `[0, C)`,
else a ValueError naming the first bad label (float `[N]` labels are refused, not read as
classes); in the jittable `per_example_grads` a bad traced label gives NaN gradients for that
example. This module imports nothing else of kd_jax but `losses` and `targets`.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import targets as _targets
from kd_jax.losses import _checked_labels

HESSIANS = ("exact", "diagonal", "identity")
CRITERIA = ("influence", "teacher_correct", "teacher_margin", "random")
DEFAULT_CHUNK_SIZE = 8192
# Matmuls at full float32 precision: TPUs/GPUs would otherwise use bfloat16/TF32 passes,
# which CG and the small influence differences do not tolerate.
_PRECISION = jax.lax.Precision.HIGHEST


def _logits(params, features):
  kernel, bias = params
  return jnp.dot(features.astype(jnp.float32), kernel, precision=_PRECISION) + bias


def _as_targets(labels, num_classes):
  """Integer labels `[B]` -> one-hot `[B, C]`; target distributions `[B, C]` pass through."""
  if labels.ndim == 1:
    return _targets.one_hot(labels, num_classes)
  return labels.astype(jnp.float32)


def _weighted_ce_sum(params, features, targets, weights):
  """`sum_i w_i CE_i`; the weights mask the padding of the last chunk."""
  log_probs = jax.nn.log_softmax(_logits(params, features))
  return -jnp.sum(weights * jnp.sum(targets * log_probs, axis=-1))


def _logit_grads(params, features, targets):
  """`dCE_i/dz_i = p_i sum_c t_ic - t_i`, `[B, C]` (`p_i - t_i` for distributions)."""
  probs = jax.nn.softmax(_logits(params, features))
  return probs * jnp.sum(targets, axis=-1, keepdims=True) - targets


@jax.jit
def _chunk_grad_sum(params, features, labels, weights):
  targets = _as_targets(labels, params[1].shape[0])
  return jax.grad(_weighted_ce_sum)(params, features, targets, weights)


@jax.jit
def _chunk_hvp_sum(params, vector, features, labels, weights):
  targets = _as_targets(labels, params[1].shape[0])
  grad_fn = lambda p: jax.grad(_weighted_ce_sum)(p, features, targets, weights)
  return jax.jvp(grad_fn, (params,), (vector,))[1]


@jax.jit
def _chunk_hessian_diagonal_sum(params, features, labels, weights):
  """Diagonal of `sum_i w_i Hess CE_i`: `x_id^2 p_ic (1 - p_ic)` and `p_ic (1 - p_ic)`."""
  targets = _as_targets(labels, params[1].shape[0])
  probs = jax.nn.softmax(_logits(params, features))
  curvature = (weights * jnp.sum(targets, -1))[:, None] * probs * (1.0 - probs)
  squares = jnp.square(features.astype(jnp.float32))
  return jnp.dot(squares.T, curvature, precision=_PRECISION), jnp.sum(curvature, axis=0)


@jax.jit
def _chunk_scores(params, vector, features, labels):
  """`v^T g_i = (x_i @ V_kernel + v_bias) . dCE_i/dz_i`, `[B]`."""
  targets = _as_targets(labels, params[1].shape[0])
  logit_direction = _logits(vector, features)
  return jnp.sum(logit_direction * _logit_grads(params, features, targets), axis=-1)


def _padded_chunk(array, start, size):
  piece = array[start:start + size]
  missing = size - piece.shape[0]
  if missing:
    xnp = np if isinstance(piece, np.ndarray) else jnp
    piece = xnp.pad(piece, [(0, missing)] + [(0, 0)] * (piece.ndim - 1))
  return jnp.asarray(piece)


def _chunks(num_examples, chunk_size, *arrays):
  """Yields `(num_valid, weights, *chunks)`, every chunk of exactly `min(chunk_size, N)` rows."""
  size = min(chunk_size, num_examples)
  for start in range(0, num_examples, size):
    valid = min(size, num_examples - start)
    weights = (jnp.arange(size) < valid).astype(jnp.float32)
    yield (valid, weights) + tuple(_padded_chunk(a, start, size) for a in arrays)


def _sum_over_chunks(chunk_fn, features, labels, chunk_size, *args):
  total = None
  for _, weights, x, y in _chunks(features.shape[0], chunk_size, features, labels):
    part = chunk_fn(*args, x, y, weights)
    total = part if total is None else jax.tree.map(jnp.add, total, part)
  return total


def _tree_dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _axpy(alpha, x, y):
  return jax.tree.map(lambda u, w: alpha * u + w, x, y)


def _check_problem(features, labels, kernel, bias, name=""):
  if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
    raise ValueError(f"kernel.shape={kernel.shape!r}, bias.shape={bias.shape!r} are not "
                     "allowed: need kernel [D, C] and bias [C]")
  if features.ndim != 2 or features.shape[1] != kernel.shape[0]:
    raise ValueError(f"{name}features.shape={features.shape!r} is not allowed: need "
                     f"[N, D] with D={kernel.shape[0]} (kernel.shape[0])")
  num, classes = features.shape[0], kernel.shape[1]
  if labels.shape not in ((num,), (num, classes)):
    raise ValueError(f"{name}labels.shape={labels.shape!r} is not allowed: need [{num}] "
                     f"integer labels or [{num}, {classes}] target distributions")
  if num == 0:
    raise ValueError(f"{name}features has N=0 examples: at least one is needed")
  if labels.ndim == 1:
    _checked_labels(labels, classes, name=f"{name}labels")


def _check_chunk_size(chunk_size):
  if int(chunk_size) != chunk_size or chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size!r} is not allowed: must be a positive integer")


def _check_nonnegative(name, value):
  if not float(value) >= 0:
    raise ValueError(f"{name}={value!r} is not allowed: must be >= 0")


def hessian_vector_product(features, labels, kernel, bias, vector, *, l2, damping=0.0,
                           chunk_size=DEFAULT_CHUNK_SIZE):
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
  """
  _check_chunk_size(chunk_size)
  _check_problem(features, labels, kernel, bias)
  return _hessian_vector_product(features, labels, kernel, bias, vector, l2=l2,
                                 damping=damping, chunk_size=chunk_size)


def _hessian_vector_product(features, labels, kernel, bias, vector, *, l2, damping,
                            chunk_size):
  params = (jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))
  vector = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), tuple(vector))
  summed = _sum_over_chunks(_chunk_hvp_sum, features, labels, chunk_size, params, vector)
  hv = jax.tree.map(lambda s, v: s / features.shape[0] + damping * v, summed, vector)
  return (hv[0] + l2 * vector[0], hv[1])


def _hessian_diagonal(features, labels, params, l2, damping, chunk_size):
  summed = _sum_over_chunks(_chunk_hessian_diagonal_sum, features, labels, chunk_size, params)
  kernel_diag, bias_diag = jax.tree.map(lambda s: s / features.shape[0] + damping, summed)
  return kernel_diag + l2, bias_diag


def _conjugate_gradient(hvp, rhs, diagonal, tol, maxiter):
  """Solves `A x = rhs` for symmetric PSD `A` given as `hvp`, Jacobi-preconditioned.

  Hand-written rather than `jax.scipy.sparse.linalg.cg` because each product is a Python
  loop over host-resident chunks, which cannot be traced into a `while_loop`.
  """
  inverse_diagonal = jax.tree.map(lambda d: 1.0 / jnp.maximum(d, 1e-12), diagonal)
  precondition = lambda r: jax.tree.map(jnp.multiply, inverse_diagonal, r)
  x = jax.tree.map(jnp.zeros_like, rhs)
  residual = rhs
  z = precondition(residual)
  direction = z
  rz = _tree_dot(residual, z)
  threshold = tol * float(jnp.sqrt(_tree_dot(rhs, rhs)))
  for _ in range(maxiter):
    if float(jnp.sqrt(_tree_dot(residual, residual))) <= threshold:
      return x
    product = hvp(direction)
    alpha = rz / _tree_dot(direction, product)
    x = _axpy(alpha, direction, x)
    residual = _axpy(-alpha, product, residual)
    z = precondition(residual)
    rz_next = _tree_dot(residual, z)
    direction = _axpy(rz_next / rz, direction, z)
    rz = rz_next
  norm = float(jnp.sqrt(_tree_dot(residual, residual)))
  if norm > threshold:
    warnings.warn(f"conjugate gradient stopped after cg_maxiter={maxiter} iterations with "
                  f"relative residual {norm / max(threshold / tol, 1e-30):.2e} > cg_tol={tol}; "
                  "raise cg_maxiter or damping")
  return x


def influence_vector(features, labels, kernel, bias, ref_features, ref_labels, *, l2,
                     hessian="exact", damping=1e-3, chunk_size=DEFAULT_CHUNK_SIZE,
                     cg_tol=1e-5, cg_maxiter=500):
  """`v = (H + damping I)^{-1} g_ref`, the one solve behind every influence score.

  Args: as `influence_scores`.

  Returns:
    `(V_kernel [D, C], v_bias [C])` float32; `example_scores(..., v)` gives the scores.
  """
  if hessian not in HESSIANS:
    raise ValueError(f"hessian={hessian!r} is not allowed: must be one of {HESSIANS}")
  _check_nonnegative("l2", l2)
  _check_nonnegative("damping", damping)
  _check_chunk_size(chunk_size)
  _check_problem(features, labels, kernel, bias)
  _check_problem(ref_features, ref_labels, kernel, bias, name="ref_")
  params = (jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))

  ref_sum = _sum_over_chunks(_chunk_grad_sum, ref_features, ref_labels, chunk_size, params)
  ref_grad = jax.tree.map(lambda g: g / ref_features.shape[0], ref_sum)
  if hessian == "identity":
    return ref_grad
  diagonal = _hessian_diagonal(features, labels, params, l2, damping, chunk_size)
  if hessian == "diagonal":
    if any(bool(jnp.any(d <= 0)) for d in diagonal):
      raise ValueError(f"damping={damping!r} is not allowed here: the Hessian diagonal has "
                       "zero entries (l2=0 and saturated softmax); use damping > 0")
    return jax.tree.map(jnp.divide, ref_grad, diagonal)
  hvp = lambda v: _hessian_vector_product(features, labels, *params, v, l2=l2,
                                          damping=damping, chunk_size=chunk_size)
  return _conjugate_gradient(hvp, ref_grad, diagonal, cg_tol, cg_maxiter)


def example_scores(features, labels, kernel, bias, vector, *, chunk_size=DEFAULT_CHUNK_SIZE):
  """`v^T g_i` for every example, `[N]` float32 NumPy, in O(N D C) without `[N, D, C]`.

  `v^T g_i = (x_i @ V_kernel + v_bias) . (p_i - t_i)` (closed-form per-example gradient).
  """
  _check_chunk_size(chunk_size)
  _check_problem(features, labels, kernel, bias)
  params = (jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))
  vector = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), tuple(vector))
  scores = []
  for valid, _, x, y in _chunks(features.shape[0], chunk_size, features, labels):
    scores.append(np.asarray(_chunk_scores(params, vector, x, y))[:valid])
  return np.concatenate(scores).astype(np.float32)


def influence_scores(features, labels, kernel, bias, ref_features, ref_labels, *, l2,
                     hessian="exact", damping=1e-3, chunk_size=DEFAULT_CHUNK_SIZE,
                     cg_tol=1e-5, cg_maxiter=500):
  """Influence of up-weighting each training example on the reference loss; higher = helpful.

  `score_i = g_ref^T (H + damping I)^{-1} g_i = -dR/d epsilon_i` (module docstring): a
  positive score means up-weighting example i decreases the mean reference CE; removing it
  changes the reference loss by about `+score_i / N`.

  Args:
    features: `[N, D]` training features (NumPy on host or a JAX array; any float dtype,
      computed in float32). labels: `[N]` integer labels in `[0, C)` or `[N, C]` target
      distributions (e.g. the teacher's, to score teacher supervision); they define both
      g_i and H.
    kernel, bias: `[D, C]`, `[C]`, the classifier at which everything is evaluated
      (ideally a minimiser of L, where the influence approximation holds).
    ref_features, ref_labels: the reference set, `[M, D]` and `[M]` or `[M, C]`.
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
    `[N]` float32 NumPy array.
  """
  vector = influence_vector(features, labels, kernel, bias, ref_features, ref_labels, l2=l2,
                            hessian=hessian, damping=damping, chunk_size=chunk_size,
                            cg_tol=cg_tol, cg_maxiter=cg_maxiter)
  return example_scores(features, labels, kernel, bias, vector, chunk_size=chunk_size)


def per_example_grads(features, labels, kernel, bias):
  """Per-example CE gradients by `jax.vmap(jax.grad(...))`; jittable.

  Args:
    features: `[B, D]`. labels: `[B]` ints or `[B, C]` distributions. kernel: `[D, C]`.
    bias: `[C]`.

  Returns:
    `(kernel_grads [B, D, C], bias_grads [B, C])` with `g_i = grad_theta CE_i`
    (`x_i (p_i - t_i)^T` and `p_i - t_i`), no regulariser term. Integer labels outside
    `[0, C)`: ValueError when concrete, NaN gradients for that example when traced.
  """
  params = (jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))
  targets = _as_targets(jnp.asarray(labels), params[1].shape[0])
  ones = jnp.ones((1,), jnp.float32)

  def one_example(x, t):
    return jax.grad(_weighted_ce_sum)(params, x[None], t[None], ones)

  return jax.vmap(one_example)(jnp.asarray(features), targets)


def select(scores, ratio, *, higher_is_better=True):
  """Boolean mask `[N]` keeping the `k = floor(ratio * N + 0.5)` best-scored examples.

  `k` is `ratio * N` rounded half up (so ratio=0.5, N=3 keeps 2; a ratio with
  `ratio * N < 0.5` keeps none). Ties are broken by index, lower index first (a stable sort),
  so the mask is deterministic.

  Args:
    scores: `[N]` finite scores. ratio: the kept share, in (0, 1].
    higher_is_better: keep the highest scores (the convention of every `*_scores` here);
      False keeps the lowest.

  Returns:
    `[N]` NumPy bool array with exactly k True entries.
  """
  scores = np.asarray(scores)
  if scores.ndim != 1:
    raise ValueError(f"scores.shape={scores.shape!r} is not allowed: need [N]")
  if not 0.0 < ratio <= 1.0:
    raise ValueError(f"ratio={ratio!r} is not allowed: must be in (0, 1]")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"scores has {int(np.sum(~np.isfinite(scores)))} non-finite entries; "
                     "all must be finite")
  keep = int(np.floor(ratio * scores.shape[0] + 0.5))
  keys = -scores if higher_is_better else scores
  order = np.argsort(keys, kind="stable")
  mask = np.zeros(scores.shape[0], bool)
  mask[order[:keep]] = True
  return mask


@jax.jit
def _chunk_margins(logits, labels, use_probs):
  logits = logits.astype(jnp.float32)
  values = jnp.where(use_probs, jax.nn.softmax(logits), logits)
  is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  true_value = jnp.sum(jnp.where(is_true, values, 0.0), axis=-1)
  best_other = jnp.max(jnp.where(is_true, -jnp.inf, values), axis=-1)
  return true_value - best_other


def _map_logits(chunk_fn, teacher_logits, labels, chunk_size, *args):
  if teacher_logits.ndim != 2 or labels.shape != teacher_logits.shape[:1]:
    raise ValueError(f"teacher_logits.shape={teacher_logits.shape!r}, labels.shape="
                     f"{labels.shape!r} are not allowed: need [N, C] and [N]")
  _checked_labels(labels, teacher_logits.shape[-1])
  out = []
  for valid, _, z, y in _chunks(labels.shape[0], chunk_size, teacher_logits, labels):
    out.append(np.asarray(chunk_fn(z, y, *args))[:valid])
  return np.concatenate(out).astype(np.float32)


def teacher_margin_scores(teacher_logits, labels, *, space="prob",
                          chunk_size=DEFAULT_CHUNK_SIZE):
  """Teacher margin of the true class over the best other class; higher = more confident.

  space="prob" (default): `p_y - max_{c != y} p_c` in [-1, 1] with `p = softmax(z_t)`, the
  quantity label revision's `beta` is built from (`max_c q_c - q_y` when the teacher is
  wrong). space="logit": `z_y - max_{c != y} z_c`. Positive iff the teacher is correct
  (up to exact ties).

  Args:
    teacher_logits: `[N, C]` (NumPy or JAX). labels: `[N]` integers in `[0, C)`.

  Returns:
    `[N]` float32 NumPy array.
  """
  if space not in ("prob", "logit"):
    raise ValueError(f"space={space!r} is not allowed: must be 'prob' or 'logit'")
  return _map_logits(_chunk_margins, teacher_logits, labels, chunk_size, space == "prob")


def teacher_correct_scores(teacher_logits, labels, *, chunk_size=DEFAULT_CHUNK_SIZE):
  """1.0 where the teacher's argmax is the label, else 0.0; `[N]` float32.

  Only two values, so `select` keeps correct examples in index order when there are more
  than it needs; `teacher_margin_scores` is the graded version.
  """
  margins = teacher_margin_scores(teacher_logits, labels, space="logit", chunk_size=chunk_size)
  return (margins > 0).astype(np.float32)


def random_scores(n, seed):
  """`[n]` float32 uniform [0, 1) scores from `np.random.default_rng(seed)`: the DS control."""
  if int(n) != n or n < 1:
    raise ValueError(f"n={n!r} is not allowed: must be a positive integer")
  return np.random.default_rng(seed).random(int(n), dtype=np.float32)


def criterion_scores(criterion, **kwargs):
  """Scores of one selection criterion, all with higher = keep.

  criterion (one of `CRITERIA`) and its keyword arguments:
    "influence": those of `influence_scores`.
    "teacher_correct": teacher_logits, labels.
    "teacher_margin": teacher_logits, labels, optional space.
    "random": n, seed.

  Returns:
    `[N]` float32 NumPy array, ready for `select(scores, ratio)`.
  """
  functions = {"influence": influence_scores, "teacher_correct": teacher_correct_scores,
               "teacher_margin": teacher_margin_scores, "random": random_scores}
  if criterion not in functions:
    raise ValueError(f"criterion={criterion!r} is not allowed: must be one of {CRITERIA}")
  return functions[criterion](**kwargs)
