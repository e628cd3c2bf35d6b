r"""ImageNet (ILSVRC2012): ResNet34 -> ResNet18, the torchvision / mdistiller protocol.

100 epochs, global batch 512, SGD momentum 0.9, weight decay 1e-4, lr 0.2 x0.1 at epochs 30,
60 and 90; KD at T=1 with ce_weight 0.5 and kd_weight 0.5 (mdistiller).

The data is prepared once from the two ILSVRC2012 tars (or their extracted class folders),
no TensorFlow needed; the teacher is normally a pretrained torchvision checkpoint:

  python -m kd_jax.prepare imagenet --data_dir=/data --archive=/downloads/ILSVRC2012
  python -m kd_jax.main --config=imagenet --workdir=/tmp/in \
      --config.dataset.data_dir=/data --config.teacher.checkpoint=/ckpt/resnet34.pth
"""

from kd_jax import config_defaults as defaults


def get_config(arg=None):
  c = defaults.get_config()
  c.name = "imagenet"
  c.dataset.name = "imagenet2012"
  c.dataset.holdout = 10_000  # validation slice of the train split (best checkpoint)
  c.batch_size = 512
  c.eval_batch_size = 512
  c.num_epochs = 100
  c.optim.learning_rate = 0.2
  c.optim.weight_decay = 1e-4
  c.optim.lr_decay_epochs = (30, 60, 90)
  c.teacher = defaults.teacher("ResNet34", "ce", target_temperature=1.0)
  c.student = defaults.student("ResNet18", "kd", temperature=1.0, ce_weight=0.5, kd_weight=0.5,
                               target_temperature=1.0)
  c.log_every_steps = 200
  c.checkpoint.every_steps = 2000
  return defaults.apply_variant(c, arg)
