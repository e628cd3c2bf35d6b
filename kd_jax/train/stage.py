"""From a config file's pipeline config to the stage config that `kd_jax.train.train` reads."""


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
