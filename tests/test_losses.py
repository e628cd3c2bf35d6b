"""Tests for `kd_jax.losses` against the float64 NumPy reference in numpy_reference.py.

Values and gradients (central differences) over C = 2..1000, hand-worked cases, jit/vmap,
bfloat16 inputs, logits of magnitude 1e4, stop_gradient on the teacher and argument
validation: out-of-range labels (eager ValueError; NaN for that example when traced, the
others unchanged), shape mismatches, traced invalid temperatures. pmap / shard_map are in
test_losses_parallel.py.
"""

import functools
import math
import re

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from hypothesis import strategies as st
from jax.experimental import checkify

from kd_jax import losses

T = 4.0            # the CIFAR protocol's temperature; a power of 2, so z / T is exact
ALPHA, BETA = 1.0, 8.0
SHAPES = [(4, 2), (3, 10), (2, 100), (2, 1000)]   # (B, C)


def _num_secondary(c):
  return min(5, c - 1)


# How to call each loss from a module (`losses` or `ref`, which mirrors the API's names and
# signatures) and an input dict; the same entry drives the implementation and the reference.
LOSSES = {
    "cross_entropy": lambda m, d: m.cross_entropy(d["zs"], d["y"]),
    "soft_cross_entropy": lambda m, d: m.soft_cross_entropy(d["zs"], d["q"]),
    "kd": lambda m, d: m.kd(d["zs"], d["zt"], T),
    "kl_to_targets": lambda m, d: m.kl_to_targets(d["zs"], d["q"], 2.0),
    "tsd": lambda m, d: m.tsd(d["zs"], num_secondary=_num_secondary(d["zs"].shape[-1])),
    "tsd_label_primary": lambda m, d: (
        m.tsd(d["zs"], _num_secondary(d["zs"].shape[-1]), labels=d["y"]) if m is losses
        else m.tsd_label_primary(d["zs"], d["y"], _num_secondary(d["zs"].shape[-1]))),
    "entropy": lambda m, d: m.entropy(d["zs"]),
    "dkd": lambda m, d: m.dkd(d["zs"], d["zt"], d["y"], ALPHA, BETA, T),
    "dkd_to_targets": lambda m, d: m.dkd_to_targets(d["zs"], d["qt"], d["y"], ALPHA, BETA, T),
}
LABEL_LOSSES = ("cross_entropy", "tsd_label_primary", "dkd", "dkd_to_targets")


def _inputs(b, c, scale=3.0, seed=0):
  """Random float32 student/teacher logits, int32 labels and two kinds of targets.

  `q` is a random distribution whose first row is one-hot (exact zeros: 0 log 0 = 0);
  `qt` is the teacher's distribution at temperature T (for dkd_to_targets).
  """
  rng = np.random.default_rng([seed, b, c])
  zs = (rng.normal(size=(b, c)) * scale).astype(np.float32)
  zt = (rng.normal(size=(b, c)) * scale).astype(np.float32)
  y = rng.integers(0, c, size=b).astype(np.int32)
  q = ref.softmax(rng.normal(size=(b, c)) * 2.0)
  q[0] = ref.one_hot(y[0], c)
  qt = ref.softmax(zt, T)
  return dict(zs=zs, zt=zt, y=y, q=q.astype(np.float32), qt=qt.astype(np.float32))


def _with(d, **changes):
  return {**d, **changes}


@jax.jit
def _values_and_grads(d):
  """{loss: (per-example values, d Σ values / d zs)} for every loss in one compiled call.

  Compiling all losses together once per input shape is several times faster than one
  compile per loss (compilation dominates the run time of these tests).
  """
  out = {}
  for name, fn in LOSSES.items():
    def total(zs, fn=fn):
      values = fn(losses, _with(d, zs=zs))
      return values.sum(), values
    (_, values), grad = jax.value_and_grad(total, has_aux=True)(d["zs"])
    out[name] = (values, grad)
  return out


@functools.cache
def _run(b, c):
  d = _inputs(b, c)
  return d, jax.tree.map(np.asarray, _values_and_grads(d))


@pytest.mark.parametrize("b,c", SHAPES)
def test_values_match_reference(b, c):
  d, results = _run(b, c)
  for name, (values, _) in results.items():
    assert values.shape == (b,), name
    assert values.dtype == np.float32, name
    np.testing.assert_allclose(values, LOSSES[name](ref, d), rtol=1e-5, atol=1e-6,
                               err_msg=name)


@pytest.mark.parametrize("b,c", SHAPES)
def test_grad_matches_finite_differences(b, c):
  # jax.grad in float32 vs central differences of the float64 reference at the same point.
  d, results = _run(b, c)
  for name, (_, grad) in results.items():
    fd = ref.fd_grad(lambda zs, name=name: LOSSES[name](ref, _with(d, zs=zs)), d["zs"])
    assert grad.shape == (b, c), name
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(fd).max()),
                               err_msg=name)


def test_log_softmax_matches_reference():
  d = _inputs(3, 100)
  np.testing.assert_allclose(losses.log_softmax(d["zs"], T), ref.log_softmax(d["zs"], T),
                             rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- hand-worked cases


def test_cross_entropy_by_hand():
  # logits [0, log 3] -> p = [1/4, 3/4]: CE(y=1) = log(4/3), CE(y=0) = log 4.
  logits = jnp.array([[0.0, math.log(3)], [0.0, math.log(3)]])
  np.testing.assert_allclose(losses.cross_entropy(logits, jnp.array([1, 0])),
                             [math.log(4 / 3), math.log(4)], rtol=1e-6)


def test_soft_cross_entropy_by_hand():
  # p = [1/4, 3/4], q = [1/2, 1/2]: H = -(1/2 log 1/4 + 1/2 log 3/4) = log 4 - (1/2) log 3.
  out = losses.soft_cross_entropy(jnp.array([[0.0, math.log(3)]]), jnp.array([[0.5, 0.5]]))
  np.testing.assert_allclose(out, [math.log(4) - 0.5 * math.log(3)], rtol=1e-6)


def test_kd_by_hand():
  # T = 2, student [0, 2 log 3] -> p(z_s, 2) = [1/4, 3/4]; teacher [0, 0] -> [1/2, 1/2].
  # KL = 1/2 log(1/2 / 1/4) + 1/2 log(1/2 / 3/4) = 1/2 log(4/3); times T^2 = 4: 2 log(4/3).
  student = jnp.array([[0.0, 2 * math.log(3)]])
  out = losses.kd(student, jnp.zeros((1, 2)), 2.0)
  np.testing.assert_allclose(out, [2 * math.log(4 / 3)], rtol=1e-6)
  # Identical teacher and student: 0.
  np.testing.assert_allclose(losses.kd(student, student, 2.0), [0.0], atol=1e-7)


def test_kl_to_targets_by_hand():
  # T = 2, p(z_s, 2) = [1/4, 3/4], q = [1, 0]: KL = 1 · log(1 / (1/4)) + 0 log 0 = log 4;
  # times T^2 = 4: 4 log 4. The 0 log 0 term must be 0, not nan.
  out = losses.kl_to_targets(jnp.array([[0.0, 2 * math.log(3)]]), jnp.array([[1.0, 0.0]]), 2.0)
  np.testing.assert_allclose(out, [4 * math.log(4)], rtol=1e-6)


def test_tsd_by_hand():
  # logits log [4, 2, 1, 1] -> p = [1/2, 1/4, 1/8, 1/8] (already sorted).
  # K=1: 1/2 - 1/4 = 1/4. K=2: 1/2 - (1/4 + 1/8)/2 = 5/16. K=3: 1/2 - (1/2)/3 = 1/3.
  logits = jnp.log(jnp.array([[4.0, 2.0, 1.0, 1.0]]))
  for k, expected in [(1, 0.25), (2, 5 / 16), (3, 1 / 3)]:
    np.testing.assert_allclose(losses.tsd(logits, num_secondary=k), [expected], rtol=1e-6)
  # Order of the classes does not matter; the default K = 5 needs C >= 6.
  shuffled = jnp.log(jnp.array([[1.0, 1.0, 2.0, 4.0]]))
  np.testing.assert_allclose(losses.tsd(shuffled, num_secondary=2), [5 / 16], rtol=1e-6)
  # Uniform p: every score equal, TSD = 0.
  np.testing.assert_allclose(losses.tsd(jnp.zeros((1, 8))), [0.0], atol=1e-7)


def test_tsd_label_primary_and_entropy_by_hand():
  # p = [1/2, 1/4, 1/8, 1/8], label 1: primary 1/4, K=2 secondary = the largest others
  # {1/2, 1/8}: 1/4 - 5/16 = -1/16 (negative: the model prefers another class).
  logits = jnp.log(jnp.array([[4.0, 2.0, 1.0, 1.0]]))
  np.testing.assert_allclose(losses.tsd(logits, 2, labels=jnp.array([1])), [-1 / 16], rtol=1e-6)
  # With the label on the argmax, the label primary equals the argmax primary.
  np.testing.assert_allclose(losses.tsd(logits, 2, labels=jnp.array([0])),
                             losses.tsd(logits, 2), rtol=1e-6)
  # H([1/2, 1/4, 1/8, 1/8]) = 1/2 log 2 + 1/4 log 4 + 2/8 log 8 = 7/4 log 2.
  np.testing.assert_allclose(losses.entropy(logits), [1.75 * math.log(2)], rtol=1e-6)
  np.testing.assert_allclose(losses.entropy(jnp.zeros((1, 8))), [math.log(8)], rtol=1e-6)


def test_dkd_by_hand():
  # C = 3, y = 0, T = 1. Student log [2, 1, 1] -> p_s = [1/2, 1/4, 1/4];
  # teacher log [1, 1, 2] -> p_t = [1/4, 1/4, 1/2].
  # TCKD: binary teacher [1/4, 3/4] vs student [1/2, 1/2]:
  #   1/4 log(1/2) + 3/4 log(3/2).
  # NCKD: non-targets renormalised, teacher [1/3, 2/3] vs student [1/2, 1/2]:
  #   1/3 log(2/3) + 2/3 log(4/3).
  tckd = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
  nckd = math.log(2 / 3) / 3 + 2 / 3 * math.log(4 / 3)
  student = jnp.log(jnp.array([[2.0, 1.0, 1.0]]))
  teacher = jnp.log(jnp.array([[1.0, 1.0, 2.0]]))
  labels = jnp.array([0])
  np.testing.assert_allclose(losses.dkd(student, teacher, labels, 1.0, 0.0, 1.0), [tckd],
                             rtol=1e-6)
  np.testing.assert_allclose(losses.dkd(student, teacher, labels, 0.0, 1.0, 1.0), [nckd],
                             rtol=1e-6)
  np.testing.assert_allclose(losses.dkd(student, teacher, labels, 1.0, 8.0, 1.0),
                             [tckd + 8 * nckd], rtol=1e-6)
  # T = 2 with logits doubled gives the same distributions, times T^2 = 4.
  np.testing.assert_allclose(losses.dkd(2 * student, 2 * teacher, labels, 1.0, 8.0, 2.0),
                             [4 * (tckd + 8 * nckd)], rtol=1e-6)
  # The same teacher given as its distribution.
  np.testing.assert_allclose(
      losses.dkd_to_targets(student, jnp.array([[0.25, 0.25, 0.5]]), labels, 1.0, 8.0, 1.0),
      [tckd + 8 * nckd], rtol=1e-6)


def test_dkd_binary_has_no_nckd():
  # With C = 2 there is one non-target class, so NCKD = 0 and DKD = alpha * TCKD, and the
  # binary KL is then the full KL: dkd(alpha=1) == kd.
  d = _inputs(4, 2)

  @jax.jit
  def nckd_only_dkd_and_kd(zs, zt, y):
    return dkd_fn(zs, zt, y, 0.0, 5.0), dkd_fn(zs, zt, y, 1.0, 5.0), losses.kd(zs, zt, T)

  dkd_fn = lambda zs, zt, y, a, b: losses.dkd(zs, zt, y, a, b, T)
  nckd_only, dkd, kd = nckd_only_dkd_and_kd(d["zs"], d["zt"], d["y"])
  np.testing.assert_allclose(nckd_only, 0.0, atol=1e-6)
  np.testing.assert_allclose(dkd, kd, rtol=1e-5, atol=1e-6)


@jax.jit
def _divergences(d):
  zs, zt, y, q = d["zs"], d["zt"], d["y"], d["q"]
  return dict(kd=losses.kd(zs, zt, T), dkd=losses.dkd(zs, zt, y, 1.0, 1.0, T),
              kl_to_targets=losses.kl_to_targets(zs, q, T), kd_self=losses.kd(zs, zs, T),
              dkd_self=losses.dkd(zs, zs, y, 1.0, 1.0, T), tsd=losses.tsd(zs))


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.0, 30.0))
def test_divergences_are_non_negative_and_zero_on_self(seed, scale):
  out = jax.tree.map(np.asarray, _divergences(_inputs(4, 10, scale, seed)))
  for name in ("kd", "dkd", "kl_to_targets"):
    assert np.all(out[name] >= -1e-5), name
  np.testing.assert_allclose(out["kd_self"], 0.0, atol=1e-5)
  np.testing.assert_allclose(out["dkd_self"], 0.0, atol=1e-5)
  assert np.all((out["tsd"] >= 0) & (out["tsd"] <= 1 + 1e-6))  # p_(1) >= p_(k), p_(1) <= 1


# ------------------------------------------------------------------ teacher gradients


@jax.jit
def _teacher_grads(d):
  zs, y = d["zs"], d["y"]
  return {
      "kd": jax.grad(lambda t: losses.kd(zs, t, T).sum())(d["zt"]),
      "dkd": jax.grad(lambda t: losses.dkd(zs, t, y, ALPHA, BETA, T).sum())(d["zt"]),
      "soft_cross_entropy": jax.grad(lambda t: losses.soft_cross_entropy(zs, t).sum())(d["q"]),
      "kl_to_targets": jax.grad(lambda t: losses.kl_to_targets(zs, t, T).sum())(d["q"]),
      "dkd_to_targets": jax.grad(
          lambda t: losses.dkd_to_targets(zs, t, y, ALPHA, BETA, T).sum())(d["qt"]),
  }


def test_teacher_inputs_get_no_gradient():
  for name, grad in _teacher_grads(_inputs(3, 10)).items():
    assert np.all(np.asarray(grad) == 0), name


# ------------------------------------------------------------------------- jit / vmap


def _all_values(d):
  return {name: fn(losses, d) for name, fn in LOSSES.items()}


def test_jit_and_vmap_match_loop():
  # vmap over an extra leading axis [N, B, C] equals a loop over the N batches (jitted
  # calls: eager-vs-reference is covered by the hand-worked tests, jit-vs-reference above).
  n, b, c = 3, 2, 10
  ds = [_inputs(b, c, seed=i) for i in range(n)]
  stacked = {k: np.stack([d[k] for d in ds]) for k in ds[0]}
  vmapped = jax.jit(jax.vmap(_all_values))(stacked)
  jitted = jax.jit(_all_values)
  loop = [jitted(d) for d in ds]
  for name in LOSSES:  # noqa: PLC0206 (the values are functions; only names are used)
    expected = np.stack([np.asarray(out[name]) for out in loop])
    assert vmapped[name].shape == (n, b), name
    np.testing.assert_allclose(vmapped[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(expected[0], LOSSES[name](ref, ds[0]), rtol=1e-5, atol=1e-6,
                               err_msg=name)


# --------------------------------------------------------------------------- bfloat16


@pytest.mark.parametrize("b,c", [(3, 10), (2, 1000)])
def test_bfloat16_logits(b, c):
  # Logits in bfloat16, targets in float32. The result is float32 (softmax in float32):
  # within 2% of the float32 result on the unrounded logits (the gap is bfloat16's input
  # rounding, ~0.4% relative), and equal to the float64 reference on the rounded logits
  # (so nothing inside is computed in bfloat16). DKD included.
  d, results = _run(b, c)
  d16 = _with(d, zs=jnp.asarray(d["zs"], jnp.bfloat16), zt=jnp.asarray(d["zt"], jnp.bfloat16))
  rounded = _with(d, zs=np.asarray(d16["zs"], np.float32), zt=np.asarray(d16["zt"], np.float32))
  for name, out in jax.jit(_all_values)(d16).items():
    assert out.dtype == jnp.float32, name
    out = np.asarray(out)
    assert np.all(np.isfinite(out)), name
    f32 = results[name][0]
    assert np.all(np.abs(out - f32) <= 0.02 * np.abs(f32) + 1e-3), (name, out, f32)
    np.testing.assert_allclose(out, LOSSES[name](ref, rounded), rtol=1e-4, atol=1e-5,
                               err_msg=name)


# ------------------------------------------------------------------- extreme logits


def _extreme_inputs(b, c):
  """Logits ~ N(0, 1e4²) plus rows built to break naive formulas.

  Row 0: student sure of y, teacher sure it is not (naive log(1 - p_s,y) = log 0).
  Row 1: the reverse (naive log p_s,y = log 0). Row 2: teacher == student (KD = 0).
  """
  d = _inputs(b, c, scale=1e4, seed=1)
  zs, zt, y = d["zs"].copy(), d["zt"].copy(), d["y"]
  zs[0, y[0]], zt[0, y[0]] = 3e4, -3e4
  zs[1, y[1]], zt[1, y[1]] = -3e4, 3e4
  zt[2] = zs[2]
  return _with(d, zs=zs, zt=zt, qt=ref.softmax(zt, T).astype(np.float32))


@pytest.mark.parametrize("b,c", [(3, 10), (2, 1000)])   # shapes of SHAPES: no recompile
def test_extreme_logits_are_finite_and_exact(b, c):
  d = _extreme_inputs(b, c) if b >= 3 else _extreme_inputs(3, c)
  if b < 3:   # keep the batch size of the compiled shape: crafted rows 0 and 1 only
    d = {k: v[:b] for k, v in d.items()}
  for name, (values, grad) in _values_and_grads(d).items():
    assert np.all(np.isfinite(values)), (name, values)
    assert np.all(np.isfinite(grad)), name
    expected = LOSSES[name](ref, d)
    finite = np.isfinite(expected)
    # float32 resolves logits of size 3e4 to ~2e-3; T^2 and sums over classes amplify it.
    np.testing.assert_allclose(np.asarray(values)[finite], expected[finite], rtol=1e-4,
                               atol=1e-4 * np.abs(d["zs"]).max(), err_msg=name)


# ------------------------------------------------------------------------- validation


def _bad_calls():
  zs = jnp.zeros((2, 10))
  y = jnp.zeros((2,), jnp.int32)
  q = jnp.full((2, 10), 0.1)
  return [
      ("temperature", 0.0, lambda v: losses.kd(zs, zs, v)),
      ("temperature", -1.0, lambda v: losses.kd(zs, zs, v)),
      ("temperature", 0.0, lambda v: losses.kl_to_targets(zs, q, v)),
      ("temperature", -2.5, lambda v: losses.dkd(zs, zs, y, 1.0, 8.0, v)),
      ("temperature", 0.0, lambda v: losses.dkd_to_targets(zs, q, y, 1.0, 8.0, v)),
      ("temperature", math.inf, lambda v: losses.kd(zs, zs, v)),
      ("temperature", math.nan, lambda v: losses.kl_to_targets(zs, q, v)),
      ("num_secondary", 0, lambda v: losses.tsd(zs, num_secondary=v)),
      ("num_secondary", 10, lambda v: losses.tsd(zs, num_secondary=v)),   # > C - 1
      ("num_secondary", -3, lambda v: losses.tsd(zs, num_secondary=v)),
  ]


@pytest.mark.parametrize("arg,value,call", _bad_calls(),
                         ids=lambda x: x if isinstance(x, (str, int, float)) else "")
def test_invalid_arguments_raise(arg, value, call):
  ref.assert_error_names(arg, value, call)


def test_default_num_secondary_needs_six_classes():
  # K = 5 secondary classes need C >= 6.
  with pytest.raises(ValueError, match="num_secondary"):
    losses.tsd(jnp.zeros((1, 5)))


# ------------------------------------------------------------ out-of-range labels


@pytest.mark.parametrize("name", LABEL_LOSSES)
def test_bad_labels_raise_eagerly(name):
  # Before: -1 was silently class C-1 (negative indices wrap) and C gave NaN or a finite,
  # even negative, loss.
  d = _inputs(3, 10)
  bad_y, _ = ref.with_bad_labels(d["y"], 10)
  ref.assert_bad_label_error(lambda y: LOSSES[name](losses, _with(d, y=y)), bad_y, 10)
  ref.assert_bad_label_error(lambda y: LOSSES[name](losses, _with(d, y=y)),
                             np.array([1, 2, 10]), 10)
  with pytest.raises(ValueError, match=r"labels\.dtype=float32 .*integer"):
    LOSSES[name](losses, _with(d, y=d["y"].astype(np.float32)))


def test_bad_labels_give_nan_for_their_examples_under_jit():
  # The compiled function of test_values_match_reference (same shapes: no recompile), with
  # labels -1 and C in rows 0 and 2: those rows' losses are NaN, their gradients 0 (the NaN
  # never reaches a gradient), and row 1's value and gradient are unchanged.
  d, clean = _run(3, 10)
  bad_y, bad = ref.with_bad_labels(d["y"], 10)
  out = jax.tree.map(np.asarray, _values_and_grads(_with(d, y=bad_y)))
  for name, (values, grad) in out.items():
    if name in LABEL_LOSSES:
      np.testing.assert_array_equal(np.isnan(values), bad, err_msg=name)
      np.testing.assert_array_equal(grad[bad], 0.0, err_msg=name)
    else:
      assert np.all(np.isfinite(values)), name
    np.testing.assert_allclose(values[~bad], clean[name][0][~bad], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(grad[~bad], clean[name][1][~bad], rtol=1e-6, atol=1e-7,
                               err_msg=name)


def test_bad_labels_under_vmap_and_grad_of_masked_mean():
  # vmap (labels batched): NaN for the bad examples; a masked mean with jnp.where drops them
  # from the gradient exactly, as if they had not been in the batch.
  d = _inputs(3, 10)
  bad_y, bad = ref.with_bad_labels(d["y"], 10)

  def masked_mean(zs, y, keep):
    ce = jax.vmap(losses.cross_entropy)(zs[:, None], y[:, None])[:, 0]
    return jnp.sum(jnp.where(keep, ce, 0.0)) / jnp.sum(keep), ce

  grad_fn = jax.jit(jax.grad(masked_mean, has_aux=True))
  got, values = jax.tree.map(np.asarray, grad_fn(d["zs"], bad_y, ~bad))
  want, _ = grad_fn(d["zs"], d["y"], ~bad)
  np.testing.assert_array_equal(np.isnan(values), bad)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------- shapes


def _shape_mismatches():
  zs = np.zeros((2, 10), np.float32)
  q = np.full((2, 10), 0.1, np.float32)
  y = np.zeros((2,), np.int32)
  return [
      # [B, 1, C] against [B, C] used to broadcast to a [B, B] loss.
      ("kd", (2, 1, 10), (2, 10), lambda: losses.kd(zs[:, None], zs, T)),
      ("kd_classes", (2, 10), (2, 5), lambda: losses.kd(zs, zs[:, :5], T)),
      ("kl_to_targets", (2, 10), (2, 1, 10), lambda: losses.kl_to_targets(zs, q[:, None], T)),
      ("soft_cross_entropy", (2, 10), (10,), lambda: losses.soft_cross_entropy(zs, q[0])),
      ("dkd", (2, 10), (1, 10), lambda: losses.dkd(zs, zs[:1], y, 1.0, 8.0, T)),
      ("dkd_labels", (2, 1), (2, 10), lambda: losses.dkd(zs, zs, y[:, None], 1.0, 8.0, T)),
      ("dkd_to_targets", (2, 10), (2, 9),
       lambda: losses.dkd_to_targets(zs, q[:, :9], y, 1.0, 8.0, T)),
      ("cross_entropy_labels", (2, 1), (2, 10), lambda: losses.cross_entropy(zs, y[:, None])),
      ("tsd_labels", (1,), (2, 10), lambda: losses.tsd(zs, 5, labels=y[:1])),
  ]


@pytest.mark.parametrize("name,shape,other,call", _shape_mismatches(),
                         ids=[c[0] for c in _shape_mismatches()])
def test_shape_mismatches_raise(name, shape, other, call):
  del name
  pattern = re.escape(str(shape)) + ("" if other is None else r"[\s\S]*" + re.escape(str(other)))
  with pytest.raises(ValueError, match=pattern):
    call()


def test_shape_check_happens_at_trace_time():
  zs = jnp.zeros((2, 10))
  with pytest.raises(ValueError, match=r"\(2, 1, 10\)[\s\S]*\(2, 10\)"):
    jax.jit(lambda a, b: losses.kd(a, b, T))(zs[:, None], zs)


# ------------------------------------------------------------ traced temperature


@jax.jit
def _temperature_losses(d, t):
  zs, zt, y = d["zs"], d["zt"], d["y"]
  return dict(kd=losses.kd(zs, zt, t), kl_to_targets=losses.kl_to_targets(zs, d["q"], t),
              dkd=losses.dkd(zs, zt, y, ALPHA, BETA, t),
              dkd_to_targets=losses.dkd_to_targets(zs, d["qt"], y, ALPHA, BETA, t))


def test_traced_temperature():
  # A traced temperature cannot raise: an invalid one (<= 0 or not finite) makes every
  # output NaN, a valid one gives the eager result.
  d = _inputs(3, 10)
  good = _temperature_losses(d, T)
  np.testing.assert_allclose(good["kd"], losses.kd(d["zs"], d["zt"], T), rtol=1e-6)
  np.testing.assert_allclose(good["dkd"], losses.dkd(d["zs"], d["zt"], d["y"], ALPHA, BETA, T),
                             rtol=1e-6)
  for t in (0.0, -1.0, math.inf, math.nan):
    for name, values in _temperature_losses(d, t).items():
      assert np.all(np.isnan(values)), (t, name, values)


def test_traced_temperature_gradients_match_the_python_number_ones():
  # One code path for both; a row max carrying a gradient once put an extra -T sum(w) on each
  # row's argmax logit of the traced path only.
  d = _inputs(3, 10)
  zt, y = d["zt"], d["y"]
  per_example = dict(
      kd=lambda zs, t: losses.kd(zs, zt, t),
      kl_to_targets=lambda zs, t: losses.kl_to_targets(zs, d["q"], t),
      dkd=lambda zs, t: losses.dkd(zs, zt, y, ALPHA, BETA, t),
      dkd_to_targets=lambda zs, t: losses.dkd_to_targets(zs, d["qt"], y, ALPHA, BETA, t))
  for name, loss in per_example.items():
    def total(zs, t, loss=loss):
      return jnp.sum(loss(zs, t))
    want = jax.grad(total)(d["zs"], T)                        # T a Python number
    got = jax.jit(jax.grad(total))(d["zs"], jnp.float32(T))   # T traced
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
  # With fixed targets, the temperature's own gradient matches central differences.
  def kl_sum(t):
    return jnp.sum(losses.kl_to_targets(d["zs"], d["q"], t))
  h = 1e-2
  fd = (float(kl_sum(T + h)) - float(kl_sum(T - h))) / (2 * h)
  np.testing.assert_allclose(float(jax.grad(kl_sum)(jnp.float32(T))), fd, rtol=1e-3)


def test_checkify_catches_invalid_temperature_and_labels():
  # T = -1 and label -1 used to give finite (wrong) losses that no check could catch.
  d = _inputs(3, 10)
  bad_y = d["y"].copy()
  bad_y[1] = -1

  def step(zs, zt, y, t):
    return jnp.mean(losses.kd(zs, zt, t) + losses.cross_entropy(zs, y))

  checked = jax.jit(checkify.checkify(step, errors=checkify.nan_checks))
  err, out = checked(d["zs"], d["zt"], d["y"], T)
  assert err.get() is None and np.isfinite(out)
  for y, t in ((d["y"], -1.0), (bad_y, T)):
    err, out = checked(d["zs"], d["zt"], y, t)
    assert err.get() is not None and "nan" in err.get(), (t, err.get())
    with pytest.raises(checkify.JaxRuntimeError):
      err.throw()


# ------------------------------------------------------- closed-form label smoothing


@pytest.mark.parametrize("spread", ["all", "others"])
def test_label_smoothing_closed_form_matches_target_form(spread):
  from kd_jax import targets
  rng = np.random.default_rng(7)
  z = jnp.asarray(5.0 * rng.normal(size=(6, 13)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 13, 6))
  closed = lambda z: losses.label_smoothing_cross_entropy(z, y, 0.2, spread)
  target = lambda z: losses.soft_cross_entropy(z, targets.smooth(y, 13, 0.2, spread))
  np.testing.assert_allclose(closed(z), target(z), rtol=1e-6, atol=1e-6)
  g1 = jax.grad(lambda z: closed(z).sum())(z)
  g2 = jax.grad(lambda z: target(z).sum())(z)
  np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)
  bad = jax.jit(lambda z, y: losses.label_smoothing_cross_entropy(z, y, 0.2, spread))(
      z, y.at[2].set(13))
  assert np.isnan(bad[2]) and np.all(np.isfinite(np.delete(np.asarray(bad), 2)))
  with pytest.raises(ValueError, match="epsilon=1.5"):
    losses.label_smoothing_cross_entropy(z, y, 1.5, spread)


# ----------------------------------------------------- forward mode, second derivatives


def test_forward_mode_and_hessian():
  rng = np.random.default_rng(3)
  z, t = (jnp.asarray(rng.normal(size=(3, 7)), jnp.float32) for _ in range(2))
  y = jnp.asarray([0, 3, 6])
  q = jax.nn.softmax(t)
  cases = {
      "cross_entropy": lambda z: losses.cross_entropy(z, y),
      "soft_cross_entropy": lambda z: losses.soft_cross_entropy(z, q),
      "kd": lambda z: losses.kd(z, t, 4.0),
      "kl_to_targets": lambda z: losses.kl_to_targets(z, q, 2.0),
      "entropy": losses.entropy,
      "tsd": lambda z: losses.tsd(z, 2),
      "tsd_label": lambda z: losses.tsd(z, 2, labels=y),
      "dkd": lambda z: losses.dkd(z, t, y, 1.0, 8.0, 4.0),
      "dkd_to_targets": lambda z: losses.dkd_to_targets(z, q, y, 1.0, 8.0, 4.0),
  }
  v = jnp.asarray(rng.normal(size=z.shape), jnp.float32)
  for name, loss in cases.items():
    total = lambda z, loss=loss: loss(z).sum()
    _, tangent = jax.jvp(total, (z,), (v,))
    np.testing.assert_allclose(tangent, jnp.vdot(jax.grad(total)(z), v), rtol=1e-5,
                               atol=1e-6, err_msg=name)
  # Second derivatives against the plain log-softmax forms.
  plain_kd = lambda z: 16.0 * jnp.sum(jax.nn.softmax(t / 4) * (
      jax.nn.log_softmax(t / 4) - jax.nn.log_softmax(z / 4)))
  plain_ce = lambda z: -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], -1))
  for ours, plain in ((lambda z: losses.kd(z, t, 4.0).sum(), plain_kd),
                      (lambda z: losses.cross_entropy(z, y).sum(), plain_ce)):
    np.testing.assert_allclose(jax.hessian(ours)(z), jax.hessian(plain)(z), atol=1e-6)
