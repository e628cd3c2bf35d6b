"""scikit-learn digits (8x8, 1437 train / 360 test): cnn_digits_large -> cnn_digits_small.

  python -m kd_jax.main --config=digits --workdir=/tmp/digits
"""

from kd_jax import config_defaults as defaults


def get_config(arg=None):
  c = defaults.get_config()
  c.name = "digits"
  c.dataset.name = "digits"
  c.dataset.holdout = 137  # -> 1300 training examples
  c.dataset.options = dict(test_size=360, standardize=False)
  c.batch_size = 64
  c.num_epochs = 30
  c.optim.learning_rate = 0.05
  c.optim.schedule = "cosine"
  c.teacher = defaults.teacher("cnn_digits_large", "ce", target_temperature=1.0)
  c.student = defaults.student("cnn_digits_small", "kd", temperature=4.0, ce_weight=0.1,
                               kd_weight=0.9, target_temperature=1.0)
  c.log_every_steps = 20
  c.checkpoint.every_steps = 200
  return defaults.apply_variant(c, arg)
