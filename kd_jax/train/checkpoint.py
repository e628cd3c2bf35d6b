"""Orbax checkpoints of one trained model (a "role": teacher, student, generation_<g>).

Layout under the role's directory:

  checkpoints/<step>/{variables, train, meta}   the last `keep` checkpoints (every N steps and
                                                at epoch ends), for resuming
  best/<step>/{variables, meta}                 the best checkpoint by validation accuracy

`variables` holds {params, batch_stats} (what a teacher needs), `train` the rest of the run's
state (step, opt_state, logging sums, rng key data) and `meta` a JSON dict (epoch and step in
epoch of the data iterator, best validation accuracy, elapsed training time, model name,
class count...). A checkpoint that cannot be read is reported, moved aside to
`corrupt_checkpoints/` and the previous one is used; orbax writes each step to a temporary
directory and renames it when complete, so a run killed mid-save leaves no partial step.
"""

import os
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging

from kd_jax.train import parallel

CHECKPOINTS, BEST, CORRUPT = "checkpoints", "best", "corrupt_checkpoints"


def _manager(directory: str, keep: int, items: tuple[str, ...]) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=items)


def abstract(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, as orbax restore targets."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """The resumable checkpoints and the best-validation checkpoint of one role."""

  def __init__(self, role_dir: str, keep: int):
    self.role_dir = role_dir
    self.latest = _manager(os.path.join(role_dir, CHECKPOINTS), keep,
                           ("variables", "train", "meta"))
    self.best = _manager(os.path.join(role_dir, BEST), 1, ("variables", "meta"))

  def save(self, step: int, variables: dict, train: dict, meta: dict) -> None:
    if step in self.latest.all_steps():
      return  # Already written before an interruption: same content (deterministic run).
    self.latest.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave(meta)))

  def save_best(self, step: int, variables: dict, meta: dict) -> None:
    if step in self.best.all_steps():
      return
    self.best.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)),
        force=True)

  def restore_latest(self, abstract_variables, abstract_train):
    """(variables, train, meta) of the newest readable checkpoint, or None when there is none."""
    return _restore_newest(self.latest, self.role_dir, dict(
        variables=ocp.args.StandardRestore(abstract_variables),
        train=ocp.args.StandardRestore(abstract_train), meta=ocp.args.JsonRestore()))

  def restore_best(self, abstract_variables):
    """(variables, meta) of the best-validation checkpoint, or None."""
    restored = _restore_newest(self.best, self.role_dir, dict(
        variables=ocp.args.StandardRestore(abstract_variables), meta=ocp.args.JsonRestore()))
    return None if restored is None else (restored["variables"], restored["meta"])

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _restore_newest(manager: ocp.CheckpointManager, role_dir: str, args: dict):
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**args))
      return {name: restored[name] for name in args}
    except Exception as error:  # pylint: disable=broad-except
      # Any failure to read (truncated file, missing item, bad metadata) means corrupt.
      message = (f"checkpoint {manager.directory}/{step} is unreadable "
                 f"({type(error).__name__}: {str(error)[:200]}); using the previous one")
      logging.warning(message)
      print(f"kd_jax: warning: {message}", flush=True)
      _move_aside(manager, role_dir, step)
  return None


def _move_aside(manager: ocp.CheckpointManager, role_dir: str, step: int) -> None:
  if parallel.is_primary():
    target = os.path.join(role_dir, CORRUPT, f"{os.path.basename(str(manager.directory))}_{step}")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(os.path.join(str(manager.directory), str(step)), target)
  parallel.sync(f"move_aside_{step}")
  manager.reload()


def find_checkpoint_dir(path: str, role: str = "teacher") -> str:
  """The `checkpoints/` directory of a kd_jax run given a workdir, role dir or itself."""
  for candidate in (os.path.join(path, CHECKPOINTS), os.path.join(path, role, CHECKPOINTS),
                    path):
    if os.path.isdir(candidate) and any(name.isdigit() for name in os.listdir(candidate)):
      return candidate
  raise ValueError(f"teacher.checkpoint={path!r} holds no kd_jax checkpoint: expected a "
                   f"workdir, a role directory or a '{CHECKPOINTS}' directory with step folders")


def read_meta(checkpoint_dir: str) -> dict:
  """The JSON meta of the newest step in a `checkpoints/` directory (cheap: no arrays)."""
  manager = _manager(checkpoint_dir, None, ("variables", "train", "meta"))
  try:
    step = manager.latest_step()
    return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                ["meta"], step=step)
  finally:
    manager.close()


def restore_variables(checkpoint_dir: str, abstract_variables) -> dict:
  """Variables {params, batch_stats} of the newest readable step of a `checkpoints/` dir."""
  manager = _manager(checkpoint_dir, None, ("variables", "train", "meta"))
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return manager.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(abstract_variables)))["variables"]
      except Exception as error:  # pylint: disable=broad-except
        print(f"kd_jax: warning: checkpoint {checkpoint_dir}/{step} is unreadable "
              f"({type(error).__name__}); using the previous one", flush=True)
    raise ValueError(f"no readable checkpoint in {checkpoint_dir}")
  finally:
    manager.close()
