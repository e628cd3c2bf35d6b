"""The numerics behind `kd_jax.selection`'s influence scores (private: call `selection`).

A softmax classifier `logits = x @ kernel + bias` on fixed features: per-example CE gradients
in closed form, chunked sums of gradients, Hessian-vector products (`jax.jvp` of `jax.grad`)
and the Hessian's diagonal, and a Jacobi-preconditioned conjugate gradient. Every pass over
the N examples loops over fixed-size chunks (the last padded and weighted 0), so each jitted
kernel compiles once; features may be a host NumPy array (copied chunk by chunk).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import _validation as v
from kd_jax.targets import one_hot

# Matmuls at full float32 precision: TPUs/GPUs would otherwise use bfloat16/TF32 passes,
# which CG and the small influence differences do not tolerate.
PRECISION = jax.lax.Precision.HIGHEST


def logits(params, features):
  kernel, bias = params
  return jnp.dot(features.astype(jnp.float32), kernel, precision=PRECISION) + bias


def as_targets(labels, num_classes, check=False):
  """Integer labels `[B]` -> one-hot `[B, C]` (a NaN row for a bad traced label); target
  distributions `[B, C]` pass through (`check`: a NaN row for a traced non-distribution)."""
  if labels.ndim == 1:
    return one_hot(labels, num_classes)
  if not check:
    return labels.astype(jnp.float32)
  q, ok = v.checked_distribution("labels", labels)
  return v.nan_unless(ok, q)


def weighted_ce_sum(params, features, targets, weights):
  """`sum_i w_i CE_i`; the weights mask the padding of the last chunk."""
  log_probs = jax.nn.log_softmax(logits(params, features))
  return -jnp.sum(weights * jnp.sum(targets * log_probs, axis=-1))


def logit_grads(params, features, targets):
  """`dCE_i/dz_i = p_i sum_c t_ic - t_i`, `[B, C]` (`p_i - t_i` for distributions)."""
  probs = jax.nn.softmax(logits(params, features))
  return probs * jnp.sum(targets, axis=-1, keepdims=True) - targets


@jax.jit
def chunk_grad_sum(params, features, labels, weights):
  targets = as_targets(labels, params[1].shape[0])
  return jax.grad(weighted_ce_sum)(params, features, targets, weights)


@jax.jit
def chunk_hvp_sum(params, vector, features, labels, weights):
  targets = as_targets(labels, params[1].shape[0])
  grad_fn = lambda p: jax.grad(weighted_ce_sum)(p, features, targets, weights)
  return jax.jvp(grad_fn, (params,), (vector,))[1]


@jax.jit
def chunk_hessian_diagonal_sum(params, features, labels, weights):
  """Diagonal of `sum_i w_i Hess CE_i`: `x_id^2 p_ic (1 - p_ic)` and `p_ic (1 - p_ic)`."""
  targets = as_targets(labels, params[1].shape[0])
  probs = jax.nn.softmax(logits(params, features))
  curvature = (weights * jnp.sum(targets, -1))[:, None] * probs * (1.0 - probs)
  squares = jnp.square(features.astype(jnp.float32))
  return jnp.dot(squares.T, curvature, precision=PRECISION), jnp.sum(curvature, axis=0)


@jax.jit
def chunk_scores(params, vector, features, labels):
  """`v^T g_i = (x_i @ V_kernel + v_bias) . dCE_i/dz_i`, `[B]`."""
  targets = as_targets(labels, params[1].shape[0])
  logit_direction = logits(vector, features)
  return jnp.sum(logit_direction * logit_grads(params, features, targets), axis=-1)


def padded_chunk(array, start, size):
  piece = array[start:start + size]
  missing = size - piece.shape[0]
  if missing:
    xnp = np if isinstance(piece, np.ndarray) else jnp
    piece = xnp.pad(piece, [(0, missing)] + [(0, 0)] * (piece.ndim - 1))
  return jnp.asarray(piece)


def chunks(num_examples, chunk_size, *arrays):
  """Yields `(num_valid, weights, *chunks)`, every chunk of exactly `min(chunk_size, N)` rows."""
  size = max(1, min(chunk_size, num_examples))
  for start in range(0, num_examples, size):
    valid = min(size, num_examples - start)
    weights = (jnp.arange(size) < valid).astype(jnp.float32)
    yield (valid, weights) + tuple(padded_chunk(a, start, size) for a in arrays)


def sum_over_chunks(chunk_fn, features, labels, chunk_size, *args):
  total = None
  for _, weights, x, y in chunks(features.shape[0], chunk_size, features, labels):
    part = chunk_fn(*args, x, y, weights)
    total = part if total is None else jax.tree.map(jnp.add, total, part)
  return total


def tree_dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def axpy(alpha, x, y):
  return jax.tree.map(lambda u, w: alpha * u + w, x, y)


def hessian_vector_product(features, labels, kernel, bias, vector, *, l2, damping,
                            chunk_size):
  params = (jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32))
  vector = jax.tree.map(lambda u: jnp.asarray(u, jnp.float32), tuple(vector))
  summed = sum_over_chunks(chunk_hvp_sum, features, labels, chunk_size, params, vector)
  hv = jax.tree.map(lambda s, u: s / features.shape[0] + damping * u, summed, vector)
  return (hv[0] + l2 * vector[0], hv[1])


def hessian_diagonal(features, labels, params, l2, damping, chunk_size):
  summed = sum_over_chunks(chunk_hessian_diagonal_sum, features, labels, chunk_size, params)
  kernel_diag, bias_diag = jax.tree.map(lambda s: s / features.shape[0] + damping, summed)
  return kernel_diag + l2, bias_diag


def conjugate_gradient(hvp, rhs, diagonal, tol, maxiter):
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
  rz = tree_dot(residual, z)
  threshold = tol * float(jnp.sqrt(tree_dot(rhs, rhs)))
  for _ in range(maxiter):
    if float(jnp.sqrt(tree_dot(residual, residual))) <= threshold:
      return x
    product = hvp(direction)
    alpha = rz / tree_dot(direction, product)
    x = axpy(alpha, direction, x)
    residual = axpy(-alpha, product, residual)
    z = precondition(residual)
    rz_next = tree_dot(residual, z)
    direction = axpy(rz_next / rz, direction, z)
    rz = rz_next
  norm = float(jnp.sqrt(tree_dot(residual, residual)))
  if norm > threshold:
    warnings.warn(f"conjugate gradient stopped after cg_maxiter={maxiter} iterations with "
                  f"relative residual {norm / max(threshold / tol, 1e-30):.2e} > cg_tol={tol}; "
                  "raise cg_maxiter or damping")
  return x


