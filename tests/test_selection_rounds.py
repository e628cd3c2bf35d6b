"""Data Selection in the trainer (kd_jax.train.selection_rounds): config checks, round
statistics, exact counts, determinism, warm-up and refresh rounds, masks in the checkpoint,
resume keeping the selection, and a few steps of lr_ds on the CIFAR-100 config over TFDS mock
data."""

import os
import re
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest
import trainer_util

from kd_jax import config_files, methods, pipeline, selection
from kd_jax.train import checks, selection_rounds, stage

NUM_TRAIN = 576 - 64  # TINY_OVERRIDES: 576 examples, 64 held out


def _config(**overrides):
  return trainer_util.tiny_config(**{"student__method__name": "kd_ds", **overrides})


def test_round_statistics_hand_case():
  scores = np.array([0.0, 1.0, 2.0, 3.0])
  mask = np.array([False, True, True, False])
  wrong = np.array([True, True, False, False])
  stats = selection_rounds.round_statistics(scores, mask, wrong, bins=3)
  assert (stats["num_selected"], stats["num_examples"], stats["selected_ratio"]) == (2, 4, 0.5)
  assert stats["score_histogram"]["counts"] == [1, 1, 2]
  assert stats["score_histogram"]["edges"] == pytest.approx([0, 1, 2, 3])
  assert stats["teacher_wrong_share"] == 0.5
  assert stats["teacher_wrong_share_selected"] == 0.5 and stats["teacher_wrong_share_rest"] == 0.5


def test_warmup_and_refresh_rounds():
  config = trainer_util.tiny_config().selection
  assert [e for e in range(7) if selection_rounds.is_round(config, e)] == [0]
  config.refresh_epochs = 3
  assert [e for e in range(7) if selection_rounds.is_round(config, e)] == [0, 3, 6]
  config.warmup_epochs = 2
  assert [e for e in range(9) if selection_rounds.is_round(config, e)] == [2, 5, 8]
  config.refresh_epochs = 0
  assert [e for e in range(9) if selection_rounds.is_round(config, e)] == [2]


def test_select_flag_turns_selection_on_for_any_teacher_method():
  config = methods.default_config()
  config.name = "dkd"
  assert not methods.selects(config)
  config.select = True
  assert methods.selects(config)
  config.name = "ce"
  with pytest.raises(ValueError, match=r"method.select=True .*'ce'"):
    methods.validate(config, 10)


@pytest.mark.parametrize("field, value, expected", [
    ("criterion", "loss", "selection.criterion='loss'"),
    ("ratio", 0.0, "selection.ratio=0.0"),
    ("ratio", 1.5, "selection.ratio=1.5"),
    ("hessian", "full", "selection.hessian='full'"),
    ("model", "reference", "selection.model='reference'"),
    ("refresh_epochs", -1, "selection.refresh_epochs=-1"),
    ("warmup_epochs", -1, "selection.warmup_epochs=-1"),
    ("damping", -1.0, "selection.damping=-1.0"),
    ("margin_space", "log", "selection.margin_space='log'"),
    ("influence_target", "label", "selection.influence_target='label'"),
])
def test_check_config_names_the_bad_field(field, value, expected):
  config = _config()
  config.selection[field] = value
  with pytest.raises(ValueError) as error:
    checks.check_selection(config.selection, has_validation=True)
  assert expected in str(error.value)


def test_influence_needs_a_validation_slice_not_the_test_split():
  config = _config(dataset__holdout=0)
  with pytest.raises(ValueError, match="dataset.holdout > 0"):
    pipeline.prepare(config)
  config.selection.criterion = "teacher_margin"  # needs no reference set
  pipeline.prepare(config)


def _saved_selection(role_dir, step):
  manager = ocp.CheckpointManager(os.path.join(role_dir, "checkpoints"), item_names=("train",))
  train = manager.restore(step, args=ocp.args.Composite(train=ocp.args.StandardRestore()))
  manager.close()
  return np.asarray(train["train"]["selected"])


def test_random_control_exact_count_deterministic_and_saved(tmp_path):
  config = _config(selection__criterion="random", selection__ratio=0.3,
                   selection__refresh_epochs=1)
  summary = pipeline.run(config, str(tmp_path))["student"]
  rounds = summary["selection"]
  assert [r["epoch"] for r in rounds] == [0, 1]
  keep = int(np.floor(0.3 * NUM_TRAIN + 0.5))
  seed = stage.stage_seed(config.seed, "student")
  expected = [selection.select(selection.random_scores(NUM_TRAIN, [seed, 0, e]), 0.3)
              for e in (0, 1)]
  for stats in rounds:
    assert stats["num_selected"] == keep and stats["num_examples"] == NUM_TRAIN
    total = stats["teacher_wrong_share"] * NUM_TRAIN
    inside = stats["teacher_wrong_share_selected"] * keep
    outside = stats["teacher_wrong_share_rest"] * (NUM_TRAIN - keep)
    assert inside + outside == pytest.approx(total)
    assert sum(stats["score_histogram"]["counts"]) == NUM_TRAIN
  assert not np.array_equal(expected[0], expected[1])  # a refresh redraws the control
  # The final checkpoint holds round 1's mask.
  np.testing.assert_array_equal(_saved_selection(tmp_path / "student", summary["steps"]),
                                expected[1])


def test_warmup_trains_with_ce_then_scores_the_warmed_student(tmp_path):
  """selection.warmup_epochs=1: epoch 0 is plain CE (the same steps as a CE student), round 0
  runs at the start of epoch 1."""
  config = _config(selection__criterion="random", selection__warmup_epochs=1, num_epochs=1)
  warm = pipeline.run(config, str(tmp_path / "warm"))["student"]
  assert warm["selection"] is None  # one epoch: the round at epoch 1 is never reached
  ce = pipeline.run(_config(student__method__name="ce", num_epochs=1), str(tmp_path / "ce"))
  assert warm["test_loss"] == pytest.approx(ce["student"]["test_loss"], rel=1e-5)
  config.num_epochs = 2
  rounds = pipeline.run(config, str(tmp_path / "two"))["student"]["selection"]
  assert [r["epoch"] for r in rounds] == [1]


def test_influence_selection_resumes_without_recomputing(tmp_path, capfd):
  """A run resumed mid-epoch keeps the checkpoint's selection and ends with the same summary
  as the uninterrupted run; the influence scores themselves are deterministic."""
  config = _config(selection__refresh_epochs=1)
  reference = pipeline.run(config, str(tmp_path / "reference"))
  rounds = reference["student"]["selection"]
  assert [r["epoch"] for r in rounds] == [0, 1]
  assert all(r["num_selected"] == NUM_TRAIN // 2 and r["criterion"] == "influence"
             for r in rounds)
  # Interrupted in epoch 1 (after round 1): drop the final checkpoint and the summaries.
  workdir = tmp_path / "resumed"
  shutil.copytree(tmp_path / "reference", workdir)
  student = workdir / "student"
  final = max(int(n) for n in os.listdir(student / "checkpoints") if n.isdigit())
  shutil.rmtree(student / "checkpoints" / str(final))
  os.remove(student / "summary.json")
  os.remove(workdir / "summary.json")
  capfd.readouterr()
  resumed = pipeline.run(config, str(workdir))
  resumed_at = re.search(r"student resumes at step \d+ \(epoch (\d+), step (\d+) in epoch",
                         capfd.readouterr().out)
  assert resumed_at and resumed_at.group(1) == "1" and int(resumed_at.group(2)) > 0
  assert (trainer_util.comparable(resumed["student"])
          == trainer_util.comparable(reference["student"]))
  np.testing.assert_array_equal(_saved_selection(student, final),
                                _saved_selection(tmp_path / "reference" / "student", final))


@pytest.mark.parametrize("criterion, model, target", [
    ("influence", "teacher", "teacher_minus_label"), ("teacher_correct", "student", "teacher")])
def test_other_criteria_and_scored_models_run(tmp_path, criterion, model, target):
  config = _config(selection__criterion=criterion, selection__model=model, num_epochs=1,
                   selection__influence_target=target, student__method__name="dkd_lr_ds")
  rounds = pipeline.run(config, str(tmp_path))["student"]["selection"]
  assert len(rounds) == 1 and rounds[0]["num_selected"] == NUM_TRAIN // 2
  if criterion == "teacher_correct":  # keeps correct examples first
    assert rounds[0]["teacher_wrong_share_selected"] <= rounds[0]["teacher_wrong_share"]


@pytest.mark.slow  # about 30 s: ResNet8 selection rounds on the CIFAR-100 config
def test_lr_ds_on_cifar100_config_with_mock_tfds(mock_tfds, tmp_path):
  config = config_files.shipped("cifar100")
  config.dataset.data_dir = mock_tfds
  config.dataset.holdout = 8
  config.dataset.options = dict(cache_labels=False)
  config.teacher.model = config.student.model = "resnet8"
  config.student.method.name = "lr_ds"
  config.update(batch_size=8, eval_batch_size=16, num_epochs=1, log_every_steps=2)
  config.checkpoint.every_steps = 0
  summary = pipeline.run(config, str(tmp_path))
  student = summary["student"]
  assert student["method"] == "lr_ds" and student["steps"] == 4  # 32 training examples
  assert student["selection"][0]["num_selected"] == 16
  assert np.isfinite(student["test_loss"])


def test_teacher_minus_label_scores_the_switch_from_label_to_teacher():
  rng = np.random.default_rng(0)
  n, d, c = 40, 5, 4
  x, ref_x = rng.normal(size=(n, d)), rng.normal(size=(12, d))
  y, ref_y = rng.integers(0, c, n), rng.integers(0, c, 12)
  t = rng.dirichlet(np.ones(c), n)
  kernel, bias = 0.1 * rng.normal(size=(d, c)), np.zeros(c)
  common = dict(l2=1e-2, hessian="exact", damping=1e-3)
  switch = selection_rounds.influence_scores(x, t, y, kernel, bias, ref_x, ref_y,
                                           target="teacher_minus_label", **common)
  v_kernel, v_bias = selection.influence_vector(x, t, kernel, bias, ref_x, ref_y, **common)
  expected = np.sum((x @ np.asarray(v_kernel) + np.asarray(v_bias)) * (np.eye(c)[y] - t), -1)
  np.testing.assert_allclose(switch, expected, rtol=1e-4, atol=1e-6)
  plain = selection_rounds.influence_scores(x, t, y, kernel, bias, ref_x, ref_y, **common)
  np.testing.assert_allclose(plain, selection.influence_scores(x, t, kernel, bias, ref_x, ref_y,
                                                               **common), rtol=1e-6)
