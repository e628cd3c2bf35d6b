"""Fit checks: a model, a teacher and a workdir must fit the run they serve, or the run stops
before anything trains, in one line (exit 2). Model <-> data (input kind, smallest image,
per-example logits), teacher <-> data (dataset identity, held-out examples), one kind of
pipeline per workdir, and loaded teachers whose weights or logits are not finite."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import trainer_util

from configs import digits, mnist1d
from kd_jax import config_defaults, pipeline
from kd_jax.models import registry, torch_import
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import loop, parallel, teacher_cache
from kd_jax.train import state as state_lib
from kd_jax.train import teacher as teacher_lib
from kd_jax.train import workdir as workdir_lib

# One epoch, no test evaluation nor checkpoint before the end: seconds per run.
_FAST = dict(num_epochs=1, eval_test_every_epochs=0, checkpoint__every_steps=0)


def _one_error_line(result) -> str:
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("kd_jax: "), result.stderr[-3000:]
  return lines[0]


# Model <-> data.

@pytest.mark.parametrize("get_config, field, model, expected", [
    # A CIFAR network on 8x8 digits: was a ZeroDivisionError traceback after the teacher.
    (digits.get_config, "student.model", "resnet8",
     ("it needs images of at least 32x32 (kd_jax.data 'digits' gives 8x8x1 images); use one "
      "of cnn_digits_large, cnn_digits_small, mlp_large, mlp_small")),
    # An image model on 1-D signals: trained to the end with results that mixed examples.
    (mnist1d.get_config, "teacher.model", "cnn_digits_small",
     ("it takes images [H, W, C] (kd_jax.data 'mnist1d' gives signals of shape (40, 1)); use "
      "one of cnn1d_large, cnn1d_small, mlp_large, mlp_small")),
    (trainer_util.tiny_config, "student.model", "resnet8",
     "it takes images [H, W, C] (kd_jax.data 'synthetic' gives vectors of shape (16,))"),
])
def test_a_model_that_does_not_fit_the_data_is_refused_by_prepare(get_config, field, model,
                                                                   expected):
  config = config_defaults.set_fields(get_config(), {field: model})
  with pytest.raises(ValueError) as error:
    pipeline.prepare(config)
  message = str(error.value)
  assert message.startswith(f"{field}={model!r} is not allowed: "), message
  assert expected in message and "\n" not in message


def test_every_generation_is_checked_before_the_first_trains():
  config = trainer_util.tiny_config(generations__num=2, teacher__model="cnn1d_small",
                                    student__model="cnn1d_small", dataset__name="digits")
  config.dataset.options = {}
  with pytest.raises(ValueError, match=r"^generation_0.model='cnn1d_small' is not allowed: "
                                       r"it takes signals"):
    pipeline.prepare(config)


def test_cli_student_that_cannot_take_the_data_trains_no_teacher(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", "--config=configs/digits.py",
       f"--workdir={tmp_path}", "--config.student.model=resnet8", "--config.num_epochs=1"],
      cwd=trainer_util.REPO, env=trainer_util.env(), capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "student.model='resnet8' is not allowed" in _one_error_line(result)
  assert not (tmp_path / "teacher").exists()  # refused before the teacher trained


class _BatchMixer(nn.Module):
  """A model whose logits for one example depend on the others (batch-mean centring)."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False, return_features=False):
    del train
    x = x.reshape((x.shape[0], -1))
    x = x - x.mean(axis=0, keepdims=True)
    logits = nn.Dense(self.num_classes, name="classifier")(x)
    return (logits, x) if return_features else logits


@pytest.fixture
def batch_mixer():
  registry.register("batch_mixer", input_kind="vector", torch_classifier=None)(
      lambda num_classes, **options: _BatchMixer(num_classes))
  yield "batch_mixer"
  del registry._REGISTRY["batch_mixer"]  # pylint: disable=protected-access


def test_a_model_that_mixes_the_examples_of_a_batch_is_refused(batch_mixer):
  config = trainer_util.tiny_config(student__model=batch_mixer)
  with pytest.raises(ValueError, match="its logits for one example depend on the other "
                                       "examples of the batch"):
    pipeline.prepare(config)


# Teacher <-> data.

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """A finished 1-epoch teacher of the tiny data (holdout 64, holdout_seed 0)."""
  workdir = tmp_path_factory.mktemp("teacher_run")
  pipeline.run(trainer_util.tiny_config(stages="teacher", **_FAST), str(workdir))
  return workdir / "teacher"


@pytest.mark.parametrize("overrides, expected", [
    # Another generation seed: other examples (a student at chance level, before).
    (dict(dataset__seed=1), "was trained on other data: dataset.seed=0; this run's is 1"),
    (dict(dataset__options__noise=2.0), "was trained on other data: dataset.options="),
    # Another held-out slice: the teacher trained on the student's validation examples.
    (dict(dataset__holdout_seed=1), r"trained on \d+ of this run's 64 validation examples"),
    (dict(dataset__holdout=128), r"trained on \d+ of this run's 128 validation examples"),
])
def test_a_teacher_of_other_data_is_refused(teacher_run, overrides, expected):
  config = trainer_util.tiny_config(teacher__checkpoint=str(teacher_run), **overrides)
  with pytest.raises(ValueError, match=rf"^teacher.checkpoint='{teacher_run}' is not allowed: "
                                       rf".*{expected}"):
    pipeline.prepare(config)


def test_a_teacher_that_saw_none_of_the_validation_examples_is_accepted(teacher_run):
  # No validation slice in the student's run: the teacher's held-out examples are simply
  # not in its training set.
  pipeline.prepare(trainer_util.tiny_config(teacher__checkpoint=str(teacher_run),
                                            dataset__holdout=0))


def test_an_older_teacher_run_is_checked_against_its_fingerprint(teacher_run, tmp_path):
  """A run written before summary.json's `data` record: its fingerprint's dataset fields
  are the same values; its recorded examples' CRC32 is checked when there is one."""
  old = tmp_path / "old"
  shutil.copytree(teacher_run, old)
  summary = json.loads((old / "summary.json").read_text())
  crc = summary["data"]["train_crc32"]
  (old / "summary.json").write_text(json.dumps({k: v for k, v in summary.items()
                                                if k != "data"}))
  pipeline.prepare(trainer_util.tiny_config(teacher__checkpoint=str(old)))
  for overrides, expected in [(dict(dataset__seed=1), "dataset.seed=0"),
                              (dict(dataset__holdout_seed=1), "validation examples")]:
    with pytest.raises(ValueError, match=expected):
      pipeline.prepare(trainer_util.tiny_config(teacher__checkpoint=str(old), **overrides))
  summary["data"]["train_crc32"] = f"{int(crc, 16) ^ 1:08x}"
  (old / "summary.json").write_text(json.dumps(summary))
  with pytest.raises(ValueError, match="was trained on examples that this data no longer"):
    pipeline.prepare(trainer_util.tiny_config(teacher__checkpoint=str(old)))


# One kind of pipeline per workdir.

def _snapshot(directory) -> dict:
  paths = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return {path: (os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in paths}


def test_a_workdir_holds_one_kind_of_pipeline(tmp_path):
  generations_dir, stages_dir = tmp_path / "generations", tmp_path / "stages"
  pipeline.run(trainer_util.tiny_config(generations__num=2, student__model="mlp_large",
                                        **_FAST), str(generations_dir))
  assert json.loads((generations_dir / "pipeline.json").read_text())["kind"] == "generations"
  before = _snapshot(generations_dir)
  # A teacher/student run there: was exit 0, overwriting summary.json and config.json.
  result = trainer_util.run_cli(generations_dir, num_epochs=1)
  assert result.returncode == 2, result.stderr[-3000:]
  line = _one_error_line(result)
  assert f"workdir '{generations_dir}' holds a run of generations" in line
  assert _snapshot(generations_dir) == before  # nothing written, not even the lock
  # A workdir written before pipeline.json: its stage directories tell its kind.
  os.remove(generations_dir / "pipeline.json")
  with pytest.raises(workdir_lib.WorkdirError, match="holds a run of generations"):
    pipeline.run(trainer_util.tiny_config(**_FAST), str(generations_dir))
  # ... and the other way round.
  pipeline.run(trainer_util.tiny_config(stages="teacher", **_FAST), str(stages_dir))
  with pytest.raises(workdir_lib.WorkdirError, match="holds a run of teacher/student stages"):
    pipeline.run(trainer_util.tiny_config(generations__num=2, student__model="mlp_large",
                                          **_FAST), str(stages_dir))


# Loaded weights and the teacher's logits.

def test_a_teacher_run_whose_weights_are_not_finite_is_refused(teacher_run, monkeypatch):
  final_variables = ckpt_lib.final_variables

  def poisoned(*args):
    variables = final_variables(*args)
    return jax.tree.map(lambda x: x.at[0].set(np.nan), variables)

  monkeypatch.setattr(ckpt_lib, "final_variables", poisoned)
  config = trainer_util.tiny_config(teacher__checkpoint=str(teacher_run))
  data = pipeline.prepare(config)
  with pytest.raises(ValueError, match=r"^teacher.checkpoint='.*' is not allowed: its weights "
                                       r"are not usable as a teacher \(non-finite values"):
    teacher_lib.load(config, data, parallel.make_mesh())


def test_batch_norm_variances_below_zero_and_nonfinite_weights_are_named():
  variables = {"params": {"conv": {"kernel": np.ones((3, 3)), "bias": np.array([np.inf])}},
               "batch_stats": {"bn": {"mean": np.zeros(3), "var": np.array([1.0, -1e-3, 2.0])}}}
  assert torch_import.invalid_weights(variables) == (
      "non-finite values (NaN or inf) in params/conv/bias; negative BatchNorm variances in "
      "batch_stats/bn/var")
  variables["params"]["conv"]["bias"] = np.zeros(1)
  variables["batch_stats"]["bn"]["var"] = np.ones(3)
  assert torch_import.invalid_weights(variables) == ""


def test_a_teacher_handed_over_in_memory_is_checked_too():
  trained = loop.Trained(dict(test_accuracy=0.5), dict(params=dict(
      classifier=dict(kernel=np.full((16, 10), np.nan, np.float32), bias=np.zeros(10)))))
  info = pipeline.prepare(trainer_util.tiny_config()).info
  with pytest.raises(ValueError, match=r"^teacher='.*generation_0' is not allowed: its weights"):
    teacher_lib.from_trained(trained, "generation_0", "mlp_small", info, parallel.make_mesh())


@pytest.fixture(scope="module")
def overflowing_teacher():
  """Finite weights whose logits overflow to inf on any input: a teacher that cannot teach."""
  model = registry.create("mlp_small", 10)
  variables = state_lib.init_variables(model, jax.random.PRNGKey(3), (16,))
  variables = jax.tree.map(lambda x: x, variables)
  kernel = variables["params"]["classifier"]["kernel"]
  variables["params"]["classifier"]["kernel"] = np.sign(np.asarray(kernel)) * 3e38
  return teacher_lib.Teacher("mlp_small", model, variables, "/teachers/overflowing")


@pytest.mark.parametrize("cache", [False, True])
def test_a_teacher_with_nonfinite_logits_is_the_teachers_error_live_or_cached(
    overflowing_teacher, tmp_path, cache):
  """Live, this was the student's divergence (exit 3); cached, an error naming no teacher."""
  config = trainer_util.tiny_config(**_FAST)
  if cache:
    config.teacher_cache.dir = str(tmp_path / "cache")
  data = pipeline.prepare(config)
  stage = pipeline.stage.stage_config(config, "student")
  with pytest.raises(teacher_cache.TeacherLogitsNotFinite,
                     match=r"^teacher '/teachers/overflowing' gives non-finite logits"):
    loop.train(stage, str(tmp_path / "student"), teacher=overflowing_teacher, data=data,
               mesh=parallel.make_mesh())
  assert not (tmp_path / "student" / "summary.json").exists()
