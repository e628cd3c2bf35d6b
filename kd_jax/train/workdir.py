"""A run directory belongs to one configuration and one process.

`fingerprint(config, teacher)` is everything that determines a stage's result (dataset and
its options, model, method, optimizer and schedule, epochs, batch, seed, data selection, a
non-default compute dtype, the teacher's identity and variables, and the teacher cache's
format when it rounds); it is stored in every checkpoint and in summary.json, and
a rerun whose fingerprint differs stops with the fields that differ (`check_fingerprint`).
`locked(directory)` holds an exclusive OS lock on `directory/.lock` (released on any exit,
SIGKILL included) so a second process on the same directory stops at once. Every file a run
writes is written atomically (`atomic_write`): a reader sees the old file or the new one.
"""

import contextlib
import errno
import fcntl
import json
import os

import numpy as np

from kd_jax import methods
from kd_jax.train import parallel

LOCK = ".lock"
SUMMARY = "summary.json"  # a finished run's results: its presence marks the run finished
# Fields that do not change the result: logging, evaluation and checkpoint cadence, devices.
# `teacher_cache`: where the teacher's outputs come from; a float32 cache is bit-identical to
# the live teacher, and a lossy format enters the teacher's entry instead
# (`teacher_cache.teacher_fingerprint`).
_NOT_RESULT_FIELDS = ("name", "log_every_steps", "eval_every_epochs", "eval_test_every_epochs",
                      "eval_batch_size", "checkpoint", "distributed", "stages", "teacher",
                      "student", "generations", "teacher_cache", "input")


class WorkdirError(ValueError):
  """The directory is in use, belongs to another configuration, or cannot be written."""


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


def atomic_write(path: str, write) -> None:
  """`write(tmp)` to a temporary file beside `path`, then renamed over `path`, so a reader
  sees the old file or the new one, never a part of one. The temporary keeps `path`'s
  extension (`np.save` / `np.savez` append theirs otherwise) and is removed when anything
  fails."""
  root, extension = os.path.splitext(path)
  tmp = f"{root}.tmp{os.getpid()}{extension}"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  atomic_write(path, write)


def write_json(path: str, value) -> None:
  """Atomic JSON write on the primary process; WorkdirError naming the path and the cause."""
  if not parallel.is_primary():
    return
  try:
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=_jsonable))
  except OSError as error:
    cause = "the disk is full" if error.errno == errno.ENOSPC else error.strerror
    raise WorkdirError(f"cannot write {path}: {cause}") from None


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _jsonable(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f"not JSON serialisable: {type(value)}")
