"""Every check of a config, in one pass before any heavy work.

Each failure is a ValueError naming the field, its value and what is allowed; the CLI prints
that one line and exits 2. `check_stage` checks what `kd_jax.train.train` trains (a stage
config); `check_pipeline` checks a whole config file's pipeline (its stages, the teacher it
loads, data selection) and `check_generations` a generations block, without training or
loading any model.
"""

import math
import os

import jax

from kd_jax import methods, models, selection
from kd_jax.train import checkpoint, teacher_cache, workdir
from kd_jax.train import state as state_lib

STAGES = ("teacher,student", "teacher", "student", "teacher,precompute", "precompute")
SELECTION_MODELS = ("student", "teacher")
INFLUENCE_TARGETS = ("teacher", "teacher_minus_label")


def fail(field, value, allowed):
  """Raises the one-line error every bad input gets: the field, its value, what is allowed."""
  raise ValueError(f"{field}={value!r} is not allowed: {allowed}")





def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(config, field) -> None:
  if not _is_int(config[field]) or config[field] <= 0:
    fail(field, config[field], "must be an integer > 0")


def _finite(field, value, allowed, ok) -> None:
  if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
    fail(field, value, allowed)


def check_stage(config, data) -> None:
  """Checks a stage config (see configs/common.py) against its data (`splits.Data`)."""
  info = data.info
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if not _is_int(config[field]) or config[field] <= 0 or config[field] % devices:
      fail(field, config[field], f"must be a positive multiple of the device count ({devices})")
  for field in ("num_epochs", "log_every_steps", "eval_every_epochs"):
    _positive_int(config, field)
  if not _is_int(config.eval_test_every_epochs) or config.eval_test_every_epochs < 0:
    fail("eval_test_every_epochs", config.eval_test_every_epochs,
          "must be an integer >= 0 (0: test only at the end)")
  keep, every = config.checkpoint.keep, config.checkpoint.every_steps
  if not (_is_int(keep) and keep >= 1 and _is_int(every) and every >= 0):
    fail("checkpoint.keep/every_steps", (keep, every),
          "keep >= 1 and every_steps >= 0 (0: only at epoch ends)")
  if info.num_classes < 2:
    fail("num_classes", info.num_classes, "must be >= 2 (dataset options)")
  stage = config.stage
  if config.model not in models.names():
    fail(f"{stage}.model", config.model, f"must be one of {', '.join(models.names())}")
  try:
    methods.validate(config.method, info.num_classes)
  except ValueError as error:
    raise ValueError(f"{stage}.{error}") from None
  _finite(f"{stage}.method.temperature", config.method.temperature, "must be finite and > 0",
          lambda t: t > 0)
  _check_optim(config.optim, stage)
  check_performance(config, info.num_classes)
  if methods.selects(config.method):
    check_selection(config.selection, has_validation=data.val is not None)


def check_performance(config, num_classes: int) -> None:
  """`compute_dtype` and the `teacher_cache` block (configs/common.py)."""
  dtypes = tuple(state_lib.COMPUTE_DTYPES)
  if config.compute_dtype not in dtypes:
    fail("compute_dtype", config.compute_dtype, f"must be one of {dtypes}")
  if config.compute_dtype != "float32" and not hasattr(
      models.create(config.model, num_classes), "dtype"):
    fail("compute_dtype", config.compute_dtype, f"{config.stage}.model={config.model!r} has no "
         "dtype field; use 'float32'")
  cache = config.teacher_cache
  formats = tuple(teacher_cache.FORMATS)
  if cache.format not in formats:
    fail("teacher_cache.format", cache.format, f"must be one of {formats}")
  if not isinstance(cache.dir, str):
    fail("teacher_cache.dir", cache.dir, "must be a directory path, or '' (no cache)")
  if cache.dir:
    # Create it and write a file now: a cache that cannot be written fails here, not after
    # the teacher's first pass.
    probe = os.path.join(cache.dir, f".write_test.{os.getpid()}")
    try:
      os.makedirs(cache.dir, exist_ok=True)
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as error:
      fail("teacher_cache.dir", cache.dir, f"must be a directory this process can create "
           f"and write ({error.strerror or error}), or '' (no cache)")


def _check_optim(optim, stage: str) -> None:
  _finite(f"{stage}.learning_rate / optim.learning_rate", optim.learning_rate,
          "must be finite and > 0", lambda v: v > 0)
  if optim.name not in ("sgd", "adamw"):
    fail("optim.name", optim.name, "must be 'sgd' or 'adamw'")
  if optim.schedule not in ("step", "cosine"):
    fail("optim.schedule", optim.schedule, "must be 'step' or 'cosine'")
  for field in ("momentum", "weight_decay", "warmup_epochs"):
    _finite(f"optim.{field}", optim[field], "must be finite and >= 0", lambda v: v >= 0)
  _finite("optim.lr_decay_factor", optim.lr_decay_factor, "must be finite and > 0",
          lambda v: v > 0)


def check_selection(s, has_validation: bool) -> None:
  """The `selection` block of a selecting student."""
  def fail_field(field, value, allowed):
    fail(f"selection.{field}", value, allowed)
  if s.criterion not in selection.CRITERIA:
    fail_field("criterion", s.criterion, f"must be one of {selection.CRITERIA}")
  if not 0 < s.ratio <= 1:
    fail_field("ratio", s.ratio, "must be in (0, 1]")
  if s.hessian not in selection.HESSIANS:
    fail_field("hessian", s.hessian, f"must be one of {selection.HESSIANS}")
  if s.influence_target not in INFLUENCE_TARGETS:
    fail_field("influence_target", s.influence_target, f"must be one of {INFLUENCE_TARGETS}")
  if s.model not in SELECTION_MODELS:
    fail_field("model", s.model, f"must be one of {SELECTION_MODELS}")
  for field in ("refresh_epochs", "warmup_epochs"):
    if not _is_int(s[field]) or s[field] < 0:
      fail_field(field, s[field], "must be an integer >= 0")
  if s.margin_space not in ("prob", "logit"):
    fail_field("margin_space", s.margin_space, "must be 'prob' or 'logit'")
  for field in ("damping", "l2"):
    if s[field] is not None and not s[field] >= 0:
      fail_field(field, s[field], "must be >= 0")
  if not _is_int(s.histogram_bins) or s.histogram_bins < 1:
    fail_field("histogram_bins", s.histogram_bins, "must be an integer >= 1")
  if s.criterion == "influence" and not has_validation:
    raise ValueError("selection.criterion='influence' needs a reference set: set "
                     "dataset.holdout > 0 (the test split never selects anything)")


def check_stages(stages: str) -> None:
  if stages not in STAGES:
    fail("stages", stages, f"must be one of {STAGES}")


def check_pipeline(config, data, stage_configs: dict) -> None:
  """Checks a config file's pipeline; `stage_configs`: stage name -> its stage config."""
  for stage_config in stage_configs.values():
    check_stage(stage_config, data)
  if "teacher" in stage_configs and methods.needs_teacher(stage_configs["teacher"].method.name):
    fail("teacher.method.name", config.teacher.method.name,
          f"a teacher trained from labels uses one of {', '.join(methods.TEACHER_FREE)}")
  if config.teacher.checkpoint:
    check_teacher_checkpoint(config.teacher.checkpoint, config.teacher.model, data.info)
  student = stage_configs.get("student", stage_configs.get("precompute"))
  if (student is not None and methods.needs_teacher(student.method.name)
      and "teacher" not in stage_configs and not config.teacher.checkpoint):
    fail("stages", config.stages, f"student.method.name={student.method.name!r} needs a "
          "teacher: add the teacher stage or set teacher.checkpoint")
  if "precompute" in stage_configs:
    if not methods.needs_teacher(student.method.name):
      fail("stages", config.stages, "the precompute stage caches the teacher's outputs for "
           f"the student, but student.method.name={student.method.name!r} uses no teacher")
    if not config.teacher_cache.dir:
      fail("teacher_cache.dir", config.teacher_cache.dir,
           "the precompute stage writes the teacher-output cache: set its directory")


def check_generations(config, num_classes: int) -> None:
  """The `generations` block of a generations run (before its stage configs are built)."""
  g = config.generations
  if not _is_int(g.num) or g.num < 1:
    fail("generations.num", g.num, "must be an integer >= 1 (0 disables generations)")
  if config.teacher.checkpoint:
    fail("teacher.checkpoint", config.teacher.checkpoint,
          "must be '' in a generations run: the patriarch (generation 0) is trained here")
  if config.student.model != config.teacher.model:
    fail("student.model", config.student.model,
          f"must equal teacher.model={config.teacher.model!r}: generations share one "
          "architecture")
  if g.num > 1 and not methods.needs_teacher(config.student.method.name):
    fail("student.method.name", config.student.method.name,
          "must learn from a teacher (kd, lr, ...) in generations 1..G-1")
  weights = tuple(g.ce_weights or ())
  if weights and (len(weights) != g.num - 1 or not all(0 <= w <= 1 for w in weights)):
    fail("generations.ce_weights", weights,
          f"must be empty or {g.num - 1} values in [0, 1] (lambda of generations 1..G-1)")
  if not 0 <= g.ensemble_first < g.num:
    fail("generations.ensemble_first", g.ensemble_first, f"must lie in [0, {g.num - 1}]")
  if not 1 <= g.num_secondary < num_classes:
    fail("generations.num_secondary", g.num_secondary, f"must lie in [1, {num_classes - 1}]")


def check_teacher_checkpoint(path: str, model_name: str, info) -> None:
  """`teacher.checkpoint` must be a .pth or a FINISHED kd_jax run (summary.json: not killed,
  not diverged) of the same dataset, class count and input shape; reads JSON only."""
  field = "teacher.checkpoint"
  if not os.path.exists(path):
    fail(field, path, "does not exist: name a finished kd_jax run directory or a .pth file")
  if not os.path.isdir(path):
    if model_name not in models.names():
      fail("teacher.model", model_name, f"must be one of {', '.join(models.names())}")
    return
  run_dir = checkpoint.find_run_dir(path)
  summary_path = os.path.join(run_dir, workdir.SUMMARY)
  if not os.path.exists(summary_path):
    fail(field, path, f"is not a finished run ({summary_path} is missing: it was interrupted "
         "or diverged); finish it by rerunning its command, or train another teacher")
  summary = workdir.read_json(summary_path)
  expected = dict(dataset=info.name, num_classes=info.num_classes,
                  input_shape=list(info.input_shape))
  for key, value in expected.items():
    if key in summary and summary[key] != value:
      fail(field, path, f"was trained with {key}={summary[key]!r}; this run's is {value!r}")
  if summary.get("model") not in (None, model_name):
    fail("teacher.model", model_name, f"must be {summary['model']!r}, the model of {run_dir}")
