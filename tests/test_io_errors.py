"""I/O errors and shared caches: a write that fails (file too large, disk full, permission
denied, read-only) is one line naming the path and the cause (exit 2), and the rerun resumes;
a read-only teacher cache that holds the needed tables is read; a killed writer's temporary
files are removed by the next run that owns the key."""

import builtins
import errno
import io
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import trainer_util

from kd_jax import _files, models, pipeline
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import parallel, row_store, teacher_cache
from kd_jax.train import stage as stage_lib
from kd_jax.train import state as state_lib
from kd_jax.train import teacher as teacher_lib
from kd_jax.train import workdir as workdir_lib

_FAST = dict(num_epochs=1, eval_test_every_epochs=0, checkpoint__every_steps=0)


def _with_file_size_limit(args: list, blocks: int) -> list:
  """`args` run under `ulimit -f blocks` (512 or 1024 bytes a block, by shell), SIGXFSZ
  ignored so that a write past the limit fails with EFBIG instead of killing the process
  (an ignored signal stays ignored across exec; no preexec_fn in a threaded parent)."""
  return ["sh", "-c", f"trap '' XFSZ; ulimit -f {blocks}; exec \"$@\"", "sh", *args]


def test_a_checkpoint_too_large_to_write_is_one_line_and_the_rerun_resumes(tmp_path):
  """Was exit 2 after 230-330 lines of orbax thread tracebacks."""
  args = _with_file_size_limit(trainer_util.cli_args(tmp_path / "run", stages="teacher"), 40)
  result = subprocess.run(args, cwd=trainer_util.REPO, env=trainer_util.env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.splitlines() == [(
      f"kd_jax: cannot write {tmp_path}/run/teacher/checkpoints/5: the file is too large (the "
      "file size limit, see `ulimit -f`)")], result.stderr[-3000:]
  assert "Traceback" in (tmp_path / "run" / workdir_lib.LOG).read_text()  # kept, out of sight
  resumed = trainer_util.run_cli(tmp_path / "run", stages="teacher")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert trainer_util.run_cli(tmp_path / "reference", stages="teacher").returncode == 0
  assert trainer_util.comparable(trainer_util.read_summary(tmp_path / "run")) == (
      trainer_util.comparable(trainer_util.read_summary(tmp_path / "reference")))


@pytest.mark.parametrize("error, cause", [
    (ValueError("OUT_OF_RANGE: Error writing ... No space left on device "
                "[os_error_code='28']"), "the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
])
def test_a_checkpoint_write_error_names_the_step_and_the_cause(tmp_path, monkeypatch, error,
                                                                cause):
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=2)

  def failing(*args, **kwargs):
    raise error

  monkeypatch.setattr(checkpointer.manager, "save", failing)
  items = dict(variables=dict(w=np.ones(3, np.float32)), train=dict(step=np.int32(7)))
  with pytest.raises(workdir_lib.WriteFailed) as raised:
    checkpointer.save(7, items, dict(stage="teacher"))
  assert str(raised.value) == f"cannot write {tmp_path}/checkpoints/7: {cause}"


def test_a_bug_in_a_checkpoint_write_is_not_called_an_io_error(tmp_path, monkeypatch):
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  monkeypatch.setattr(checkpointer.manager, "save", lambda *a, **k: 1 / 0)
  items = dict(variables=dict(w=np.ones(3, np.float32)), train=dict(step=np.int32(7)))
  with pytest.raises(ZeroDivisionError):
    checkpointer.save(7, items, dict(stage="teacher"))


# Shared caches.

def _read_only(monkeypatch, directory):
  """Every write under `directory` fails as on a read-only mount (root ignores modes)."""
  directory = os.path.abspath(directory)

  def inside(path):
    return os.path.abspath(os.fspath(path)).startswith(directory)

  def guard(function, writes):
    def guarded(path, *args, **kwargs):
      if inside(path) and writes(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
      return function(path, *args, **kwargs)
    return guarded

  def opens_for_writing(mode="r", *args, **kwargs):
    return any(flag in mode for flag in "wax+")

  monkeypatch.setattr(builtins, "open", guard(builtins.open, opens_for_writing))
  monkeypatch.setattr(io, "open", guard(io.open, opens_for_writing))
  monkeypatch.setattr(os, "makedirs", guard(os.makedirs, lambda *a, **k: True))
  monkeypatch.setattr(os, "remove", guard(os.remove, lambda *a, **k: True))


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory):
  """A teacher run and the cache its precompute stage filled for the tiny student."""
  root = tmp_path_factory.mktemp("shared")
  config = trainer_util.tiny_config(stages="teacher,precompute",
                                    teacher_cache__dir=str(root / "cache"), **_FAST)
  summary = pipeline.run(config, str(root / "teacher_run"))
  return root, summary["precompute"]["key"]


def test_a_read_only_cache_that_holds_the_tables_is_read(filled_cache, tmp_path, monkeypatch):
  """Was refused at the config check: a lab's shared, pre-filled cache could not be used."""
  root, key = filled_cache
  _read_only(monkeypatch, root / "cache")
  config = trainer_util.tiny_config(stages="student",
                                    teacher__checkpoint=str(root / "teacher_run"),
                                    teacher_cache__dir=str(root / "cache"), **_FAST)
  summary = pipeline.run(config, str(tmp_path / "student_run"))
  assert summary["student"]["teacher_cache"]["key"] == key


def test_a_read_only_cache_without_the_tables_names_the_missing_file(filled_cache, tmp_path,
                                                                     monkeypatch):
  root, _ = filled_cache
  _read_only(monkeypatch, root / "cache")
  config = trainer_util.tiny_config(stages="student",
                                    teacher__checkpoint=str(root / "teacher_run"),
                                    teacher_cache__dir=str(root / "cache"), batch_size=64,
                                    **_FAST)  # another batch size: another key
  with pytest.raises(ValueError, match=rf"^teacher_cache.dir='{root}/cache' is not allowed: "
                                       rf"{root}/cache/\w+/views is missing and cannot be "
                                       r"written \(the file system is read-only\)"):
    pipeline.run(config, str(tmp_path / "student_run"))
  assert not os.listdir(tmp_path / "student_run" / "student" / "checkpoints")  # none trained


def test_the_precompute_stage_fails_when_its_table_cannot_be_written(tmp_path, monkeypatch):
  """A training stage keeps the logits it computed; precompute's only product is the file."""
  def full(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(row_store.TableWriter, "commit", full)
  config = trainer_util.tiny_config(stages="teacher,precompute",
                                    teacher_cache__dir=str(tmp_path / "cache"), **_FAST)
  with pytest.raises(workdir_lib.WriteFailed,
                     match=rf"^cannot write {tmp_path}/cache/\w+/views: the disk is full$"):
    pipeline.run(config, str(tmp_path / "run"))


def _dead_pid() -> int:
  process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
  return int(process.stdout)


def test_a_killed_writers_temporary_files_are_removed_by_the_next_run_of_the_key(tmp_path):
  config = trainer_util.tiny_config(**_FAST)
  config.teacher_cache.dir = str(tmp_path)
  data, mesh = pipeline.prepare(config), parallel.make_mesh()
  stage = stage_lib.stage_config(config, "student")
  model = models.create("mlp_small", 10)
  teacher = teacher_lib.Teacher("mlp_small", model, state_lib.init_variables(
      model, jax.random.PRNGKey(7), (16,)), "random")

  def open_cache():
    return teacher_cache.open_cache(stage, teacher, stage_lib.live_teacher_fn(stage, teacher),
                                    stage_lib.training_loader(stage, data), mesh, data.info)

  key_dir = tmp_path / open_cache().key
  os.makedirs(key_dir)
  dead, host = _dead_pid(), _files.temporary_path("x").split("-", 1)[1]
  names = {"killed": f"views.tmp{dead}-{host}.npz",  # SIGKILLed mid-write: removed
           "older": f"views.tmp{dead}.npz",  # the naming before the host: this host's
           "live": f"views.tmp{os.getpid()}-{host}.npz",  # a writer still writing: kept
           "other_host": f"views.tmp{dead}-elsewhere.npz"}  # its pid means nothing here
  for name in names.values():
    (key_dir / name).write_bytes(b"partial")
  (key_dir / f"epoch_0003.tmp{dead}-{host}" / "logits").mkdir(parents=True)  # a table's
  open_cache()
  assert sorted(os.listdir(key_dir)) == sorted([names["live"], names["other_host"]])
