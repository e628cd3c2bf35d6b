"""The method table against NumPy references written from its objectives, plus validation.

The references are `tests/numpy_reference.py` (float64, written from the equations); the
hand-worked cases check values that follow from the definitions alone.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from kd_jax import losses, methods, targets

C, B = 7, 12
_TARGET_VARIANTS = ("kd_pt", "kd_sim", "kd_pt_sim", "kd_topk")


def _build_target(cfg, name, q, y, sim):
  """Tang et al.'s target of variant `name` from the teacher distribution q (NumPy)."""
  if name == "kd_pt":
    return ref.pt(q, y)
  if name == "kd_sim":
    return ref.sim(y, sim, cfg.sim_epsilon)
  if name == "kd_pt_sim":
    return ref.pt_sim(q, y, sim)
  return ref.topk(q, cfg.topk)


def _reference(cfg, zs, zt, y, sim, epoch):
  """Per-example objective of each method (kl form of LR), straight from kd_jax/methods.py's
  docstring."""
  n = methods.base_name(cfg.name)
  ce = ref.cross_entropy(zs, y)
  if n == "ce":
    return ce
  if n == "ls":
    return ref.distill_to_target(zs, ref.smooth(y, C, cfg.label_smoothing), cfg.target_temperature)
  if n == "tsd":
    return ce + ref.tsd_weight(epoch, cfg.tsd_eta, cfg.tsd_warmup_epochs) * ref.tsd(
        zs, cfg.tsd_num_secondary)
  if n == "cp":
    return ref.confidence_penalty(zs, y, cfg.cp_beta)
  read_t = cfg.target_temperature if n in _TARGET_VARIANTS else cfg.temperature
  q = ref.softmax(zt, read_t)
  if n in ("lr", "dkd_lr") or cfg.revise:
    q = ref.revise(q, y, cfg.eta)
  T = cfg.temperature
  if n in ("dkd", "dkd_lr"):
    warm = min(1.0, epoch / cfg.dkd_warmup_epochs)
    return cfg.dkd_ce_weight * ce + warm * ref.dkd_to_targets(  # T^2 inside
        zs, q, y, cfg.dkd_alpha, cfg.dkd_beta, T)
  if n in ("kd", "lr"):
    return cfg.ce_weight * ce + cfg.kd_weight * ref.kl_to_targets(zs, q, T)
  term = ref.distill_to_target(zs, _build_target(cfg, n, q, y, sim), cfg.target_temperature)
  return cfg.ce_weight * ce + cfg.kd_weight * term


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  zs = rng.normal(size=(B, C)) * 2
  zt = rng.normal(size=(B, C)) * 3
  y = rng.integers(0, C, size=B)
  kernel = rng.normal(size=(5, C))
  return zs, zt, y, kernel


def _run(cfg, zs, y, zt=None, **kwargs):
  return methods.per_example_losses(cfg, jnp.asarray(zs, jnp.float32), jnp.asarray(y),
                                    None if zt is None else jnp.asarray(zt, jnp.float32),
                                    **kwargs)


@pytest.mark.parametrize("name, revise, target_t", [  # revision: teacher-based methods only
    (name, revise, 1.0) for name in methods.NAMES for revise in (False, True)
    if methods.needs_teacher(name) or not revise] + [
        (name, False, 4.0) for name in ("ls",) + _TARGET_VARIANTS] + [("kd_pt", True, 4.0)])
def test_method_matches_numpy(batch, name, revise, target_t):
  zs, zt, y, kernel = batch
  cfg = methods.default_config()
  cfg.name, cfg.revise, cfg.topk, cfg.target_temperature = name, revise, 3, target_t
  methods.validate(cfg, C)
  sim = ref.class_similarity(kernel, cfg.sim_temperature)
  epoch = 2.5
  # Eager: one jit per parametrization costs more than the whole test; the trainer's tests
  # and the jitted mse/gradient/schedule tests below cover tracing.
  out = _run(cfg, zs, y, zt, epoch=epoch, class_similarity=jnp.asarray(sim, jnp.float32))
  np.testing.assert_allclose(out["loss"], _reference(cfg, zs, zt, y, sim, epoch), rtol=2e-5,
                             atol=1e-5)
  np.testing.assert_allclose(out["ce"], ref.cross_entropy(zs, y), rtol=1e-5)
  if methods.needs_teacher(name):
    np.testing.assert_allclose(out["rescale_weight"], 1 - ref.softmax(zt)[np.arange(B), y],
                               rtol=1e-5)


@pytest.mark.parametrize("name", ("ls",) + _TARGET_VARIANTS)
def test_target_variants_default_is_soft_cross_entropy_at_t1(batch, name):
  """At the defaults (KD temperature 4, target_temperature 1) LS and Tang's variants are
  `H(target, p(z_s, 1))` with the target built from the teacher at T = 1: bit for bit for
  Tang's variants; LS is computed in closed form (no `[B, C]` target), equal to rounding."""
  zs, zt, y, kernel = batch
  cfg = methods.default_config()
  cfg.name, cfg.topk = name, 3
  assert cfg.temperature == 4.0 and cfg.target_temperature == 1.0
  s, t, labels = jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.asarray(y)
  sim = targets.class_similarity(jnp.asarray(kernel, jnp.float32), cfg.sim_temperature)
  q = jax.nn.softmax(t)
  target = {"ls": lambda: targets.smooth(labels, C, cfg.label_smoothing),
            "kd_pt": lambda: targets.pt(q, labels),
            "kd_sim": lambda: targets.sim(labels, sim, cfg.sim_epsilon),
            "kd_pt_sim": lambda: targets.pt_sim(q, labels, sim),
            "kd_topk": lambda: targets.topk(q, 3)}[name]()
  out = methods.per_example_losses(cfg, s, labels, t, class_similarity=sim)
  expected = losses.soft_cross_entropy(s, target)
  if name == "ls":
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-6)
  else:
    np.testing.assert_array_equal(out["teacher_term"], expected)
    np.testing.assert_allclose(out["loss"], 0.1 * losses.cross_entropy(s, labels) + 0.9 * expected,
                               rtol=1e-6)


def test_confidence_penalty_hand_worked():
  """Uniform logits: CE = H = log C, so the loss is (1 - beta) log C."""
  cfg = methods.default_config()
  cfg.name = "cp"
  methods.validate(cfg, C)
  out = _run(cfg, np.zeros((B, C)), np.arange(B) % C)
  np.testing.assert_allclose(out["loss"], (1 - 0.1) * math.log(C), rtol=1e-6)
  np.testing.assert_allclose(out["entropy"], math.log(C), rtol=1e-6)
  assert not methods.needs_teacher("cp")
  assert set(methods.TEACHER_FREE) == {"ce", "ls", "tsd", "cp"}
  assert set(methods.TEACHER_FREE) <= set(methods.NAMES)
  assert not any(methods.needs_teacher(n) for n in methods.TEACHER_FREE)


@pytest.mark.parametrize("schedule, epoch, expected", [
    ("linear", 0.0, 0.0), ("linear", 2.5, 0.3), ("linear", 7.0, 0.6),
    ("constant", 0.0, 0.6), ("constant", 2.5, 0.6),
    ("step", 0.0, 0.0), ("step", 4.99, 0.0), ("step", 5.0, 0.6), ("step", 9.0, 0.6),
])
def test_tsd_schedules(schedule, epoch, expected):
  cfg = methods.default_config()
  cfg.name, cfg.tsd_schedule = "tsd", schedule  # eta 0.6, warm-up 5 epochs
  methods.validate(cfg, C)
  np.testing.assert_allclose(methods.tsd_weight(cfg, epoch), expected, rtol=1e-6)
  assert ref.tsd_weight(epoch, 0.6, 5.0, schedule) == pytest.approx(expected)
  traced = jax.jit(lambda e: methods.tsd_weight(cfg, e))(jnp.float32(epoch))
  np.testing.assert_allclose(traced, expected, rtol=1e-6)


def test_tsd_primary_label_hand_worked():
  """p = (0.5, 0.3, 0.04 x 5), label 1, K = 1: TSD is 0.5 - 0.3 with the argmax as primary,
  0.3 - 0.5 with the label as primary."""
  cfg = methods.default_config()
  cfg.name, cfg.tsd_num_secondary, cfg.tsd_schedule = "tsd", 1, "constant"
  cfg.tsd_eta = 1.0
  z = np.tile(np.log([0.5, 0.3, 0.04, 0.04, 0.04, 0.04, 0.04]), (B, 1))
  y = np.ones(B, int)
  ce = -math.log(0.3)
  np.testing.assert_allclose(_run(cfg, z, y)["loss"], ce + 0.2, rtol=1e-5)
  cfg.tsd_primary = "label"
  methods.validate(cfg, C)
  np.testing.assert_allclose(_run(cfg, z, y)["loss"], ce - 0.2, rtol=1e-5)


def _mse_config():
  cfg = methods.default_config()
  cfg.name, cfg.lr_form = "lr", "mse"
  methods.validate(cfg, C)
  return cfg


def _masked_mean(values, mask):
  mask = np.asarray(mask, np.float64)
  return np.sum(np.asarray(values, np.float64) * mask) / mask.sum()


def test_lr_mse_matches_published_objective(batch):
  """The masked mean over real rows equals RLD's batch objective on the real rows; padding
  rows change nothing; the method's temperature is not used (T = 1 everywhere)."""
  zs, zt, y, _ = batch
  cfg = _mse_config()
  real = np.arange(B) < B - 3  # three padding rows
  correct = zt.argmax(-1) == y
  assert 0 < (correct & real).sum() < real.sum()  # both subsets present
  step = jax.jit(lambda s, t, m: methods.per_example_losses(cfg, s, jnp.asarray(y), t,
                                                            example_mask=m)["loss"])
  loss = step(jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.asarray(real))
  expected = ref.lr_mse_published(zs[real], zt[real], y[real])
  np.testing.assert_allclose(_masked_mean(loss, real), expected, rtol=1e-5)
  garbage = zs.copy()
  garbage[~real] = 50.0
  again = step(jnp.asarray(garbage, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.asarray(real))
  np.testing.assert_allclose(np.asarray(again)[real], np.asarray(loss)[real], rtol=1e-6)
  cfg.temperature = 1.0
  at_one = _run(cfg, zs, y, zt, example_mask=jnp.asarray(real))["loss"]
  np.testing.assert_allclose(at_one, loss, rtol=1e-6)


def test_lr_mse_all_correct_and_all_wrong_batches(batch):
  """An empty subset contributes 0: all-correct is CE + 4 * logit MSE averaged over the
  batch; all-wrong is the probability MSE alone (no CE)."""
  zs, zt, y, _ = batch
  cfg = _mse_config()
  right = zt.copy()
  right[np.arange(B), y] += 100.0
  loss = _run(cfg, zs, y, right)["loss"]
  ce = ref.cross_entropy(zs, y)
  np.testing.assert_allclose(np.mean(loss), np.mean(ce) + 4.0 * np.mean((zs - right) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(np.mean(loss), ref.lr_mse_published(zs, right, y), rtol=1e-5)
  wrong = zt.copy()
  wrong[np.arange(B), (y + 1) % C] += 100.0
  loss = _run(cfg, zs, y, wrong)["loss"]
  revised = ref.revise(ref.softmax(wrong), y, 0.8)
  np.testing.assert_allclose(np.mean(loss), np.mean((ref.softmax(zs) - revised) ** 2), rtol=1e-5)


def test_lr_mse_with_data_selection_and_padding(batch):
  """Subsets among the supervised (selected, real) rows; unselected real rows get CE:
  the mean is (1/N) sum CE(unselected) + (|S|/N) L_pub(S)."""
  zs, zt, y, _ = batch
  cfg = _mse_config()
  cfg.mse_ce_weight, cfg.mse_logit_weight, cfg.mse_prob_weight = 0.5, 2.0, 3.0
  cfg.name = "lr_ds"
  real = np.arange(B) != 4
  selected = (np.arange(B) % 3 != 0) & real
  out = _run(cfg, zs, y, zt, example_mask=jnp.asarray(real), teacher_mask=jnp.asarray(selected))
  expected = ref.lr_mse_batch_objective(zs, zt, y, real, selected, ce_weight=0.5, lambda1=2.0,
                                        lambda2=3.0)
  np.testing.assert_allclose(_masked_mean(out["loss"], real), expected, rtol=1e-5)
  unselected = real & ~selected
  np.testing.assert_allclose(np.asarray(out["loss"])[unselected], ref.cross_entropy(zs, y)[unselected],
                             rtol=1e-5)


@pytest.mark.parametrize("wrong_only", [False, True])
def test_lr_kl_revision_temperature_and_wrong_only(batch, wrong_only):
  """kd at T = 4 with the teacher revised at Tr = 1: 0.1 CE + 0.9 * 16 KL(q' || p(z_s, 4))."""
  zs, zt, y, _ = batch
  cfg = methods.default_config()
  cfg.name, cfg.revision_temperature, cfg.revise_wrong_only = "lr", 1.0, wrong_only
  methods.validate(cfg, C)
  out = _run(cfg, zs, y, zt)
  correct = zt.argmax(-1) == y
  rows = ~correct if wrong_only else np.ones(B, bool)
  q = ref.revise_where(ref.softmax(zt, 1.0), y, 0.8, rows)
  expected = 0.1 * ref.cross_entropy(zs, y) + 0.9 * ref.kl_to_targets(zs, q, 4.0)
  np.testing.assert_allclose(out["loss"], expected, rtol=2e-5)
  beta = ref.revise_beta(ref.softmax(zt), y, 0.8)
  np.testing.assert_allclose(out["beta"], np.where(rows, beta, 1.0), rtol=1e-5)


def test_lr_kl_default_revision_temperature_is_the_method_temperature(batch):
  zs, zt, y, _ = batch
  cfg = methods.default_config()
  cfg.name = "lr"
  default = _run(cfg, zs, y, zt)["loss"]
  cfg.revision_temperature = 4.0
  np.testing.assert_allclose(_run(cfg, zs, y, zt)["loss"], default, rtol=1e-6)
  cfg.revision_temperature = 1.0
  assert not np.allclose(_run(cfg, zs, y, zt)["loss"], default)


def test_teacher_mask_gives_plain_ce(batch):
  zs, zt, y, _ = batch
  cfg = methods.default_config()
  mask = np.arange(B) % 3 == 0
  out = _run(cfg, zs, y, zt, teacher_mask=jnp.asarray(mask))
  full = _run(cfg, zs, y, zt)
  np.testing.assert_allclose(out["loss"][mask], full["loss"][mask], rtol=1e-6)
  np.testing.assert_allclose(out["loss"][~mask], ref.cross_entropy(zs, y)[~mask], rtol=1e-5)


def test_gradient_flows_only_to_student(batch):
  zs, zt, y, _ = batch
  cfg = methods.default_config()
  cfg.name = "dkd_lr"
  loss = lambda s, t: methods.per_example_losses(cfg, s, jnp.asarray(y), t, epoch=30.0)["loss"].sum()
  g_s, g_t = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(zs, jnp.float32),
                                                     jnp.asarray(zt, jnp.float32))
  assert np.abs(np.asarray(g_s)).sum() > 0
  np.testing.assert_array_equal(g_t, 0.0)


@pytest.mark.parametrize("field,value,match,name", [
    ("name", "fitnet", "method.name='fitnet'", "kd"),
    ("temperature", 0.0, "method.temperature=0.0", "kd"),
    ("temperature", -1.0, "must be > 0", "kd"),
    ("target_temperature", 0.0, r"method.target_temperature=0.0 is not allowed: must be > 0",
     "kd_pt"),
    ("eta", 1.0, r"method.eta=1.0 is not allowed: must be in \(0, 1\)", "lr"),
    ("eta", 0.0, "method.eta=0.0", "lr"),
    ("topk", 7, r"method.topk=7 .* \[1, 6\]", "kd_topk"),
    ("topk", 0, "method.topk=0", "kd_topk"),
    ("label_smoothing", 1.5, "label_smoothing=1.5", "kd"),
    ("lr_form", "l1", "lr_form='l1'", "kd"),
    ("revision_temperature", -1.0, r"method.revision_temperature=-1.0 is not allowed: .*> 0",
     "lr"),
    ("revise_wrong_only", None, "method.revise_wrong_only=None is not allowed: must be True",
     "lr"),
    ("mse_ce_weight", -1.0, "method.mse_ce_weight=-1.0 is not allowed: must be >= 0", "lr"),
    ("mse_logit_weight", -1.0, "method.mse_logit_weight=-1.0", "lr"),
    ("cp_beta", -0.1, r"method.cp_beta=-0.1 is not allowed: must be >= 0", "cp"),
    ("tsd_schedule", "cosine", "method.tsd_schedule='cosine' is not allowed: .*constant, step",
     "tsd"),
    ("tsd_primary", "top", "method.tsd_primary='top' is not allowed: .*argmax, label", "tsd"),
    ("tsd_warmup_epochs", -1.0, "method.tsd_warmup_epochs=-1.0", "tsd"),
])
def test_validate_rejects(field, value, match, name):
  cfg = methods.default_config()
  cfg.name = name
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    methods.validate(cfg, C)


def test_validate_rejects_revision_temperature_with_mse_form():
  cfg = _mse_config()
  cfg.revision_temperature = 1.0  # the mse form's own T: allowed
  methods.validate(cfg, C)
  cfg.revision_temperature = 2.0
  with pytest.raises(ValueError, match=r"method.revision_temperature=2.0 is not allowed: the mse"):
    methods.validate(cfg, C)


def test_teacher_methods_require_teacher(batch):
  zs, _, y, _ = batch
  cfg = methods.default_config()
  with pytest.raises(ValueError, match="needs teacher_logits"):
    _run(cfg, zs, y)
