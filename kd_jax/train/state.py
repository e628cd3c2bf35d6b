"""The KD train state and the optimizer.

`TrainState` holds everything the jitted step reads: the trained model (student, or a
teacher trained from labels) with its params, BatchNorm statistics, optimizer state, step
and PRNG key; the frozen teacher (its forward function and variables, which the optimizer
never touches and the checkpoint does not duplicate; with `teacher_cache.dir` set, a function
of the cached rows that come with each batch instead, `kd_jax.train.teacher_cache`); and per-run
constants (the teacher's class similarity for KD-sim, the data-selection mask). A checkpoint
holds only the trained model's part (`checkpoint_items`).

The optimizer follows the PyTorch reference protocols (RepDistiller, mdistiller,
torchvision ImageNet): SGD with momentum and coupled L2 weight decay `g <- g + wd * w` on
every parameter, and a learning rate multiplied by `lr_decay_factor` at each epoch of
`lr_decay_epochs` (or a cosine decay), after an optional linear warm-up.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# teacher_fn(teacher_variables, batch) -> float32 logits [B, C]: a forward pass, or the
# teacher's stored rows that the loader put in the batch; the step never needs to know which.
TeacherFn = Callable[[Any, dict], jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  teacher_variables: Any = None
  class_similarity: jax.Array | None = None
  selected: jax.Array | None = None  # bool [N]: examples the teacher supervises
  apply_fn: Callable = flax.struct.field(pytree_node=False, default=None)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)
  teacher_fn: TeacherFn | None = flax.struct.field(pytree_node=False, default=None)

  @property
  def variables(self) -> dict:
    return make_variables(self.params, self.batch_stats)

  def checkpoint_items(self) -> dict:
    """What a checkpoint stores: the model's variables, and the rest a resumed run needs."""
    train = dict(step=self.step, opt_state=self.opt_state, rng=self.rng)
    if self.selected is not None:
      train["selected"] = self.selected
    return dict(variables=self.variables, train=train)

  def restore(self, items: dict) -> "TrainState":
    """This state with the arrays of `checkpoint_items()` replaced by `items`'."""
    variables, train = items["variables"], items["train"]
    return self.replace(params=variables["params"],
                        batch_stats=variables.get("batch_stats", {}), step=train["step"],
                        opt_state=train["opt_state"], rng=train["rng"],
                        selected=train.get("selected", self.selected))


def make_variables(params, batch_stats) -> dict:
  """The Flax variables dict of a model (no 'batch_stats' collection when it is empty)."""
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


# `compute_dtype` (kd_jax/config_defaults.py) -> the models' `dtype` field: the dtype of
# activations and matmul/conv inputs. Parameters, optimizer state and BatchNorm statistics stay
# float32 (Flax's `param_dtype`, float32 BN statistics); pooling and Dense layers accumulate in
# float32 (kd_jax/models/layers.py), and the step casts logits to float32 before any loss.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# `precision` -> the models' `precision` field (`precision=` of their convs and Dense layers).
PRECISIONS = (None, "default", "high", "highest")


def with_compute_dtype(model: nn.Module, compute_dtype: str, precision: str | None = None
                       ) -> nn.Module:
  """`model` computing in `compute_dtype` with its convolutions and matmuls at `precision`
  (the config's fields; "float32" and None return `model` itself)."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r} is not allowed: must be one of "
                     f"{', '.join(map(repr, PRECISIONS))} (None: the backend's default)")
  fields = {}
  if compute_dtype != "float32":
    fields["dtype"] = COMPUTE_DTYPES[compute_dtype]
  if precision is not None:
    if not hasattr(model, "precision"):
      raise ValueError(f"precision={precision!r} is not allowed: model "
                       f"{type(model).__name__} has no precision field; use None")
    fields["precision"] = precision
  return model.clone(**fields) if fields else model


def teacher_forward(model: nn.Module) -> TeacherFn:
  """`teacher_fn` running `model` in eval mode on `batch["image"]` (float32 logits)."""
  def forward(variables, batch):
    return model.apply(variables, batch["image"], train=False).astype(jnp.float32)
  return forward


def learning_rate_schedule(optim, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate per step.

  `optim.schedule == "step"`: `lr * factor^k` where k counts the epochs of `lr_decay_epochs`
  already passed (epochs count from 0, the warm-up included, as torch's MultiStepLR);
  `"cosine"`: `lr * (1 + cos(pi * t)) / 2` over the epochs after the warm-up. Both start
  with a linear warm-up from 0 over `optim.warmup_epochs` epochs when > 0.
  """
  base = float(optim.learning_rate)
  warmup_steps = int(round(optim.warmup_epochs * steps_per_epoch))
  if optim.schedule == "step":
    boundaries = {int(round(e * steps_per_epoch)) - warmup_steps: float(optim.lr_decay_factor)
                  for e in optim.lr_decay_epochs}
    main = optax.piecewise_constant_schedule(base, boundaries)
  else:
    total = max(1, int(optim.num_epochs * steps_per_epoch) - warmup_steps)
    main = optax.cosine_decay_schedule(base, total)
  if warmup_steps <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup_steps), main],
                              [warmup_steps])


def make_optimizer(optim, steps_per_epoch: int) -> tuple[optax.GradientTransformation,
                                                            optax.Schedule]:
  """SGD (momentum, optional Nesterov) with coupled weight decay, as torch.optim.SGD; or
  AdamW (decoupled decay)."""
  schedule = learning_rate_schedule(optim, steps_per_epoch)
  if optim.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(float(optim.weight_decay)),
                     optax.sgd(schedule, momentum=float(optim.momentum) or None,
                               nesterov=bool(optim.nesterov)))
  else:
    tx = optax.adamw(schedule, weight_decay=float(optim.weight_decay))
  return tx, schedule


def _jitted_init(model: nn.Module, input_shape: tuple):
  # The dummy batch is made inside the traced function: a memoised closure must hold no
  # array (one made under `jax.eval_shape` would be a tracer that outlives its trace).
  return jax.jit(lambda key: model.init(key, jnp.zeros((2, *input_shape), jnp.float32),
                                        train=False))


# One compiled init per (model, input shape) and process: its compilation takes seconds on a
# CPU even for an MLP, and a pipeline or a sweep in one process initialises the same model
# again and again (teacher, students, generations).
_cached_jitted_init = functools.lru_cache(maxsize=64)(_jitted_init)


def init_variables(model: nn.Module, rng: jax.Array, input_shape) -> dict:
  """`model.init` on a dummy batch of 2 examples of `input_shape` (eval mode), jitted: one
  compilation instead of one per initializer op (and one per model and shape, memoised)."""
  try:
    init = _cached_jitted_init(model, tuple(input_shape))
  except TypeError:  # an unhashable module (e.g. a list-valued field): compile it once here
    init = _jitted_init(model, tuple(input_shape))
  return init(rng)


def create_train_state(model: nn.Module, tx, rng: jax.Array, input_shape, *,
                       teacher_fn: TeacherFn | None = None, teacher_variables=None,
                       class_similarity=None, selected=None) -> TrainState:
  """Step 0: fresh variables from `rng` (its first half; the second seeds dropout)."""
  init_rng, dropout_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng, input_shape)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=jax.jit(tx.init)(params), rng=dropout_rng,
                    teacher_variables=teacher_variables, class_similarity=class_similarity,
                    selected=selected, apply_fn=model.apply, tx=tx, teacher_fn=teacher_fn)


def param_count(params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
