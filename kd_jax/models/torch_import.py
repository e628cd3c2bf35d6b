"""Import PyTorch (RepDistiller / mdistiller / torchvision) checkpoints into Flax variables.

THE NAMING RULE (every model family follows it, so one converter serves them all):

  A Flax submodule is named after the torch module path with "_" in place of ".", either
  flat or nested: torch `layer1.0.conv1.weight` <-> Flax `params/layer1_0/conv1/kernel`
  (or `params/layer1_0_conv1/kernel`). The converter joins the Flax path with "_" and
  the torch module path with "_" and matches the two strings, so nesting is free.
  The final Dense layer is always Flax `classifier`; `registry.info(name).torch_classifier`
  names its torch module (`fc`, `linear`, `classifier`, `classifier.0`, ...).

Leaves map by Flax leaf name:

  params/.../kernel   <- weight  Conv [O, I/g, *k] -> [*k, I/g, O]; Linear [O, I] -> [I, O]
  params/.../scale    <- weight  (BatchNorm)
  params/.../bias     <- bias
  batch_stats/.../mean <- running_mean
  batch_stats/.../var  <- running_var
  torch `num_batches_tracked` is ignored.

So a torch `nn.Sequential` index becomes part of a name (`downsample.0` -> `downsample_0`),
torch layers without parameters (ReLU, pooling) need no Flax name, and a torch Conv with
`bias=True` needs `use_bias=True` in Flax. Validation is strict: every Flax leaf is filled
exactly once with the same shape, no torch tensor is left unused, every value is finite and
every BatchNorm running variance is >= 0 (`invalid_weights`); the error lists names.
Flatten order differs (torch NCHW, Flax NHWC), so a Linear that reads a flattened spatial map
(not a globally pooled vector) cannot be imported by this rule; none of the zoo's
importable models has one.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.models import registry

_PARAM_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_LEAVES = {"mean": "running_mean", "var": "running_var"}
_IGNORED_TORCH_LEAVES = ("num_batches_tracked",)
_DEFAULT_INPUT_SHAPES = {"image": (32, 32, 3), "signal": (40, 1)}

_TORCH_MISSING = ("load_torch_checkpoint needs PyTorch: pip install 'kd_jax[torch]' "
                  "(torch==2.13.0). convert_state_dict works on NumPy arrays without it.")


def _key(module_path: str, leaf: str) -> str:
  """Canonical match key: module path with '.'/'/' -> '_', then '.' and the torch leaf."""
  return module_path.replace(".", "_").replace("/", "_") + "." + leaf


def _torch_key(torch_name: str, torch_classifier: str | None) -> str:
  module, _, leaf = torch_name.rpartition(".")
  if torch_classifier is not None and module == torch_classifier:
    module = "classifier"
  return _key(module, leaf)


def _to_flax(array: np.ndarray, flax_leaf: str) -> np.ndarray:
  """Torch layout -> Flax layout: weights [O, I, *k] -> [*k, I, O]; others unchanged."""
  if flax_leaf == "kernel" and array.ndim >= 2:
    return np.transpose(array, tuple(range(2, array.ndim)) + (1, 0))
  return array


def abstract_variables(name: str, num_classes: int,
                       input_shape: tuple[int, ...] | None = None) -> Mapping[str, Any]:
  """Shapes and dtypes of `create(name, num_classes)`'s variables, without any compute."""
  model_info = registry.info(name)
  if input_shape is None:
    input_shape = model_info.input_shape or _DEFAULT_INPUT_SHAPES.get(model_info.input_kind)
  if input_shape is None:
    raise ValueError(f"model {name!r} takes {model_info.input_kind} inputs of no fixed size; "
                     "pass input_shape=(D,)")
  model = registry.create(name, num_classes)
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def invalid_weights(variables: Mapping[str, Any], shown: int = 5) -> str:
  """What makes Flax `variables` ({params, batch_stats}) unusable as weights: leaves with
  NaN or inf, BatchNorm variances (`batch_stats/.../var`) below 0; '' when there is none.
  Names up to `shown` leaves of each kind."""
  nonfinite, negative = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(dict(variables)))[0]:
    array = np.asarray(leaf)
    if not np.issubdtype(array.dtype, np.inexact):
      continue
    name = "/".join(str(getattr(key, "key", key)) for key in path)
    if not np.all(np.isfinite(array)):
      nonfinite.append(name)
    elif name.startswith("batch_stats/") and name.endswith("/var") and np.any(array < 0):
      negative.append(name)

  def listed(names):
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more

  problems = []
  if nonfinite:
    problems.append(f"non-finite values (NaN or inf) in {listed(nonfinite)}")
  if negative:
    problems.append(f"negative BatchNorm variances in {listed(negative)}")
  return "; ".join(problems)


def _check_num_classes(state_dict, torch_classifier, num_classes):
  weight = state_dict.get(f"{torch_classifier}.weight")
  if weight is not None and weight.shape[0] != num_classes:
    raise ValueError(f"the checkpoint's classifier {torch_classifier!r} has {weight.shape[0]} "
                     f"classes but num_classes={num_classes}")


def convert_state_dict(state_dict: Mapping[str, np.ndarray], name: str, num_classes: int, *,
                       input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
  """Torch state_dict (NumPy arrays) -> Flax variables {'params', ['batch_stats']} of `name`.

  Args:
    state_dict: torch parameter/buffer name -> array, as `module.state_dict()` names them
      (a DataParallel 'module.' prefix is removed).
    name: a registered model with a torch counterpart (`info(name).torch_classifier`).
    num_classes: the classifier's output count; must equal the checkpoint's.
    input_shape: one example's shape for shape inference (default: the registry's).

  Returns:
    Nested dicts of jnp arrays with exactly the structure of `create(name, num_classes).init`.

  Raises:
    ValueError: class count mismatch, a Flax leaf with no tensor, a torch tensor with no
      Flax leaf (both listed by name), two torch tensors for one leaf, a shape mismatch, or
      weights that are not finite or BatchNorm variances below 0 (`invalid_weights`).
  """
  torch_classifier = registry.info(name).torch_classifier
  if torch_classifier is None:
    raise ValueError(f"model {name!r} has no PyTorch counterpart to import from")
  state_dict = {(k.removeprefix("module.")): np.asarray(v)
                for k, v in state_dict.items()}
  _check_num_classes(state_dict, torch_classifier, num_classes)

  by_key: dict[str, str] = {}
  for torch_name in state_dict:
    if torch_name.rpartition(".")[2] in _IGNORED_TORCH_LEAVES:
      continue
    key = _torch_key(torch_name, torch_classifier)
    if key in by_key:
      raise ValueError(f"torch tensors {by_key[key]!r} and {torch_name!r} both map to the "
                       f"Flax leaf {key!r}")
    by_key[key] = torch_name

  abstract = abstract_variables(name, num_classes, input_shape)
  unused = dict(by_key)
  missing, wrong_shape = [], []

  def fill(collection, leaf_names, tree, prefix=()):
    out = {}
    for child, value in tree.items():
      path = prefix + (child,)
      if isinstance(value, Mapping):
        out[child] = fill(collection, leaf_names, value, path)
        continue
      flax_name = f"{collection}/{'/'.join(path)}"
      key = _key("_".join(path[:-1]), leaf_names.get(child, child))
      torch_name = unused.pop(key, None)
      if torch_name is None:
        missing.append(flax_name)
        continue
      array = _to_flax(state_dict[torch_name], child)
      if array.shape != value.shape:
        wrong_shape.append(f"{torch_name} {state_dict[torch_name].shape} -> {flax_name} "
                           f"{array.shape} != {value.shape}")
        continue
      out[child] = jnp.asarray(array, dtype=value.dtype)
    return out

  variables = {}
  for collection, tree in abstract.items():
    leaf_names = {"params": _PARAM_LEAVES, "batch_stats": _STAT_LEAVES}.get(collection, {})
    variables[collection] = fill(collection, leaf_names, tree)
  problems = []
  if missing:
    problems.append(f"no torch tensor for Flax leaves {missing}")
  if unused:
    problems.append(f"unused torch tensors {sorted(unused.values())}")
  if wrong_shape:
    problems.append(f"shape mismatches {wrong_shape}")
  if not problems and (invalid := invalid_weights(variables)):
    problems.append(invalid)
  if problems:
    raise ValueError(f"cannot import a torch state_dict into {name!r}: " + "; ".join(problems))
  return variables


def _unwrap(checkpoint: Any) -> Mapping[str, Any]:
  """RepDistiller/mdistiller save {'model': state_dict, ...}; others {'state_dict': ...}."""
  for wrapper in ("model", "state_dict"):
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
      return checkpoint[wrapper]
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"checkpoint holds a {type(checkpoint).__name__}, not a state_dict")
  return checkpoint


def load_torch_checkpoint(path: str, name: str, num_classes: int, *, prefix: str = "",
                          input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
  """Reads a PyTorch .pth of model `name` into Flax variables (see `convert_state_dict`).

  Args:
    path: a file `torch.save`d with a raw state_dict, or a dict holding it under 'model'
      (RepDistiller, mdistiller) or 'state_dict'. Loaded with `weights_only=True`.
    name: registered model name; num_classes: its class count.
    prefix: keep only tensors under this module prefix and strip it, e.g. 'student.' for an
      mdistiller distiller checkpoint ('module.' is always stripped first).
    input_shape: see `convert_state_dict`.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(_TORCH_MISSING) from e
  checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  state_dict = {}
  for k, v in _unwrap(checkpoint).items():
    k = k.removeprefix("module.")
    if prefix:
      if not k.startswith(prefix):
        continue
      k = k[len(prefix):]
    if not isinstance(v, torch.Tensor):
      raise ValueError(f"state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
    v = v.detach().cpu()
    state_dict[k] = (v.float() if v.is_floating_point() else v).numpy()
  if not state_dict:
    raise ValueError(f"no tensors in {path!r}" + (f" under prefix={prefix!r}" if prefix else ""))
  return convert_state_dict(state_dict, name, num_classes, input_shape=input_shape)
