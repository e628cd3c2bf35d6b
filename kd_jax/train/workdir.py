"""A run directory belongs to one configuration and one process.

`fingerprint(config, teacher)` is everything that determines a stage's result (dataset and
its options, model, method, optimizer and schedule, epochs, batch, seed, data selection, a
non-default compute dtype, the teacher's identity and variables, and the teacher cache's
format when it rounds); it is stored in every checkpoint and in summary.json, and
a rerun whose fingerprint differs stops with the fields that differ (`check_fingerprint`).
`locked(directory)` holds an exclusive OS lock on `directory/.lock` (released on any exit,
SIGKILL included) so a second process on the same directory stops at once. Every file a run
writes is written atomically (`atomic_write`): a reader sees the old file or the new one.

A workdir holds one kind of pipeline (`claim`: `pipeline.json` records "stages" or
"generations" and each stage's fingerprint), so a run of the other kind never overwrites
its summary. A write that fails (disk full, permission denied, file too large) is one line
naming the path and the cause (`WriteFailed`); while the CLI runs, the libraries' own logs
and thread tracebacks go to `kd_jax.log` in the workdir (`logs_to`), not to the terminal.
"""

import contextlib
import errno
import fcntl
import io
import json
import os
import sys
import threading

import jax
import numpy as np

from kd_jax import methods
from kd_jax._files import write_text
from kd_jax.train import parallel

LOCK = ".lock"
SUMMARY = "summary.json"  # a finished run's results: its presence marks the run finished
PIPELINE = "pipeline.json"  # the kind of pipeline a workdir holds (`claim`)
LOG = "kd_jax.log"  # the libraries' logs during a CLI run (`logs_to`)
# Fields that do not change the result: logging, evaluation and checkpoint cadence, devices.
# `teacher_cache`: where the teacher's outputs come from; a float32 cache is bit-identical to
# the live teacher, and a lossy format enters the teacher's entry instead
# (`teacher_cache.teacher_fingerprint`).
_NOT_RESULT_FIELDS = ("name", "log_every_steps", "eval_every_epochs", "eval_test_every_epochs",
                      "eval_batch_size", "checkpoint", "distributed", "stages", "teacher",
                      "student", "generations", "teacher_cache", "input")


class WorkdirError(ValueError):
  """The directory is in use, belongs to another configuration, or cannot be written."""


class WriteFailed(WorkdirError):
  """A file of the run could not be written: `cannot write PATH: CAUSE` (one line)."""


# Causes in words, for the I/O errors a user can act on.
_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large (the file size limit, see `ulimit -f`)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
}


def io_cause(error_number: int | None, fallback: str = "") -> str:
  """An errno in words ('the disk is full', ...)."""
  if error_number in _CAUSES:
    return _CAUSES[error_number]
  return fallback or (os.strerror(error_number) if error_number else "unknown error")


def write_failed(path: str, error: OSError) -> WriteFailed:
  """The one-line error of an OSError while writing `path`."""
  return WriteFailed(f"cannot write {path}: {io_cause(error.errno, error.strerror or str(error))}")


def fingerprint(config, teacher_fingerprint: dict | None = None) -> dict:
  """The result-determining fields of a stage config, flattened to `{"a.b": value}`."""
  fields = {key: value for key, value in config.to_dict().items()
            if key not in _NOT_RESULT_FIELDS}
  if not methods.selects(config.method):
    fields.pop("selection", None)
  if fields.get("compute_dtype") == "float32":
    # The default leaves no entry, so a float32 fingerprint names no compute dtype at all.
    fields.pop("compute_dtype")
  fields["dataset"] = {k: v for k, v in fields["dataset"].items() if k != "data_dir"}
  if teacher_fingerprint is not None:
    fields["teacher"] = teacher_fingerprint
  return json.loads(json.dumps(_flatten(fields), default=_jsonable))


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_fingerprint(recorded: dict, current: dict, directory: str) -> None:
  """Raises WorkdirError naming the fields whose values differ between the two."""
  differ = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
  if differ:
    shown = "; ".join(f"{k}: {recorded.get(k)!r} there, {current.get(k)!r} now"
                      for k in differ[:6])
    more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
    raise WorkdirError(f"{directory} holds a run of another configuration ({shown}{more}); "
                       "use another --workdir, or delete that directory to start afresh")


@contextlib.contextmanager
def locked(directory: str):
  """Exclusive lock on `directory` for this process (primary process only)."""
  if not parallel.is_primary():
    yield
    return
  try:
    os.makedirs(directory, exist_ok=True)
    handle = open(os.path.join(directory, LOCK), "a+")  # noqa: SIM115 (held until exit)
  except OSError as error:
    raise WorkdirError(f"workdir {directory!r} cannot be written: {error.strerror}") from None
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise WorkdirError(f"workdir {directory!r} is in use by process {holder}; one process "
                       "at a time per workdir (wait for it, or use another --workdir)") from None
  handle.seek(0)
  handle.truncate()
  handle.write(str(os.getpid()))
  handle.flush()
  try:
    yield
  finally:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


_KIND_WORDS = {"stages": "teacher/student stages (generations.num=0)",
               "generations": "generations (generations.num > 0)"}


def held_kind(directory: str) -> str | None:
  """The kind of pipeline `directory` holds: recorded in pipeline.json, or for a workdir
  written before that record, told by its stage directories; None when it holds none."""
  path = os.path.join(directory, PIPELINE)
  if os.path.exists(path):
    return read_json(path)["kind"]
  names = os.listdir(directory) if os.path.isdir(directory) else []
  if any(name.startswith("generation_") for name in names):
    return "generations"
  if {"teacher", "student"} & set(names):
    return "stages"
  return None


def check_kind(directory: str, kind: str) -> None:
  """WorkdirError when `directory` holds a pipeline of another kind (reads only)."""
  held = held_kind(directory)
  if held not in (None, kind):
    raise WorkdirError(f"workdir {directory!r} holds a run of {_KIND_WORDS[held]}; this "
                       f"config runs {_KIND_WORDS[kind]}, which would overwrite its "
                       "summary.json and config.json: use another --workdir")


def claim(directory: str, kind: str, stage: str, stage_fingerprint: dict) -> None:
  """Records in pipeline.json that `directory` holds a pipeline of `kind` whose `stage` has
  `stage_fingerprint` (before the stage starts); refuses another kind (`check_kind`)."""
  check_kind(directory, kind)
  path = os.path.join(directory, PIPELINE)
  record = read_json(path) if os.path.exists(path) else dict(kind=kind, stages={})
  if record["stages"].get(stage) != stage_fingerprint:
    record["stages"][stage] = stage_fingerprint
    write_json(path, record)


class _LogRouter(io.TextIOBase):
  """A text stream for the libraries' logs: into `path` (opened at the first write, so a run
  that logs nothing writes no file) while `active`, and from any thread but the main one at
  any time (orbax's writer threads and tensorstore's callbacks keep failing after the main
  thread has reported why); the main thread's output reaches `terminal` otherwise."""

  def __init__(self, path: str, terminal):
    super().__init__()
    self.path, self.terminal, self.file = path, terminal, None
    self.active = True
    self.lock = threading.Lock()

  def write(self, text: str) -> int:
    if not self.active and threading.current_thread() is threading.main_thread():
      return self.terminal.write(text)
    with self.lock:
      try:
        if self.file is None:
          os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
          self.file = open(self.path, "a")  # noqa: SIM115 (open until the process ends)
        self.file.write(text)
        self.file.flush()
      except (OSError, ValueError):  # a full disk: the log must never be what stops a run
        pass
    return len(text)

  def flush(self) -> None:
    if not self.active:
      self.terminal.flush()

  def writable(self) -> bool:
    return True


@contextlib.contextmanager
def logs_to(directory: str):
  """While the block runs, absl/Python logging and Python's stderr (orbax's and absl's
  thread errors, asyncio's, tensorstore's callbacks) go to `directory/kd_jax.log` (process
  i > 0: `kd_jax.<i>.log`), not to the terminal: a failed checkpoint write is the CLI's one
  line, its 200 lines of thread tracebacks are in the log. After the block, the main
  thread's output (the CLI's one line, an unexpected error's traceback) reaches the
  terminal again, and other threads' output still goes to the log."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  name = LOG if parallel.is_primary() else f"kd_jax.{jax.process_index()}.log"
  handler = absl_logging.get_absl_handler().python_handler
  log = _LogRouter(os.path.join(directory, name), sys.stderr)
  handler.setStream(log)
  sys.stderr = log
  try:
    yield
  finally:
    log.active = False


def write_json(path: str, value) -> None:
  """Atomic JSON write on the primary process; WorkdirError naming the path and the cause."""
  if not parallel.is_primary():
    return
  try:
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=_jsonable))
  except OSError as error:
    raise write_failed(path, error) from None


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _jsonable(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f"not JSON serialisable: {type(value)}")
