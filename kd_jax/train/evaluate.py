"""Evaluation of a model on a whole split: jitted batched forward, one gather, host metrics."""

import functools

import jax
import numpy as np

from kd_jax import data as data_lib
from kd_jax import metrics
from kd_jax.train import parallel
from kd_jax.train import step as step_lib


def eval_loader(source, batch_size: int):
  """Fixed order, nothing dropped, last batch padded (mask False)."""
  return data_lib.make_loader(source, batch_size=batch_size, seed=0, train=False)


def predict(eval_fn, variables, loader, mesh) -> dict:
  """Logits `[N, C]` of every real example of `loader` (padding removed, dataset order), with
  labels and superclasses (and `features` when `eval_fn` returns them), on every process.
  Batches are dispatched asynchronously and fetched once."""
  outputs = []
  for batch in loader.epoch(0):
    batch = {key: batch[key] for key in ("image", "label", "mask", "superclass") if key in batch}
    batch = parallel.shard_batch(batch, mesh)
    out = eval_fn(variables, batch["image"])
    outputs.append({**(out if isinstance(out, dict) else {"logits": out}),
                    **{key: batch[key] for key in batch if key != "image"}})
  host = parallel.to_host(outputs)
  joined = {key: np.concatenate([out[key] for out in host]) for key in host[0]}
  mask = joined.pop("mask")
  return {key: value[mask] for key, value in joined.items()}


def evaluate(eval_fn, variables, loader, mesh) -> dict:
  """`metrics.evaluate_logits` (accuracy, top5, loss, ece, ...) of `variables` on a split."""
  out = predict(eval_fn, variables, loader, mesh)
  return metrics.evaluate_logits(out["logits"], out["label"], out.get("superclass"))


def make_eval_fn(model, with_features: bool = False):
  """Jitted `step.make_eval_step`: logits `[B, C]` float32, eval mode (or a dict of logits
  and penultimate features). Memoised per (model, with_features): runs of one process
  (stages, generations, a sweep) reuse the compiled evaluation instead of compiling again."""
  try:
    return _cached_eval_fn(model, with_features)
  except TypeError:  # an unhashable module
    return jax.jit(step_lib.make_eval_step(model, with_features))


@functools.lru_cache(maxsize=64)
def _cached_eval_fn(model, with_features: bool):
  return jax.jit(step_lib.make_eval_step(model, with_features))
