"""The trainer lowers for GPUs and TPUs from this CPU host (`jax.export`), with no CPU-only code.

Exported for platforms cuda and tpu, from abstract shapes (no array is computed): the jitted
train step exactly as kd_jax/train/loop.py builds it, for a CIFAR pair (resnet8x4 teacher,
resnet8 student, 100 classes) at float32 and bfloat16, with the teacher live and read from the
teacher-output cache; the eval step (with features, as data selection reads them); the
device kernels of data-selection scoring (kd_jax/selection.py); every method's step on a small
MLP pair. Each module must hold no CPU-only custom call and no CPU platform branch. Under
bfloat16 every add-reduction (average pooling, BatchNorm statistics, the classifier's bias
gradient, ...) accumulates in float32, read from the exported module's types. `precision`
reaches every convolution and matmul of every registered model. (That no path is chosen
with `jax.default_backend()` while tracing is tests/test_losses_export.py's check.)
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.interpreters import mlir as jax_mlir
from jax._src.lib.mlir import ir

from kd_jax import _influence, config_defaults, methods, models, selection
from kd_jax.train import cache_formats, parallel, teacher_cache
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib

PLATFORMS = ("cuda", "tpu")
BATCH, CLASSES = 8, 100
# Custom calls that every backend implements (sharding annotations of jit and shard_map).
PORTABLE_CUSTOM_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape",
                         "mhlo.topk", "TopK"}


def _export(fn, *args, platform):
  return jax.export.export(fn, platforms=(platform,))(*args)


def _module(exported) -> ir.Module:
  return ir.Module.parse(exported.mlir_module(), context=jax_mlir.make_ir_context())


def _ops(module: ir.Module):
  """Every operation of `module`, nested ones included (keep `module` alive while they are
  used: an operation does not hold its module)."""
  found = []

  def visit(op):
    found.append(op)
    for region in op.regions:
      for block in region.blocks:
        for inner in block.operations:
          visit(inner.operation)

  for op in module.body.operations:
    visit(op.operation)
  return found


def _element_type(value) -> str:
  return str(ir.RankedTensorType(value.type).element_type)


def assert_accelerator_only(exported, platform):
  """No CPU platform, no CPU branch, no custom call outside PORTABLE_CUSTOM_CALLS."""
  assert exported.platforms == (platform,)
  text = exported.mlir_module()
  assert "platform_index" not in text and "cpu" not in text.lower(), (
      sorted(set(re.findall(r"[\w.]*cpu[\w.]*", text.lower()))))
  targets = set(re.findall(r"stablehlo\.custom_call @([\w.$-]+)", text))
  targets |= set(re.findall(r'call_target_name = "([^"]+)"', text))
  assert targets <= PORTABLE_CUSTOM_CALLS, targets - PORTABLE_CUSTOM_CALLS


def add_reduction_types(exported) -> list[str]:
  """Element types of every reduce / reduce_window whose body adds (sums, means)."""
  types, module = [], _module(exported)
  for op in _ops(module):
    if op.name in ("stablehlo.reduce", "stablehlo.reduce_window"):
      body = [inner.operation.name for inner in op.regions[0].blocks[0].operations]
      if "stablehlo.add" in body:
        types += [_element_type(v) for v in op.operands]
  return types


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@functools.lru_cache(maxsize=8)
def _train_step(compute_dtype: str, cached, method_name: str = "kd",
                pair=("resnet8x4", "resnet8"), input_shape=(32, 32, 3), precision=None):
  """(jitted step, abstract state, abstract batch), as loop.train builds them."""
  config = config_defaults.get_config()
  teacher = state_lib.with_compute_dtype(models.create(pair[0], CLASSES), compute_dtype,
                                         precision)
  student = state_lib.with_compute_dtype(models.create(pair[1], CLASSES), compute_dtype,
                                         precision)
  config.optim.num_epochs = 240
  tx, _ = state_lib.make_optimizer(config.optim, steps_per_epoch=100)
  method = config_defaults.method(method_name)
  rows = {}
  if cached:  # a cache format: the batch brings the teacher's rows
    cached = "float16" if cached is True else cached
    teacher_fn = teacher_cache.teacher_fn(cached, CLASSES, 1.0)
    teacher_variables = None
    rows = {teacher_cache.FIELD_PREFIX + name: jax.ShapeDtypeStruct((BATCH, *shape), dtype)
            for name, (shape, dtype) in cache_formats.row_spec(cached, CLASSES, 10).items()}
  else:
    teacher_fn = state_lib.teacher_forward(teacher)
    teacher_variables = jax.eval_shape(
        lambda: state_lib.init_variables(teacher, jax.random.key(0), input_shape))
  selected = (jax.ShapeDtypeStruct((1000,), jnp.bool_) if methods.selects(method) else None)
  similarity = (jax.ShapeDtypeStruct((CLASSES, CLASSES), jnp.float32)
                if methods.needs_class_similarity(method.name) else None)
  state = jax.eval_shape(lambda: state_lib.create_train_state(
      student, tx, jax.random.PRNGKey(0), input_shape, teacher_fn=teacher_fn))
  state = state.replace(teacher_variables=teacher_variables, selected=selected,
                        class_similarity=similarity)
  replicated = parallel.replicated(parallel.make_mesh())
  step = jax.jit(functools.partial(step_lib.train_step, method=method, steps_per_epoch=100),
                 donate_argnums=0, out_shardings=(replicated, replicated))
  batch = dict(image=jax.ShapeDtypeStruct((BATCH, *input_shape), jnp.float32),
               label=jax.ShapeDtypeStruct((BATCH,), jnp.int32),
               index=jax.ShapeDtypeStruct((BATCH,), jnp.int32),
               mask=jax.ShapeDtypeStruct((BATCH,), jnp.bool_), **rows)
  return step, state, batch


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cached", [False, "float16", "topk", "sampled"],
                         ids=["live_teacher", "cached_float16", "cached_topk", "cached_sampled"])
def test_cifar_train_step_lowers_for_accelerators(platform, compute_dtype, cached):
  step, state, batch = _train_step(compute_dtype, cached)
  exported = _export(step, state, batch, platform=platform)
  assert_accelerator_only(exported, platform)
  text = exported.mlir_module()
  assert text.count("stablehlo.convolution") >= (14 if cached else 28)  # fwd + bwd
  reductions = add_reduction_types(exported)
  assert reductions and "bf16" not in reductions, sorted(set(reductions))
  if compute_dtype == "bfloat16":
    module = _module(exported)
    convolutions = [op for op in _ops(module) if op.name == "stablehlo.convolution"]
    assert {_element_type(op.operands[0]) for op in convolutions} == {"bf16"}


def test_bfloat16_pooling_and_classifier_bias_gradient_accumulate_in_float32():
  """The two sums the issue names, found by their shapes: resnet8's 8x8 average pool
  (reduce_window over [B, 8, 8, 64]) and the classifier's bias gradient (a reduce of the
  [B, 100] logit cotangent to [100])."""
  step, state, batch = _train_step("bfloat16", True)
  module = _module(_export(step, state, batch, platform="cuda"))
  ops = _ops(module)
  pools = [op for op in ops if op.name == "stablehlo.reduce_window"
           and list(ir.RankedTensorType(op.operands[0].type).shape) == [BATCH, 8, 8, 64]]
  assert pools and {_element_type(op.operands[0]) for op in pools} == {"f32"}
  bias_grads = [op for op in ops if op.name == "stablehlo.reduce"
                and list(ir.RankedTensorType(op.operands[0].type).shape) == [BATCH, CLASSES]
                and list(ir.RankedTensorType(op.results[0].type).shape) == [CLASSES]]
  assert bias_grads and {_element_type(op.operands[0]) for op in bias_grads} == {"f32"}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_eval_step_and_selection_scoring_lower_for_accelerators(platform):
  model = state_lib.with_compute_dtype(models.create("resnet8", CLASSES), "bfloat16")
  variables = jax.eval_shape(lambda: state_lib.init_variables(model, jax.random.key(0),
                                                              (32, 32, 3)))
  images = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)
  for with_features in (False, True):
    eval_step = jax.jit(step_lib.make_eval_step(model, with_features))
    assert_accelerator_only(_export(eval_step, variables, images, platform=platform), platform)
  n, d = 64, 64
  f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
  params = (f32((d, CLASSES)), f32((CLASSES,)))
  features, weights = f32((n, d)), f32((n,))
  soft, hard = f32((n, CLASSES)), jax.ShapeDtypeStruct((n,), jnp.int32)
  kernels = [
      (_influence.chunk_grad_sum, (params, features, soft, weights)),
      (_influence.chunk_hvp_sum, (params, params, features, hard, weights)),
      (_influence.chunk_hessian_diagonal_sum, (params, features, soft, weights)),
      (_influence.chunk_scores, (params, params, features, soft)),
      (jax.jit(functools.partial(selection._margins, space="prob")), (f32((n, CLASSES)), hard)),
  ]
  for kernel, args in kernels:
    assert_accelerator_only(_export(kernel, *args, platform=platform), platform)


@pytest.mark.parametrize("method_name", methods.NAMES)
def test_every_method_step_lowers_for_accelerators(method_name):
  """Each method's train step (MLP pair, bfloat16, live teacher) for cuda and tpu at once."""
  step, state, batch = _train_step("bfloat16", False, method_name, ("mlp_large", "mlp_small"),
                                   (16,))
  exported = jax.export.export(step, platforms=PLATFORMS)(state, batch)
  assert exported.platforms == PLATFORMS
  text = exported.mlir_module()
  targets = set(re.findall(r"stablehlo\.custom_call @([\w.$-]+)", text))
  assert targets <= PORTABLE_CUSTOM_CALLS and "cpu" not in text.lower()
  assert "bf16" not in add_reduction_types(exported)


def _matmuls(text: str) -> list[str]:
  return [line for line in text.splitlines()
          if "stablehlo.convolution" in line or "stablehlo.dot_general" in line]


@pytest.mark.parametrize("name", models.names())
def test_precision_reaches_every_convolution_and_matmul(name):
  """A float32 model at precision="highest" asks for HIGHEST in every convolution and
  matmul of its forward pass; at None (the default) none of them asks for more than DEFAULT."""
  info = models.info(name)
  shape = info.input_shape or {"image": (32, 32, 3), "signal": (40, 1), "vector": (16,)}[
      info.input_kind]
  if name.startswith(("ResNet", "MobileNetV1")):
    shape = (64, 64, 3)  # the ImageNet models at a smaller size: the layers are the same
  texts = {}
  for precision in (None, "highest"):
    model = state_lib.with_compute_dtype(models.create(name, 10), "float32", precision)
    variables = jax.eval_shape(lambda m=model: m.init(jax.random.key(0),
                                                       jnp.zeros((1, *shape)), train=False))
    forward = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
    texts[precision] = jax.jit(forward).lower(
        _abstract(variables), jax.ShapeDtypeStruct((2, *shape), jnp.float32)).as_text()
  highest = _matmuls(texts["highest"])
  assert highest and all("HIGHEST" in line for line in highest), name
  assert not any("HIGH" in line for line in _matmuls(texts[None]))


def test_precision_is_a_checked_config_field():
  assert config_defaults.get_config().precision is None
  model = models.create("resnet8", 10)
  assert state_lib.with_compute_dtype(model, "float32", None) is model
  with pytest.raises(ValueError, match="precision='fastest' is not allowed: must be one of"):
    state_lib.with_compute_dtype(model, "float32", "fastest")
  np.testing.assert_equal(state_lib.PRECISIONS, (None, "default", "high", "highest"))


def test_config_precision_reaches_the_trainers_models(tmp_path):
  """`precision` of the config: the live teacher's forward pass asks for it, a run records
  it in its fingerprint, and a value that is not allowed stops the run before any step."""
  import types  # pylint: disable=g-import-not-at-top

  import trainer_util  # pylint: disable=g-import-not-at-top

  from kd_jax import pipeline  # pylint: disable=g-import-not-at-top
  from kd_jax.train import stage  # pylint: disable=g-import-not-at-top
  config = trainer_util.tiny_config(precision="highest", num_epochs=1)
  stage_config = stage.stage_config(config, "student")
  teacher = types.SimpleNamespace(model=models.create("mlp_large", 10))
  forward = stage.live_teacher_fn(stage_config, teacher)
  variables = jax.eval_shape(lambda: state_lib.init_variables(teacher.model,
                                                              jax.random.key(0), (16,)))
  text = jax.jit(forward).lower(variables, dict(
      image=jax.ShapeDtypeStruct((4, 16), jnp.float32))).as_text()
  assert _matmuls(text) and all("HIGHEST" in line for line in _matmuls(text))
  summary = pipeline.run(config, str(tmp_path / "run"))
  assert summary["student"]["fingerprint"]["precision"] == "highest"
  with pytest.raises(ValueError, match="precision='fastest' is not allowed"):
    pipeline.run(trainer_util.tiny_config(precision="fastest"), str(tmp_path / "bad"))
  assert not (tmp_path / "bad" / "teacher" / "checkpoints").exists()
