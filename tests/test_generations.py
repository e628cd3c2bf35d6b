"""Generations (kd_jax.generations): a 3-generation CLI run writes one checkpoint chain, test
logits, per-generation and ensemble entries; a rerun trains nothing; a run SIGKILLed inside
generation 1 and started again ends with the uninterrupted run's metrics. Tiny synthetic data
(10 classes in 2 superclasses), mlp_small, 2 epochs of 16 steps per generation."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import trainer_util
from scipy import special

from kd_jax import config_defaults, generations, pipeline
from kd_jax import data as data_lib

CONFIG = "configs/synthetic_generations.py"
OVERRIDES = {**trainer_util.TINY_OVERRIDES, "teacher.model": "mlp_small",
             "student.model": "mlp_small", "teacher.method.tsd_warmup_epochs": 1.0,
             "generations.num": 3}
ROLES = [f"generation_{g}" for g in range(3)]


def _args(workdir):
  return [sys.executable, "-m", "kd_jax.main", f"--config={CONFIG}", f"--workdir={workdir}"] + [
      f"--config.{key}={value}" for key, value in OVERRIDES.items()]


def _run(workdir):
  result = subprocess.run(_args(workdir), cwd=trainer_util.REPO, env=trainer_util.env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _read(path):
  with open(path) as f:
    return json.load(f)


def _step_dirs(workdir, role):
  directory = os.path.join(workdir, role, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  _run(workdir)
  return workdir


def test_three_generations_write_checkpoints_logits_and_summary(reference):
  summary = trainer_util.read_summary(reference)
  assert sorted(k for k in summary if k.startswith(("generation_", "ensemble_"))) == [
      "ensemble_1", "ensemble_2", *ROLES]
  test = data_lib.load("synthetic", "test", num_classes=10, num_superclasses=2, dim=16,
                       noise=1.0, num_train=576, num_test=256)
  logits = {}
  for g, role in enumerate(ROLES):
    own = _read(os.path.join(reference, role, "summary.json"))  # the trainer's own evaluation
    assert _step_dirs(reference, role)[-1] == own["steps"] == 2 * 16
    logits[g] = np.load(os.path.join(reference, role, "test_logits.npy"))
    assert logits[g].shape == (256, 10)
    # Logits of the restored final checkpoint give the in-memory final model's accuracy.
    accuracy = np.mean(logits[g].argmax(-1) == test.labels)
    assert summary[role]["test_accuracy"] == pytest.approx(accuracy) == own["test_accuracy"]
    assert 0 <= summary[role]["test_metrics"]["secondary_in_superclass"] <= 1
  assert summary["generation_0"]["method"] == "tsd"
  assert summary["generation_0"]["tsd_eta"] == 0.6 and summary["generation_0"]["teacher"] is None
  for g in (1, 2):
    entry = summary[f"generation_{g}"]
    assert (entry["method"], entry["ce_weight"], entry["kd_weight"], entry["temperature"]) == (
        "kd", 0.6, 0.4, 1.0)
    assert entry["teacher"] == f"generation_{g - 1}"
    assert _read(os.path.join(reference, ROLES[g], "summary.json"))["teacher"].endswith(
        ROLES[g - 1])
  # Ensembles: mean of softmax outputs of generations 1..g, computed independently.
  for g in (1, 2):
    probs = np.mean([special.softmax(logits[i].astype(np.float64), -1) for i in range(1, g + 1)],
                    axis=0)
    entry = summary[f"ensemble_{g}"]
    assert entry["members"] == ROLES[1:g + 1]
    assert entry["test_accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == test.labels))
    entropy = -np.mean(np.sum(probs * np.log(probs), -1))
    assert entry["test_metrics"]["mean_entropy"] == pytest.approx(entropy, rel=1e-6)
  assert os.path.getsize(os.path.join(reference, "generations.png")) > 0


def test_rerun_trains_nothing(reference, tmp_path):
  before = trainer_util.read_summary(reference)
  steps = {role: _step_dirs(reference, role) for role in ROLES}
  result = _run(reference)
  for role in ROLES:
    assert f"{role} already trained" in result.stdout
  assert "resumes" not in result.stdout
  assert {role: _step_dirs(reference, role) for role in ROLES} == steps
  assert trainer_util.read_summary(reference) == before


def test_sigkill_in_generation_1_then_rerun_matches_uninterrupted(reference, tmp_path):
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_args(workdir), cwd=trainer_util.REPO, env=trainer_util.env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = workdir / "generation_1" / "checkpoints"
  deadline = time.time() + 240
  while proc.poll() is None and time.time() < deadline and not (
      checkpoints.is_dir() and any(n.isdigit() for n in os.listdir(checkpoints))):
    time.sleep(0.01)
  proc.kill()
  assert proc.wait() == -9
  assert not (workdir / "generation_1" / "summary.json").exists()  # killed inside generation 1
  result = _run(workdir)
  assert "generation_0 already trained" in result.stdout
  assert "generation_1 resumes at step" in result.stdout
  assert (trainer_util.comparable(trainer_util.read_summary(workdir))
          == trainer_util.comparable(trainer_util.read_summary(reference)))
  for role in ROLES:
    np.testing.assert_array_equal(np.load(workdir / role / "test_logits.npy"),
                                  np.load(reference / role / "test_logits.npy"))


def test_data_selection_in_generations_and_ensemble_with_patriarch(tmp_path):
  """`student.method.select=True` runs a selection round in generation 1 only (generation 0
  has no teacher); ensemble_first=0 puts the patriarch in the ensembles."""
  config = trainer_util.tiny_config(num_epochs=1, teacher__model="mlp_small",
                                    student__model="mlp_small")
  config.teacher.method.name = "tsd"
  config.student.method.update(temperature=1.0, select=True)
  config.selection.update(criterion="teacher_margin", ratio=0.25)
  config.generations.update(num=2, ensemble_first=0)
  summary = pipeline.run(config, str(tmp_path))
  assert sorted(k for k in summary if k.startswith("ensemble_")) == ["ensemble_0", "ensemble_1"]
  assert summary["ensemble_0"]["test_accuracy"] == summary["generation_0"]["test_accuracy"]
  rounds = [_read(tmp_path / role / "summary.json")["selection"] for role in ROLES[:2]]
  assert rounds[0] is None
  assert [(r["epoch"], r["num_selected"]) for r in rounds[1]] == [(0, 128)]  # 0.25 * 512


def _config(**generation_fields):
  config = trainer_util.tiny_config(teacher__model="mlp_small", student__model="mlp_small")
  config.generations.update(num=3, **generation_fields)
  return config


def test_lambda_schedule_sets_ce_and_kd_weights():
  config = _config(ce_weights=(0.6, 0.9))
  stages = generations.stage_configs(config)
  assert stages["generation_0"].method.name == "ce"  # the teacher block
  first, second = (stages[f"generation_{g}"].method for g in (1, 2))
  assert (first.ce_weight, first.kd_weight) == (0.6, pytest.approx(0.4))
  assert (second.ce_weight, second.kd_weight) == (0.9, pytest.approx(0.1))
  assert config.student.method.ce_weight == 0.1  # the config itself is untouched


@pytest.mark.parametrize("change, expected", [
    (dict(generations__num=-1), "generations.num=-1"),
    (dict(generations__ce_weights=(0.5,)), "generations.ce_weights=(0.5,)"),
    (dict(generations__ce_weights=(0.5, 1.5)), "generations.ce_weights=(0.5, 1.5)"),
    (dict(generations__ensemble_first=3), "generations.ensemble_first=3"),
    (dict(generations__num_secondary=10), "generations.num_secondary=10"),
    (dict(student__model="mlp_large"), "student.model='mlp_large'"),
    (dict(student__method__name="ce"), "student.method.name='ce'"),
    (dict(teacher__checkpoint="/some/run"), "teacher.checkpoint='/some/run'"),
])
def test_check_config_names_the_bad_field(change, expected):
  config = config_defaults.set_fields(_config(), {k.replace("__", "."): v for k, v in change.items()})
  with pytest.raises(ValueError) as error:
    pipeline.prepare(config)
  assert expected in str(error.value)
