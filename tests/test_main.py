"""Bad input fails fast with one line naming the field, its value and what is allowed (exit
2); the workdir guards (fingerprint, lock) and teacher acceptance; progress on stdout."""

import errno
import fcntl
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
import trainer_util

from kd_jax import models, pipeline
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import loop, writer
from kd_jax.train import state as state_lib
from kd_jax.train import workdir as workdir_lib


@pytest.mark.parametrize("overrides, expected", [
    (dict(student__method__name="nope"), "student.method.name='nope'"),
    (dict(teacher__model="resnet9000"), "teacher.model='resnet9000'"),
    (dict(dataset__name="imagenet9000"), "unknown dataset 'imagenet9000'"),
    (dict(student__method__temperature=0.0), "student.method.temperature=0.0"),
    (dict(student__method__temperature=float("inf")), "student.method.temperature=inf"),
    (dict(student__method__name="lr", student__method__eta=1.0), "student.method.eta=1.0"),
    (dict(student__method__name="kd_topk", student__method__topk=10),
     "student.method.topk=10"),
    (dict(teacher__method__name="kd"), "teacher.method.name='kd'"),
    (dict(teacher__checkpoint="/no/such/dir"), "teacher.checkpoint='/no/such/dir'"),
    (dict(dataset__holdout=100000), "dataset.holdout=100000"),
    (dict(dataset__options__num_classes=1), "num_classes=1"),
    (dict(eval_every_epochs=0), "eval_every_epochs=0"),
    (dict(optim__weight_decay=-1e-4), "optim.weight_decay=-0.0001"),
    (dict(optim__momentum=-0.5), "optim.momentum=-0.5"),
    (dict(optim__learning_rate=float("nan")), "learning_rate=nan"),
    (dict(teacher__num_epochs=0), "num_epochs=0"),          # 0 is not "the shared value"
    (dict(student__learning_rate=0.0), "learning_rate=0.0"),
    (dict(stages="teacher,students"), "stages='teacher,students'"),
    (dict(stages="student"), "needs a teacher"),
])
def test_prepare_rejects_bad_config(overrides, expected):
  with pytest.raises(ValueError) as error:
    pipeline.prepare(trainer_util.tiny_config(**overrides))
  assert expected in str(error.value)


def test_unprepared_tfds_data_says_how_to_prepare_it(tmp_path):
  config = trainer_util.tiny_config(dataset__name="cifar100", dataset__data_dir=str(tmp_path))
  config.dataset.options = {}
  with pytest.raises(ValueError) as error:
    pipeline.prepare(config)
  message = str(error.value)
  assert "\n" not in message and "is not prepared" in message
  assert f"tfds build cifar100 --data_dir={tmp_path}" in message


def _teacher_run(tmp_path, **overrides):
  config = trainer_util.tiny_config(num_epochs=1, stages="teacher", **overrides)
  pipeline.run(config, str(tmp_path))
  return tmp_path / "teacher"


def test_teacher_checkpoint_must_be_finished_and_of_the_same_data(tmp_path):
  teacher_dir = _teacher_run(tmp_path)  # a finished 10-class teacher
  other = trainer_util.tiny_config(dataset__options__num_classes=12,
                                   teacher__checkpoint=str(tmp_path))
  with pytest.raises(ValueError, match="num_classes=10; this run's is 12"):
    pipeline.prepare(other)
  # ... and the same checkpoint with the right class count is used as the teacher.
  same = trainer_util.tiny_config(num_epochs=1, teacher__checkpoint=str(tmp_path))
  summary = pipeline.run(same, str(tmp_path / "distill"))
  assert summary["teacher"]["trained"] is False
  assert summary["teacher"]["test_accuracy"] == trainer_util.read_summary(tmp_path)[
      "teacher"]["test_accuracy"]
  assert not (tmp_path / "distill" / "teacher").exists()  # referenced, not copied
  assert summary["student"]["teacher"] == str(teacher_dir)
  # An unfinished teacher (killed, or stopped on NaN: no summary.json) is refused.
  unfinished = tmp_path / "unfinished"
  shutil.copytree(teacher_dir, unfinished)
  os.remove(unfinished / "summary.json")
  with pytest.raises(ValueError, match="is not a finished run"):
    pipeline.prepare(trainer_util.tiny_config(teacher__checkpoint=str(unfinished)))


def test_unreadable_final_teacher_checkpoint_is_an_error_not_an_older_step(tmp_path):
  teacher_dir = _teacher_run(tmp_path, checkpoint__every_steps=4)
  steps = sorted(int(s) for s in os.listdir(teacher_dir / "checkpoints"))
  assert len(steps) == 2  # an earlier step exists that a fallback could have used
  shutil.rmtree(teacher_dir / "checkpoints" / str(steps[-1]) / "variables")
  config = trainer_util.tiny_config(num_epochs=1, teacher__checkpoint=str(teacher_dir))
  with pytest.raises(ValueError, match="never an earlier step"):
    pipeline.run(config, str(tmp_path / "student_run"))


def _one_error_line(result) -> str:
  lines = [line for line in result.stderr.splitlines() if line.startswith("kd_jax:")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return lines[0]


def test_cli_exit_code_and_single_line(tmp_path):
  result = trainer_util.run_cli(tmp_path, student__method__name="nope")
  assert result.returncode == 2
  line = _one_error_line(result)
  assert "student.method.name='nope'" in line and "kd, lr" in line
  assert not (tmp_path / "teacher").exists()  # nothing was trained


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/no_such_config.py"], "no_such_config.py"),
    (["--config=configs/synthetic.py", "--config.student.methd.name=kd"], "methd"),
    (["--config=configs/synthetic.py", "--config.optim.weight_decay=-1.0"],
     "optim.weight_decay=-1.0"),
])
def test_cli_bad_config_is_one_line(tmp_path, args, expected):
  result = subprocess.run([sys.executable, "-m", "kd_jax.main", f"--workdir={tmp_path}", *args],
                          cwd=trainer_util.REPO, env=trainer_util.env(), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  assert expected in _one_error_line(result)


def test_cli_config_with_a_syntax_error_and_garbage_pth(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", f"--config={broken}", f"--workdir={tmp_path}"],
      cwd=trainer_util.REPO, env=trainer_util.env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "SyntaxError" in _one_error_line(result)
  garbage = tmp_path / "teacher.pth"
  garbage.write_bytes(b"not a torch file" * 100)
  result = trainer_util.run_cli(tmp_path / "run", teacher__checkpoint=garbage)
  assert result.returncode == 2
  line = _one_error_line(result)
  assert f"teacher.checkpoint='{garbage}' is not allowed: cannot be read" in line


def test_cli_help_lists_exit_codes():
  result = subprocess.run([sys.executable, "-m", "kd_jax.main", "--help"], cwd=trainer_util.REPO,
                          env=trainer_util.env(), capture_output=True, text=True, timeout=120)
  for code in ("0  done", "2  bad input", "3  the loss"):
    assert code in result.stdout


def test_cli_workdir_that_cannot_be_written(tmp_path):
  (tmp_path / "a_file").write_text("")  # root ignores permissions: a file in the path instead
  result = trainer_util.run_cli(tmp_path / "a_file" / "run")
  assert result.returncode == 2 and "cannot be written" in _one_error_line(result)


def test_full_disk_is_named(tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr("builtins.open", full)
  with pytest.raises(workdir_lib.WorkdirError, match="summary.json: the disk is full"):
    workdir_lib.write_json(str(tmp_path / "summary.json"), {})


def test_cli_batch_not_divisible_by_devices(tmp_path):
  result = trainer_util.run_cli(tmp_path, num_devices=4, batch_size=30)
  assert result.returncode == 2
  assert "batch_size=30" in _one_error_line(result)
  assert "device count (4)" in result.stderr


def test_cli_nan_loss_stops_with_message(tmp_path):
  result = trainer_util.run_cli(tmp_path, teacher__learning_rate="1e30")
  assert result.returncode == 3
  assert "non-finite" in _one_error_line(result)
  assert not (tmp_path / "teacher" / "summary.json").exists()


def test_workdir_of_another_configuration_is_refused_and_left_intact(tmp_path):
  """Finished: another seed is refused (no skip, config.json kept). Interrupted: resuming
  with fewer epochs is refused and no checkpoint is moved aside."""
  assert trainer_util.run_cli(tmp_path, stages="teacher").returncode == 0
  config_json = (tmp_path / "config.json").read_text()
  result = trainer_util.run_cli(tmp_path, stages="teacher", seed=1)
  assert result.returncode == 2
  line = _one_error_line(result)
  assert "another configuration" in line and "seed: 0 there, 1 now" in line
  assert (tmp_path / "config.json").read_text() == config_json
  # Interrupted (no summary): resumed with fewer epochs.
  os.remove(tmp_path / "teacher" / "summary.json")
  steps = sorted(os.listdir(tmp_path / "teacher" / "checkpoints"))
  result = trainer_util.run_cli(tmp_path, stages="teacher", num_epochs=1)
  assert result.returncode == 2 and "num_epochs: 2 there, 1 now" in _one_error_line(result)
  assert sorted(os.listdir(tmp_path / "teacher" / "checkpoints")) == steps
  assert not (tmp_path / "teacher" / "corrupt_checkpoints").exists()


def test_second_process_on_a_workdir_stops_at_once(tmp_path):
  with open(tmp_path / ".lock", "a+") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("4242")
    held.flush()
    result = trainer_util.run_cli(tmp_path)
  assert result.returncode == 2
  assert "is in use by process 4242" in _one_error_line(result)
  assert not (tmp_path / "teacher").exists()


def _garbage_files(step_dir):
  for root, _, names in os.walk(step_dir):
    for name in names:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")


def _one_flipped_bit(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir / "variables")
           for f in names]
  largest = max(files, key=os.path.getsize)  # the weights' raw bytes
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x40]))  # one exponent bit of one weight: reads back, wrongly


@pytest.mark.parametrize("damage, message", [
    (_garbage_files, " is unreadable"),
    (_one_flipped_bit, ": item 'variables' does not match its stored checksum"),
])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_used(tmp_path, capsys,
                                                                         damage, message):
  config = trainer_util.tiny_config(stages="teacher")
  reference = pipeline.run(config, str(tmp_path))["teacher"]
  os.remove(tmp_path / "teacher" / "summary.json")  # as if interrupted after the last save
  steps = sorted(int(s) for s in os.listdir(tmp_path / "teacher" / "checkpoints"))
  damage(tmp_path / "teacher" / "checkpoints" / str(steps[-1]))
  capsys.readouterr()
  resumed = pipeline.run(config, str(tmp_path))["teacher"]
  out = capsys.readouterr().out
  assert f"checkpoints/{steps[-1]}{message}" in out
  assert f"resumes at step {steps[-2]}" in out
  assert os.listdir(tmp_path / "teacher" / "corrupt_checkpoints") == [str(steps[-1])]
  assert trainer_util.comparable(resumed) == trainer_util.comparable(reference)


def test_nonfinite_weights_are_never_saved(tmp_path):
  """An update that overflows exactly at a save step is not saved as 'the last good'."""
  state = state_lib.create_train_state(models.create("mlp_small", 10), optax.sgd(0.1),
                                       jax.random.PRNGKey(0), (16,))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  meta = dict(stage="student", step=7)
  loop._save(checkpointer, state, meta, writer.MetricSums())  # pylint: disable=protected-access
  broken = state.replace(params=jax.tree.map(lambda x: x.at[0].set(jnp.inf), state.params))
  with pytest.raises(loop.TrainingDiverged, match="last good checkpoint is kept: step 7"):
    loop._save(checkpointer, broken, dict(meta, step=8), writer.MetricSums())  # pylint: disable=protected-access
  assert checkpointer.manager.all_steps() == [7]


def test_progress_lines_when_stdout_is_a_file(tmp_path):
  """Under nohup or a scheduler (stdout redirected to a file), every log_every_steps and
  every epoch end prints a line, teacher and student alike."""
  log = tmp_path / "log.txt"
  with open(log, "w") as out:
    result = subprocess.run(trainer_util.cli_args(tmp_path / "run"), cwd=trainer_util.REPO,
                            env=trainer_util.env(), stdout=out, stderr=subprocess.STDOUT,
                            timeout=300)
  assert result.returncode == 0
  lines = log.read_text().splitlines()
  for stage in ("teacher", "student"):
    train_steps = [int(line.split()[2]) for line in lines
                   if line.startswith(f"{stage} step") and " train:" in line]
    assert train_steps == [5, 10, 15, 16, 20, 25, 30, 32]  # log_every_steps 5, 16 per epoch
    assert sum(line.startswith(f"{stage} step") and "train_epoch:" in line
               for line in lines) == 2
    assert any("img/s" in line and "ETA" in line for line in lines if line.startswith(stage))
