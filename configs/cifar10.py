"""CIFAR-10 with the CIFAR-100 protocol (RepDistiller / mdistiller): resnet56 -> resnet20.

  python -m kd_jax.main --config=configs/cifar10.py --workdir=/tmp/c10
"""

from configs import common


def get_config(arg=None):
  c = common.get_config()
  c.name = "cifar10"
  c.dataset.name = "cifar10"
  c.teacher.model = "resnet56"
  c.student.model = "resnet20"
  return common.apply_variant(c, arg)
