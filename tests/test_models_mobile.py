"""MobileNetV2 (mobile_half), ShuffleV1, ShuffleV2 and ImageNet MobileNetV1 against PyTorch.

The PyTorch references (torch_reference_mobile.py) carry RepDistiller's / mdistiller's module names,
so a random torch model saved as a .pth must load through `load_torch_checkpoint` and give the
same eval logits, the same train-mode (batch statistics) logits, the same running means and the
same gradients. Eval logits are checked in float32 for all four models; train mode and
gradients in float64, for ShuffleV2 by default and for the other three with `-m slow` (each
compiles its backward pass for 10-17 s on a busy 2-core CPU).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from kd_jax.models import shufflenet

torch = pytest.importorskip("torch")
import torch_reference_mobile as torch_ref

# name: (torch reference, num_classes, input side, exact trainable parameters, published M)
CASES = {
    "MobileNetV2": (torch_ref.MobileNetV2, 100, 32, 812_836, 0.81),
    "ShuffleV1": (torch_ref.ShuffleV1, 100, 32, 949_258, 0.95),
    "ShuffleV2": (torch_ref.ShuffleV2, 100, 32, 1_355_528, 1.36),
    "MobileNetV1": (torch_ref.MobileNetV1, 1000, 224, 4_231_976, 4.23),
}


@pytest.fixture(autouse=True)
def _torch_single_thread():
  # torch's intra-op thread pool on a busy 2-core machine made one float64 forward/backward
  # of ShuffleV2 take 60 s instead of 0.14 s (measured); restored after each test.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _abstract_variables(name, num_classes, side, **options):
  model = models.create(name, num_classes, **options)
  x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
  return model, jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def _num_params(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_count_matches_torch_and_published(name):
  torch_module, num_classes, side, exact, published = CASES[name]
  _, variables = _abstract_variables(name, num_classes, side)
  count = _num_params(variables["params"])
  assert count == exact
  assert count == torch_ref.count_params(torch_module(num_classes))
  assert round(count / 1e6, 2) == published
  assert models.info(name).input_kind == "image"


@pytest.mark.parametrize("name", list(CASES))
def test_train_mode_shapes_and_updated_statistics(name):
  # Traced only (eval_shape): every model's train=True path, without compiling it.
  _, num_classes, side, _, _ = CASES[name]
  model, variables = _abstract_variables(name, num_classes, side)
  x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
  (logits, features), updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, return_features=True, mutable=["batch_stats"]),
      variables, x)
  assert logits.shape == (2, num_classes) and features.shape[0] == 2
  assert (jax.tree.structure(updates["batch_stats"])
          == jax.tree.structure(variables["batch_stats"]))


@pytest.mark.parametrize("name", list(CASES))
def test_bfloat16_compute_keeps_float32_params(name):
  _, num_classes, side, _, _ = CASES[name]
  model, variables = _abstract_variables(name, num_classes, side, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
  logits, features = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True),
                                    variables, x)
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32  # layers.linear
  assert features.shape[0] == 2 and features.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_channel_shuffle_is_torchs_permutation():
  x = np.arange(2 * 12 * 3 * 5, dtype=np.float32).reshape(2, 12, 3, 5)  # NCHW
  for groups in (2, 3, 4):
    expected = torch_ref.channel_shuffle(torch.from_numpy(x), groups).numpy()
    got = shufflenet.channel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), groups)
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), expected)
  with pytest.raises(ValueError, match="groups=5"):
    shufflenet.channel_shuffle(jnp.zeros((1, 12)), 5)


def test_bad_options_raise():
  with pytest.raises(ValueError, match="net_size=0.7"):
    models.create("ShuffleV2", 100, net_size=0.7)
  assert models.info("MobileNetV2").torch_classifier == "classifier.0"
  assert models.info("ShuffleV1").torch_classifier == "linear"
  assert models.info("ShuffleV2").torch_classifier == "linear"
  assert models.info("MobileNetV1").torch_classifier == "fc"


def _assert_close(got, expected, rtol, what):
  """Max abs error relative to the largest reference magnitude (logits, gradients)."""
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  assert got.shape == expected.shape, what
  scale = max(np.abs(expected).max(), 1e-12)
  error = np.abs(got - expected).max() / scale
  assert error <= rtol, f"{what}: relative error {error:.2e} > {rtol}"


def _random_torch_model(name):
  torch_module, num_classes, side, _, _ = CASES[name]
  generator = torch.Generator().manual_seed(sum(map(ord, name)))
  net = torch_ref.randomize_(torch_module(num_classes), generator).eval()
  rng = np.random.RandomState(0)
  x = rng.randn(2, side, side, 3).astype(np.float32)
  return net, num_classes, x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("name", list(CASES))
def test_torch_checkpoint_round_trip(name, tmp_path):
  """Random torch weights and BN statistics -> .pth -> Flax: the same eval logits (float32)."""
  net, num_classes, x, x_nchw = _random_torch_model(name)
  path = tmp_path / f"{name}.pth"
  torch.save({"model": net.state_dict(), "epoch": 240}, path)  # RepDistiller's layout
  variables = models.load_torch_checkpoint(str(path), name, num_classes)
  with torch.no_grad():
    expected = net(x_nchw).numpy()
  model = models.create(name, num_classes)
  logits, features = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
  _assert_close(logits, expected, 1e-4, "eval logits")
  head = variables["params"]["classifier"]
  assert features.shape == (2, head["kernel"].shape[0])
  _assert_close(features @ head["kernel"] + head["bias"], logits, 1e-5, "features -> logits")


# One model in the default run (ShuffleV2: split, concat and shuffle); the others compile for
# ~10 s each on CPU, so they run with -m slow.
@pytest.mark.parametrize("name", [
    "ShuffleV2",
    *[pytest.param(n, marks=pytest.mark.slow) for n in ("MobileNetV2", "ShuffleV1", "MobileNetV1")],
])
def test_train_mode_and_gradients_match_torch(name):
  """train=True: batch-statistics logits, updated running means and parameter gradients of
  loss = sum(logits * weights) equal torch's train-mode ones.

  Compared in float64 on both sides: with batch statistics over 2 examples the float32
  gradients of both frameworks are only good to a few percent of the float64 ones (measured),
  which would hide real differences. float64 agreement is ~1e-7 (worst leaf, measured).
  """
  net, num_classes, x, x_nchw = _random_torch_model(name)
  variables = models.convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()},
                                        name, num_classes)
  weights = np.random.RandomState(1).randn(2, num_classes)
  net.double().train()
  torch_logits = net(x_nchw.double())
  (torch_logits * torch.from_numpy(weights)).sum().backward()
  buffers = {k: v.numpy() for k, v in net.state_dict().items() if "running" in k}
  torch_grads = {k: p.grad.numpy() for k, p in net.named_parameters()}
  # The importer maps torch names to Flax leaves; reuse it for the updated stats and grads.
  torch_after = models.convert_state_dict({**torch_grads, **buffers}, name, num_classes)

  with jax.enable_x64(True):
    model = models.create(name, num_classes, dtype=jnp.float64)

    def loss(params, batch_stats, x, weights):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats"])
      return jnp.sum(logits * weights), (logits, updates["batch_stats"])

    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    grads, (logits, stats) = jax.jit(jax.grad(loss, has_aux=True))(
        variables["params"], variables["batch_stats"], x.astype(np.float64), weights)
    assert logits.dtype == jnp.float64
  _assert_close(logits, torch_logits.detach().numpy(), 1e-6, "train-mode logits")
  # Running means follow torch exactly (momentum 0.1 == Flax 0.9). Running variances do not:
  # torch stores the unbiased batch variance, Flax the biased one.
  flat_stats = dict(jax.tree_util.tree_leaves_with_path(stats))
  for key, expected in jax.tree_util.tree_leaves_with_path(torch_after["batch_stats"]):
    if key[-1].key == "mean":
      _assert_close(flat_stats[key], expected, 1e-6, f"running mean {jax.tree_util.keystr(key)}")
  flat_grads = dict(jax.tree_util.tree_leaves_with_path(grads))
  largest = max(np.abs(g).max() for g in jax.tree.leaves(torch_after["params"]))
  for key, expected in jax.tree_util.tree_leaves_with_path(torch_after["params"]):
    # Some gradients are exactly 0 (a BN bias feeding straight into another BN): compare those
    # on the scale of the largest gradient.
    error = np.abs(np.asarray(flat_grads[key]) - expected).max()
    scale = max(np.abs(expected).max(), 1e-6 * largest)
    assert error <= 1e-5 * scale, f"gradient {jax.tree_util.keystr(key)}: {error:.2e} / {scale:.2e}"
