"""The jitted train and eval steps.

`train_step(state, batch, *, method, steps_per_epoch) -> (state, metrics)`: the teacher's
logits (`state.teacher_fn`, under stop_gradient), the method's per-example objective
(`kd_jax.methods.per_example_losses`), its mean over the real (non-padding) examples of the
global batch, and one optimizer update. Bind the keyword arguments with functools.partial and
jit it once with `donate_argnums=0`.

`metrics` are scalars: the step's means over real examples of `loss`, `accuracy` and the
method's diagnostics (`ce`, `teacher_term`, `beta`, ...), plus `count`, the number of real
examples. They stay on the device; the loop fetches them only when it logs
(`kd_jax.train.writer.MetricSums`).
"""

import jax
import jax.numpy as jnp
import optax

from kd_jax import methods
from kd_jax.train.state import TrainState, make_variables


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


def masked_mean(values, weights):
  """`sum(values * weights) / max(sum(weights), 1)` over the batch axis."""
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def train_step(state: TrainState, batch: dict, *, method, steps_per_epoch: int):
  """One update of `state` on `batch`; returns `(new_state, metrics)`.

  Args:
    state: `TrainState` (its teacher slot is used when the method needs a teacher).
    batch: image `[B, ...]`, label int32 `[B]`, index int32 `[B]` (dataset index, -1 on
      padding), mask bool `[B]` (False on padding); optionally teacher_mask bool `[B]`.
    method: the method block (`kd_jax.methods.default_config()` shape), static.
    steps_per_epoch: for the fractional epoch that warm-up ramps read.

  Returns:
    The updated state and the step's metrics (means over the real examples, and `count`).
  """
  epoch = state.step.astype(jnp.float32) / steps_per_epoch
  labels = batch["label"]
  weights = batch["mask"].astype(jnp.float32)
  teacher_logits = None
  if methods.needs_teacher(method.name):
    teacher_logits = jax.lax.stop_gradient(state.teacher_fn(state.teacher_variables, batch))
  teacher_mask = teacher_mask_for(batch, state.selected)
  rngs = {"dropout": jax.random.fold_in(state.rng, state.step)}

  def loss_fn(params):
    variables = make_variables(params, state.batch_stats)
    mutable = ["batch_stats"] if state.batch_stats else False
    out = state.apply_fn(variables, batch["image"], train=True, rngs=rngs, mutable=mutable)
    logits, updates = out if mutable else (out, {})
    logits = logits.astype(jnp.float32)
    terms = methods.per_example_losses(method, logits, labels, teacher_logits, epoch=epoch,
                                       class_similarity=state.class_similarity,
                                       teacher_mask=teacher_mask, example_mask=batch["mask"])
    return masked_mean(terms["loss"], weights), (logits, terms, updates)

  (_, (logits, terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, param_updates),
                            batch_stats=updates.get("batch_stats", state.batch_stats),
                            opt_state=opt_state)
  metrics = {key: masked_mean(value.astype(jnp.float32), weights)
             for key, value in terms.items()}
  metrics["accuracy"] = masked_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32),
                                    weights)
  metrics["count"] = jnp.sum(weights)
  return new_state, metrics


def make_eval_step(model, with_features: bool = False):
  """`eval_step(variables, images [B, ...]) -> logits [B, C]` float32, eval mode; with
  `with_features`, a dict of logits and the penultimate `features [B, D]` (float32)."""
  def eval_step(variables, images):
    if with_features:
      logits, features = model.apply(variables, images, train=False, return_features=True)
      return {"logits": logits.astype(jnp.float32), "features": features.astype(jnp.float32)}
    return model.apply(variables, images, train=False).astype(jnp.float32)
  return eval_step
