"""CIFAR-10 with the CIFAR-100 protocol (RepDistiller / mdistiller): resnet56 -> resnet20.

  python -m kd_jax.main --config=cifar10 --workdir=/tmp/c10
"""

from kd_jax import config_defaults as defaults


def get_config(arg=None):
  c = defaults.get_config()
  c.name = "cifar10"
  c.dataset.name = "cifar10"
  c.teacher.model = "resnet56"
  c.student.model = "resnet20"
  return defaults.apply_variant(c, arg)
