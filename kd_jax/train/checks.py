"""Every check of a config, in one pass before any heavy work.

Each failure is a ValueError naming the field, its value and what is allowed; the CLI prints
that one line and exits 2. `check_stage` checks what `kd_jax.train.train` trains (a stage
config); `check_pipeline` checks a whole config file's pipeline (its stages, the teacher it
loads, data selection) and `check_generations` a generations block, without training or
loading any model.

Fit checks (before the first stage trains, for every stage):
* model <-> data (`check_model_fits`): the model's input kind takes the data's examples
  (images [H, W, C]; signals [L] or [L, C]; vector models flatten any example), it maps a
  batch of 2 examples to logits [2, C] (`jax.eval_shape`, no compute: a network too deep for
  small images fails here, with the smallest size it takes), and each example's logits
  depend on that example only (changing example 0 leaves example 1's logits unchanged: two
  small forward passes at init, memoised per model and shape).
* teacher <-> data (`check_teacher_checkpoint`): a kd_jax teacher run records the data it
  trained on (`splits.record`): the same dataset name, generation seed and options, class
  count and input shape, and no training example among this run's validation examples (a
  teacher of another holdout slice saw them; they would select its best checkpoint). Test
  examples are the other split of the same data, so a same-data teacher never saw them. A
  run written before that record is checked against its fingerprint's dataset fields (the
  same values) without the CRC32 of its examples. A PyTorch .pth records nothing of its
  data: its class count and input shape are checked by the import, and what it was trained
  on is the user's responsibility.
"""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import methods, models, selection
from kd_jax._validation import fail
from kd_jax.train import checkpoint, splits, teacher_cache, workdir
from kd_jax.train import state as state_lib

STAGES = ("teacher,student", "teacher", "student", "teacher,precompute", "precompute")
SELECTION_MODELS = ("student", "teacher")
INFLUENCE_TARGETS = ("teacher", "teacher_minus_label")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(config, field) -> None:
  if not _is_int(config[field]) or config[field] <= 0:
    fail(field, config[field], "must be an integer > 0")


def _finite(field, value, allowed, ok) -> None:
  if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
    fail(field, value, allowed)


def check_stage(config, data) -> None:
  """Checks a stage config (see kd_jax/config_defaults.py) against its data (`splits.Data`)."""
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
  if not isinstance(config.checkpoint.get("async_save", False), bool):
    fail("checkpoint.async_save", config.checkpoint.async_save, "must be True or False")
  if info.num_classes < 2:
    fail("num_classes", info.num_classes, "must be >= 2 (dataset options)")
  stage = config.stage
  if config.model not in models.names():
    fail(f"{stage}.model", config.model, f"must be one of {', '.join(models.names())}")
  check_model_fits(f"{stage}.model", config.model, info)
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


# The example ranks each input kind takes (kd_jax.models.registry): vector models flatten.
_RANKS = {"image": (3,), "signal": (1, 2), "vector": (1, 2, 3)}
_TAKES = {"image": "images [H, W, C]", "signal": "signals [L] or [L, C]",
          "vector": "examples of any shape"}
_IMAGE_SIZES = (8, 16, 32, 64, 128, 224)  # tried for the smallest image a model takes


def _describe(input_shape: tuple) -> str:
  if len(input_shape) == 3:
    return "{}x{}x{} images".format(*input_shape)
  if len(input_shape) == 2:
    return f"signals of shape {input_shape}"
  return f"vectors of shape {input_shape}"


@functools.lru_cache(maxsize=256)
def _output_shape(name: str, num_classes: int, input_shape: tuple):
  """The logits' shape for a batch of 2 examples (`jax.eval_shape`: no compute), or the
  exception the model raises on these examples."""
  model = models.create(name, num_classes)
  x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
  try:
    variables = jax.eval_shape(lambda: state_lib.init_variables(model, jax.random.key(0),
                                                                input_shape))
    return jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x).shape
  except Exception as error:  # a model that cannot take the shape, whatever it raises
    return error


def _takes(name: str, num_classes: int, input_shape: tuple) -> bool:
  return (len(input_shape) in _RANKS[models.info(name).input_kind]
          and _output_shape(name, num_classes, input_shape) == (2, num_classes))


@functools.lru_cache(maxsize=64)
def _misfit(name: str, num_classes: int, input_shape: tuple) -> str:
  """Why model `name` cannot take examples of `input_shape` ('' when it can)."""
  kind = models.info(name).input_kind
  if len(input_shape) not in _RANKS[kind]:
    return f"it takes {_TAKES[kind]}"
  shape = _output_shape(name, num_classes, input_shape)
  if shape != (2, num_classes):
    if kind == "image":
      for size in _IMAGE_SIZES:
        if size > min(input_shape[:2]) and _takes(name, num_classes,
                                                   (size, size, input_shape[2])):
          return f"it needs images of at least {size}x{size}"
    got = (f"{type(shape).__name__}: {' '.join(str(shape).split())[:150]}"
           if isinstance(shape, Exception) else f"logits of shape {shape}")
    return f"it cannot map a batch of 2 examples to logits [2, {num_classes}] ({got})"
  return _mixes_examples(name, num_classes, input_shape)


def _mixes_examples(name: str, num_classes: int, input_shape: tuple) -> str:
  """'' when each example's logits depend on that example only: two forward passes (eval
  mode, at init) on 2 random examples, the first example replaced in the second pass, give
  the second example the same logits. The init is the one training runs (compiled once per
  model and shape), the passes run op by op: no extra compilation of the model."""
  model = models.create(name, num_classes)
  variables = state_lib.init_variables(model, jax.random.key(0), input_shape)
  x = jax.random.normal(jax.random.key(1), (2, *input_shape))
  other = x.at[0].set(10.0 * jax.random.normal(jax.random.key(2), input_shape))
  first, second = (np.asarray(model.apply(variables, batch, train=False), np.float64)
                   for batch in (x, other))
  scale = max(1.0, float(np.max(np.abs(first[1]))))
  if not np.allclose(first[1], second[1], rtol=0, atol=1e-5 * scale):
    return ("its logits for one example depend on the other examples of the batch (it does "
            "not read axis 0 as the batch)")
  return ""


def check_model_fits(field: str, name: str, info) -> None:
  """`field`'s model `name` takes `info`'s examples (see the module docstring); else the
  one-line error names the models that would."""
  input_shape = tuple(info.input_shape)
  problem = _misfit(name, info.num_classes, input_shape)
  if problem:
    fail(field, name, f"{problem} (kd_jax.data {info.name!r} gives {_describe(input_shape)}); "
         f"use one of {_fitting(info.num_classes, input_shape)}")


def _fitting(num_classes: int, input_shape: tuple, shown: int = 5) -> str:
  """The first `shown` models that take `input_shape`, smaller families first: each is
  traced, so the ImageNet-sized ones (a registry input shape) come last and rarely run."""
  order = sorted(models.names(), key=lambda n: (models.info(n).input_shape is not None,
                                                n.lower()))
  fitting = []
  for name in order:
    if _takes(name, num_classes, input_shape):
      fitting.append(name)
      if len(fitting) == shown:
        return ", ".join(fitting) + ", ... (kd_jax.models.names())"
  return ", ".join(fitting)


def check_performance(config, num_classes: int) -> None:
  """`compute_dtype` and the `teacher_cache` block (kd_jax/config_defaults.py)."""
  dtypes = tuple(state_lib.COMPUTE_DTYPES)
  if config.compute_dtype not in dtypes:
    fail("compute_dtype", config.compute_dtype, f"must be one of {dtypes}")
  if config.compute_dtype != "float32" and not hasattr(
      models.create(config.model, num_classes), "dtype"):
    fail("compute_dtype", config.compute_dtype, f"{config.stage}.model={config.model!r} has no "
         "dtype field; use 'float32'")
  precision = config.get("precision")
  if precision not in state_lib.PRECISIONS:
    fail("precision", precision, f"must be one of {', '.join(map(repr, state_lib.PRECISIONS))} "
         "(None: the backend's default)")
  cache = config.teacher_cache
  formats = tuple(teacher_cache.FORMATS)
  if cache.format not in formats:
    fail("teacher_cache.format", cache.format, f"must be one of {formats}")
  if cache.dir and methods.needs_teacher(config.method.name):
    _check_cache_format(config, num_classes)
  if not isinstance(cache.dir, str):
    fail("teacher_cache.dir", cache.dir, "must be a directory path, or '' (no cache)")
  if cache.dir:
    # Create it and write a file now: a cache that cannot be written fails here, not after
    # the teacher's first pass. One that cannot be written but holds tables may be a shared,
    # pre-filled cache: the stage checks the files its key needs (`check_cache_files`).
    error = _write_error(cache.dir)
    if error and not _holds_tables(cache.dir):
      fail("teacher_cache.dir", cache.dir, f"must be a directory this process can create "
           f"and write ({workdir.io_cause(error.errno, error.strerror)}), or '' (no cache)")


def _check_cache_format(config, num_classes: int) -> None:
  """A sparse format's k, and the methods a sparse row cannot serve."""
  cache, method = config.teacher_cache, config.method
  if cache.format not in ("topk", "sampled"):
    return
  top = num_classes if cache.format == "topk" else 65536
  if not _is_int(cache.k) or not 1 <= cache.k <= top:
    fail("teacher_cache.k", cache.k, f"must be an integer in [1, {top}] for "
         f"teacher_cache.format={cache.format!r}")
  if methods.uses_mse_form(method):
    fail("teacher_cache.format", cache.format, "the mse form of label revision regresses "
         "every teacher logit: use 'float16' or 'float32' (or method.lr_form='kl')")
  if (cache.format == "topk" and methods.base_name(method.name) == "kd_topk"
      and cache.k < method.topk):
    fail("teacher_cache.k", cache.k, f"must be >= method.topk={method.topk}: kd_topk keeps "
         "more classes than the cache holds")
  revision_t = method.revision_temperature
  if (cache.format == "sampled" and methods.revises(method) and revision_t is not None
      and revision_t != methods.teacher_temperature(method)):
    fail("teacher_cache.format", cache.format, "the draws are at the temperature the method "
         f"reads its teacher at ({methods.teacher_temperature(method)}), not at "
         f"method.revision_temperature={revision_t}: leave it None, or use 'topk'/'float16'")


def _write_error(directory: str) -> OSError | None:
  """The OSError that creating `directory` and a file in it raises, or None."""
  probe = os.path.join(directory, f".write_test.{os.getpid()}")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as error:
    return error
  return None


def _holds_tables(directory: str) -> bool:
  return os.path.isdir(directory) and any(
      os.path.isdir(os.path.join(directory, name)) for name in os.listdir(directory))


def check_cache_files(cache, epochs) -> None:
  """A stage's teacher cache (`teacher_cache.TeacherCache`) can serve `epochs`: every table
  it needs is there, or can be written. A read-only cache that holds them is read; else the
  error names the first missing file and why it cannot be written."""
  missing = [cache.path(epoch) for epoch in epochs if not os.path.exists(cache.path(epoch))]
  if not missing:
    return
  error = _write_error(os.path.join(cache.directory, cache.key))
  if error:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    fail("teacher_cache.dir", cache.directory, f"{missing[0]}{more} is missing and cannot "
         f"be written ({workdir.io_cause(error.errno, error.strerror)}); fill the cache from "
         "a run that can write it (stages=precompute), or use a writable directory")


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
  if s.criterion not in selection.CRITERIA:
    fail("selection.criterion", s.criterion, f"must be one of {selection.CRITERIA}")
  if not 0 < s.ratio <= 1:
    fail("selection.ratio", s.ratio, "must be in (0, 1]")
  if s.hessian not in selection.HESSIANS:
    fail("selection.hessian", s.hessian, f"must be one of {selection.HESSIANS}")
  if s.influence_target not in INFLUENCE_TARGETS:
    fail("selection.influence_target", s.influence_target, f"must be one of {INFLUENCE_TARGETS}")
  if s.model not in SELECTION_MODELS:
    fail("selection.model", s.model, f"must be one of {SELECTION_MODELS}")
  for field in ("refresh_epochs", "warmup_epochs"):
    if not _is_int(s[field]) or s[field] < 0:
      fail(f"selection.{field}", s[field], "must be an integer >= 0")
  if s.margin_space not in ("prob", "logit"):
    fail("selection.margin_space", s.margin_space, "must be 'prob' or 'logit'")
  for field in ("damping", "l2"):
    if s[field] is not None and not s[field] >= 0:
      fail(f"selection.{field}", s[field], "must be >= 0")
  if not _is_int(s.histogram_bins) or s.histogram_bins < 1:
    fail("selection.histogram_bins", s.histogram_bins, "must be an integer >= 1")
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
    check_teacher_checkpoint(config, data)
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


def check_teacher_checkpoint(config, data) -> None:
  """`teacher.checkpoint` must be a .pth or a FINISHED kd_jax run (summary.json: not killed,
  not diverged) of this run's data (see the module docstring), and `teacher.model` must fit
  the data; reads JSON and the data's labels only."""
  field, path, model_name, info = ("teacher.checkpoint", config.teacher.checkpoint,
                                   config.teacher.model, data.info)
  if not isinstance(path, str) or not os.path.exists(path):
    fail(field, path, "does not exist: name a finished kd_jax run directory or a .pth file")
  if model_name not in models.names():
    fail("teacher.model", model_name, f"must be one of {', '.join(models.names())}")
  check_model_fits("teacher.model", model_name, info)
  if not os.path.isdir(path):
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
  _check_teacher_data(path, summary, config.dataset, data)


def _recorded_data(path: str, summary: dict) -> dict:
  """The teacher run's `data` record; for a run written before it, the dataset fields of its
  fingerprint (the same values, without `train_crc32`)."""
  if "data" in summary:
    return summary["data"]
  fingerprint = summary.get("fingerprint") or {}
  if "dataset.name" not in fingerprint:
    fail("teacher.checkpoint", path, "records neither its data nor its fingerprint (an older "
         "kd_jax?), so whether it saw this run's validation or test examples is unknown: "
         "retrain it")
  prefix = "dataset.options."
  options = {k[len(prefix):]: v for k, v in fingerprint.items() if k.startswith(prefix)}
  return dict({k: fingerprint.get(f"dataset.{k}") for k in ("name", "seed", "holdout",
                                                             "holdout_seed")},
              options=options or fingerprint.get("dataset.options") or {})


def _check_teacher_data(path: str, summary: dict, dataset, data) -> None:
  """The teacher run trained on this run's data, and on none of its validation examples."""
  field = "teacher.checkpoint"
  recorded, current = _recorded_data(path, summary), splits.identity(dataset)
  for key in ("name", "seed", "options"):
    if json.dumps(recorded.get(key), sort_keys=True) != json.dumps(current[key], sort_keys=True):
      fail(field, path, f"was trained on other data: dataset.{key}={recorded.get(key)!r}; this "
           f"run's is {current[key]!r} (a teacher must be trained on the student's data)")
  labels, _, val = splits.positions(data)
  try:
    teacher_train = splits.training_positions(labels, recorded["holdout"],
                                              recorded["holdout_seed"])
  except (TypeError, ValueError) as error:
    fail(field, path, f"records a held-out slice this data cannot have ({error})")
  crc = recorded.get("train_crc32")
  if crc is not None and crc != splits.examples_crc32(labels, teacher_train):
    fail(field, path, f"was trained on examples that this data no longer gives for "
         f"dataset.holdout={recorded['holdout']}, holdout_seed={recorded['holdout_seed']} "
         "(the data or its split changed since): retrain it")
  seen = np.intersect1d(teacher_train, val).size
  if seen:
    fail(field, path, f"trained on {seen} of this run's {len(val)} validation examples (it "
         f"held out dataset.holdout={recorded['holdout']} with holdout_seed="
         f"{recorded['holdout_seed']}; this run holds out {current['holdout']} with "
         f"{current['holdout_seed']}), and they would select the student's best checkpoint; "
         "use the teacher's holdout and holdout_seed, or a teacher trained with this run's")
