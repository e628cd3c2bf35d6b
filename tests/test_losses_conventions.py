"""optax's conventions for `kd_jax.losses` and `kd_jax.targets`: one example `[C]` with a
scalar label, token-level `[B, T, C]`, `jax.vmap` over examples, `axis`, and `where` masks.

Oracles: the float64 NumPy references (numpy_reference.py) row by row, central differences
for gradients, and mdistiller's `kd_loss` / `dkd_loss` in PyTorch (per example, no
reduction) on the unmasked tokens.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from kd_jax import losses, targets

T, ALPHA, BETA, ETA = 4.0, 1.0, 8.0, 0.8

# name -> (call on a dict of inputs with an optional `where`, NumPy reference per row)
LOSSES = {
    "cross_entropy": (lambda d, w: losses.cross_entropy(d["zs"], d["y"], where=w),
                      lambda d: ref.cross_entropy(d["zs"], d["y"])),
    "soft_cross_entropy": (lambda d, w: losses.soft_cross_entropy(d["zs"], d["q"], where=w),
                           lambda d: ref.soft_cross_entropy(d["zs"], d["q"])),
    "kd": (lambda d, w: losses.kd(d["zs"], d["zt"], T, where=w),
           lambda d: ref.kd(d["zs"], d["zt"], T)),
    "kl_to_targets": (lambda d, w: losses.kl_to_targets(d["zs"], d["q"], T, where=w),
                      lambda d: ref.kl_to_targets(d["zs"], d["q"], T)),
    "tsd": (lambda d, w: losses.tsd(d["zs"], 3, where=w), lambda d: ref.tsd(d["zs"], 3)),
    "tsd_label": (lambda d, w: losses.tsd(d["zs"], 3, labels=d["y"], where=w),
                  lambda d: ref.tsd_label_primary(d["zs"], d["y"], 3)),
    "entropy": (lambda d, w: losses.entropy(d["zs"], where=w), lambda d: ref.entropy(d["zs"])),
    "label_smoothing": (
        lambda d, w: losses.label_smoothing_cross_entropy(d["zs"], d["y"], 0.1, where=w),
        lambda d: ref.soft_cross_entropy(d["zs"], ref.smooth(d["y"], d["zs"].shape[-1], 0.1))),
    "dkd": (lambda d, w: losses.dkd(d["zs"], d["zt"], d["y"], ALPHA, BETA, T, where=w),
            lambda d: ref.dkd(d["zs"], d["zt"], d["y"], ALPHA, BETA, T)),
    "dkd_to_targets": (
        lambda d, w: losses.dkd_to_targets(d["zs"], d["qt"], d["y"], ALPHA, BETA, T, where=w),
        lambda d: ref.dkd_to_targets(d["zs"], d["qt"], d["y"], ALPHA, BETA, T)),
}
TARGETS = {
    "one_hot": (lambda d, w: targets.one_hot(d["y"], d["q"].shape[-1], where=w),
                lambda d: ref.one_hot(d["y"], d["q"].shape[-1])),
    "smooth": (lambda d, w: targets.smooth(d["y"], d["q"].shape[-1], 0.2, "others", where=w),
               lambda d: ref.smooth(d["y"], d["q"].shape[-1], 0.2, "others")),
    "revise": (lambda d, w: targets.revise(d["q"], d["y"], ETA, where=w),
               lambda d: ref.revise(d["q"], d["y"], ETA)),
    "pt": (lambda d, w: targets.pt(d["q"], d["y"], where=w), lambda d: ref.pt(d["q"], d["y"])),
    "sim": (lambda d, w: targets.sim(d["y"], d["s"], 0.3, where=w),
            lambda d: ref.sim(d["y"], d["s"], 0.3)),
    "pt_sim": (lambda d, w: targets.pt_sim(d["q"], d["y"], d["s"], where=w),
               lambda d: ref.pt_sim(d["q"], d["y"], d["s"])),
    "topk": (lambda d, w: targets.topk(d["q"], 3, where=w), lambda d: ref.topk(d["q"], 3)),
}


def _inputs(shape, seed=0):
  """Student/teacher logits, labels, target distributions `shape + [C]` and a similarity."""
  *batch, c = shape
  rng = np.random.default_rng([seed, *shape])
  zs = (rng.normal(size=shape) * 3).astype(np.float32)
  zt = (rng.normal(size=shape) * 3).astype(np.float32)
  y = rng.integers(0, c, size=batch).astype(np.int32)
  q = ref.softmax(rng.normal(size=shape) * 2).astype(np.float32)
  qt = ref.softmax(zt, T).astype(np.float32)
  s = ref.class_similarity(rng.normal(size=(8, c)), 0.5).astype(np.float32)
  return dict(zs=zs, zt=zt, y=y, q=q, qt=qt, s=s)


def _rows(d, index):
  """The example at `index` of every per-example input (the similarity is shared)."""
  return {k: (x if k == "s" else x[index]) for k, x in d.items()}


@functools.cache
def _batch_and_rows(shape):
  d = _inputs(shape)
  everything = {**LOSSES, **TARGETS}
  batch = jax.jit(lambda d: {n: f(d, None) for n, (f, _) in everything.items()})(d)
  return d, jax.tree.map(np.asarray, batch)


@pytest.mark.parametrize("name", list(LOSSES) + list(TARGETS))
def test_single_example_equals_its_batch_row(name):
  """A single example `[C]` with a scalar label (eager) gives its row of the batch result."""
  d, batch = _batch_and_rows((3, 6))
  call = {**LOSSES, **TARGETS}[name][0]
  for i in range(3):
    one = call(_rows(d, i), None)
    assert one.shape == batch[name].shape[1:], name
    np.testing.assert_allclose(one, batch[name][i], rtol=1e-5, atol=1e-7, err_msg=name)


def test_vmap_over_single_examples():
  """optax's convention: `jax.vmap(loss)(logits, labels)` over `[C]` examples (it used to
  raise "need at least 2-D")."""
  d, batch = _batch_and_rows((3, 6))
  np.testing.assert_allclose(jax.vmap(losses.cross_entropy)(d["zs"], d["y"]),
                             batch["cross_entropy"], rtol=1e-6)
  kd = jax.vmap(lambda s, t: losses.kd(s, t, T))(d["zs"], d["zt"])
  np.testing.assert_allclose(kd, batch["kd"], rtol=1e-6)
  revised = jax.vmap(lambda q, y: targets.revise(q, y, ETA))(d["q"], d["y"])
  np.testing.assert_allclose(revised, batch["revise"], rtol=1e-6)


@pytest.mark.parametrize("table", ["losses", "targets"])
def test_token_level_with_where_matches_the_reference(table):
  """`[B, T, C]` with `where [B, T]`: the reference on the kept tokens, exactly 0 elsewhere,
  although the excluded tokens hold NaN logits, teacher rows and bad labels."""
  d = _inputs((2, 5, 7), seed=1)
  where = np.ones((2, 5), bool)
  where[0, 3:] = where[1, 4] = False
  poisoned = dict(d)
  for key in ("zs", "zt", "q", "qt"):
    poisoned[key] = np.where(where[..., None], d[key], np.nan).astype(np.float32)
  poisoned["y"] = np.where(where, d["y"], -100).astype(np.int32)   # padding labels
  calls = LOSSES if table == "losses" else TARGETS
  out = jax.jit(lambda d, w: {n: f(d, w) for n, (f, _) in calls.items()})(poisoned, where)
  eager = {n: f(poisoned, where) for n, (f, _) in calls.items()}   # checks skip those rows
  for name, (_, reference) in calls.items():
    value = np.asarray(out[name])
    np.testing.assert_allclose(eager[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(value[~where], 0.0, err_msg=name)
    np.testing.assert_allclose(value[where], reference(_rows(d, where)), rtol=1e-5,
                               atol=1e-6, err_msg=name)


def test_token_level_gradients_match_finite_differences_and_ignore_masked_tokens():
  d = _inputs((2, 4, 6), seed=2)
  where = np.array([[True, True, False, True], [False, True, True, True]])
  nan_teacher = np.where(where[..., None], d["zt"], np.nan).astype(np.float32)
  for name, (call, reference) in LOSSES.items():
    def total(zs, call=call):
      return jnp.sum(call({**d, "zt": nan_teacher, "zs": zs}, where))
    grad = np.asarray(jax.jit(jax.grad(total))(d["zs"]))
    assert np.all(np.isfinite(grad)), name
    np.testing.assert_array_equal(grad[~where], 0.0, err_msg=name)
    fd = ref.fd_grad(lambda zs, r=reference: r({**d, "zs": zs}), d["zs"])
    np.testing.assert_allclose(grad[where], fd[where], rtol=1e-4,
                               atol=1e-5 * max(1.0, np.abs(fd).max()), err_msg=name)


def test_where_keeps_the_other_examples_values_and_gradients():
  """Excluding an example changes nothing for the others (value or gradient)."""
  d = _inputs((4, 9), seed=3)
  where = np.array([True, False, True, True])

  @jax.jit
  def values_and_grads(zs, w):
    return {name: jax.value_and_grad(lambda z, call=call: jnp.sum(call({**d, "zs": z}, w)))(zs)
            for name, (call, _) in LOSSES.items()}

  everything = values_and_grads(d["zs"], np.ones(4, bool))
  some = values_and_grads(d["zs"], where)
  per_example = jax.jit(lambda w: {n: c(d, w) for n, (c, _) in LOSSES.items()})
  all_values, some_values = per_example(np.ones(4, bool)), per_example(where)
  for name in LOSSES:
    np.testing.assert_allclose(some[name][1][where], everything[name][1][where], rtol=1e-6,
                               atol=1e-8, err_msg=name)
    np.testing.assert_allclose(some_values[name][where], all_values[name][where], rtol=1e-6,
                               err_msg=name)
    np.testing.assert_array_equal(some_values[name][~where], 0.0, err_msg=name)


def test_where_shape_is_checked():
  d = _inputs((4, 9))
  with pytest.raises(ValueError, match=r"where\.shape=\(4, 1\)"):
    losses.kd(d["zs"], d["zt"], T, where=np.ones((4, 1), bool))
  with pytest.raises(ValueError, match=r"where\.shape=\(3,\)"):
    targets.revise(d["q"], d["y"], ETA, where=np.ones(3, bool))


def test_axis_moves_the_class_axis():
  d = _inputs((5, 8), seed=4)
  pairs = {
      "cross_entropy": (losses.cross_entropy(d["zs"].T, d["y"], axis=0),
                        losses.cross_entropy(d["zs"], d["y"])),
      "soft_cross_entropy": (losses.soft_cross_entropy(d["zs"].T, d["q"].T, axis=0),
                             losses.soft_cross_entropy(d["zs"], d["q"])),
      "kd": (losses.kd(d["zs"].T, d["zt"].T, T, axis=0), losses.kd(d["zs"], d["zt"], T)),
      "kl_to_targets": (losses.kl_to_targets(d["zs"].T, d["q"].T, T, axis=0),
                        losses.kl_to_targets(d["zs"], d["q"], T)),
      "entropy": (losses.entropy(d["zs"].T, axis=0), losses.entropy(d["zs"])),
      "softmax": (losses.softmax(d["zs"].T, T, axis=0).T, losses.softmax(d["zs"], T)),
      "log_softmax": (losses.log_softmax(d["zs"].T, axis=0).T, losses.log_softmax(d["zs"])),
  }
  for name, (moved, last) in pairs.items():
    np.testing.assert_allclose(moved, last, rtol=1e-6, atol=1e-7, err_msg=name)


torch = pytest.importorskip("torch")
F = torch.nn.functional


def _mdistiller_kd(logits_student, logits_teacher, temperature):
  """mdistiller's `kd_loss`, per example (its `.sum(1)` before the batch mean)."""
  log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1) * temperature**2


def _mdistiller_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
  """mdistiller's `dkd_loss` with the batch sum replaced by a per-example sum over classes."""
  gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
  other_mask = ~gt_mask
  pred_student = F.softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  cat = lambda t: torch.cat([(t * gt_mask).sum(1, keepdims=True),
                             (t * other_mask).sum(1, keepdims=True)], dim=1)
  pred_student, pred_teacher = cat(pred_student), cat(pred_teacher)
  tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="none").sum(1)
  pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
  log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
  nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="none").sum(1)
  return (alpha * tckd + beta * nckd) * temperature**2


def test_token_level_matches_mdistiller():
  """kd and dkd on `[B, T, C]` tokens with a padding mask: mdistiller's per-example values
  and gradients on the kept tokens (float64 torch), 0 on the others."""
  d = _inputs((3, 4, 50), seed=5)
  where = np.arange(4)[None, :] < np.array([[4], [2], [3]])
  kept = lambda x: torch.tensor(x[where].astype(np.float64))
  zs, zt = kept(d["zs"]).requires_grad_(), kept(d["zt"])
  y = torch.tensor(d["y"][where].astype(np.int64))
  oracles = {
      "kd": (_mdistiller_kd(zs, zt, T), lambda z: losses.kd(z, d["zt"], T, where=where)),
      "dkd": (_mdistiller_dkd(zs, zt, y, ALPHA, BETA, T),
              lambda z: losses.dkd(z, d["zt"], d["y"], ALPHA, BETA, T, where=where)),
  }
  for name, (expected, ours) in oracles.items():
    (grad,) = torch.autograd.grad(expected.sum(), zs)
    our_grad = jax.jit(jax.grad(lambda z, f=ours: jnp.sum(f(z))))(d["zs"])
    per_token = jax.jit(ours)(d["zs"])
    np.testing.assert_allclose(per_token[where], expected.detach().numpy(), rtol=1e-4,
                               atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(np.asarray(per_token)[~where], 0.0)
    np.testing.assert_allclose(np.asarray(our_grad)[where], grad.numpy(), rtol=1e-4,
                               atol=1e-6, err_msg=name)


def test_library_modules_import_only_the_private_checks():
  """SPEC's layout: losses and targets import nothing of kd_jax but `_validation`; methods
  adds losses and targets, so a method block reaches the losses from the train step through
  4 modules (step -> methods -> losses / targets -> _validation)."""
  import ast
  import pathlib

  allowed = {"losses": {"kd_jax._validation"}, "targets": {"kd_jax._validation"},
             "methods": {"kd_jax.losses", "kd_jax.targets", "kd_jax._validation"}}
  package = pathlib.Path(losses.__file__).parent
  for name, expected in allowed.items():
    imported = set()
    for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kd_jax"):
        imported |= ({f"kd_jax.{a.name}" for a in node.names} if node.module == "kd_jax"
                     else {node.module})
      elif isinstance(node, ast.Import):
        imported |= {a.name for a in node.names if a.name.startswith("kd_jax")}
    assert imported == expected, (name, imported)
