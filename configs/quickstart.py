"""README quick start: a CNN teacher and a KD student on MNIST-1D, about a minute on 2 CPU
cores with no download. Prints the teacher's and the student's test accuracy.

  python -m kd_jax.main --config=configs/quickstart.py --workdir=/tmp/kd_quickstart
"""

from configs import common, mnist1d


def get_config(arg=None):
  c = mnist1d.get_config()
  c.name = "quickstart"
  return common.apply_variant(c, arg)
