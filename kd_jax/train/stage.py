"""A stage: what `kd_jax.train.train` trains, and the pieces every user of a stage shares.

`stage_config` turns a config file's pipeline config into the stage config `train` reads;
`stage_seed`, `training_loader` and `live_teacher_fn` build the stage's data order and its
teacher's forward pass, for the training loop, the teacher-output cache's precompute stage
(`kd_jax.pipeline`) and the tests alike, so all of them see the same batches and logits.
"""

import zlib

from kd_jax import data as data_lib
from kd_jax.train import state as state_lib


def stage_config(config, stage: str):
  """The stage config `train` reads.

  The shared fields of `config` (dataset, batch, optim, selection, cadences, ...) plus
  `stage` (its name: seeds and messages), and from the `stage` block ("teacher" or
  "student"): `model`, `method`, `num_epochs` (None: the shared `num_epochs`) and
  `optim.learning_rate` (None: the shared one). `optim.num_epochs` is set for the schedule.
  The `teacher`, `student` and `stages` fields are dropped: a stage trains one model.
  """
  block = config[stage]
  out = config.copy_and_resolve_references()
  with out.unlocked():
    for name in ("teacher", "student", "stages"):
      del out[name]
    out.stage, out.model = stage, block.model
    out.method = block.method.copy_and_resolve_references()
    out.num_epochs = config.num_epochs if block.num_epochs is None else block.num_epochs
    if block.learning_rate is not None:
      out.optim.learning_rate = block.learning_rate
    out.optim.num_epochs = out.num_epochs
  return out


def stage_seed(seed: int, stage: str) -> int:
  """A per-stage integer seed (stable across Python runs) for init, shuffling and dropout."""
  return (int(seed) * 1_000_003 + zlib.crc32(stage.encode())) % (2**31 - 1)


def training_loader(config, data) -> data_lib.Loader:
  """The stage's training loader: its data order is a function of the stage seed only."""
  return data_lib.make_loader(data.train, batch_size=config.batch_size,
                              seed=stage_seed(config.seed, config.stage), train=True,
                              augment=data.info.augmentation, prefetch=config.input.prefetch,
                              workers=config.input.workers)


def live_teacher_fn(config, teacher) -> state_lib.TeacherFn:
  """`teacher_fn(variables, batch) -> float32 logits`: the teacher's eval-mode forward pass
  in the stage's compute dtype and precision."""
  model = state_lib.with_compute_dtype(teacher.model, config.compute_dtype,
                                       config.get("precision"))
  return state_lib.teacher_forward(model)
