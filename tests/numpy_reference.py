"""Plain-NumPy float64 references for `kd_jax.losses` and `kd_jax.targets`.

Written from the equations in the docstrings of `kd_jax.losses`, `kd_jax.targets` and
`kd_jax.methods`, independently of the JAX code, so the tests compare two implementations rather than one with itself. Every function works on the
last axis (classes) and broadcasts over any leading axes; inputs are upcast to float64.
Log-probabilities use max-subtraction, so logits of magnitude 1e4 stay finite here.
"""

import numpy as np


def _f64(x):
  return np.asarray(x, dtype=np.float64)


def logsumexp(z, axis=-1, keepdims=False):
  """log Σ exp(z) with the max subtracted first; -inf entries (masked classes) allowed."""
  z = _f64(z)
  m = np.max(z, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):  # all -inf (nothing left) -> -inf, not a warning
    out = np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True)) + m
  return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(z, temperature=1.0):
  """log p(z, T) = z/T - logsumexp(z/T)."""
  z = _f64(z) / temperature
  return z - logsumexp(z, keepdims=True)


def softmax(z, temperature=1.0):
  return np.exp(log_softmax(z, temperature))


def _take(x, labels):
  """x[..., y] for integer labels broadcastable to x.shape[:-1]."""
  labels = np.broadcast_to(np.asarray(labels), x.shape[:-1])
  return np.take_along_axis(x, labels[..., None], axis=-1)[..., 0]


def _one_hot_mask(labels, num_classes):
  return np.arange(num_classes) == np.asarray(labels)[..., None]


def _kl(log_p, log_q):
  """Σ_c p_c (log p_c - log q_c), with 0·log 0 = 0 (p_c = 0 contributes nothing)."""
  p = np.exp(log_p)
  # Zero the log-ratio where p_c = 0 first: 0 * (-inf) would be nan.
  log_ratio = np.where(p > 0, log_p - np.where(p > 0, log_q, 0.0), 0.0)
  return np.sum(p * log_ratio, axis=-1)


def _kl_probs(p, log_q):
  """KL(p || q) for target probabilities p (exact zeros allowed) and log q."""
  p = _f64(p)
  log_ratio = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)) - log_q, 0.0)
  return np.sum(p * log_ratio, axis=-1)


# ----------------------------------------------------------------------------- losses


def cross_entropy(logits, labels):
  """CE(z, y) = -log p(z)_y."""
  return -_take(log_softmax(logits), labels)


def soft_cross_entropy(logits, targets):
  """H(q, z) = -Σ_c q_c log p(z)_c."""
  return -np.sum(_f64(targets) * log_softmax(logits), axis=-1)


def kd(student_logits, teacher_logits, temperature):
  """T² · KL(p(z_t, T) || p(z_s, T)), summed over classes."""
  t = temperature
  return t**2 * _kl(log_softmax(teacher_logits, t), log_softmax(student_logits, t))


def kl_to_targets(student_logits, targets, temperature):
  """T² · KL(q || p(z_s, T)) for a target distribution q."""
  t = temperature
  return t**2 * _kl_probs(targets, log_softmax(student_logits, t))


def tsd(logits, num_secondary=5):
  """p_(1) - (1/K) Σ_{k=2}^{K+1} p_(k), p = softmax(z) sorted descending."""
  p = -np.sort(-softmax(logits), axis=-1)
  return p[..., 0] - np.mean(p[..., 1:num_secondary + 1], axis=-1)


def tsd_label_primary(logits, labels, num_secondary=5):
  """p_y - (1/K) Σ of the K largest p_c over c != y (the label as the primary class)."""
  p = softmax(logits)
  others = np.where(_one_hot_mask(labels, p.shape[-1]), -np.inf, p)
  top = -np.sort(-others, axis=-1)[..., :num_secondary]
  return _take(p, labels) - np.mean(top, axis=-1)


def entropy(logits):
  """-Σ_c p_c log p_c, p = softmax(z)."""
  log_p = log_softmax(logits)
  return -np.sum(np.exp(log_p) * log_p, axis=-1)


def _binary_log_probs(logits, labels, temperature):
  """log [p_y, 1 - p_y] at temperature T, with log(1 - p_y) = lse(others) - lse(all)."""
  z = _f64(logits) / temperature
  target = _one_hot_mask(labels, z.shape[-1])
  lse_all = logsumexp(z)
  log_p_target = _take(z, labels) - lse_all
  log_p_rest = logsumexp(np.where(target, -np.inf, z)) - lse_all
  return np.stack([log_p_target, log_p_rest], axis=-1)


def _non_target_log_probs(logits, labels, temperature):
  """log-softmax over the C-1 non-target classes (target at -inf, i.e. probability 0)."""
  z = _f64(logits) / temperature
  z = np.where(_one_hot_mask(labels, z.shape[-1]), -np.inf, z)
  # A teacher with no mass off the target (q = e_y given as probabilities) has no
  # non-target distribution: nan here (-inf - -inf), and callers skip nan references.
  with np.errstate(invalid="ignore"):
    return z - logsumexp(z, keepdims=True)


def tckd(student_logits, teacher_logits, labels, temperature):
  """T² · KL([p_t,y, 1-p_t,y] || [p_s,y, 1-p_s,y]) (mdistiller's TCKD, per example)."""
  t = temperature
  return t**2 * _kl(_binary_log_probs(teacher_logits, labels, t),
                    _binary_log_probs(student_logits, labels, t))


def nckd(student_logits, teacher_logits, labels, temperature):
  """T² · KL between teacher and student softmax over the non-target classes only."""
  t = temperature
  return t**2 * _kl(_non_target_log_probs(teacher_logits, labels, t),
                    _non_target_log_probs(student_logits, labels, t))


def dkd(student_logits, teacher_logits, labels, alpha, beta, temperature):
  """α·TCKD + β·NCKD (Zhao et al. 2022, mdistiller), per example."""
  return (alpha * tckd(student_logits, teacher_logits, labels, temperature)
          + beta * nckd(student_logits, teacher_logits, labels, temperature))


# ---------------------------------------------------------------------------- targets


def one_hot(labels, num_classes):
  return _one_hot_mask(labels, num_classes).astype(np.float64)


def smooth(labels, num_classes, epsilon, spread="all"):
  """(1-ε)·e_y + ε/C ("all"), or (1-ε) at y and ε/(C-1) elsewhere ("others")."""
  e_y = one_hot(labels, num_classes)
  if spread == "all":
    return (1 - epsilon) * e_y + epsilon / num_classes
  return (1 - epsilon) * e_y + epsilon * (1 - e_y) / (num_classes - 1)


def revise_beta(teacher_probs, labels, eta):
  """β = η / (max_c q_c - q_y + 1)."""
  q = _f64(teacher_probs)
  return eta / (np.max(q, axis=-1) - _take(q, labels) + 1)


def revise(teacher_probs, labels, eta):
  """q' = β·q + (1-β)·e_y."""
  q = _f64(teacher_probs)
  beta = revise_beta(q, labels, eta)[..., None]
  return beta * q + (1 - beta) * one_hot(labels, q.shape[-1])


def pt(teacher_probs, labels):
  """q_y at y, (1-q_y)/(C-1) elsewhere."""
  q = _f64(teacher_probs)
  c = q.shape[-1]
  q_y = _take(q, labels)[..., None]
  return np.where(_one_hot_mask(labels, c), q_y, (1 - q_y) / (c - 1))


def class_similarity(kernel, temperature):
  """ρ[y, j] = softmax_{j≠y}(cos(w_y, w_j) / τ) from kernel columns w; zero diagonal."""
  w = _f64(kernel)
  w = w / np.linalg.norm(w, axis=0, keepdims=True)
  cos = w.T @ w
  logits = np.where(np.eye(cos.shape[0], dtype=bool), -np.inf, cos / temperature)
  return np.exp(logits - logsumexp(logits, keepdims=True))


def sim(labels, similarity, epsilon):
  """(1-ε)·e_y + ε·ρ(y)."""
  s = _f64(similarity)
  return (1 - epsilon) * one_hot(labels, s.shape[-1]) + epsilon * s[np.asarray(labels)]


def pt_sim(teacher_probs, labels, similarity):
  """q_y at y, (1-q_y)·ρ(y) elsewhere."""
  q = _f64(teacher_probs)
  s = _f64(similarity)
  q_y = _take(q, labels)[..., None]
  return np.where(_one_hot_mask(labels, q.shape[-1]), q_y, (1 - q_y) * s[np.asarray(labels)])


def topk(teacher_probs, k):
  """Keep the k largest probabilities; spread 1 - Σ(top k) uniformly over the other C-k."""
  q = _f64(teacher_probs)
  c = q.shape[-1]
  order = np.argsort(-q, axis=-1, kind="stable")
  kept = np.zeros(q.shape, dtype=bool)
  np.put_along_axis(kept, order[..., :k], True, axis=-1)
  rest = (1 - np.sum(np.where(kept, q, 0.0), axis=-1, keepdims=True)) / (c - k)
  return np.where(kept, q, rest)


# ----------------------------------------------------------------- finite differences


def fd_grad(fn, x, h=1e-6):
  """Central differences of Σ fn(x) w.r.t. x [..., C] for a per-example fn.

  Per-example losses are independent across examples, so perturbing class c of every
  example at once gives d loss_b / d x[b, c] for all b in one call: C calls, not B·C.
  """
  x = _f64(x)
  c = x.shape[-1]
  eye = np.eye(c) * h                                   # [C, C]
  shape = (c,) + (1,) * (x.ndim - 1) + (c,)
  plus = fn(x[None] + eye.reshape(shape))               # [C, ...]
  minus = fn(x[None] - eye.reshape(shape))
  grad = (plus - minus) / (2 * h)                       # [C(perturbed), ...]
  return np.moveaxis(grad, 0, -1)


def dkd_to_targets(student_logits, targets, labels, alpha, beta, temperature):
  """`dkd` with the teacher given as its distribution q at temperature T.

  Any teacher logits with softmax(z_t / T) = q give the same DKD; z_t = T·log q is one
  (zeros in q become -inf logits, i.e. probability exactly 0).
  """
  with np.errstate(divide="ignore"):
    teacher_logits = temperature * np.log(_f64(targets))
  return dkd(student_logits, teacher_logits, labels, alpha, beta, temperature)


def assert_error_names(arg, value, call):
  """`call(value)` raises a ValueError whose message names `arg`, then the bad `value`."""
  import pytest  # pylint: disable=g-import-not-at-top
  shown = f"{value:g}" if isinstance(value, float) else str(value)
  with pytest.raises(ValueError, match=rf"{arg}[\s\S]*{shown}"):
    call(value)


# ------------------------------------------------------------------ methods (kd_jax.methods)


def confidence_penalty(logits, labels, beta):
  """Pereyra et al. (2017): CE(z, y) - β·H(p(z, 1))."""
  return cross_entropy(logits, labels) - beta * entropy(logits)


def tsd_weight(epoch, eta, warmup_epochs, schedule="linear"):
  """u(epoch): "linear" η·min(1, e/W) (η if W = 0); "constant" η; "step" 0 if e < W else η."""
  if schedule == "constant":
    return eta
  if schedule == "step":
    return 0.0 if epoch < warmup_epochs else eta
  return eta if warmup_epochs == 0 else eta * min(1.0, epoch / warmup_epochs)


def distill_to_target(student_logits, targets, temperature):
  """Tang et al.'s target variants and LS: H(q, p(z_s, 1)) at T = 1, else T²·KL(q || p(z_s, T))."""
  if temperature == 1:
    return soft_cross_entropy(student_logits, targets)
  return kl_to_targets(student_logits, targets, temperature)


def revise_where(teacher_probs, labels, eta, revise_rows):
  """q' = revise(q) on the rows where `revise_rows` is True, q itself on the others."""
  q = _f64(teacher_probs)
  return np.where(np.asarray(revise_rows)[..., None], revise(q, labels, eta), q)


def lr_mse_published(student_logits, teacher_logits, labels, eta=0.8, lambda1=4.0, lambda2=1.0,
                     ce_weight=1.0):
  """zju-SWJ/RLD `revision_loss` on a batch of rows, a scalar.

  Rows the teacher gets right (argmax z_t = y): mean over them of ce_weight·CE plus λ1 times
  the mean over (rows, classes) of (z_s - z_t)²; rows it gets wrong: λ2 times the mean over
  (rows, classes) of (softmax(z_s) - q')², q' = revise(softmax(z_t), y, η); an empty part 0.
  """
  zs, zt, y = _f64(student_logits), _f64(teacher_logits), np.asarray(labels)
  right = np.argmax(zt, axis=-1) == y
  total = 0.0
  if right.any():
    total += ce_weight * np.mean(cross_entropy(zs[right], y[right]))
    total += lambda1 * np.mean((zs[right] - zt[right]) ** 2)
  wrong = ~right
  if wrong.any():
    revised = revise(softmax(zt[wrong]), y[wrong], eta)
    total += lambda2 * np.mean((softmax(zs[wrong]) - revised) ** 2)
  return total


def lr_mse_batch_objective(student_logits, teacher_logits, labels, real, supervised, **kwargs):
  """What the trainer's masked mean must equal for the mse form with data selection:
  (1/N)·Σ_{real, unsupervised} CE + (|S|/N)·lr_mse_published(S), S = real & supervised."""
  zs, zt, y = _f64(student_logits), _f64(teacher_logits), np.asarray(labels)
  real = np.asarray(real, bool)
  s = real & np.asarray(supervised, bool)
  n = real.sum()
  rest = real & ~s
  out = cross_entropy(zs[rest], y[rest]).sum() / n if rest.any() else 0.0
  if s.any():
    out += s.sum() / n * lr_mse_published(zs[s], zt[s], y[s], **kwargs)
  return out


def with_bad_labels(labels, num_classes):
  """`(labels with entry 0 set to -1 and the last to C, bad mask)`: the out-of-range cases.

  Both are what plain indexing gets wrong: -1 reads class C-1 (negative indices wrap), C reads
  NaN or garbage.
  """
  bad_labels = np.array(labels, copy=True)
  bad_labels[0], bad_labels[-1] = -1, num_classes
  bad = np.zeros(bad_labels.shape, bool)
  bad[0] = bad[-1] = True
  return bad_labels, bad


def assert_bad_label_error(call, labels, num_classes):
  """`call(labels)` raises a ValueError naming the first bad label, its index and `[0, C)`."""
  import pytest  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels)
  index = int(np.argmax((labels < 0) | (labels >= num_classes)))
  pattern = rf"labels\[{index}\]={labels[index]} [\s\S]*\[0, {num_classes}\)"
  with pytest.raises(ValueError, match=pattern):
    call(labels)
