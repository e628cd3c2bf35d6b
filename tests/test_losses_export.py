"""Every loss and every method's objective, with its gradient, exported from this CPU host for
GPU and TPU (`jax.export`, float32 and bfloat16) carries no CPU-only code.

Two checks: no lowering holds a `custom_call` (the CPU-only kernels XLA:CPU offers are custom
calls; top-k lowers to the portable `chlo.top_k`), and the float32 one is the same text when
JAX reports another default backend while tracing, so no path is chosen with
`jax.default_backend()` (a CUDA export made on a CPU host once carried the CPU path).
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from kd_jax import losses, methods, targets

B, C, T = 64, 1000, 4.0   # large enough that the old CPU cost model chose its own top-k


def _loss_objectives():
  similarity = targets.class_similarity(jnp.eye(8, C), 1.0)
  table = {
      "cross_entropy": lambda z, t, y: losses.cross_entropy(z, y),
      "label_smoothing_cross_entropy": lambda z, t, y: losses.label_smoothing_cross_entropy(
          z, y, 0.1, "others"),
      "soft_cross_entropy": lambda z, t, y: losses.soft_cross_entropy(z, losses.softmax(t)),
      "kd": lambda z, t, y: losses.kd(z, t, T),
      "kl_to_targets": lambda z, t, y: losses.kl_to_targets(z, targets.revise(
          losses.softmax(t, T), y, 0.8), T),
      "tsd": lambda z, t, y: losses.tsd(z, 5),
      "tsd_label": lambda z, t, y: losses.tsd(z, 5, labels=y),
      "entropy": lambda z, t, y: losses.entropy(z),
      "dkd": lambda z, t, y: losses.dkd(z, t, y, 1.0, 8.0, T),
      "dkd_to_targets": lambda z, t, y: losses.dkd_to_targets(z, losses.softmax(t, T), y, 1.0,
                                                              8.0, T),
      "log_softmax": lambda z, t, y: losses.log_softmax(z, T).sum(-1),
      "targets": lambda z, t, y: losses.soft_cross_entropy(z, (
          targets.pt(losses.softmax(t), y) + targets.topk(losses.softmax(t), 3)
          + targets.smooth(y, C, 0.1) + targets.pt_sim(losses.softmax(t), y, similarity)
          + targets.sim(y, similarity, 0.1)) / 5),
  }
  return {f"losses.{name}": fn for name, fn in table.items()}


def _method_objectives():
  out = {}
  for name in methods.NAMES:   # (a *_ds name is its base method without a teacher_mask)
    if methods.uses_selection(name):
      continue
    config = methods.default_config()
    config.name = name
    similarity = targets.class_similarity(jnp.eye(8, C), 1.0)
    out[f"methods.{name}"] = (
        lambda z, t, y, config=config, similarity=similarity: methods.per_example_losses(
            config, z, y, t, epoch=3.0, class_similarity=similarity)["loss"])
  return out


OBJECTIVES = {**_loss_objectives(), **_method_objectives()}


def _exported_text(objective, dtype, platform):
  def value_and_grad(z, t, y):
    return jax.value_and_grad(lambda z: jnp.mean(objective(z, t, y)))(z)
  logits = jax.ShapeDtypeStruct((B, C), dtype)
  labels = jax.ShapeDtypeStruct((B,), jnp.int32)
  exported = export.export(jax.jit(value_and_grad), platforms=(platform,))(logits, logits, labels)
  text = exported.mlir_module()
  return re.sub(r"\s*loc\(#loc\d*\)|^#loc.*\n", "", text, flags=re.MULTILINE)  # source locations


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_gpu_and_tpu_exports_carry_no_cpu_code(name, dtype, monkeypatch):
  objective = OBJECTIVES[name]
  for platform in ("cuda", "tpu"):
    text = _exported_text(objective, dtype, platform)
    assert "custom_call" not in text, (name, platform, re.findall(r"custom_call @[\w.]+", text))
    assert "stablehlo" in text
    if dtype != jnp.float32:   # the path choice does not depend on the dtype
      continue
    backend = {"cuda": "gpu", "tpu": "tpu"}[platform]
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    assert _exported_text(objective, dtype, platform) == text, (name, platform)
    monkeypatch.undo()
