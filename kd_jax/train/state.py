"""Train states and optimizers.

A train state is Flax's `TrainState` (step, params, opt_state, apply_fn, tx) plus the model's
`batch_stats` (empty for models without batch norm). The optimizer follows the PyTorch
reference protocols (RepDistiller, mdistiller, torchvision ImageNet): SGD with momentum and
coupled L2 weight decay `g <- g + wd * w` on every parameter, and a learning rate that is
multiplied by `lr_decay_factor` at each epoch of `lr_decay_epochs` (or a cosine decay), with an
optional linear warm-up.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  batch_stats: Any = flax.struct.field(default_factory=dict)

  @property
  def variables(self) -> dict:
    return make_variables(self.params, self.batch_stats)


def make_variables(params, batch_stats) -> dict:
  """The Flax variables dict of a model (no 'batch_stats' collection when it is empty)."""
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


def learning_rate_schedule(optim, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate per step.

  `optim.schedule == "step"`: `lr * factor^k` where k counts the epochs of `lr_decay_epochs`
  already passed; `"cosine"`: `lr * (1 + cos(pi * t)) / 2` over `optim.num_epochs` epochs.
  Both are preceded by a linear warm-up from 0 over `optim.warmup_epochs` epochs when > 0.
  """
  base = float(optim.learning_rate)
  warmup_steps = int(round(optim.warmup_epochs * steps_per_epoch))
  if optim.schedule == "step":
    boundaries = {int(round(e * steps_per_epoch)): float(optim.lr_decay_factor)
                  for e in optim.lr_decay_epochs}
    main = optax.piecewise_constant_schedule(base, boundaries)
  elif optim.schedule == "cosine":
    total = max(1, int(optim.num_epochs * steps_per_epoch) - warmup_steps)
    main = optax.cosine_decay_schedule(base, total)
  else:
    raise ValueError(f"optim.schedule={optim.schedule!r} is not allowed: 'step' or 'cosine'")
  if warmup_steps <= 0:
    return main
  # The step schedule counts epochs from 0, so it is not shifted by the warm-up.
  shift = 0 if optim.schedule == "step" else warmup_steps
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return lambda step: jnp.where(step < warmup_steps, warmup(step), main(step - shift))


def make_optimizer(optim, steps_per_epoch: int) -> tuple[optax.GradientTransformation,
                                                            optax.Schedule]:
  """SGD (momentum, optional Nesterov) with coupled weight decay, as torch.optim.SGD."""
  schedule = learning_rate_schedule(optim, steps_per_epoch)
  if optim.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(float(optim.weight_decay)),
                     optax.sgd(schedule, momentum=float(optim.momentum) or None,
                               nesterov=bool(optim.nesterov)))
  elif optim.name == "adamw":
    tx = optax.adamw(schedule, weight_decay=float(optim.weight_decay))
  else:
    raise ValueError(f"optim.name={optim.name!r} is not allowed: 'sgd' or 'adamw'")
  return tx, schedule


def init_variables(model: nn.Module, rng: jax.Array, input_shape) -> dict:
  """`model.init` on a dummy batch of 2 examples of `input_shape` (eval mode), jitted: one
  compilation instead of one per initializer op."""
  dummy = jnp.zeros((2, *input_shape), jnp.float32)
  return jax.jit(lambda key: model.init(key, dummy, train=False))(rng)


def create_train_state(model: nn.Module, tx, rng: jax.Array, input_shape) -> TrainState:
  """Initial state (variables from `rng`, optimizer state, step 0), built in one jit."""
  dummy = jnp.zeros((2, *input_shape), jnp.float32)

  def create(key):
    variables = model.init(key, dummy, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))

  return jax.jit(create)(rng)


def param_count(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
