"""Every config file loads and passes the checks the CLI runs before any heavy work."""

import glob
import importlib
import os
import types

import pytest

from kd_jax import generations, pipeline
from kd_jax.train import checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "common.py")))
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "mnist1d": 10,
               "digits": 10}
INPUT_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "imagenet2012": (224, 224, 3),
                "mnist1d": (40, 1), "digits": (8, 8, 1)}


def test_every_experiment_has_a_config():
  assert {"quickstart", "mnist1d", "synthetic", "cifar100", "imagenet", "synthetic_generations",
          "mnist1d_generations", "cifar100_generations"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_the_cli_checks(name, monkeypatch):
  """The CLI's checks (`checks.check_pipeline`) on the config's stages, with a stand-in for
  the data (TFDS data is not prepared here): its class count, input shape and whether a
  holdout exists. The models' shapes are checked; their per-example pass, which initialises
  each model for real (seconds per ImageNet model on a CPU), is tested in test_fit_checks."""
  monkeypatch.setattr(checks, "_mixes_examples", lambda *args: "")
  config = importlib.import_module(f"configs.{name}").get_config()
  dataset = config.dataset.name
  num_classes = (config.dataset.options["num_classes"] if dataset == "synthetic"
                 else NUM_CLASSES[dataset])
  input_shape = ((config.dataset.options["dim"],) if dataset == "synthetic"
                 else INPUT_SHAPES[dataset])
  info = types.SimpleNamespace(name=dataset, num_classes=num_classes, input_shape=input_shape)
  data = types.SimpleNamespace(info=info, val=object() if config.dataset.holdout else None)
  if config.generations.num:
    checks.check_generations(config, num_classes)
  stages = (generations.stage_configs(config) if config.generations.num
            else pipeline.stages(config))
  checks.check_pipeline(config, data, stages)
  checks._misfit.cache_clear()  # pylint: disable=protected-access  (computed without the pass)
  assert config.name == name
