"""README quick start: a CNN teacher and a KD student on MNIST-1D (configs/mnist1d.py).

About a minute on 2 CPU cores, with no download; prints the teacher's and the student's test
accuracy. A copy of this file works from any directory (it builds on the shipped mnist1d).

  python -m kd_jax.main --config=quickstart --workdir=/tmp/kd_quickstart
"""

from kd_jax import config_defaults as defaults
from kd_jax import config_files


def get_config(arg=None):
  c = config_files.shipped("mnist1d")
  c.name = "quickstart"
  return defaults.apply_variant(c, arg)
