r"""Generations with a tolerant teacher on CIFAR-100 (Yang et al., AAAI 2019): resnet20 x 5.

Generation 0 (the patriarch) is trained with CE + u(eta) * TSD (eta = 0.6, K = 5 secondary
classes, u ramped over 5 epochs); generations 1..4 are resnet20s trained from scratch with
0.6 * CE + 0.4 * KD at T = 1 from the previous generation's final checkpoint. Every generation
runs this repository's CIFAR-100 schedule (configs/cifar100.py: SGD 0.05, momentum 0.9, weight
decay 5e-4, batch 64, 240 epochs, x0.1 at 150/180/210). A 5000-image validation slice is held
out for the best-checkpoint report; the test split selects nothing.

  python -m kd_jax.main --config=cifar100_generations --workdir=/tmp/c100_gen \
      [--config.teacher.method.tsd_eta=0.0]   # a strict patriarch, for comparison
"""

from kd_jax import config_defaults as defaults
from kd_jax import config_files


def get_config(arg=None):
  c = config_files.shipped("cifar100")
  c.name = "cifar100_generations"
  c.dataset.holdout = 5000
  c.teacher = defaults.teacher("resnet20", "tsd", tsd_eta=0.6, tsd_num_secondary=5,
                               tsd_warmup_epochs=5.0, tsd_schedule="linear",
                               tsd_primary="argmax", target_temperature=1.0)
  c.student = defaults.student("resnet20", "kd", temperature=1.0, ce_weight=0.6, kd_weight=0.4,
                               target_temperature=1.0)
  c.generations.num = 5
  c.eval_test_every_epochs = 10
  return defaults.apply_variant(c, arg)
