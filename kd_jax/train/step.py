"""The jitted train and eval steps.

One train step = teacher forward (eval mode, `stop_gradient`) -> the method's per-example
objective (`kd_jax.methods.per_example_losses`) -> masked mean over the real examples of the
global batch -> student update. The teacher forward is a separate function
`teacher_fn(teacher_inputs, batch) -> logits [B, C]`, so it can be swapped for a lookup of
stored soft labels keyed by `batch["index"]` without touching the rest of the step.

Running sums for logging live in an `accum` pytree updated inside the step (no host sync per
step): `{"window": sums since the last log, "epoch": sums since the epoch began}`, each with
`count` (real examples), `loss`, `correct`, `nonfinite` (steps whose loss was NaN/inf, whose
update was skipped) and one sum per diagnostic of the method (`ce`, `teacher_term`, `beta`...).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import methods
from kd_jax.train.state import TrainState, make_variables

TeacherFn = Callable[[object, dict], jax.Array]


def teacher_forward(model) -> TeacherFn:
  """`teacher_fn` that runs `model` in eval mode on `batch["image"]` (float32 logits)."""
  def forward(variables, batch):
    return model.apply(variables, batch["image"], train=False).astype(jnp.float32)
  return forward


def teacher_mask_for(batch: dict, selected):
  """Per-example `[B]` bool: True where the teacher supervises the example (data selection).

  `batch["teacher_mask"]` wins when the pipeline provides one; otherwise `selected` (bool `[N]`
  over the training set's indices, or None for "every example") is looked up at
  `batch["index"]`; padding (index -1) is never selected.
  """
  if "teacher_mask" in batch:
    return batch["teacher_mask"]
  if selected is None:
    return None
  index = batch["index"]
  return jnp.where(index >= 0, selected[jnp.maximum(index, 0)], False)


def metric_keys(method_config, num_classes: int) -> tuple[str, ...]:
  """Names of the per-example diagnostics that `methods.per_example_losses` returns."""
  logits = jax.ShapeDtypeStruct((2, num_classes), jnp.float32)
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)
  teacher = logits if methods.needs_teacher(method_config.name) else None
  similarity = (jax.ShapeDtypeStruct((num_classes, num_classes), jnp.float32)
                if methods.needs_class_similarity(method_config.name) else None)
  shapes = jax.eval_shape(
      lambda z, y, t, s: methods.per_example_losses(method_config, z, y, t, epoch=0.0,
                                                    class_similarity=s),
      logits, labels, teacher, similarity)
  return tuple(sorted(set(shapes) | {"loss", "correct", "count", "nonfinite"}))


def init_accumulators(keys) -> dict:
  zeros = {key: np.zeros((), np.float32) for key in keys}
  return {"window": dict(zeros), "epoch": dict(zeros)}


def reset(accum: dict, which: str) -> dict:
  """`accum` with the sums of `which` ("window" or "epoch") set to zero (jit this)."""
  return {**accum, which: jax.tree.map(jnp.zeros_like, accum[which])}


def masked_mean(values, mask):
  """`sum(values * mask) / max(sum(mask), 1)` over the batch axis: padding is excluded."""
  weights = mask.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def make_train_step(model, method_config, steps_per_epoch: int,
                    teacher_fn: TeacherFn | None = None):
  """Builds `train_step(state, accum, batch, teacher_inputs, class_similarity, selected,
  rng) -> (state, accum)`; jit it once.

  batch: image `[B, ...]`, label int32 `[B]`, index int32 `[B]`, mask bool `[B]` (False on
  padding); optionally teacher_mask bool `[B]`. teacher_inputs is whatever `teacher_fn`
  reads (the teacher's variables); class_similarity `[C, C]` or None; selected bool `[N]` or
  None; rng a PRNG key folded with the step for dropout.
  The update is skipped (state unchanged) when the loss is not finite; `nonfinite` counts it.
  """
  method_config = method_config.copy_and_resolve_references()
  uses_teacher = methods.needs_teacher(method_config.name)

  def train_step(state: TrainState, accum, batch, teacher_inputs, class_similarity, selected,
                 rng):
    epoch = state.step.astype(jnp.float32) / steps_per_epoch
    labels, mask = batch["label"], batch["mask"]
    teacher_logits = None
    if uses_teacher:
      teacher_logits = jax.lax.stop_gradient(teacher_fn(teacher_inputs, batch))
    teacher_mask = teacher_mask_for(batch, selected)
    rngs = {"dropout": jax.random.fold_in(rng, state.step)}

    def loss_fn(params):
      variables = make_variables(params, state.batch_stats)
      if state.batch_stats:
        logits, updates = model.apply(variables, batch["image"], train=True, rngs=rngs,
                                      mutable=["batch_stats"])
      else:
        logits, updates = model.apply(variables, batch["image"], train=True, rngs=rngs), {}
      logits = logits.astype(jnp.float32)
      terms = methods.per_example_losses(method_config, logits, labels, teacher_logits,
                                         epoch=epoch, class_similarity=class_similarity,
                                         teacher_mask=teacher_mask)
      return masked_mean(terms["loss"], mask), (logits, terms, updates)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, terms, updates)), grads = grad_fn(state.params)
    new_state = state.apply_gradients(grads=grads,
                                      batch_stats=updates.get("batch_stats", state.batch_stats))
    finite = jnp.isfinite(loss)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)

    weights = mask.astype(jnp.float32)
    sums = {key: jnp.sum(value.astype(jnp.float32) * weights) for key, value in terms.items()}
    sums["correct"] = jnp.sum((jnp.argmax(logits, -1) == labels) * weights)
    sums["count"] = jnp.sum(weights)
    sums["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    accum = {which: {key: total + sums[key] for key, total in part.items()}
             for which, part in accum.items()}
    return new_state, accum

  return train_step


def make_eval_step(model, with_features: bool = False):
  """`eval_step(variables, images [B, ...]) -> logits [B, C]` float32, eval mode; with
  `with_features`, a dict of logits and the penultimate `features [B, D]` (float32)."""
  def eval_step(variables, images):
    if with_features:
      logits, features = model.apply(variables, images, train=False, return_features=True)
      return {"logits": logits.astype(jnp.float32), "features": features.astype(jnp.float32)}
    return model.apply(variables, images, train=False).astype(jnp.float32)
  return eval_step
