r"""Generations with a tolerant teacher on MNIST-1D (offline, CPU): cnn1d_large x 4.

Generation 0 (the patriarch) is a cnn1d_large trained with CE + u(eta) * TSD (eta = 0.6,
K = 5, u ramped over 2 epochs); generations 1..3 are cnn1d_larges trained from scratch with
0.6 * CE + 0.4 * KD at T = 1 from the previous generation's final checkpoint. 10 epochs per
generation (a chain runs in about a minute on 2 CPU cores). MNIST-1D has no superclasses:
its secondary-information metrics are mean_entropy, top_gap and ECE.

  python -m kd_jax.main --config=mnist1d_generations --workdir=/tmp/m1d_gen \
      [--config.teacher.method.tsd_eta=0.0]   # a strict patriarch, for comparison
"""

from kd_jax import config_defaults as defaults
from kd_jax import config_files


def get_config(arg=None):
  c = config_files.shipped("mnist1d")
  c.name = "mnist1d_generations"
  c.num_epochs = 10
  c.teacher = defaults.teacher("cnn1d_large", "tsd", tsd_eta=0.6, tsd_num_secondary=5,
                               tsd_warmup_epochs=2.0, tsd_schedule="linear",
                               tsd_primary="argmax", target_temperature=1.0)
  c.student = defaults.student("cnn1d_large", "kd", temperature=1.0, ce_weight=0.6, kd_weight=0.4,
                               target_temperature=1.0)
  c.generations.num = 4
  c.eval_test_every_epochs = 0
  c.checkpoint.every_steps = 0
  return defaults.apply_variant(c, arg)
