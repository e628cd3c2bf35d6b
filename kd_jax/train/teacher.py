"""Where a frozen teacher comes from: a finished kd_jax run, a PyTorch .pth, or memory.

A kd_jax teacher is a FINISHED run (its summary.json exists: not killed, not diverged) of
the same dataset, class count and input shape, and it is that run's final checkpoint, with
its checksum verified, or an error: never an earlier step. A teacher's `fingerprint` (its
source and a CRC32 of its variables) enters the student's own fingerprint, so a student run
is never resumed with another teacher.
"""

import dataclasses
import os

import jax
import numpy as np

from kd_jax import models
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import parallel, workdir
from kd_jax.train import state as state_lib

SUMMARY = "summary.json"


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


def _fail(path, reason):
  raise ValueError(f"teacher.checkpoint={path!r} {reason}")


def run_dir_of(path: str) -> str:
  """The finished-run directory a `teacher.checkpoint` path names: the run itself, a
  pipeline workdir holding `teacher/`, or the run's `checkpoints/` directory."""
  for candidate in (path, os.path.join(path, "teacher"), os.path.dirname(path.rstrip("/"))):
    if os.path.isdir(os.path.join(candidate, ckpt_lib.CHECKPOINTS)):
      return candidate
  _fail(path, "holds no kd_jax run: expected a run directory (with checkpoints/ and "
        "summary.json), a pipeline workdir with teacher/, or a checkpoints/ directory")
  return ""


def check_compatible(path: str, model_name: str, info) -> None:
  """Raises ValueError unless `path` is a finished kd_jax run (or a .pth) usable as the
  teacher of dataset `info`; cheap (reads JSON only)."""
  if not os.path.exists(path):
    _fail(path, "does not exist: must name a finished kd_jax run directory or a .pth file")
  if not os.path.isdir(path):
    if model_name not in models.names():
      raise ValueError(f"teacher.model={model_name!r} is not allowed: must be one of "
                       f"{', '.join(models.names())}")
    return
  run_dir = run_dir_of(path)
  summary_path = os.path.join(run_dir, SUMMARY)
  if not os.path.exists(summary_path):
    _fail(path, f"is not a finished run ({summary_path} is missing: it was interrupted or "
          "diverged); finish it by rerunning its command, or train another teacher")
  summary = workdir.read_json(summary_path)
  expected = dict(dataset=info.name, num_classes=info.num_classes,
                  input_shape=list(info.input_shape))
  for field, value in expected.items():
    if field in summary and summary[field] != value:
      _fail(path, f"was trained with {field}={summary[field]!r}; this run's is {value!r}")
  if summary.get("model") not in (None, model_name):
    raise ValueError(f"teacher.model={model_name!r} is not allowed: must be "
                     f"{summary['model']!r}, the model of {run_dir}")


def from_run(run_dir: str, model_name: str, info, mesh) -> Teacher:
  """The final checkpoint of the finished run in `run_dir`, replicated over `mesh`."""
  summary = workdir.read_json(os.path.join(run_dir, SUMMARY))
  model = models.create(model_name, info.num_classes)
  try:
    variables = ckpt_lib.final_variables(
        run_dir, abstract_variables(model, info.input_shape, mesh), summary["steps"])
  except ckpt_lib.UnreadableCheckpoint as error:
    raise ValueError(f"teacher {run_dir}: {error}; a teacher is its final checkpoint, never "
                     "an earlier step: retrain it") from None
  return Teacher(model_name, model, variables, os.path.abspath(run_dir),
                 test_accuracy=summary.get("test_accuracy"))


def from_trained(trained, run_dir: str, model_name: str, info, mesh) -> Teacher:
  """The teacher a finished stage makes (`loop.Trained`): its final variables in memory when
  this process just trained it, else read from `run_dir`'s final checkpoint."""
  if trained.variables is None:
    return from_run(run_dir, model_name, info, mesh)
  return Teacher(model_name, models.create(model_name, info.num_classes), trained.variables,
                 os.path.abspath(run_dir), test_accuracy=trained.summary["test_accuracy"])


def from_pth(path: str, model_name: str, info, mesh) -> Teacher:
  """A PyTorch checkpoint (RepDistiller/mdistiller/torchvision layout) as a teacher."""
  try:
    variables = models.load_torch_checkpoint(path, model_name, info.num_classes,
                                             input_shape=tuple(info.input_shape))
  except ImportError:
    raise
  except Exception as error:  # a garbage, truncated or mismatched file: one clear line
    _fail(path, f"cannot be read as a {model_name} with {info.num_classes} classes "
          f"({type(error).__name__}: {str(error)[:300]})")
  variables = parallel.replicate(jax.tree.map(np.asarray, dict(variables)), mesh)
  return Teacher(model_name, models.create(model_name, info.num_classes), variables,
                 os.path.abspath(path))


def load(path: str, model_name: str, info, mesh) -> Teacher:
  """`teacher.checkpoint` -> Teacher (after `check_compatible`)."""
  check_compatible(path, model_name, info)
  if os.path.isdir(path):
    return from_run(run_dir_of(path), model_name, info, mesh)
  return from_pth(path, model_name, info, mesh)


def abstract_variables(model, input_shape, mesh) -> dict:
  """Shapes, dtypes and (replicated) shardings of `model`'s variables, without compute."""
  shapes = jax.eval_shape(lambda: state_lib.init_variables(model, jax.random.key(0),
                                                            input_shape))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      dict(shapes))
