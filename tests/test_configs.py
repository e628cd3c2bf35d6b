"""Every shipped config loads, by name or path, from any directory, and passes the checks the
CLI runs before any heavy work; a bad config file or config argument is one line naming
what is wrong and what is allowed (kd_jax/config_files.py, kd_jax/config_defaults.py)."""

import os
import shutil
import sys
import tomllib
import types

import ml_collections
import pytest

from kd_jax import config_defaults, config_files, generations, pipeline
from kd_jax.train import checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = config_files.shipped_names()
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "mnist1d": 10,
               "digits": 10}
INPUT_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "imagenet2012": (224, 224, 3),
                "mnist1d": (40, 1), "digits": (8, 8, 1)}


def test_every_experiment_has_a_config():
  assert config_files.shipped_dir() == os.path.join(REPO, "configs")
  assert {"quickstart", "mnist1d", "synthetic", "cifar100", "imagenet", "synthetic_generations",
          "mnist1d_generations", "cifar100_generations"} <= set(CONFIGS)
  assert "common" not in CONFIGS and "__init__" not in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_the_cli_checks(name, monkeypatch):
  """The CLI's checks (`checks.check_pipeline`) on the config's stages, with a stand-in for
  the data (CIFAR / ImageNet data is not prepared here): its class count, input shape and
  whether a holdout exists. The models' shapes are checked; their per-example pass, which
  initialises each model for real (seconds per ImageNet model on a CPU), is tested in
  test_fit_checks."""
  monkeypatch.setattr(checks, "_mixes_examples", lambda *args: "")
  config = config_files.load(name)
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


@pytest.mark.parametrize("name", CONFIGS)
def test_a_copy_of_a_config_works_from_any_directory(name, tmp_path, monkeypatch):
  """Config files import only the package: a copy in an empty directory, loaded from another
  one, gives the same config as the shipped file."""
  copy = tmp_path / "mine" / f"{name}.py"
  copy.parent.mkdir()
  shutil.copy(os.path.join(REPO, "configs", f"{name}.py"), copy)
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  assert config_files.load(str(copy)).to_dict() == config_files.load(name).to_dict()


def test_name_path_and_config_argument(monkeypatch, tmp_path):
  by_path = config_files.load(os.path.join(REPO, "configs", "cifar100.py:method=lr_ds,seed=3"))
  monkeypatch.chdir(tmp_path)
  by_name = config_files.load("cifar100:method=lr_ds,seed=3,holdout=5000")
  assert by_name.student.method.name == by_path.student.method.name == "lr_ds"
  assert by_name.seed == 3 and by_name.dataset.holdout == 5000
  assert isinstance(config_files.load("synthetic:correlation=0.8").dataset.options.correlation,
                    float)
  with pytest.raises(AttributeError):  # loaded configs are locked: no new field by accident
    by_name.sed = 1


def test_packaging_installs_every_package_and_the_configs():
  """pyproject.toml lists the packages explicitly (the configs are mapped into kd_jax/): a
  new subpackage of kd_jax must be added there, or an installed kd_jax would lack it."""
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
  on_disk = {os.path.relpath(root, REPO).replace(os.sep, ".")
             for root, _, files in os.walk(os.path.join(REPO, "kd_jax"))
             if "__init__.py" in files}
  assert set(setuptools["packages"]) == on_disk | {"kd_jax.configs"}
  assert setuptools["package-dir"] == {"kd_jax.configs": "configs"}


def _write(tmp_path, text, name="mine.py"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


_DEFAULTS = "from kd_jax import config_defaults as d\n"


@pytest.mark.parametrize("source, expected", [
    ("def get_config(:\n", "does not load: SyntaxError: invalid syntax (line 1)"),
    ("import no_such_module_anywhere\n", "ModuleNotFoundError: No module named"),
    ("from configs import common\n", "take their defaults from the package"),
    ("x = 1\n", "defines no get_config()"),
    ("def get_config(arg=None):\n  return 3\n", "returned int, not an ml_collections.ConfigDict"),
    ("def get_config(arg=None):\n  return 1 / 0\n", "raised ZeroDivisionError: division by zero"),
    (_DEFAULTS + "def get_config(arg=None):\n  c = d.get_config()\n  del c['distributed']\n"
     "  return c\n", "lacks the field(s) distributed.coordinator_address"),
    (_DEFAULTS + "def get_config(arg=None):\n  c = d.get_config()\n  c.studnt = 'x'\n"
     "  return c\n", "unknown field(s) studnt (did you mean student.model?)"),
])
def test_bad_config_file_is_one_line(tmp_path, monkeypatch, source, expected):
  monkeypatch.setitem(sys.modules, "configs", None)  # as outside the repository
  path = _write(tmp_path, source)
  with pytest.raises(config_defaults.ConfigError) as error:
    config_files.load(path)
  assert expected in str(error.value) and "\n" not in str(error.value)
  assert path in str(error.value)


@pytest.mark.parametrize("spec, expected", [
    ("cifar1000", "'cifar1000' is not a shipped config (did you mean cifar100?); shipped: "),
    ("common", "'common' is not a shipped config"),
    ("configs/quickstart.py", "the shipped config of that name is --config=quickstart"),
    ("no/such/file.py", "no such config file 'no/such/file.py'"),
    ("cifar100:seed=abc", "seed='abc' is not allowed: seed (seed) takes an integer"),
    ("cifar100:epochs=1.5", "epochs='1.5' is not allowed: epochs (num_epochs) takes an integer"),
    ("cifar100:ratio=half", "ratio='half' is not allowed: ratio (selection.ratio) takes a number"),
    ("mnist1d:lr_ds", "'lr_ds' is not key=value (did you mean method=lr_ds?); keys: method (str"),
    ("cifar100:foo=1", "key 'foo' is unknown; keys: method (str: student.method.name), teacher"),
    ("cifar100:correlation=0.5", "this config has no field dataset.options.correlation"),
    (":seed=1", "names no config"),
])
def test_bad_config_spec_or_argument_is_one_line(tmp_path, monkeypatch, spec, expected):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(config_defaults.ConfigError) as error:
    config_files.load(spec)
  assert expected in str(error.value) and "\n" not in str(error.value)


def test_variant_keys_set_fields_of_their_type():
  config = config_defaults.get_config()
  for key, (field, kind) in config_defaults.VARIANT_KEYS.items():
    if key == "correlation":
      continue  # synthetic data only (checked above)
    node = config
    for part in field.split("."):
      node = node[part] if part != field.split(".")[-1] else node
    leaf = field.split(".")[-1]
    declared = node.get_type(leaf) if hasattr(node, "get_type") else type(node[leaf])
    assert declared is kind, (key, field, declared, kind)
  assert isinstance(config_defaults.apply_variant(config, "epochs=3, seed=2,"),
                    ml_collections.ConfigDict)
  assert (config.num_epochs, config.seed) == (3, 2)
