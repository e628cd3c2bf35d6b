"""PyTorch -> Flax checkpoint import: logits of RepDistiller/torchvision references match."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from kd_jax import models  # pylint: disable=wrong-import-position
from tests import torch_reference  # pylint: disable=wrong-import-position

CIFAR_MODELS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                "resnet110", "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1",
                "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "ResNet50_cifar"]
WRAPPINGS = ["raw", "model", "state_dict"]


def _save(state_dict, path, wrapping, data_parallel=False):
  if data_parallel:
    state_dict = {f"module.{k}": v for k, v in state_dict.items()}
  payload = {"raw": state_dict,
             "model": {"model": state_dict, "epoch": 240, "best_acc": 73.2},
             "state_dict": {"state_dict": state_dict, "epoch": 90}}[wrapping]
  torch.save(payload, path)


def _compare(name, num_classes, tmp_path, wrapping, size, data_parallel=False):
  reference = torch_reference.randomize(torch_reference.build(name, num_classes))
  path = tmp_path / f"{name}.pth"
  _save(reference.state_dict(), path, wrapping, data_parallel)
  variables = models.load_torch_checkpoint(str(path), name, num_classes)

  x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x)).numpy()
  model = models.create(name, num_classes)
  actual = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False))
  scale = np.abs(expected).max()
  assert scale > 1e-3  # the comparison is not between two vanishing outputs
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * scale)
  # Parameter counts agree with torch's (trainable tensors; BN running stats excluded).
  flax_count = sum(p.size for p in jax.tree.leaves(variables["params"]))
  assert flax_count == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_cifar_logits_match_torch(name, tmp_path):
  wrapping = WRAPPINGS[CIFAR_MODELS.index(name) % 3]
  size = 16 if name == "ResNet50_cifar" else 32  # adaptive pool; 16x16 keeps it fast
  _compare(name, 100, tmp_path, wrapping, size=size,
           data_parallel=CIFAR_MODELS.index(name) % 2 == 1)


def test_vgg_64x64_uses_the_fourth_pool(tmp_path):
  _compare("vgg8", 10, tmp_path, "model", size=64)


@pytest.mark.parametrize("name,size", [("ResNet18", 64)])
def test_imagenet_logits_match_torch(name, size, tmp_path):
  _compare(name, 1000, tmp_path, "state_dict", size=size)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet34", "ResNet50"])
def test_imagenet_slow_logits_match_torch(name, tmp_path):
  _compare(name, 1000, tmp_path, "raw", size=64)


def _resnet8_state_dict(num_classes=10):
  reference = torch_reference.randomize(torch_reference.build("resnet8", num_classes))
  return {k: v.numpy() for k, v in reference.state_dict().items()}


def test_convert_state_dict_needs_no_torch_tensors():
  state_dict = _resnet8_state_dict()
  variables = models.convert_state_dict(state_dict, "resnet8", 10)
  assert set(variables) == {"params", "batch_stats"}
  np.testing.assert_array_equal(variables["params"]["classifier"]["kernel"],
                                state_dict["fc.weight"].T)
  np.testing.assert_array_equal(variables["params"]["layer2_0"]["downsample_0"]["kernel"],
                                state_dict["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["layer1_0"]["bn2"]["var"],
                                state_dict["layer1.0.bn2.running_var"])


def test_wrong_class_count_names_both_counts():
  with pytest.raises(ValueError, match=r"10 classes but num_classes=100"):
    models.convert_state_dict(_resnet8_state_dict(10), "resnet8", 100)


def test_missing_tensor_is_named():
  state_dict = _resnet8_state_dict()
  del state_dict["layer1.0.bn1.running_mean"]
  with pytest.raises(ValueError, match=r"no torch tensor for .*batch_stats/layer1_0/bn1/mean"):
    models.convert_state_dict(state_dict, "resnet8", 10)


def test_extra_tensor_is_named():
  state_dict = _resnet8_state_dict()
  state_dict["layer4.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"unused torch tensors \['layer4.0.conv1.weight'\]"):
    models.convert_state_dict(state_dict, "resnet8", 10)


def test_wrong_shape_is_named():
  state_dict = _resnet8_state_dict()
  state_dict["conv1.weight"] = np.zeros((16, 3, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r"shape mismatches .*conv1.weight"):
    models.convert_state_dict(state_dict, "resnet8", 10)


def test_model_without_torch_counterpart():
  with pytest.raises(ValueError, match="no PyTorch counterpart"):
    models.convert_state_dict({}, "mlp_small", 10)


def test_prefix_selects_a_submodel(tmp_path):
  state_dict = torch_reference.randomize(torch_reference.build("resnet8", 10)).state_dict()
  distiller = {f"module.student.{k}": v for k, v in state_dict.items()}
  distiller["module.teacher.fc.weight"] = torch.zeros(10, 64)
  torch.save({"model": distiller}, tmp_path / "distiller.pth")
  variables = models.load_torch_checkpoint(str(tmp_path / "distiller.pth"), "resnet8", 10,
                                           prefix="student.")
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                state_dict["conv1.weight"].numpy().transpose(2, 3, 1, 0))


def test_without_torch_the_error_says_how_to_install(monkeypatch, tmp_path):
  import builtins  # pylint: disable=g-import-not-at-top
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  with pytest.raises(ImportError, match=r"pip install 'kd_jax\[torch\]'"):
    models.load_torch_checkpoint(str(tmp_path / "x.pth"), "resnet8", 10)


@pytest.mark.parametrize("tensor, value, expected", [
    ("fc.weight", np.nan, r"non-finite values \(NaN or inf\) in params/classifier/kernel"),
    ("layer1.0.bn1.running_mean", np.inf, "non-finite values .* batch_stats/layer1_0/bn1/mean"),
    ("layer1.0.bn1.running_var", -1.0,
     "negative BatchNorm variances in batch_stats/layer1_0/bn1/var"),
])
def test_weights_that_are_not_finite_or_negative_variances_are_refused(tensor, value,
                                                                       expected):
  """Such a .pth imported silently and taught a student NaN."""
  state_dict = _resnet8_state_dict()
  state_dict[tensor][0] = value
  with pytest.raises(ValueError, match=rf"cannot import a torch state_dict into 'resnet8': "
                                       rf"{expected}"):
    models.convert_state_dict(state_dict, "resnet8", 10)
