"""A run killed with SIGKILL and started again with the same command ends with exactly the
metrics of an uninterrupted run (summary.json and every metrics.jsonl record), also when the
kill lands while an asynchronous checkpoint save is still writing its files."""

import json
import os
import subprocess
import time

import trainer_util

EPOCHS = {"num_epochs": 4}  # 4 x 16 steps per model: long enough to be killed mid-run


def _records(workdir, role):
  with open(os.path.join(workdir, role, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  for record in records:
    record.pop("images_per_second", None)
  return records


def _kill_when(workdir, condition, delay: float, **overrides) -> int:
  """Starts the CLI, SIGKILLs it `delay` s after `condition(workdir)` holds; returns its code."""
  proc = subprocess.Popen(trainer_util.cli_args(workdir, **EPOCHS, **overrides),
                          cwd=trainer_util.REPO, env=trainer_util.env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while proc.poll() is None and not condition(workdir) and time.time() < deadline:
    time.sleep(0.002)
  time.sleep(delay)
  proc.kill()
  return proc.wait()


def _save_in_flight(workdir):
  """Whether a checkpoint is being written: orbax writes a step to `<step>.orbax-checkpoint-tmp`
  and renames it when complete."""
  for role in ("teacher", "student"):
    directory = os.path.join(workdir, role, "checkpoints")
    if os.path.isdir(directory) and any("tmp" in name for name in os.listdir(directory)):
      return True
  return False


def _has_checkpoint(role):
  def condition(workdir):
    directory = os.path.join(workdir, role, "checkpoints")
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))
  return condition


def test_sigkill_and_rerun_gives_the_uninterrupted_metrics(tmp_path):
  reference = tmp_path / "reference"
  result = trainer_util.run_cli(reference, **EPOCHS)
  assert result.returncode == 0, result.stderr[-3000:]

  killed = tmp_path / "killed"
  codes = [
      _kill_when(killed, _has_checkpoint("teacher"), 0.05),  # during the teacher
      _kill_when(killed, _has_checkpoint("student"), 0.0),  # right after a student save
  ]
  assert -9 in codes, codes  # at least one kill landed before the run finished
  # While an asynchronous save writes its files (saves every 2 steps, so one is often in
  # flight): the unfinished step is left as a temporary directory, never used.
  assert _kill_when(killed, _save_in_flight, 0.0, checkpoint__every_steps=2) == -9
  assert _save_in_flight(killed)  # the kill interrupted a save: its step is not complete
  result = trainer_util.run_cli(killed, **EPOCHS)
  assert result.returncode == 0, result.stderr[-3000:]

  assert (trainer_util.comparable(trainer_util.read_summary(killed))
          == trainer_util.comparable(trainer_util.read_summary(reference)))
  for role in ("teacher", "student"):
    assert _records(killed, role) == _records(reference, role), role
