"""Every config file loads and passes the checks the CLI runs before any heavy work."""

import glob
import importlib
import os

import pytest

from kd_jax import generations
from kd_jax.train import data_selection, setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "common.py")))
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "mnist1d": 10,
               "digits": 10}


def test_every_experiment_has_a_config():
  assert {"quickstart", "mnist1d", "synthetic", "cifar100", "imagenet", "synthetic_generations",
          "cifar100_generations"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_the_cli_checks(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  dataset = config.dataset.name
  num_classes = (config.dataset.options["num_classes"] if dataset == "synthetic"
                 else NUM_CLASSES[dataset])
  setup.check_config(config, num_classes)
  data_selection.check_config(config, has_validation=config.dataset.holdout > 0)
  if generations.enabled(config):
    generations.check_config(config, num_classes)
  assert config.name == name
