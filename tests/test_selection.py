"""Tests for kd_jax.selection: influence scores against retraining, and subset selection.

Ground truth is independent of the module: a float64 NumPy softmax regression with a dense
Hessian, trained to convergence by Newton's method and retrained with example i removed or
down-weighted.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import threadpoolctl
from scipy.stats import spearmanr
from sklearn.datasets import load_digits

from kd_jax import selection

NUM_CLASSES = 10
L2 = 0.05


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _unflatten(theta, dim, classes=NUM_CLASSES):
  return theta[:dim * classes].reshape(dim, classes), theta[dim * classes:]


def _gradient_and_hessian(theta, x, y, weights, l2, classes=NUM_CLASSES):
  """Gradient and dense Hessian of `(1/N) sum_i w_i CE_i + (l2/2)||W||^2`, float64."""
  n, dim = x.shape
  kernel, bias = _unflatten(theta, dim, classes)
  probs = _softmax(x @ kernel + bias)
  residual = weights[:, None] * (probs - np.eye(classes)[y]) / n
  grad = np.concatenate([(x.T @ residual + l2 * kernel).ravel(), residual.sum(0)])
  curv = probs[:, :, None] * np.eye(classes) - probs[:, :, None] * probs[:, None, :]
  curv = (weights[:, None, None] * curv / n).reshape(n, classes ** 2)
  h_kk = (x.T @ (x[:, :, None] * curv[:, None, :]).reshape(n, -1)).reshape(
      dim, dim, classes, classes).transpose(0, 2, 1, 3).reshape(dim * classes, -1)
  h_kb = (x.T @ curv).reshape(dim * classes, classes)
  h_bb = curv.sum(0).reshape(classes, classes)
  hess = np.block([[h_kk + l2 * np.eye(dim * classes), h_kb], [h_kb.T, h_bb]])
  return grad, hess


def _null_projector(dim, classes=NUM_CLASSES):
  """`u u^T`, u the bias null direction of H (`H (0, 1_C) = 0`, bias unregularised).

  Every gradient here is orthogonal to u, so solving with `H + u u^T` gives the
  pseudo-inverse solution.
  """
  u = np.r_[np.zeros(dim * classes), np.ones(classes)] / np.sqrt(classes)
  return np.outer(u, u)


def _newton(theta, x, y, weights, l2):
  for _ in range(50):
    grad, hess = _gradient_and_hessian(theta, x, y, weights, l2)
    if np.abs(grad).max() < 1e-12:
      return theta
    theta = theta - np.linalg.solve(hess + _null_projector(x.shape[1]), grad)
  raise AssertionError("Newton did not converge")


def _mean_ce(theta, x, y):
  kernel, bias = _unflatten(theta, x.shape[1])
  probs = _softmax(x @ kernel + bias)
  return -np.mean(np.log(probs[np.arange(len(y)), y]))


@pytest.fixture(scope="module")
def digits():
  """300 training and 200 reference digits, standardized, and the converged classifier."""
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(x))
  x, y = x[order], y[order]
  x = x[:, x[:300].std(0) > 0]
  x = (x - x[:300].mean(0)) / x[:300].std(0)
  x_train, y_train, x_ref, y_ref = x[:300], y[:300], x[300:500], y[300:500]
  with threadpoolctl.threadpool_limits(1):
    theta = _newton(np.zeros(x.shape[1] * NUM_CLASSES + NUM_CLASSES), x_train, y_train,
                    np.ones(300), L2)
  kernel, bias = _unflatten(theta, x.shape[1])
  f32 = lambda a: a.astype(np.float32)
  problem = dict(features=f32(x_train), labels=y_train, kernel=f32(kernel), bias=f32(bias),
                 ref_features=f32(x_ref), ref_labels=y_ref)
  return problem, theta


def _measured_effects(digits, indices, removed_weight):
  """`R(theta_eps) - R(theta)` after retraining with w_i = 1 - removed_weight."""
  problem, theta = digits
  x, y = problem["features"].astype(np.float64), problem["labels"]
  x_ref, y_ref = problem["ref_features"].astype(np.float64), problem["ref_labels"]
  base = _mean_ce(theta, x_ref, y_ref)
  effects = []
  with threadpoolctl.threadpool_limits(1):
    for i in indices:
      weights = np.ones(len(y))
      weights[i] -= removed_weight
      effects.append(_mean_ce(_newton(theta, x, y, weights, L2), x_ref, y_ref) - base)
  return np.array(effects)


def test_influence_predicts_leave_one_out_retraining(digits):
  problem, _ = digits
  n = len(problem["labels"])
  indices = np.random.default_rng(1).choice(n, 50, replace=False)
  actual = _measured_effects(digits, indices, removed_weight=1.0)
  correlations = {}
  for hessian in selection.HESSIANS:
    scores = selection.influence_scores(**problem, l2=L2, hessian=hessian, damping=0.0)
    # Removing i is up-weighting by -1/N: the reference loss moves by +score_i / N.
    predicted = scores[indices] / n
    assert np.all(np.isfinite(predicted))
    correlations[hessian] = spearmanr(predicted, actual)[0]
    if hessian == "exact":
      exact_predicted = predicted
  print("Spearman(predicted, retrained) on digits:", correlations)
  assert correlations["exact"] >= 0.9
  # First order: removal is a finite step, so magnitudes agree only loosely (the largest
  # effects are underestimated); signs and the overall scale must match.
  assert np.mean(np.sign(exact_predicted) == np.sign(actual)) >= 0.9
  slope = np.dot(exact_predicted, actual) / np.dot(actual, actual)
  relative_error = np.linalg.norm(exact_predicted - actual) / np.linalg.norm(actual)
  print(f"exact: slope {slope:.3f}, relative error {relative_error:.3f}, sign agreement "
        f"{np.mean(np.sign(exact_predicted) == np.sign(actual)):.2f}")
  assert 0.5 < slope < 1.5
  assert relative_error < 0.5


def test_exact_influence_is_the_derivative_of_the_retrained_reference_loss(digits):
  problem, _ = digits
  n = len(problem["labels"])
  indices = np.random.default_rng(2).choice(n, 15, replace=False)
  delta = 1e-2  # w_i = 1 - delta, epsilon = -delta / N: the linear regime.
  actual = _measured_effects(digits, indices, removed_weight=delta)
  scores = selection.influence_scores(**problem, l2=L2, hessian="exact", damping=0.0)
  predicted = delta * scores[indices] / n
  np.testing.assert_allclose(predicted, actual, rtol=0.03, atol=1e-3 * np.abs(actual).max())


def _small_problem(seed=0, n=40, dim=5, classes=4, soft=False):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  if soft:
    y = _softmax(rng.normal(size=(n, classes)) * 2).astype(np.float32)
  else:
    y = rng.integers(0, classes, n)
  kernel = (rng.normal(size=(dim, classes)) * 0.5).astype(np.float32)
  bias = rng.normal(size=classes).astype(np.float32)
  return x, y, kernel, bias


@pytest.mark.parametrize("soft", [False, True])
def test_per_example_grads_match_closed_form(soft):
  x, y, kernel, bias = _small_problem(soft=soft)
  grad_kernel, grad_bias = jax.jit(selection.per_example_grads)(x, y, kernel, bias)
  probs = _softmax(x.astype(np.float64) @ kernel + bias)
  targets = y if soft else np.eye(kernel.shape[1])[y]
  residual = probs - targets
  np.testing.assert_allclose(grad_bias, residual, atol=1e-5)
  np.testing.assert_allclose(grad_kernel, x[:, :, None] * residual[:, None, :], atol=1e-5)


def test_identity_scores_are_gradient_dot_products():
  x, y, kernel, bias = _small_problem()
  scores = selection.influence_scores(x, y, kernel, bias, x[:10], y[:10], l2=0.1,
                                      hessian="identity")
  grad_kernel, grad_bias = selection.per_example_grads(x, y, kernel, bias)
  ref_kernel, ref_bias = selection.per_example_grads(x[:10], y[:10], kernel, bias)
  expected = (np.einsum("ndc,dc->n", grad_kernel, ref_kernel.mean(0))
              + grad_bias @ ref_bias.mean(0))
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def _dense_hessian(x, y, kernel, bias, l2):
  theta = np.concatenate([kernel.ravel(), bias]).astype(np.float64)
  return _gradient_and_hessian(theta, x.astype(np.float64), y, np.ones(len(y)), l2,
                               classes=kernel.shape[1])[1]


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_exact_and_diagonal_match_dense_solve(damping):
  x, y, kernel, bias = _small_problem(seed=3)
  l2 = 0.1
  hess = _dense_hessian(x, y, kernel, bias, l2) + damping * np.eye(kernel.size + bias.size)
  grad_kernel, grad_bias = selection.per_example_grads(x, y, kernel, bias)
  grads = np.concatenate([np.reshape(grad_kernel, (len(y), -1)), grad_bias], 1).astype(float)
  ref_grad = grads[:10].mean(0)
  null = _null_projector(x.shape[1], kernel.shape[1]) if damping == 0 else 0
  solve = np.linalg.solve(hess + null, ref_grad)
  exact = selection.influence_scores(x, y, kernel, bias, x[:10], y[:10], l2=l2,
                                     damping=damping, cg_tol=1e-7)
  np.testing.assert_allclose(exact, grads @ solve, rtol=2e-3, atol=1e-4 * np.abs(exact).max())
  diagonal = selection.influence_scores(x, y, kernel, bias, x[:10], y[:10], l2=l2,
                                        damping=damping + 1e-9, hessian="diagonal")
  expected = grads @ (ref_grad / np.diag(hess))
  np.testing.assert_allclose(diagonal, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_hessian_vector_product_matches_dense_hessian():
  x, y, kernel, bias = _small_problem(seed=4)
  rng = np.random.default_rng(5)
  vector = (rng.normal(size=kernel.shape), rng.normal(size=bias.shape))
  hv = selection.hessian_vector_product(x, y, kernel, bias, vector, l2=0.2, damping=0.1,
                                        chunk_size=7)
  hess = _dense_hessian(x, y, kernel, bias, 0.2) + 0.1 * np.eye(kernel.size + bias.size)
  expected = hess @ np.concatenate([vector[0].ravel(), vector[1]])
  np.testing.assert_allclose(np.concatenate([np.ravel(hv[0]), hv[1]]), expected, rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize("hessian", selection.HESSIANS)
def test_chunking_does_not_change_scores(hessian):
  x, y, kernel, bias = _small_problem(seed=6, n=50, soft=True)
  runs = [selection.influence_scores(x, y, kernel, bias, x[:13], y[:13], l2=0.1,
                                     hessian=hessian, chunk_size=size, cg_tol=1e-7)
          for size in (1, 7, 50, 1000)]
  for scores in runs[1:]:
    np.testing.assert_allclose(scores, runs[0], rtol=1e-4, atol=1e-6)
  # Device arrays give the same result as host NumPy arrays.
  on_device = selection.influence_scores(jnp.asarray(x), jnp.asarray(y), kernel, bias,
                                         jnp.asarray(x[:13]), jnp.asarray(y[:13]), l2=0.1,
                                         hessian=hessian, chunk_size=7, cg_tol=1e-7)
  np.testing.assert_allclose(on_device, runs[0], rtol=1e-4, atol=1e-6)
  assert runs[0].dtype == np.float32 and runs[0].shape == (50,)


def test_influence_scores_validation():
  x, y, kernel, bias = _small_problem()
  args = (x, y, kernel, bias, x[:5], y[:5])
  with pytest.raises(ValueError, match="hessian='lissa'.*exact"):
    selection.influence_scores(*args, l2=0.1, hessian="lissa")
  with pytest.raises(ValueError, match="l2=-1"):
    selection.influence_scores(*args, l2=-1.0)
  with pytest.raises(ValueError, match="damping"):
    selection.influence_scores(*args, l2=0.1, damping=-1.0)
  with pytest.raises(ValueError, match="chunk_size=0"):
    selection.influence_scores(*args, l2=0.1, chunk_size=0)
  with pytest.raises(ValueError, match="ref_features.shape"):
    selection.influence_scores(x, y, kernel, bias, x[:5, :3], y[:5], l2=0.1)
  with pytest.raises(ValueError, match=r"labels\[0\]=1[0-3] .*\[0, 4\)"):
    selection.influence_scores(x, y + 10, kernel, bias, x[:5], y[:5], l2=0.1)


def test_influence_label_checks():
  # Float [N] labels used to be one-hot encoded as all-zero targets (zero scores and a
  # warning); now they are refused. Out-of-range labels name the array, index and range.
  x, y, kernel, bias = _small_problem()
  with pytest.raises(ValueError, match=r"labels\.dtype=float32 .*integer"):
    selection.influence_scores(x, y.astype(np.float32), kernel, bias, x[:5], y[:5], l2=0.1)
  with pytest.raises(ValueError, match=r"ref_labels\.dtype=float64"):
    selection.influence_scores(x, y, kernel, bias, x[:5], y[:5] * 1.0, l2=0.1)
  bad = y.copy()
  bad[3] = -1
  with pytest.raises(ValueError, match=r"^ref_labels\[3\]=-1 .*\[0, 4\)"):
    selection.influence_scores(x, y, kernel, bias, x[:5], bad[:5], l2=0.1)
  with pytest.raises(ValueError, match=r"^labels\[3\]=-1 .*\[0, 4\)"):
    selection.example_scores(x, bad, kernel, bias, (kernel, bias))
  with pytest.raises(ValueError, match=r"^labels\[3\]=-1 .*\[0, 4\)"):
    selection.hessian_vector_product(x, bad, kernel, bias, (kernel, bias), l2=0.1)


def test_per_example_grads_bad_labels():
  # Eagerly a ValueError; traced, NaN gradients for exactly the bad example.
  x, y, kernel, bias = _small_problem(n=4)
  bad = y.copy()
  bad[2] = 4
  with pytest.raises(ValueError, match=r"labels\[2\]=4 .*\[0, 4\)"):
    selection.per_example_grads(x, bad, kernel, bias)
  grads = jax.jit(selection.per_example_grads)
  got, want = grads(x, bad, kernel, bias), grads(x, y, kernel, bias)
  for g, w in zip(got, want):
    g, w = np.asarray(g), np.asarray(w)
    assert np.isnan(g[2]).all()
    np.testing.assert_array_equal(np.delete(g, 2, 0), np.delete(w, 2, 0))


def test_select_counts_rounding_and_direction():
  scores = np.array([0.3, -1.0, 2.0, 0.5, 0.1])
  np.testing.assert_array_equal(selection.select(scores, 0.4), [0, 0, 1, 1, 0])
  np.testing.assert_array_equal(selection.select(scores, 0.4, higher_is_better=False),
                                [0, 1, 0, 0, 1])
  assert selection.select(scores, 0.5).sum() == 3  # 2.5 rounds half up.
  assert selection.select(scores, 0.09).sum() == 0  # 0.45 rounds down.
  assert selection.select(scores, 1.0).all()
  big = np.random.default_rng(0).normal(size=1001)
  for ratio in (0.1, 0.25, 0.5, 0.9):
    mask = selection.select(big, ratio)
    assert mask.dtype == bool and mask.sum() == int(np.floor(ratio * 1001 + 0.5))
    assert big[mask].min() >= big[~mask].max()
    np.testing.assert_array_equal(mask, selection.select(big.copy(), ratio))


def test_select_breaks_ties_by_index():
  scores = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
  np.testing.assert_array_equal(selection.select(scores, 0.5), [1, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(selection.select(scores, 0.5, higher_is_better=False),
                                [1, 1, 0, 0, 1, 0])


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01, 2])
def test_select_rejects_ratio(ratio):
  with pytest.raises(ValueError, match=f"ratio={ratio!r}"):
    selection.select(np.zeros(4), ratio)


def test_select_rejects_nan():
  with pytest.raises(ValueError, match="non-finite"):
    selection.select(np.array([0.0, np.nan]), 0.5)


def test_teacher_scores():
  logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 5.0]], np.float32)
  labels = np.array([0, 0, 2])
  np.testing.assert_array_equal(selection.teacher_correct_scores(logits, labels), [1, 0, 1])
  np.testing.assert_allclose(
      selection.teacher_margin_scores(logits, labels, space="logit", chunk_size=2),
      [1.0, -3.0, 4.0])
  probs = _softmax(logits.astype(np.float64))
  np.testing.assert_allclose(selection.teacher_margin_scores(logits, labels),
                             [probs[0, 0] - probs[0, 1], probs[1, 0] - probs[1, 1],
                              probs[2, 2] - probs[2, 0]], rtol=1e-6)
  huge = np.array([[1e4, -1e4, 0.0]], np.float32)
  assert np.isfinite(selection.teacher_margin_scores(huge, np.array([1]))).all()
  with pytest.raises(ValueError, match="space='rank'"):
    selection.teacher_margin_scores(logits, labels, space="rank")
  # Labels outside [0, C): -1 used to be read as class C-1 and C as "no class".
  for bad in (np.array([0, -1, 2]), np.array([0, 3, 1])):
    for scores in (selection.teacher_margin_scores, selection.teacher_correct_scores):
      with pytest.raises(ValueError, match=rf"labels\[1\]={bad[1]} .*\[0, 3\)"):
        scores(logits, bad)
  with pytest.raises(ValueError, match=r"labels\.dtype=float"):
    selection.teacher_margin_scores(logits, labels.astype(float))


def test_random_scores_are_seeded():
  np.testing.assert_array_equal(selection.random_scores(100, 3), selection.random_scores(100, 3))
  assert not np.array_equal(selection.random_scores(100, 3), selection.random_scores(100, 4))
  assert selection.random_scores(7, 0).dtype == np.float32


def test_criterion_scores_dispatch():
  logits = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
  labels = np.arange(20) % 5
  np.testing.assert_array_equal(
      selection.criterion_scores("teacher_margin", teacher_logits=logits, labels=labels),
      selection.teacher_margin_scores(logits, labels))
  np.testing.assert_array_equal(selection.criterion_scores("random", n=20, seed=1),
                                selection.random_scores(20, 1))
  x, y, kernel, bias = _small_problem()
  np.testing.assert_array_equal(
      selection.criterion_scores("influence", features=x, labels=y, kernel=kernel, bias=bias,
                                 ref_features=x, ref_labels=y, l2=0.1, hessian="identity"),
      selection.influence_scores(x, y, kernel, bias, x, y, l2=0.1, hessian="identity"))
  with pytest.raises(ValueError, match="criterion='loss'.*influence"):
    selection.criterion_scores("loss")
