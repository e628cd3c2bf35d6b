"""Edges of `kd_jax.losses`, `targets` and `selection`: arguments that must be distributions,
masked classes (teacher logits of -inf), fewer than 2 classes, empty batches, the selection
scores under jit, ties at the k-th value, logits of 1e4 in bfloat16, and the compiled
memory of the plain (no custom derivative rule) formulations.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import optax
import pytest

from kd_jax import losses, selection, targets

T = 4.0


def _batch(b=4, c=10, seed=0):
  rng = np.random.default_rng([seed, b, c])
  zs = (rng.normal(size=(b, c)) * 3).astype(np.float32)
  zt = (rng.normal(size=(b, c)) * 3).astype(np.float32)
  y = rng.integers(0, c, size=b).astype(np.int32)
  return zs, zt, y


# -------------------------------------------------------------- distributions are checked


def _distribution_calls(probs, y):
  zs = np.zeros(probs.shape, np.float32)
  return {
      "soft_cross_entropy": lambda: losses.soft_cross_entropy(zs, probs),
      "kl_to_targets": lambda: losses.kl_to_targets(zs, probs, T),
      "dkd_to_targets": lambda: losses.dkd_to_targets(zs, probs, y, 1.0, 8.0, T),
      "revise": lambda: targets.revise(probs, y, 0.8),
      "revision_beta": lambda: targets.revision_beta(probs, y, 0.8),
      "pt": lambda: targets.pt(probs, y),
      "pt_sim": lambda: targets.pt_sim(probs, y, np.full((10, 10), 1 / 9) * (1 - np.eye(10))),
      "topk": lambda: targets.topk(probs, 3),
  }


@pytest.mark.parametrize("name", list(_distribution_calls(np.zeros((1, 10)), [0])))
def test_logits_where_probabilities_belong_raise_eagerly(name):
  """Teacher logits passed as probabilities used to give negative "probabilities" (revise)
  or NaN (kl_to_targets) silently."""
  _, zt, y = _batch()
  argument = "teacher_probs" if name in ("revise", "revision_beta", "pt", "pt_sim",
                                         "topk") else "targets"
  with pytest.raises(ValueError, match=rf"^{argument} .*looks like logits"):
    _distribution_calls(zt, y)[name]()
  unnormalised = np.full((4, 10), 0.2, np.float32)     # in [0, 1], rows sum to 2
  with pytest.raises(ValueError, match=rf"^{argument}\[0\] sums to 2.*not look like logits"):
    _distribution_calls(unnormalised, y)[name]()


def test_rows_off_by_less_than_the_tolerance_pass_and_where_rows_are_not_checked():
  _, zt, y = _batch()
  q = np.asarray(jax.nn.softmax(zt), np.float64)
  q[0] *= 1 + 5e-4
  targets.revise(q, y, 0.8)
  losses.kl_to_targets(zt, q, T)
  q[1] = zt[1]                                           # a logit row, excluded by where
  where = np.array([True, False, True, True])
  np.testing.assert_array_equal(targets.revise(q, y, 0.8, where=where)[1], 0.0)
  with pytest.raises(ValueError, match="looks like logits"):
    targets.revise(q, y, 0.8)


def test_traced_non_distributions_give_nan_rows():
  """Under jit the check cannot raise: a logit row or a row summing to 2 is NaN (its gradient
  too, as for a target row of a bad label), the other rows' values and gradients are
  unchanged."""
  zs, zt, y = _batch()
  q = np.asarray(jax.nn.softmax(zt))
  bad = q.copy()
  bad[1], bad[3] = zt[1], 2 * q[3]

  @jax.jit
  def run(q):
    def loss(z):
      return losses.kl_to_targets(z, targets.revise(q, y, 0.8), T)
    def kept_total(z):
      value = loss(z)
      return jnp.sum(jnp.where(jnp.isnan(value), 0.0, value))
    return loss(zs), jax.grad(kept_total)(zs)

  clean, clean_grad = (np.asarray(x) for x in run(q))
  out, grad = (np.asarray(x) for x in run(bad))
  np.testing.assert_array_equal(np.isnan(out), [False, True, False, True])
  np.testing.assert_allclose(out[[0, 2]], clean[[0, 2]], rtol=1e-6)
  np.testing.assert_allclose(grad[[0, 2]], clean_grad[[0, 2]], rtol=1e-6)
  assert np.all(np.isfinite(grad[[0, 2]]))


# ------------------------------------------------------------------------ masked classes


def test_minus_inf_teacher_logits_give_the_finite_divergence():
  """A teacher logit of -inf (a masked class) is a probability of 0: kd and dkd are finite
  (they were NaN) and equal the float64 reference; so are the targets built from it."""
  zs, zt, y = _batch(c=10)
  zt = zt.copy()
  zt[:, [2, 7]] = -np.inf
  y = np.where(np.isin(y, [2, 7]), 0, y).astype(np.int32)
  zt[3, :] = -np.inf
  zt[3, y[3]] = 1.0          # every class but the label masked: no non-target distribution
  q = np.asarray(jax.nn.softmax(zt / T))
  cases = {
      "kd": (lambda z: losses.kd(z, zt, T), ref.kd(zs, zt, T)),
      "dkd": (lambda z: losses.dkd(z, zt, y, 1.0, 8.0, T), ref.tckd(zs, zt, y, T)
              + 8.0 * np.where(np.arange(4) == 3, 0.0, ref.nckd(zs, zt, y, T))),
      "kl_to_targets": (lambda z: losses.kl_to_targets(z, q, T), ref.kl_to_targets(zs, q, T)),
      "revise": (lambda z: losses.kl_to_targets(z, targets.revise(q, y, 0.8), T),
                 ref.kl_to_targets(zs, ref.revise(q, y, 0.8), T)),
      "topk": (lambda z: losses.soft_cross_entropy(z, targets.topk(q, 3)),
               ref.soft_cross_entropy(zs, ref.topk(q, 3))),
      "pt": (lambda z: losses.soft_cross_entropy(z, targets.pt(q, y)),
             ref.soft_cross_entropy(zs, ref.pt(q, y))),
  }
  for name, (loss, expected) in cases.items():
    per_example = np.asarray(jax.jit(loss)(zs))
    grad = np.asarray(jax.jit(jax.grad(lambda z, f=loss: jnp.sum(f(z))))(zs))
    assert np.all(np.isfinite(per_example)) and np.all(np.isfinite(grad)), name
    np.testing.assert_allclose(per_example, expected, rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------- fewer than 2 classes


@pytest.mark.parametrize("name,call", [
    ("dkd", lambda z, y: losses.dkd(z, z, y, 1.0, 8.0, T)),
    ("dkd_to_targets", lambda z, y: losses.dkd_to_targets(z, jnp.ones_like(z), y, 1.0, 8.0, T)),
    ("label_smoothing others", lambda z, y: losses.label_smoothing_cross_entropy(
        z, y, 0.1, "others")),
    ("tsd", lambda z, y: losses.tsd(z, 1)),
    ("smooth others", lambda z, y: targets.smooth(y, 1, 0.1, "others")),
    ("pt", lambda z, y: targets.pt(jnp.ones_like(z), y)),
    ("pt_sim", lambda z, y: targets.pt_sim(jnp.ones_like(z), y, jnp.zeros((1, 1)))),
    ("sim", lambda z, y: targets.sim(y, jnp.zeros((1, 1)), 0.1)),
    ("class_similarity", lambda z, y: targets.class_similarity(jnp.ones((4, 1)), 1.0)),
    ("topk", lambda z, y: targets.topk(jnp.ones_like(z), 1)),
])
def test_one_class_raises_where_two_are_needed(name, call):
  """C = 1 used to give NaN silently (dkd, pt, sim, smoothing over the other classes)."""
  with pytest.raises(ValueError, match=r"shape\[-1\]=1 .*at least 2 classes|num_classes=1 "):
    call(jnp.zeros((3, 1)), jnp.zeros(3, jnp.int32))


# ----------------------------------------------------------------------------- empty batches


def test_empty_batches_give_empty_results():
  z, y = np.zeros((0, 5), np.float32), np.zeros(0, np.int32)
  for value in (losses.cross_entropy(z, y), losses.kd(z, z, T), losses.entropy(z),
                losses.dkd(z, z, y, 1.0, 8.0, T), losses.tsd(z, 2),
                losses.kl_to_targets(z, z, T)):
    assert value.shape == (0,)
  assert targets.revise(z, y, 0.8).shape == (0, 5) and targets.topk(z, 2).shape == (0, 5)
  for scores in (selection.teacher_margin_scores(z, y), selection.teacher_correct_scores(z, y),
                 selection.random_scores(0, 1)):
    assert scores.shape == (0,)
  features, kernel, bias = np.zeros((0, 3), np.float32), np.ones((3, 5)), np.zeros(5)
  ref_x, ref_y = np.ones((2, 3), np.float32), np.array([0, 1])
  assert selection.influence_scores(features, y, kernel, bias, ref_x, ref_y, l2=0.1).shape == (0,)
  assert selection.select(np.zeros(0), 0.5).shape == (0,)


# -------------------------------------------------------------- selection scores under jit


def test_selection_scores_under_jit_give_nan_for_bad_labels():
  """The README's rule: under jit a bad label makes that example's score NaN (they raised)."""
  _, zt, y = _batch(b=5)
  bad = y.copy()
  bad[1], bad[4] = -1, 10
  for name, score in (("margin", selection.teacher_margin_scores),
                      ("correct", selection.teacher_correct_scores)):
    eager = np.asarray(score(zt, y))
    jitted = np.asarray(jax.jit(score)(zt, bad))
    np.testing.assert_array_equal(np.isnan(jitted), [False, True, False, False, True], name)
    np.testing.assert_allclose(jitted[[0, 2, 3]], eager[[0, 2, 3]], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(jax.vmap(score)(zt, y), eager, rtol=1e-6, err_msg=name)
  x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  kernel, bias = np.ones((3, 10), np.float32), np.zeros(10, np.float32)
  direction = (np.eye(3, 10, dtype=np.float32), np.zeros(10, np.float32))
  eager = np.asarray(selection.example_scores(x, y, kernel, bias, direction))
  jitted = np.asarray(jax.jit(selection.example_scores)(x, bad, kernel, bias, direction))
  np.testing.assert_array_equal(np.isnan(jitted), [False, True, False, False, True])
  np.testing.assert_allclose(jitted[[0, 2, 3]], eager[[0, 2, 3]], rtol=1e-6)
  with pytest.raises(TypeError, match="solves on the host"):
    jax.jit(lambda x: selection.influence_scores(x, y, kernel, bias, x, y, l2=0.1))(x)


# --------------------------------------------------------------------- ties at the k-th value


def _tied_rows(b, c, seed):
  """Rows of a few distinct values (ties everywhere, at the k-th value too) and one row of
  distinct values."""
  rng = np.random.default_rng([seed, b, c])
  x = rng.integers(0, 4, size=(b, c)).astype(np.float32)
  x[0] = rng.permutation(c).astype(np.float32)
  return x


@pytest.mark.parametrize("c", [2, 100])
def test_tsd_ties_pick_the_lowest_index(c):
  """TSD's classes are lax.top_k's (ties at the k-th value to the lowest index): value and
  gradient equal TSD built from a stable descending argsort of p."""
  k = min(5, c - 1)
  z = _tied_rows(5, c, 2)
  y = jnp.asarray(np.arange(5) % c, jnp.int32)

  p0 = np.asarray(jax.nn.softmax(z))
  first = np.argsort(-p0, axis=-1, kind="stable")[:, :k + 1]

  def sorted_tsd(z, labels):
    p = jax.nn.softmax(z)
    if labels is None:
      ranked = jnp.take_along_axis(p, first, -1)
      return ranked[:, 0] - ranked[:, 1:].mean(-1)
    rows = np.where(np.arange(c) == np.asarray(labels)[:, None], -1.0, p0)
    others = np.argsort(-rows, axis=-1, kind="stable")[:, :k]
    return p[np.arange(5), labels] - jnp.take_along_axis(p, others, -1).mean(-1)

  for labels in (None, y):
    ours = jax.jit(jax.value_and_grad(lambda z, l=labels: losses.tsd(z, k, labels=l).sum()))(z)
    want = jax.value_and_grad(lambda z, l=labels: sorted_tsd(z, l).sum())(z)
    np.testing.assert_allclose(ours[0], want[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours[1], want[1], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------- numerics: logits of 1e4 in bfloat16


def test_bfloat16_logits_of_1e4_give_finite_values_and_gradients():
  zs, zt, y = _batch(b=3, c=50, seed=7)
  zs, zt = (jnp.asarray(x * 3e3, jnp.bfloat16) for x in (zs, zt))
  q = jax.nn.softmax(zt.astype(jnp.float32) / T)
  cases = {
      "cross_entropy": lambda z: losses.cross_entropy(z, y),
      "soft_cross_entropy": lambda z: losses.soft_cross_entropy(z, q),
      "kd": lambda z: losses.kd(z, zt, T), "kl_to_targets": lambda z: losses.kl_to_targets(z, q, T),
      "entropy": losses.entropy, "tsd": lambda z: losses.tsd(z, 5),
      "dkd": lambda z: losses.dkd(z, zt, y, 1.0, 8.0, T),
      "dkd_to_targets": lambda z: losses.dkd_to_targets(z, q, y, 1.0, 8.0, T),
      "label_smoothing": lambda z: losses.label_smoothing_cross_entropy(z, y, 0.1),
  }
  results = jax.jit(lambda z: {name: jax.value_and_grad(lambda z, f=f: jnp.sum(f(z)))(z)
                               for name, f in cases.items()})(zs)
  for name, (value, grad) in results.items():
    assert np.isfinite(value), name
    assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32))), name


# --------------------------------------------- memory: no custom derivative rule needed


def _temp_bytes(fn, *shapes):
  args = [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
  compiled = jax.jit(jax.value_and_grad(fn)).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_compiled_memory_is_at_most_the_plain_optax_versions():
  """The value-and-grad's temporary memory of the plain formulations here (no custom JVP) is
  at most that of the same losses written with jax.nn/optax (the measured [8, 1024, 32000]
  figures are in experiments/results/bench/losses/one_implementation.md)."""
  shape, labels = (2, 64, 4000), (2, 64)
  logits = (shape, jnp.float32)

  def plain_kd(z, t):
    log_p, q = jax.nn.log_softmax(z / T), jax.nn.softmax(jax.lax.stop_gradient(t) / T)
    return jnp.mean(T * T * optax.kl_divergence(log_p, q))

  ours = {
      "kd": _temp_bytes(lambda z, t: jnp.mean(losses.kd(z, t, T)), logits, logits),
      "entropy": _temp_bytes(lambda z: jnp.mean(losses.entropy(z)), logits),
      "cross_entropy": _temp_bytes(lambda z, y: jnp.mean(losses.cross_entropy(z, y)), logits,
                                   (labels, jnp.int32)),
  }
  plain = {
      "kd": _temp_bytes(plain_kd, logits, logits),
      "entropy": _temp_bytes(lambda z: jnp.mean(-jnp.sum(
          jax.nn.softmax(z) * jax.nn.log_softmax(z), -1)), logits),
      "cross_entropy": _temp_bytes(lambda z, y: jnp.mean(
          optax.softmax_cross_entropy_with_integer_labels(z, y)), logits, (labels, jnp.int32)),
  }
  one_array = np.prod(shape) * 4
  for name, used in ours.items():   # (up to a few [B, T] vectors; no extra [B, T, C] array)
    assert used <= plain[name] + one_array // 8, (name, used, plain[name])
