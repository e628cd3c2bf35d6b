"""The trainer: one model per call, resumable, data-parallel over every device.

  train(config, workdir, *, teacher=None) -> Trained(summary, variables)   one stage
  stage_config(config, stage)            a config file's teacher/student block -> stage config
  Teacher, teacher.load / from_run        a frozen teacher from a finished run or a .pth
  train_step(state, batch, *, method, steps_per_epoch) -> (state, metrics)

`kd_jax.pipeline.run(config, workdir)` chains the stages of a config file (teacher then
student, or generations); `python -m kd_jax.main` is its command line.
"""

from kd_jax._extras import requires

with requires("train", "kd_jax.train"):
  from kd_jax.train.loop import Trained, TrainingDiverged, train
  from kd_jax.train.splits import Data, load_data
  from kd_jax.train.stage import stage_config, stage_seed
  from kd_jax.train.state import TrainState, create_train_state, teacher_forward
  from kd_jax.train.step import teacher_mask_for, train_step
  from kd_jax.train.teacher import Teacher

__all__ = ["Data", "Teacher", "TrainState", "Trained", "TrainingDiverged",
           "create_train_state", "load_data", "stage_config", "stage_seed", "teacher_forward",
           "teacher_mask_for", "train", "train_step"]
