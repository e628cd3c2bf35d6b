"""Bad input fails fast with one line naming the field, its value and what is allowed."""


import pytest
import trainer_util

from kd_jax.train import loop


@pytest.mark.parametrize("overrides, expected", [
    (dict(student__method__name="nope"), "student.method.name='nope'"),
    (dict(teacher__model="resnet9000"), "teacher.model='resnet9000'"),
    (dict(dataset__name="imagenet9000"), "unknown dataset 'imagenet9000'"),
    (dict(student__method__temperature=0.0), "student.method.temperature=0.0"),
    (dict(student__method__name="lr", student__method__eta=1.0), "student.method.eta=1.0"),
    (dict(student__method__name="kd_topk", student__method__topk=10),
     "student.method.topk=10"),
    (dict(teacher__method__name="kd"), "teacher.method.name='kd'"),
    (dict(teacher__checkpoint="/no/such/dir"), "teacher.checkpoint='/no/such/dir'"),
    (dict(dataset__holdout=100000), "dataset.holdout=100000"),
])
def test_prepare_rejects_bad_config(overrides, expected):
  with pytest.raises(ValueError) as error:
    loop.prepare(trainer_util.tiny_config(**overrides))
  assert expected in str(error.value)


def test_teacher_checkpoint_with_other_class_count_is_rejected(tmp_path):
  config = trainer_util.tiny_config(num_epochs=1)
  config.student.model = ""
  loop.run(config, str(tmp_path))  # a 10-class teacher
  other = trainer_util.tiny_config(dataset__options__num_classes=12,
                                   teacher__checkpoint=str(tmp_path))
  with pytest.raises(ValueError, match="its 10 classes must equal the dataset's 12"):
    loop.prepare(other)
  # ... and the same checkpoint with the right class count is used as the teacher.
  same = trainer_util.tiny_config(num_epochs=1, teacher__checkpoint=str(tmp_path))
  summary = loop.run(same, str(tmp_path / "distill"))
  assert summary["teacher"]["trained"] is False
  assert summary["teacher"]["test_accuracy"] == loop.report.read_json(
      str(tmp_path / "summary.json"))["teacher"]["test_accuracy"]
  assert not (tmp_path / "distill" / "teacher").exists()  # referenced, not copied
  assert summary["student"]["teacher"] == str(tmp_path)


def _one_error_line(result) -> str:
  lines = [l for l in result.stderr.splitlines() if l.startswith("kd_jax:")]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


def test_cli_exit_code_and_single_line(tmp_path):
  result = trainer_util.run_cli(tmp_path, student__method__name="nope")
  assert result.returncode == 2
  line = _one_error_line(result)
  assert "student.method.name='nope'" in line and "kd, lr" in line
  assert not (tmp_path / "teacher").exists()  # nothing was trained


def test_cli_batch_not_divisible_by_devices(tmp_path):
  result = trainer_util.run_cli(tmp_path, num_devices=4, batch_size=30)
  assert result.returncode == 2
  assert "batch_size=30" in _one_error_line(result)
  assert "device count (4)" in result.stderr


def test_cli_nan_loss_stops_with_message(tmp_path):
  result = trainer_util.run_cli(tmp_path, teacher__learning_rate="1e30")
  assert result.returncode == 3
  assert "non-finite loss" in _one_error_line(result)
  assert not (tmp_path / "teacher" / "summary.json").exists()
