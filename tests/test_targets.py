"""Tests for `kd_jax.targets` against the float64 NumPy reference in numpy_reference.py.

Values over C = 2..1000, hypothesis properties (targets are distributions, Label Revision's
argmax and beta, top-k, class similarity), hand-worked cases, jit/vmap, stop_gradient on the
teacher and argument validation: out-of-range labels (eager ValueError; a NaN row when
traced, the other rows unchanged), shape mismatches, traced invalid eta/epsilon/temperature.
"""

import functools
import math
import re

import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from hypothesis import strategies as st

from kd_jax import losses, targets

SHAPES = [(4, 2), (3, 10), (2, 100), (2, 1000)]   # (B, C)
ETA, EPS, TAU, DIM = 0.8, 0.2, 0.5, 16


def _k(c):
  return max(1, min(5, c // 3))


# How to build each target from a module (`targets` or `ref`, same names and signatures)
# and an input dict; the same entry drives the implementation and the reference.
TARGETS = {
    "one_hot": lambda m, d: m.one_hot(d["y"], d["q"].shape[-1]),
    "smooth": lambda m, d: m.smooth(d["y"], d["q"].shape[-1], EPS),
    "smooth_others": lambda m, d: m.smooth(d["y"], d["q"].shape[-1], EPS, spread="others"),
    "revise": lambda m, d: m.revise(d["q"], d["y"], ETA),
    "pt": lambda m, d: m.pt(d["q"], d["y"]),
    "sim": lambda m, d: m.sim(d["y"], d["s"], EPS),
    "pt_sim": lambda m, d: m.pt_sim(d["q"], d["y"], d["s"]),
    "topk": lambda m, d: m.topk(d["q"], _k(d["q"].shape[-1])),
}
LABEL_TARGETS = ("one_hot", "smooth", "smooth_others", "revise", "pt", "sim", "pt_sim")


def _inputs(b, c, seed=0):
  """Labels, a teacher distribution q (with a one-hot row and a wrong-teacher row), a
  Dense kernel [D, C] and its reference class similarity s (float32)."""
  rng = np.random.default_rng([seed, b, c])
  y = rng.integers(0, c, size=b).astype(np.int32)
  q = ref.softmax(rng.normal(size=(b, c)) * 3.0)
  q[0] = ref.one_hot((y[0] + 1) % c, c)        # confidently wrong teacher (beta < eta)
  kernel = rng.normal(size=(DIM, c)).astype(np.float32)
  s = ref.class_similarity(kernel, TAU).astype(np.float32)
  return dict(y=y, q=q.astype(np.float32), kernel=kernel, s=s)


@jax.jit
def _all_targets(d):
  out = {name: fn(targets, d) for name, fn in TARGETS.items()}
  out["revision_beta"] = targets.revision_beta(d["q"], d["y"], ETA)
  out["class_similarity"] = targets.class_similarity(d["kernel"], TAU)
  return out


@pytest.mark.parametrize("b,c", SHAPES)
def test_values_match_reference(b, c):
  d = _inputs(b, c)
  out = jax.tree.map(np.asarray, _all_targets(d))
  expected = {name: fn(ref, d) for name, fn in TARGETS.items()}
  expected["revision_beta"] = ref.revise_beta(d["q"], d["y"], ETA)
  expected["class_similarity"] = ref.class_similarity(d["kernel"], TAU)
  for name, value in out.items():
    assert value.dtype == np.float32, name
    assert value.shape == expected[name].shape, name
    np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    if value.ndim == 2:   # every target (and every similarity row) is a distribution
      assert np.all(value >= 0), name
      np.testing.assert_allclose(value.sum(-1), 1.0, atol=1e-5, err_msg=name)
  assert out["revision_beta"][0] < ETA     # the wrong teacher's row
  np.testing.assert_array_equal(np.diag(out["class_similarity"]), 0.0)


# ------------------------------------------------------------------ hypothesis properties


def _distributions(c):
  """[4, C] teacher distributions with exact zeros, ties and one-hot rows allowed."""
  def normalise(x):
    x = x.astype(np.float64)
    x[x.sum(-1) == 0] = 1.0
    return (x / x.sum(-1, keepdims=True)).astype(np.float32)
  elements = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, width=32))
  return hnp.arrays(np.float32, (4, c), elements=elements).map(normalise)


@st.composite
def _teacher_case(draw):
  c = draw(st.sampled_from([2, 3, 10]))
  q = draw(_distributions(c))
  y = np.array(draw(st.lists(st.integers(0, c - 1), min_size=4, max_size=4)), np.int32)
  return q, y


@jax.jit
def _transforms(q, y, eta, epsilon, similarity):
  c = q.shape[-1]
  return dict(
      revise=targets.revise(q, y, eta), revision_beta=targets.revision_beta(q, y, eta),
      smooth=targets.smooth(y, c, epsilon), pt=targets.pt(q, y),
      smooth_others=targets.smooth(y, c, epsilon, spread="others"),
      sim=targets.sim(y, similarity, epsilon), pt_sim=targets.pt_sim(q, y, similarity))


def _similarity(c):
  return ref.class_similarity(np.random.default_rng(c).normal(size=(DIM, c)), TAU)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(case=_teacher_case(), eta=st.floats(1e-3, 0.999),
                  epsilon=st.floats(0.0, 1.0), correct=st.booleans())
@hypothesis.example(  # once failed: 1 - q'_y lost float32 digits to cancellation
    case=(np.array([[0.9846154, 0.00769231, 0.00769231]] + [[1 / 3] * 3] * 3, np.float32),
          np.zeros(4, np.int32)), eta=0.0078125, epsilon=0.0, correct=False)
def test_targets_are_distributions_and_revision_is_right(case, eta, epsilon, correct):
  q, y = case
  if correct:                                   # a teacher whose argmax is the label
    y = np.argmax(q, axis=-1).astype(np.int32)
  out = jax.tree.map(np.asarray, _transforms(q, y, eta, epsilon,
                                             _similarity(q.shape[-1]).astype(np.float32)))
  for name in ("revise", "smooth", "smooth_others", "pt", "sim", "pt_sim"):
    assert np.all(out[name] >= 0), name
    np.testing.assert_allclose(out[name].sum(-1), 1.0, atol=1e-5, err_msg=name)
  # The revised argmax is the label for any teacher: q'_y - q'_c >= 1 - eta > 0.
  revised = out["revise"]
  q_y = np.take_along_axis(revised, y[:, None], -1)
  others = np.where(np.arange(q.shape[-1]) == y[:, None], -np.inf, revised)
  assert np.all(q_y[:, 0] > others.max(-1)), (q, y, revised)
  # beta = eta / (max q - q_y + 1); eta exactly for a correct teacher, at most eta always.
  beta = out["revision_beta"]
  np.testing.assert_allclose(beta, ref.revise_beta(q, y, eta), rtol=1e-5)
  assert np.all(beta <= eta * (1 + 1e-6))
  if correct:
    np.testing.assert_allclose(beta, eta, rtol=1e-6)
  # Off the label q'_c = beta q_c, and the label gets the rest, (1 - beta) + beta q_y
  # (compared entry by entry: 1 - q'_y would lose float32 digits to cancellation).
  off_label = np.arange(q.shape[-1]) != y[:, None]
  np.testing.assert_allclose(np.where(off_label, revised, 0),
                             np.where(off_label, beta[:, None] * q, 0), rtol=1e-5, atol=1e-8)
  teacher_q_y = np.take_along_axis(q, y[:, None], -1)[:, 0]
  np.testing.assert_allclose(q_y[:, 0], 1 - beta + beta * teacher_q_y, rtol=1e-5)


@functools.partial(jax.jit, static_argnums=1)
def _topk(q, k):
  return targets.topk(q, k)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(q=_distributions(10), k=st.sampled_from([1, 3, 9]))
def test_topk_keeps_the_k_largest_and_flattens_the_rest(q, k):
  out = np.asarray(_topk(q, k))
  c = q.shape[-1]
  assert np.all(out >= 0)
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
  q_sorted, out_sorted = -np.sort(-q, -1), -np.sort(-out, -1)
  # The k largest values survive (the rest's mean never exceeds the k-th largest; with ties
  # at the k-th it can equal it, and 1 - sum(top k) carries an absolute float32 error of
  # ~1e-7, hence the tolerance).
  np.testing.assert_allclose(out_sorted[:, :k], q_sorted[:, :k], rtol=1e-6, atol=1e-6)
  # Entries strictly above the k-th largest stay in place, bit for bit.
  above = q > q_sorted[:, k - 1:k]
  np.testing.assert_array_equal(out[above], q[above])
  rest = (1 - q_sorted[:, :k].astype(np.float64).sum(-1, keepdims=True)) / (c - k)
  np.testing.assert_allclose(out_sorted[:, k:], np.broadcast_to(rest, (4, c - k)), atol=1e-6)


@jax.jit
def _class_similarity(kernel, temperature):
  return targets.class_similarity(kernel, temperature)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    kernel=hnp.arrays(np.float32, (4, 6), elements=st.floats(-10, 10, width=32)),
    temperature=st.floats(0.05, 10.0))
def test_class_similarity_rows_are_distributions(kernel, temperature):
  hypothesis.assume(np.all(np.linalg.norm(kernel, axis=0) > 1e-3))   # cos needs w != 0
  s = np.asarray(_class_similarity(kernel, temperature))
  np.testing.assert_array_equal(np.diag(s), 0.0)
  assert np.all(s >= 0)
  np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(s, ref.class_similarity(kernel, temperature), rtol=1e-4,
                             atol=1e-6)


# ---------------------------------------------------------------------- hand-worked


def test_one_hot_and_smooth_by_hand():
  np.testing.assert_array_equal(targets.one_hot(jnp.array([2, 0]), 3),
                                [[0, 0, 1], [1, 0, 0]])
  # C = 4, eps = 0.2: 0.2/4 = 0.05 everywhere, plus 0.8 at y -> 0.85.
  np.testing.assert_allclose(targets.smooth(jnp.array([1]), 4, 0.2),
                             [[0.05, 0.85, 0.05, 0.05]], rtol=1e-6)
  # spread="others": 0.8 at y, 0.2/3 on each of the 3 others.
  np.testing.assert_allclose(targets.smooth(jnp.array([1]), 4, 0.2, spread="others"),
                             [[0.2 / 3, 0.8, 0.2 / 3, 0.2 / 3]], rtol=1e-6)
  # eps = 0 is the one-hot label.
  np.testing.assert_array_equal(targets.smooth(jnp.array([3]), 4, 0.0), [[0, 0, 0, 1]])


def test_revise_by_hand():
  q = jnp.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
  # Wrong teacher, y = 1: beta = 0.8 / (0.6 - 0.3 + 1) = 8/13;
  # q' = 8/13 q + 5/13 e_1 = [4.8, 2.4 + 5, 0.8] / 13: argmax moves to the label.
  # Correct teacher, y = 0: beta = 0.8; q' = 0.8 q + 0.2 e_0 = [0.68, 0.24, 0.08].
  labels = jnp.array([1, 0])
  np.testing.assert_allclose(targets.revision_beta(q, labels, 0.8), [8 / 13, 0.8], rtol=1e-6)
  np.testing.assert_allclose(targets.revise(q, labels, 0.8),
                             [[4.8 / 13, 7.4 / 13, 0.8 / 13], [0.68, 0.24, 0.08]], rtol=1e-6)


def test_pt_by_hand():
  # q = [0.6, 0.3, 0.1], y = 1: keep 0.3, spread 0.7 over the 2 others -> 0.35 each.
  np.testing.assert_allclose(targets.pt(jnp.array([[0.6, 0.3, 0.1]]), jnp.array([1])),
                             [[0.35, 0.3, 0.35]], rtol=1e-6)


def test_class_similarity_sim_and_pt_sim_by_hand():
  # Columns w0 = (1, 0), w1 = (0, 1), w2 = (2, 0): cos(0,1) = 0, cos(0,2) = 1, cos(1,2) = 0.
  # tau = 1: row 0 = softmax over {1, 2} of [0, 1] = [1, e] / (1 + e); row 1 = [1/2, ., 1/2];
  # row 2 = softmax over {0, 1} of [1, 0] = [e, 1] / (1 + e).
  e = math.e
  expected = [[0, 1 / (1 + e), e / (1 + e)], [0.5, 0, 0.5], [e / (1 + e), 1 / (1 + e), 0]]
  s = targets.class_similarity(jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]), 1.0)
  np.testing.assert_allclose(s, expected, rtol=1e-6, atol=1e-7)
  # Scaling a column does not change cosines.
  s2 = targets.class_similarity(jnp.array([[5.0, 0.0, 2.0], [0.0, 0.1, 0.0]]), 1.0)
  np.testing.assert_allclose(s2, expected, rtol=1e-6, atol=1e-7)
  # KD-sim, y = 0, eps = 0.5: 0.5 e_0 + 0.5 rho(0).
  np.testing.assert_allclose(targets.sim(jnp.array([0]), s, 0.5),
                             [[0.5, 0.5 / (1 + e), 0.5 * e / (1 + e)]], rtol=1e-6)
  # KD-pt+sim, q = [0.6, 0.3, 0.1], y = 1: 0.3 at y, 0.7 * [1/2, 1/2] elsewhere.
  np.testing.assert_allclose(
      targets.pt_sim(jnp.array([[0.6, 0.3, 0.1]]), jnp.array([1]), s),
      [[0.35, 0.3, 0.35]], rtol=1e-6)


def test_topk_by_hand():
  # Keep 0.5 and 0.3; the remaining 0.2 goes to the 3 others, 0.2/3 each.
  q = jnp.array([[0.1, 0.5, 0.05, 0.3, 0.05]])
  r = 0.2 / 3
  np.testing.assert_allclose(targets.topk(q, 2), [[r, 0.5, r, 0.3, r]], rtol=1e-6)
  # k = C - 1 keeps all but the smallest, which receives exactly its own mass back.
  np.testing.assert_allclose(targets.topk(jnp.array([[0.2, 0.5, 0.3]]), 2), [[0.2, 0.5, 0.3]],
                             rtol=1e-6)
  # Top k holding all the mass: the others get 0, never a rounding-negative value (which
  # would make kl_to_targets nan). In float32 0.2 + 8 * 0.1 sums to 1 + 1.2e-7.
  q = np.array([[0.0, 0.2] + [0.1] * 8], np.float32)
  out = targets.topk(q, 9)
  assert np.all(np.asarray(out) >= 0), out
  assert np.isfinite(losses.kl_to_targets(jnp.zeros((1, 10)), out, 1.0)[0])


# ------------------------------------------------------------------- jit / vmap / grad


def test_vmap_matches_loop():
  n, b, c = 3, 2, 10
  ds = [_inputs(b, c, seed=i) for i in range(n)]
  # Labels, teacher probabilities and similarity get the leading axis; so does the kernel.
  stacked = {k: np.stack([d[k] for d in ds]) for k in ds[0]}
  vmapped = jax.jit(jax.vmap(_all_targets))(stacked)
  loop = [_all_targets(d) for d in ds]
  for name in vmapped:
    expected = np.stack([np.asarray(out[name]) for out in loop])
    np.testing.assert_allclose(vmapped[name], expected, rtol=1e-6, atol=1e-7, err_msg=name)


@jax.jit
def _teacher_grads(d, weights):
  def weighted(fn):
    return lambda x: jnp.sum(fn(x) * weights)
  y, s = d["y"], d["s"]
  return {
      "revise": jax.grad(weighted(lambda q: targets.revise(q, y, ETA)))(d["q"]),
      "pt": jax.grad(weighted(lambda q: targets.pt(q, y)))(d["q"]),
      "pt_sim": jax.grad(weighted(lambda q: targets.pt_sim(q, y, s)))(d["q"]),
      "topk": jax.grad(weighted(lambda q: targets.topk(q, 3)))(d["q"]),
      "class_similarity": jax.grad(
          lambda w: jnp.sum(targets.class_similarity(w, TAU)[y] * weights))(d["kernel"]),
  }


def test_teacher_inputs_get_no_gradient():
  d = _inputs(3, 10)
  weights = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
  for name, grad in _teacher_grads(d, weights).items():
    assert np.all(np.asarray(grad) == 0), name


# ------------------------------------------------------------------------- validation


def _bad_calls():
  y = jnp.zeros((2,), jnp.int32)
  q = jnp.full((2, 10), 0.1)
  s = jnp.full((10, 10), 1 / 9) * (1 - jnp.eye(10))
  kernel = jnp.ones((4, 10))
  return [
      ("eta", 0.0, lambda v: targets.revise(q, y, v)),
      ("eta", 1.0, lambda v: targets.revise(q, y, v)),
      ("eta", 1.5, lambda v: targets.revise(q, y, v)),
      ("eta", -0.2, lambda v: targets.revision_beta(q, y, v)),
      ("k", 0, lambda v: targets.topk(q, v)),
      ("k", 10, lambda v: targets.topk(q, v)),      # k = C leaves nothing to spread over
      ("k", -1, lambda v: targets.topk(q, v)),
      ("epsilon", -0.1, lambda v: targets.smooth(y, 10, v)),
      ("epsilon", 1.5, lambda v: targets.smooth(y, 10, v, spread="others")),
      ("epsilon", 2.0, lambda v: targets.sim(y, s, v)),
      ("temperature", 0.0, lambda v: targets.class_similarity(kernel, v)),
      ("temperature", -1.0, lambda v: targets.class_similarity(kernel, v)),
      ("spread", "bogus", lambda v: targets.smooth(y, 10, 0.1, spread=v)),
  ]


@pytest.mark.parametrize("arg,value,call", _bad_calls(),
                         ids=lambda x: x if isinstance(x, (str, int, float)) else "")
def test_invalid_arguments_raise(arg, value, call):
  ref.assert_error_names(arg, value, call)


# ------------------------------------------------------------ out-of-range labels


@pytest.mark.parametrize("name", LABEL_TARGETS + ("revision_beta",))
def test_bad_labels_raise_eagerly(name):
  d = _inputs(3, 10)
  call = (lambda d: targets.revision_beta(d["q"], d["y"], ETA)) if name == "revision_beta" \
      else functools.partial(TARGETS[name], targets)
  bad_y, _ = ref.with_bad_labels(d["y"], 10)
  ref.assert_bad_label_error(lambda y: call({**d, "y": y}), bad_y, 10)
  ref.assert_bad_label_error(lambda y: call({**d, "y": y}), np.array([0, 10, 3]), 10)
  with pytest.raises(ValueError, match=r"labels\.dtype=float32 .*integer"):
    call({**d, "y": d["y"].astype(np.float32)})


def test_bad_labels_give_nan_rows_under_jit():
  # The compiled function of test_values_match_reference (same shapes: no recompile), with
  # labels -1 and C in rows 0 and 2. Before, -1 was class C-1 and C an all-zero one-hot.
  d = _inputs(3, 10)
  clean = jax.tree.map(np.asarray, _all_targets(d))
  bad_y, bad = ref.with_bad_labels(d["y"], 10)
  out = jax.tree.map(np.asarray, _all_targets({**d, "y": bad_y}))
  for name in LABEL_TARGETS + ("revision_beta",):
    value = out[name]
    nan = np.isnan(value) if value.ndim == 1 else np.isnan(value).all(-1)
    np.testing.assert_array_equal(nan, bad, err_msg=name)
    assert not np.isnan(value[~bad]).any(), name
    np.testing.assert_array_equal(value[~bad], clean[name][~bad], err_msg=name)
  for name in ("topk", "class_similarity"):   # no labels
    np.testing.assert_array_equal(out[name], clean[name], err_msg=name)


@jax.jit
def _student_grads(zs, q, y, s):
  def total(zs):
    return jnp.sum(losses.kl_to_targets(zs, targets.revise(q, y, ETA), 1.0)
                   + losses.soft_cross_entropy(zs, targets.pt_sim(q, y, s))
                   + losses.soft_cross_entropy(zs, targets.smooth(y, q.shape[-1], EPS)))
  return jax.grad(total)(zs)


def test_bad_label_targets_leave_other_examples_gradients_unchanged():
  d = _inputs(3, 10)
  zs = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
  bad_y, bad = ref.with_bad_labels(d["y"], 10)
  got = np.asarray(_student_grads(zs, d["q"], bad_y, d["s"]))
  want = np.asarray(_student_grads(zs, d["q"], d["y"], d["s"]))
  assert np.isnan(got[bad]).all()   # the loss of a bad example is NaN, and so is its gradient
  np.testing.assert_array_equal(got[~bad], want[~bad])


# ------------------------------------------------------------------------- shapes


def _shape_mismatches():
  q = np.full((2, 10), 0.1, np.float32)
  y = np.zeros((2,), np.int32)
  s = np.full((10, 10), 1 / 9, np.float32) * (1 - np.eye(10, dtype=np.float32))
  return [
      ("revise", (2, 1), lambda: targets.revise(q, y[:, None], ETA)),
      ("revision_beta", (1,), lambda: targets.revision_beta(q, y[:1], ETA)),
      ("pt", (3,), lambda: targets.pt(q, np.zeros(3, np.int32))),
      ("pt_sim_labels", (2, 1), lambda: targets.pt_sim(q, y[:, None], s)),
      ("pt_sim_similarity", (9, 9), lambda: targets.pt_sim(q, y, s[:9, :9])),
      ("sim", (10, 9), lambda: targets.sim(y, s[:, :9], EPS)),
      ("class_similarity", (10,), lambda: targets.class_similarity(q[0], TAU)),
  ]


@pytest.mark.parametrize("name,shape,call", _shape_mismatches(),
                         ids=[c[0] for c in _shape_mismatches()])
def test_shape_mismatches_raise(name, shape, call):
  del name
  with pytest.raises(ValueError, match=re.escape(f"shape={shape}")):
    call()


# ---------------------------------------------------- traced eta, epsilon, temperature


@jax.jit
def _scalar_args(d, eta, epsilon, tau):
  y, q, s = d["y"], d["q"], d["s"]
  return dict(revise=targets.revise(q, y, eta), revision_beta=targets.revision_beta(q, y, eta),
              smooth=targets.smooth(y, q.shape[-1], epsilon),
              sim=targets.sim(y, s, epsilon), class_similarity=targets.class_similarity(
                  d["kernel"], tau))


def test_traced_invalid_scalars_give_nan():
  d = _inputs(3, 10)
  good = jax.tree.map(np.asarray, _scalar_args(d, ETA, EPS, TAU))
  clean = _all_targets(d)
  for name, value in good.items():
    np.testing.assert_allclose(value, clean[name], rtol=1e-6, err_msg=name)
  cases = {"revise": dict(eta=[0.0, 1.0, 1.5, math.nan]), "revision_beta": dict(eta=[1.0]),
           "smooth": dict(epsilon=[-0.1, 1.5, math.nan]), "sim": dict(epsilon=[2.0]),
           "class_similarity": dict(tau=[0.0, -1.0, math.inf])}
  for name, changes in cases.items():
    for arg, values in changes.items():
      for value in values:
        out = _scalar_args(d, **{"eta": ETA, "epsilon": EPS, "tau": TAU, arg: value})
        assert np.isnan(out[name]).all(), (name, arg, value)


@pytest.mark.parametrize("c", [2, 3, 10, 100, 1000])
def test_topk_ties_at_the_kth_value_keep_the_lowest_indices(c):
  """Rows of few distinct probabilities (ties at the k-th value go to the lowest index, as with
  lax.top_k) and rows of distinct ones, against the NumPy reference (stable sort)."""
  rng = np.random.default_rng(c)
  counts = rng.integers(1, 4, size=(6, c)).astype(np.float32)
  tied = counts / counts.sum(-1, keepdims=True)
  distinct = ref.softmax(rng.normal(size=(6, c)) * 3.0).astype(np.float32)
  for q in (tied, distinct):
    # (k = C - 1 leaves 1 - sum(top k) to float32 cancellation; the values test's tolerance.)
    for k in sorted({1, _k(c), min(16, c - 1)}):
      np.testing.assert_allclose(_topk(q, k), ref.topk(q, k), rtol=1e-5, atol=1e-6,
                                 err_msg=f"k={k}")
