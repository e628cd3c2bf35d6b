"""Where a frozen teacher comes from: a finished kd_jax run, a PyTorch .pth, or memory.

A kd_jax teacher is a FINISHED run (its summary.json exists: not killed, not diverged) of
the same data (`checks.check_teacher_checkpoint`), and it is that run's final checkpoint,
with its checksum verified, or an error: never an earlier step. A teacher's `fingerprint`
(its source and a CRC32 of its variables) enters the student's own fingerprint, so a student
run is never resumed with another teacher. Every teacher, read from a run, imported from a
.pth or handed over in memory, has finite weights and BatchNorm variances >= 0, or is
refused in one line naming it (`torch_import.invalid_weights`).
"""

import dataclasses
import os

import jax
import numpy as np

from kd_jax import models
from kd_jax._validation import fail
from kd_jax.models import torch_import
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import checks, parallel, workdir
from kd_jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher: its model, (replicated) variables and where it came from."""
  model_name: str
  model: object
  variables: dict
  source: str  # the finished run's directory or the .pth path
  test_accuracy: float | None = None

  @property
  def fingerprint(self) -> dict:
    """What the student's result depends on: the model and its variables (not the path, so
    a workdir can be moved or copied and still resume)."""
    return dict(model=self.model_name, variables_crc32=ckpt_lib.tree_checksum(self.variables))


def _checked(teacher: Teacher, field: str) -> Teacher:
  """`teacher`, when its weights are finite and its BatchNorm variances >= 0."""
  problem = torch_import.invalid_weights(teacher.variables)
  if problem:
    fail(field, teacher.source, f"its weights are not usable as a teacher ({problem}); "
                "retrain it or use another teacher")
  return teacher


def from_run(run_dir: str, model_name: str, info, mesh, *, field: str = "teacher") -> Teacher:
  """The final checkpoint of the finished run in `run_dir`, replicated over `mesh`; `field`
  names the teacher in errors."""
  summary = workdir.read_json(os.path.join(run_dir, workdir.SUMMARY))
  model = models.create(model_name, info.num_classes)
  try:
    variables = ckpt_lib.final_variables(
        run_dir, abstract_variables(model, info.input_shape, mesh), summary["steps"])
  except ckpt_lib.UnreadableCheckpoint as error:
    raise ValueError(f"teacher {run_dir}: {error}; a teacher is its final checkpoint, never "
                     "an earlier step: retrain it") from None
  return _checked(Teacher(model_name, model, variables, os.path.abspath(run_dir),
                          test_accuracy=summary.get("test_accuracy")), field)


def from_trained(trained, run_dir: str, model_name: str, info, mesh) -> Teacher:
  """The teacher a finished stage makes (`loop.Trained`): its final variables in memory when
  this process just trained it, else read from `run_dir`'s final checkpoint."""
  if trained.variables is None:
    return from_run(run_dir, model_name, info, mesh)
  return _checked(Teacher(model_name, models.create(model_name, info.num_classes),
                          trained.variables, os.path.abspath(run_dir),
                          test_accuracy=trained.summary["test_accuracy"]), "teacher")


def from_pth(path: str, model_name: str, info, mesh) -> Teacher:
  """A PyTorch checkpoint (RepDistiller/mdistiller/torchvision layout) as a teacher; the
  import checks its class count, shapes and values (`models.load_torch_checkpoint`)."""
  try:
    variables = models.load_torch_checkpoint(path, model_name, info.num_classes,
                                             input_shape=tuple(info.input_shape))
  except ImportError:
    raise
  except Exception as error:  # a garbage, truncated or mismatched file: one clear line
    fail("teacher.checkpoint", path, f"cannot be read as a {model_name} with "
                f"{info.num_classes} classes ({type(error).__name__}: {str(error)[:300]})")
  variables = parallel.replicate(jax.tree.map(np.asarray, dict(variables)), mesh)
  return Teacher(model_name, models.create(model_name, info.num_classes), variables,
                 os.path.abspath(path))


def load(config, data, mesh) -> Teacher:
  """`config.teacher.checkpoint` -> Teacher, after `checks.check_teacher_checkpoint`."""
  checks.check_teacher_checkpoint(config, data)
  path, model_name = config.teacher.checkpoint, config.teacher.model
  if os.path.isdir(path):
    return from_run(ckpt_lib.find_run_dir(path), model_name, data.info, mesh,
                    field="teacher.checkpoint")
  return from_pth(path, model_name, data.info, mesh)


def abstract_variables(model, input_shape, mesh) -> dict:
  """Shapes, dtypes and (replicated) shardings of `model`'s variables, without compute."""
  shapes = jax.eval_shape(lambda: state_lib.init_variables(model, jax.random.key(0),
                                                            input_shape))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      dict(shapes))
