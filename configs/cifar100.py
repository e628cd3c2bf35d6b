"""CIFAR-100, the RepDistiller / mdistiller protocol: resnet32x4 -> resnet8x4 by default.

SGD momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr 0.05 x0.1 at epochs 150, 180
and 210, KD with T=4, ce_weight 0.1, kd_weight 0.9. Switch anything on the command line:

  python -m kd_jax.main --config=cifar100 --workdir=/tmp/c100 \
      --config.teacher.model=wrn_40_2 --config.student.model=wrn_16_2 \
      --config.student.method.name=dkd --config.teacher.checkpoint=/path/ckpt_epoch_240.pth

Data Selection variant (LR+DS scores influence on a held-out validation slice, never on the
test split): hold out 5,000 training images, and give every baseline of the comparison the
same holdout so that all methods train on the same 45,000 examples:

  python -m kd_jax.main --config=cifar100:method=lr_ds,holdout=5000 --workdir=...
  python -m kd_jax.main --config=cifar100:method=kd,holdout=5000 --workdir=...
"""

from kd_jax import config_defaults as defaults


def get_config(arg=None):
  c = defaults.get_config()  # the defaults are this protocol
  c.name = "cifar100"
  c.dataset.name = "cifar100"
  c.dataset.holdout = 0  # RepDistiller trains on all 50k; the DS variant holds out 5000
  return defaults.apply_variant(c, arg)
