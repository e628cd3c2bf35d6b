r"""Generations with a tolerant teacher on synthetic data with superclasses (offline, CPU).

A 4-generation chain of `mlp_large` (Dense 256-256): generation 0 is trained with
CE + u(eta) * TSD (eta = 0.6, K = 5), generations 1..3 with 0.6 * CE + 0.4 * KD at T = 1
from the previous generation's final checkpoint. Runs in a few minutes on 2 CPU cores:

  python -m kd_jax.main --config=synthetic_generations --workdir=/tmp/gen \
      [--config.teacher.method.tsd_eta=0.0]   # a strict patriarch, for comparison
"""

from kd_jax import config_defaults as defaults
from kd_jax import config_files


def get_config(arg=None):
  c = config_files.shipped("synthetic")
  c.name = "synthetic_generations"
  c.dataset.options = dict(num_classes=100, num_superclasses=20, correlation=0.5, dim=64,
                           noise=2.0, separation=1.0, num_train=10_000, num_test=5_000)
  c.dataset.holdout = 1000
  c.num_epochs = 10
  c.optim.learning_rate = 0.05
  c.optim.schedule = "cosine"
  c.teacher = defaults.teacher("mlp_large", "tsd", tsd_eta=0.6, tsd_num_secondary=5,
                               tsd_warmup_epochs=2.0, tsd_schedule="linear",
                               tsd_primary="argmax", target_temperature=1.0)
  c.student = defaults.student("mlp_large", "kd", temperature=1.0, ce_weight=0.6, kd_weight=0.4,
                               target_temperature=1.0)
  c.generations.num = 4
  c.eval_test_every_epochs = 0
  c.log_every_steps = 50
  c.checkpoint.every_steps = 0
  return defaults.apply_variant(c, arg)
