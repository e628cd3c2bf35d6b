"""Orbax checkpoints of one trained model: one CheckpointManager per run directory.

Layout under the run's directory:

  checkpoints/<step>/{variables, train, meta}

`variables` holds {params, batch_stats} (all a teacher needs), `train` the rest of the state
a resumed run needs (step, opt_state, rng key, the data-selection mask) and `meta` a JSON
dict: the run's fingerprint (`kd_jax.train.workdir.fingerprint`), a CRC32 checksum of each
array item, the data iterator's position (epoch, step in epoch), the metric sums of the
unfinished log window and epoch, the best validation accuracy so far and the elapsed time.
The manager keeps the newest `keep` steps and the best step by validation accuracy (orbax's
`LatestN` and `BestN` preservation policies; ties keep the earliest step).

Restoring walks the steps from the newest: a step whose items cannot be read or whose
arrays do not match the stored checksum is reported, moved to `corrupt_checkpoints/`, and
the previous one is used. A step written by another configuration (its fingerprint differs)
is never moved or used: `FingerprintMismatch` is raised. Orbax writes each step to a
temporary directory renamed when complete, so a kill mid-save leaves no partial step, and a
save that fails (disk full, file too large, permission denied) raises
`workdir.WriteFailed` naming the step's directory and the cause; the rerun resumes from the
previous step (orbax removes the unfinished temporary directory).

Asynchronous saves (`checkpoint.async_save`, orbax's async checkpointing): `save` returns once
the arrays are copied off the device and checksummed (the checksums are of the values being
saved, as before); the files are written in a background thread while training goes on. A
save in flight is waited for before the next one, before any restore and at `close`, and a
background write that failed raises `workdir.WriteFailed` there, naming its step. Killed
mid-write, the step stays a temporary directory, never a step: the rerun resumes from the
previous one.
"""

import contextlib
import os
import re
import shutil
import threading
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from kd_jax.train import parallel, workdir

CHECKPOINTS, CORRUPT = "checkpoints", "corrupt_checkpoints"
ARRAY_ITEMS = ("variables", "train")


def tree_checksum(tree) -> str:
  """CRC32 (hex) of every array leaf's path, dtype, shape and bytes, in tree order."""
  crc = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    array = np.ascontiguousarray(leaf)
    header = f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode()
    crc = zlib.crc32(array.tobytes(), zlib.crc32(header, crc))
  return f"{crc:08x}"


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def all_finite(tree) -> bool:
  """Whether every float array of `tree` is finite (one jitted reduction, one fetch)."""
  return bool(_all_finite(tree))


def abstract(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, as orbax restore targets."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class FingerprintMismatch(ValueError):
  """The directory holds checkpoints of another configuration."""


class UnreadableCheckpoint(ValueError):
  """A step that cannot be read or fails its checksum."""


def _manager(directory: str, keep: int | None = None,
             async_save: bool = False) -> ocp.CheckpointManager:
  policies = checkpoint_managers
  preservation = None
  if keep is not None:
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(keep),
        policies.BestN(get_metric_fn=lambda m: (m["val_accuracy"], -m["step"]), n=1,
                       keep_checkpoints_without_metrics=False)])
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=async_save,
                                         preservation_policy=preservation)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=(*ARRAY_ITEMS, "meta"))


def _read(manager, step: int, args: dict) -> dict:
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    return {name: restored[name] for name in args}
  except Exception as error:  # Any failure to read (truncated, missing, garbage) is corrupt.
    raise UnreadableCheckpoint(f"{manager.directory}/{step} is unreadable "
                               f"({type(error).__name__}: {str(error)[:200]})") from error


def _verified(manager, step: int, abstract_items: dict) -> dict:
  """The arrays of step `step` plus its meta, checked against the stored checksums."""
  meta = _read(manager, step, dict(meta=ocp.args.JsonRestore()))["meta"]
  items = _read(manager, step, {name: ocp.args.StandardRestore(abstract_items[name])
                                for name in abstract_items})
  for name, tree in items.items():
    if tree_checksum(tree) != meta.get("checksums", {}).get(name):
      raise UnreadableCheckpoint(f"{manager.directory}/{step}: item {name!r} does not match "
                                 "its stored checksum (corrupted data)")
  return dict(items, meta=meta)


# Tensorstore reports an OS error inside its message: "... File too large [os_error_code='27']",
# and an asynchronous save's failure names the step it was writing: ".../5.orbax-checkpoint-tmp".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_FAILED_STEP = re.compile(r"/(\d+)\.orbax-checkpoint-tmp")
_SETTLE_SECONDS = 30.0


def _io_errno(error: Exception) -> int | None:
  """The errno behind a failed save: an OSError's, or the one tensorstore names."""
  if isinstance(error, OSError):
    return error.errno
  match = _OS_ERROR_CODE.search(str(error))
  return int(match.group(1)) if match else None


def _settle(threads_before: set) -> None:
  """Waits (boundedly) for the threads a failed save started: orbax's writer threads fail
  one after the other and log as they do, and should do it now (into the log) rather than
  on the terminal after the run's one-line error."""
  deadline = time.monotonic() + _SETTLE_SECONDS
  for thread in set(threading.enumerate()) - threads_before:
    if not thread.daemon and thread is not threading.current_thread():
      # orbax's threads re-raise their own failure on join: the caller knows it already.
      with contextlib.suppress(Exception):
        thread.join(max(0.0, deadline - time.monotonic()))


class Checkpointer:
  """The checkpoints of one run directory (resume, best-validation, final)."""

  def __init__(self, run_dir: str, keep: int, async_save: bool = False):
    self.run_dir = run_dir
    self.manager = _manager(os.path.join(run_dir, CHECKPOINTS), keep, async_save)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  @contextlib.contextmanager
  def _writing(self, step: int):
    """I/O errors of saving `step` (or of an earlier asynchronous save the block waits for)
    as one `workdir.WriteFailed` line; anything else is a bug and is re-raised."""
    threads_before = set(threading.enumerate())
    try:
      yield
    except Exception as error:
      code = _io_errno(error)
      if code is None:
        raise
      _settle(threads_before)
      failed = _FAILED_STEP.search(str(error))
      raise workdir.WriteFailed(f"cannot write {self.manager.directory}/"
                                f"{failed.group(1) if failed else step}: "
                                f"{workdir.io_cause(code)}") from None

  def save(self, step: int, items: dict, meta: dict, val_accuracy: float | None = None):
    """Writes `items` (`TrainState.checkpoint_items()`) and `meta` with their checksums."""
    with self._writing(step):
      if step in self.manager.all_steps():
        return  # Written before an interruption: the same content (the run is deterministic).
      meta = dict(meta, checksums={name: tree_checksum(items[name]) for name in ARRAY_ITEMS})
      args = {name: ocp.args.StandardSave(items[name]) for name in ARRAY_ITEMS}
      metrics = None if val_accuracy is None else dict(val_accuracy=val_accuracy, step=step)
      self.manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args),
                        metrics=metrics, force=True)

  def wait(self) -> None:
    """Returns when every save is on disk (at once for synchronous saves)."""
    with self._writing(self.manager.latest_step()):
      self.manager.wait_until_finished()

  def restore_latest(self, abstract_items: dict, fingerprint: dict) -> dict | None:
    """{variables, train, meta} of the newest good step, or None when there is none.

    Raises FingerprintMismatch when the steps were written by another configuration.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        meta = _read(self.manager, step, dict(meta=ocp.args.JsonRestore()))["meta"]
        workdir.check_fingerprint(meta.get("fingerprint", {}), fingerprint, self.run_dir)
        return _verified(self.manager, step, abstract_items)
      except UnreadableCheckpoint as error:
        print(f"kd_jax: warning: checkpoint {error}; using the previous one", flush=True)
        self._move_aside(step)
    return None

  def restore(self, step: int, abstract_items: dict) -> dict:
    """{items..., meta} of `step` (e.g. the best-validation one); UnreadableCheckpoint if bad."""
    self.wait()
    return _verified(self.manager, step, abstract_items)

  def _move_aside(self, step: int) -> None:
    if parallel.is_primary():
      target = os.path.join(self.run_dir, CORRUPT, str(step))
      shutil.rmtree(target, ignore_errors=True)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(str(self.manager.directory), str(step)), target)
    parallel.sync(f"move_aside_{step}")
    self.manager.reload()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def final_variables(run_dir: str, abstract_variables: dict, final_step: int) -> dict:
  """The variables of a finished run's final checkpoint (a teacher): step `final_step`,
  checksum verified. Never an earlier step: raises UnreadableCheckpoint instead."""
  manager = _manager(os.path.join(run_dir, CHECKPOINTS))
  try:
    if final_step not in manager.all_steps():
      raise UnreadableCheckpoint(f"{manager.directory}: the final checkpoint (step "
                                 f"{final_step}) is missing")
    return _verified(manager, final_step, dict(variables=abstract_variables))["variables"]
  finally:
    manager.close()


def find_run_dir(path: str) -> str:
  """The run directory a path names: the run itself, a pipeline workdir holding `teacher/`,
  or the run's `checkpoints/` directory; ValueError when none holds checkpoints."""
  for candidate in (path, os.path.join(path, "teacher"), os.path.dirname(path.rstrip("/"))):
    if os.path.isdir(os.path.join(candidate, CHECKPOINTS)):
      return candidate
  raise ValueError(f"teacher.checkpoint={path!r} is not allowed: it holds no kd_jax run "
                   "(expected a run directory with checkpoints/ and summary.json, a pipeline "
                   "workdir with teacher/, or a checkpoints/ directory)")
