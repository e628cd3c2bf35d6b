"""The method table against NumPy written from SPEC.md's objectives, plus validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import methods

C, B = 7, 12


def _softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _kl(p, q):
  return np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0), -1)


def _ce(z, y):
  return -np.log(_softmax(z)[np.arange(len(y)), y])


def _revise(q, y, eta):
  beta = eta / (q.max(-1) - q[np.arange(len(y)), y] + 1)
  return beta[:, None] * q + (1 - beta[:, None]) * np.eye(q.shape[1])[y]


def _similarity(kernel, tau):
  w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
  cos = w.T @ w / tau
  np.fill_diagonal(cos, -np.inf)
  return _softmax(cos)


def _reference(cfg, zs, zt, y, sim, epoch):
  """Per-example objective of each method, straight from SPEC.md."""
  T, n = cfg.temperature, {"kd_ds": "kd", "lr_ds": "lr", "dkd_lr_ds": "dkd_lr"}.get(cfg.name, cfg.name)
  ce = _ce(zs, y)
  hot = np.eye(C)[y]
  ps = _softmax(zs, T)
  q = _softmax(zt, T)
  if n == "ce":
    return ce
  if n == "ls":
    eps = cfg.label_smoothing
    return -np.sum(((1 - eps) * hot + eps / C) * np.log(_softmax(zs)), -1)
  if n == "tsd":
    p = np.sort(_softmax(zs), -1)[:, ::-1]
    u = cfg.tsd_eta * min(1.0, epoch / cfg.tsd_warmup_epochs)
    return ce + u * (p[:, 0] - p[:, 1:1 + cfg.tsd_num_secondary].mean(-1))
  if n in ("lr", "dkd_lr") or cfg.revise:
    q = _revise(q, y, cfg.eta)
  if n in ("dkd", "dkd_lr"):
    qy, sy = q[np.arange(B), y], ps[np.arange(B), y]
    tckd = _kl(np.stack([qy, 1 - qy], -1), np.stack([sy, 1 - sy], -1))
    qn, sn = q * (1 - hot), ps * (1 - hot)
    nckd = _kl(qn / qn.sum(-1, keepdims=True), np.where(hot > 0, 1, sn / sn.sum(-1, keepdims=True)))
    warm = min(1.0, epoch / cfg.dkd_warmup_epochs)
    return cfg.dkd_ce_weight * ce + warm * T**2 * (cfg.dkd_alpha * tckd + cfg.dkd_beta * nckd)
  if n == "kd_pt":
    qy = q[np.arange(B), y][:, None]
    q = hot * qy + (1 - hot) * (1 - qy) / (C - 1)
  elif n == "kd_sim":
    q = (1 - cfg.sim_epsilon) * hot + cfg.sim_epsilon * sim[y]
  elif n == "kd_pt_sim":
    qy = q[np.arange(B), y][:, None]
    q = hot * qy + (1 - qy) * sim[y]
  elif n == "kd_topk":
    keep = np.argsort(-q, -1)[:, :cfg.topk]
    mask = np.zeros_like(q, bool)
    np.put_along_axis(mask, keep, True, -1)
    rest = (1 - np.where(mask, q, 0).sum(-1, keepdims=True)) / (C - cfg.topk)
    q = np.where(mask, q, rest)
  return cfg.ce_weight * ce + cfg.kd_weight * T**2 * _kl(q, ps)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  zs = rng.normal(size=(B, C)) * 2
  zt = rng.normal(size=(B, C)) * 3
  y = rng.integers(0, C, size=B)
  kernel = rng.normal(size=(5, C))
  return zs, zt, y, kernel


@pytest.mark.parametrize("name, revise", [  # revision applies to teacher-based methods only
    (name, revise) for name in methods.NAMES for revise in (False, True)
    if methods.needs_teacher(name) or not revise])
def test_method_matches_numpy(batch, name, revise):
  zs, zt, y, kernel = batch
  cfg = methods.default_config()
  cfg.name, cfg.revise, cfg.topk = name, revise, 3
  methods.validate(cfg, C)
  sim = _similarity(kernel, cfg.sim_temperature)
  epoch = 2.5
  out = jax.jit(lambda s, t: methods.per_example_losses(
      cfg, s, jnp.asarray(y), t, epoch=epoch, class_similarity=jnp.asarray(sim, jnp.float32)))(
          jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32))
  np.testing.assert_allclose(out["loss"], _reference(cfg, zs, zt, y, sim, epoch), rtol=2e-5,
                             atol=1e-5)
  np.testing.assert_allclose(out["ce"], _ce(zs, y), rtol=1e-5)
  if methods.needs_teacher(name):
    np.testing.assert_allclose(out["rescale_weight"], 1 - _softmax(zt)[np.arange(B), y],
                               rtol=1e-5)


def test_teacher_mask_gives_plain_ce(batch):
  zs, zt, y, _ = batch
  cfg = methods.default_config()
  mask = np.arange(B) % 3 == 0
  out = methods.per_example_losses(cfg, jnp.asarray(zs), jnp.asarray(y), jnp.asarray(zt),
                                   teacher_mask=jnp.asarray(mask))
  full = methods.per_example_losses(cfg, jnp.asarray(zs), jnp.asarray(y), jnp.asarray(zt))
  np.testing.assert_allclose(out["loss"][mask], full["loss"][mask], rtol=1e-6)
  np.testing.assert_allclose(out["loss"][~mask], _ce(zs, y)[~mask], rtol=1e-5)


def test_lr_mse_form(batch):
  zs, zt, y, _ = batch
  cfg = methods.default_config()
  cfg.name, cfg.lr_form, cfg.temperature = "lr", "mse", 1.0
  out = methods.per_example_losses(cfg, jnp.asarray(zs), jnp.asarray(y), jnp.asarray(zt))
  correct = zt.argmax(-1) == y
  revised = _revise(_softmax(zt), y, cfg.eta)
  expected = np.where(correct, 0.1 * _ce(zs, y) + 4.0 * np.mean((zs - zt) ** 2, -1),
                      1.0 * np.mean((_softmax(zs) - revised) ** 2, -1))
  np.testing.assert_allclose(out["loss"], expected, rtol=2e-5)
  assert 0 < correct.sum() < B  # the random batch exercises both branches
  forced = zt.copy()
  forced[np.arange(B), y] += 100.0  # every teacher right: only the logit-MSE branch
  out = methods.per_example_losses(cfg, jnp.asarray(zs), jnp.asarray(y), jnp.asarray(forced))
  np.testing.assert_allclose(out["loss"], 0.1 * _ce(zs, y) + 4.0 * np.mean((zs - forced) ** 2, -1),
                             rtol=2e-5)


def test_gradient_flows_only_to_student(batch):
  zs, zt, y, _ = batch
  cfg = methods.default_config()
  cfg.name = "dkd_lr"
  loss = lambda s, t: methods.per_example_losses(cfg, s, jnp.asarray(y), t, epoch=30.0)["loss"].sum()
  g_s, g_t = jax.grad(loss, argnums=(0, 1))(jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32))
  assert np.abs(np.asarray(g_s)).sum() > 0
  np.testing.assert_array_equal(g_t, 0.0)


@pytest.mark.parametrize("field,value,match", [
    ("name", "fitnet", "method.name='fitnet'"),
    ("temperature", 0.0, "method.temperature=0.0"),
    ("temperature", -1.0, "must be > 0"),
    ("eta", 1.0, r"method.eta=1.0 is not allowed: must be in \(0, 1\)"),
    ("eta", 0.0, "method.eta=0.0"),
    ("topk", 7, r"method.topk=7 .* \[1, 6\]"),
    ("topk", 0, "method.topk=0"),
    ("label_smoothing", 1.5, "label_smoothing=1.5"),
    ("lr_form", "l1", "lr_form='l1'"),
])
def test_validate_rejects(field, value, match):
  cfg = methods.default_config()
  cfg.name = {"eta": "lr", "topk": "kd_topk"}.get(field, "kd")
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    methods.validate(cfg, C)


def test_teacher_methods_require_teacher(batch):
  zs, _, y, _ = batch
  cfg = methods.default_config()
  with pytest.raises(ValueError, match="needs teacher_logits"):
    methods.per_example_losses(cfg, jnp.asarray(zs), jnp.asarray(y))
