"""Synthetic many-class data with superclasses (kd_jax.data.synthetic): mlp_large -> mlp_small.

Every generator option is a field, so the data can be shaped on the command line:

  python -m kd_jax.main --config=synthetic --workdir=/tmp/syn \
      --config.dataset.options.correlation=0.8 --config.dataset.options.num_classes=50
"""

from kd_jax import config_defaults as defaults


def get_config(arg=None):
  c = defaults.get_config()
  c.name = "synthetic"
  c.dataset.name = "synthetic"
  c.dataset.holdout = 1000
  c.dataset.options = dict(num_classes=100, num_superclasses=20, correlation=0.5, dim=64,
                           noise=2.0, separation=1.0, num_train=10_000, num_test=5_000)
  c.batch_size = 128
  c.num_epochs = 30
  c.optim.learning_rate = 0.05
  c.optim.schedule = "cosine"
  c.teacher = defaults.teacher("mlp_large", "ce", target_temperature=1.0)
  c.student = defaults.student("mlp_small", "kd", temperature=4.0, ce_weight=0.1, kd_weight=0.9,
                               target_temperature=1.0)
  c.log_every_steps = 50
  c.checkpoint.every_steps = 500
  return defaults.apply_variant(c, arg)
