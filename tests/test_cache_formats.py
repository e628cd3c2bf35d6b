"""kd_jax.train.cache_formats: what each teacher-cache format keeps, and the teacher logits a
method reads back, against the full logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import methods
from kd_jax.train import cache_formats as cf


def _teacher(batch=16, num_classes=20, seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, num_classes)).astype(np.float32) * scale
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  return jnp.asarray(logits), jnp.asarray(labels)


def _softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_sizes_and_class_types():
  assert cf.class_dtype(10) == np.uint8 and cf.class_dtype(256) == np.uint8
  assert cf.class_dtype(257) == np.uint16 and cf.class_dtype(1000) == np.uint16
  assert cf.class_dtype(70_000) == np.uint32
  # ImageNet's shapes: k = 10 keeps 48 bytes of a row of 1000 logits (4000 in float32).
  assert cf.bytes_per_example("topk", 1000, 10) == 10 * 2 + 10 * 2 + 4 + 4
  assert cf.bytes_per_example("sampled", 1000, 10) == 20
  assert cf.bytes_per_example("float16", 1000, 10) == 2000
  assert cf.bytes_per_example("float32", 1000, 10) == 4000
  with pytest.raises(ValueError, match="teacher_cache.format='top5' is not allowed"):
    cf.row_spec("top5", 10, 5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_topk_keeps_the_top_k_and_the_label_exactly_and_spreads_the_rest_evenly(temperature):
  """At the temperature the rows were written at (the method's), as KD-topk's target."""
  logits, labels = _teacher()
  k = 4
  rows = cf.pack("topk", logits, labels, k=k, temperature=temperature)
  assert rows["values"].dtype == jnp.float16 and rows["classes"].dtype == jnp.uint8
  dense = np.asarray(cf.unpack("topk", rows, labels, 20, temperature=temperature))
  p, q = _softmax(logits, temperature), _softmax(dense, temperature)
  np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-6)
  for i in range(len(labels)):
    kept = set(np.argsort(-np.asarray(logits[i]))[:k]) | {int(labels[i])}
    rest = sorted(set(range(20)) - kept)
    # Exact up to the float16 rounding of the top k's log-probabilities: a relative error of
    # at most |log p| 2^-11 on p (the label's is float32).
    bound = {c: abs(np.log(p[i, c])) * 2.0**-11 + 1e-6 for c in kept}
    for c in kept:
      np.testing.assert_allclose(q[i, c], p[i, c], rtol=bound[c])
    np.testing.assert_allclose(q[i, rest].sum(), p[i, rest].sum(), rtol=0,
                               atol=sum(p[i, c] * bound[c] for c in kept))
    np.testing.assert_allclose(q[i, rest], q[i, rest[0]], rtol=1e-5)  # evenly spread


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_topk_with_k_equal_to_c_gives_the_full_logits(temperature):
  logits, labels = _teacher(num_classes=12)
  rows = cf.pack("topk", logits, labels, k=12, temperature=temperature)
  dense = cf.unpack("topk", rows, labels, 12, temperature=temperature)
  # T (float16 log-probabilities at T plus the float32 lse): T 2^-11 |z / T - lse| (< 16 here)
  np.testing.assert_allclose(dense, logits, rtol=0, atol=16 * 2.0**-11)
  np.testing.assert_allclose(cf.unpack("float32", cf.pack("float32", logits, labels), labels,
                                       12), logits)


@pytest.mark.parametrize("name", ["kd", "lr", "dkd", "kd_pt", "kd_topk", "kd_pt_sim",
                                  "kd_sim"])
def test_every_method_reads_the_same_target_from_a_full_topk_row(name):
  """At k = C a top-k row holds the whole row: every method's objective matches the live
  teacher's to the float16 rounding of the logits."""
  logits, labels = _teacher(num_classes=10)
  student = jnp.asarray(np.random.default_rng(1).normal(size=logits.shape), jnp.float32)
  config = methods.default_config()
  config.name = name
  similarity = jnp.full((10, 10), 1 / 9) * (1 - jnp.eye(10))
  live = methods.per_example_losses(config, student, labels, logits, epoch=100.0,
                                    class_similarity=similarity)["loss"]
  t = methods.teacher_temperature(config)  # the trainer writes and reads the rows at it
  dense = cf.unpack("topk", cf.pack("topk", logits, labels, k=10, temperature=t), labels, 10,
                    temperature=t)
  cached = methods.per_example_losses(config, student, labels, dense, epoch=100.0,
                                      class_similarity=similarity)["loss"]
  np.testing.assert_allclose(cached, live, rtol=5e-3, atol=5e-4)


def test_sampled_draws_are_fixed_by_their_keys():
  logits, labels = _teacher()
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(jnp.arange(16))
  a = cf.pack("sampled", logits, labels, k=8, temperature=2.0, keys=keys)["classes"]
  b = cf.pack("sampled", logits, labels, k=8, temperature=2.0, keys=keys)["classes"]
  np.testing.assert_array_equal(a, b)
  assert np.all(np.diff(np.asarray(a, np.int32), axis=-1) >= 0)  # sorted
  other = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(8), i))(jnp.arange(16))
  assert not np.array_equal(a, cf.pack("sampled", logits, labels, k=8, temperature=2.0,
                                       keys=other)["classes"])


def _sampled_targets(logits, labels, k, temperature, num_draws):
  """`[num_draws, B, C]`: `p(unpack(sampled), T)` (= q_hat) for independent draws."""
  def one(seed):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
        jnp.arange(logits.shape[0]))
    rows = cf.pack("sampled", logits, labels, k=k, temperature=temperature, keys=keys)
    return cf.unpack("sampled", rows, labels, logits.shape[-1], temperature=temperature)
  return jax.vmap(one)(jnp.arange(num_draws))


def test_sampled_target_is_unbiased():
  """The mean over draws of q_hat = p(unpack(rows), T) is the teacher's p(z, T), within
  5 standard errors of k * num_draws independent draws."""
  logits, labels = _teacher(batch=4, num_classes=10, scale=2.0)
  k, temperature, num_draws = 5, 2.0, 4000
  dense = _sampled_targets(logits, labels, k, temperature, num_draws)
  q_hat = np.asarray(jax.nn.softmax(dense / temperature, axis=-1))
  counts = np.asarray(jnp.isfinite(dense))
  assert counts.sum(-1).max() <= k  # at most k classes carry mass
  q = _softmax(logits, temperature)
  error = 5 * np.sqrt(q * (1 - q) / (k * num_draws))
  assert np.all(np.abs(q_hat.mean(0) - q) <= error + 1e-6), np.abs(q_hat.mean(0) - q).max()
  # and one draw is far from q: the estimate is noisy, the mean is not
  assert np.abs(q_hat[0] - q).max() > 0.05


def test_sampled_kd_gradient_equals_the_full_gradient_in_expectation():
  logits, labels = _teacher(batch=4, num_classes=10, scale=2.0)
  student = jnp.asarray(np.random.default_rng(3).normal(size=logits.shape), jnp.float32)
  config = methods.default_config()  # kd at T = 4
  temperature, k, num_draws = float(config.temperature), 8, 3000

  def grad(teacher_logits):
    loss = lambda z: jnp.sum(methods.per_example_losses(config, z, labels, teacher_logits)[
        "loss"])
    return jax.grad(loss)(student)

  full = np.asarray(grad(logits))
  dense = _sampled_targets(logits, labels, k, temperature, num_draws)
  grads = np.asarray(jax.vmap(grad)(dense))
  assert np.all(np.isfinite(grads))
  error = 5 * grads.std(0) / np.sqrt(num_draws)
  assert np.all(np.abs(grads.mean(0) - full) <= error + 1e-6)
  assert np.abs(grads[0] - full).max() > 10 * error.max()  # one draw alone is not the mean
