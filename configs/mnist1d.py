"""MNIST-1D (4000 train / 1000 test): a 64-channel BN CNN teacher -> 8-channel CNN student.

  python -m kd_jax.main --config=mnist1d --workdir=/tmp/mnist1d \
      [--config.student.method.name=ce] [--config.seed=1]
"""

from kd_jax import config_defaults as defaults


def get_config(arg=None):
  c = defaults.get_config()
  c.name = "mnist1d"
  c.dataset.name = "mnist1d"
  c.dataset.holdout = 500
  c.batch_size = 64
  c.num_epochs = 60
  c.optim.learning_rate = 0.05
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  c.teacher = defaults.teacher("cnn1d_large", "ce", target_temperature=1.0)
  # T=4 with equal CE and KD weights: on this small student, beats CE (0.1/0.9 does not).
  c.student = defaults.student("cnn1d_small", "kd", temperature=4.0, ce_weight=0.5, kd_weight=0.5,
                               target_temperature=1.0)
  # Data Selection (kd_ds, lr_ds, ...): re-scored on the current student every 10 epochs.
  c.selection.refresh_epochs = 10
  c.log_every_steps = 50
  c.checkpoint.every_steps = 500
  return defaults.apply_variant(c, arg)
