"""The trainer: train states, the jitted step, checkpoints, the loop and its reports.

  train_model(config, role, workdir, teacher=..., ...) -> summary dict   one model, resumable
  run(config, workdir) -> summary dict          teacher (trained or loaded) then student
  teacher_mask_for(batch, selected)             data-selection hook of the train step
"""

from kd_jax.train.loop import TrainingDiverged, prepare, run, train_model
from kd_jax.train.setup import Data, Teacher, load_data, load_teacher, role_settings
from kd_jax.train.step import make_train_step, teacher_forward, teacher_mask_for

__all__ = ["Data", "Teacher", "TrainingDiverged", "load_data", "load_teacher",
           "make_train_step", "prepare", "role_settings", "run", "teacher_forward",
           "teacher_mask_for", "train_model"]
