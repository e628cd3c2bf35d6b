"""From a config to what training needs: checks, data, per-role settings, teachers.

`check_config` runs before any heavy work and raises ValueError naming the field, its value
and what is allowed (the CLI prints that one line and exits non-zero).
"""

import dataclasses
import os
import zlib

import jax
import ml_collections
import numpy as np

from kd_jax import data as data_lib
from kd_jax import methods, models
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import parallel
from kd_jax.train import state as state_lib

ROLES_WITH_OWN_CONFIG = ("teacher", "student")


@dataclasses.dataclass(frozen=True)
class Data:
  """Train (minus the held-out slice), validation (None without holdout) and test sources."""
  train: data_lib.Source
  val: data_lib.Source | None
  test: data_lib.Source

  @property
  def info(self) -> data_lib.DatasetInfo:
    return self.test.info


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A trained or loaded teacher: its module, (replicated) variables and where it came from."""
  model_name: str
  model: object
  variables: dict
  source: str  # the trained role's directory or the checkpoint path it was loaded from
  test_accuracy: float | None = None


def _fail(field, value, allowed):
  raise ValueError(f"{field}={value!r} is not allowed: {allowed}")


def load_data(config) -> Data:
  """Loads train/test and carves the validation slice (`dataset.holdout` examples)."""
  d = config.dataset
  options = dict(d.options) if d.get("options") else {}
  try:
    train = data_lib.load(d.name, "train", data_dir=d.data_dir, seed=d.seed, **options)
    test = data_lib.load(d.name, "test", data_dir=d.data_dir, seed=d.seed, **options)
  except (ValueError, TypeError) as error:
    raise ValueError(f"dataset.name={d.name!r} (options {options}): {error}") from error
  if not 0 <= d.holdout < len(train):
    _fail("dataset.holdout", d.holdout, f"must lie in [0, {len(train)}) (training examples)")
  train, val = data_lib.split_holdout(train, int(d.holdout), int(d.holdout_seed))
  return Data(train, val, test)


def role_settings(config, role: str) -> ml_collections.ConfigDict:
  """The model/method/optimizer/epochs of `role`; roles without a block (e.g.
  `generation_2`) use the student's. Per-role `num_epochs`/`learning_rate` override the
  shared ones when set."""
  block = config.get(role, config.student)
  optim = ml_collections.ConfigDict(config.optim.to_dict())
  num_epochs = block.get("num_epochs") or config.num_epochs
  if block.get("learning_rate"):
    optim.learning_rate = block.learning_rate
  optim.num_epochs = num_epochs
  return ml_collections.ConfigDict(dict(
      model=block.model, method=block.method.copy_and_resolve_references(),
      checkpoint=block.get("checkpoint", "") or "", num_epochs=int(num_epochs), optim=optim))


def role_seed(seed: int, role: str) -> int:
  """A per-role integer seed (stable across Python runs) for init, shuffling and dropout."""
  return (int(seed) * 1_000_003 + zlib.crc32(role.encode())) % (2**31 - 1)


def uses_teacher(config) -> bool:
  return bool(config.student.model) and methods.needs_teacher(config.student.method.name)


def check_config(config, num_classes: int) -> None:
  """Raises ValueError (field, value, allowed) for any setting that cannot run."""
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    if not isinstance(value, int) or value <= 0 or value % devices:
      _fail(field, value, f"must be a positive multiple of the device count ({devices})")
  for field in ("num_epochs", "log_every_steps"):
    if not config[field] > 0:
      _fail(field, config[field], "must be > 0")
  if config.checkpoint.every_steps < 0 or config.checkpoint.keep < 1:
    _fail("checkpoint.keep/every_steps", (config.checkpoint.keep, config.checkpoint.every_steps),
          "keep >= 1 and every_steps >= 0 (0: only at epoch ends)")
  roles = ["teacher"] if (uses_teacher(config) or not config.student.model) else []
  roles += ["student"] if config.student.model else []
  for role in roles:
    settings = role_settings(config, role)
    if role == "teacher" and settings.checkpoint:
      _check_teacher_checkpoint(settings, num_classes)
      continue
    if settings.model not in models.names():
      _fail(f"{role}.model", settings.model, f"must be one of {', '.join(models.names())}")
    try:
      methods.validate(settings.method, num_classes)
    except ValueError as error:
      raise ValueError(f"{role}.{error}") from None
    if role == "teacher" and methods.needs_teacher(settings.method.name):
      _fail("teacher.method.name", settings.method.name,
            "a teacher trained from scratch uses one of ce, ls, tsd")
    optim = settings.optim
    if not optim.learning_rate > 0:
      _fail(f"{role}.learning_rate / optim.learning_rate", optim.learning_rate, "must be > 0")
    if optim.name not in ("sgd", "adamw"):
      _fail("optim.name", optim.name, "must be 'sgd' or 'adamw'")
    if optim.schedule not in ("step", "cosine"):
      _fail("optim.schedule", optim.schedule, "must be 'step' or 'cosine'")
    if settings.num_epochs <= 0:
      _fail(f"{role}.num_epochs", settings.num_epochs, "must be > 0")


def _check_teacher_checkpoint(settings, num_classes: int) -> None:
  path = settings.checkpoint
  if not os.path.exists(path):
    _fail("teacher.checkpoint", path, "must be an existing kd_jax checkpoint directory or .pth")
  if os.path.isdir(path):
    meta = ckpt_lib.read_meta(ckpt_lib.find_checkpoint_dir(path))
    if meta.get("num_classes") != num_classes:
      _fail("teacher.checkpoint", path, f"its {meta.get('num_classes')} classes must equal the "
            f"dataset's {num_classes}")
    if meta.get("model") and meta["model"] != settings.model:
      _fail("teacher.model", settings.model, f"must be {meta['model']!r}, the checkpoint's model")
  elif settings.model not in models.names():
    _fail("teacher.model", settings.model, f"must be one of {', '.join(models.names())}")


def load_teacher(settings, num_classes: int, input_shape, mesh) -> Teacher:
  """Loads the teacher a config points at (`teacher.checkpoint`: kd_jax dir or .pth)."""
  path = settings.checkpoint
  model = models.create(settings.model, num_classes)
  if os.path.isdir(path):
    variables = restore_trained(ckpt_lib.find_checkpoint_dir(path), model, input_shape, mesh)
  else:
    try:
      variables = models.load_torch_checkpoint(path, settings.model, num_classes,
                                               input_shape=tuple(input_shape))
    except ValueError as error:
      raise ValueError(f"teacher.checkpoint={path!r}: {error}") from None
    variables = parallel.replicate(jax.tree.map(np.asarray, dict(variables)), mesh)
  return Teacher(settings.model, model, variables, os.path.abspath(path))


def trained_teacher(role_dir: str, model_name: str, info, mesh, summary: dict) -> Teacher:
  """The frozen `Teacher` of a finished role (`summary`: its summary.json): its final
  (newest) checkpoint, never the best-validation one."""
  checkpoint_dir = os.path.join(role_dir, ckpt_lib.CHECKPOINTS)
  step = ckpt_lib.read_meta(checkpoint_dir)["step"]
  if step != summary["steps"]:
    raise ValueError(f"{checkpoint_dir}: newest checkpoint is step {step}, but the finished "
                     f"run ended at step {summary['steps']}; its final checkpoint is missing")
  model = models.create(model_name, info.num_classes)
  variables = restore_trained(checkpoint_dir, model, info.input_shape, mesh)
  return Teacher(model_name, model, variables, os.path.abspath(role_dir),
                 test_accuracy=summary["test_accuracy"])


def abstract_variables(model, input_shape, mesh) -> dict:
  """Shapes, dtypes and (replicated) shardings of `model`'s variables, without compute."""
  shapes = jax.eval_shape(lambda: state_lib.init_variables(model, jax.random.key(0),
                                                            input_shape))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      dict(shapes))


def restore_trained(checkpoint_dir: str, model, input_shape, mesh) -> dict:
  """The newest variables of a kd_jax `checkpoints/` directory, replicated over `mesh`."""
  return ckpt_lib.restore_variables(checkpoint_dir, abstract_variables(model, input_shape, mesh))
