"""A missing optional dependency names the pip extra that installs it (kd_jax/_extras.py)."""

import os
import subprocess
import sys

import pytest

from kd_jax._extras import MissingExtraError, requires

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_missing(name, *contexts):
  """Raises the ModuleNotFoundError of a missing `name` inside `contexts` (outer first)."""
  if not contexts:
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
  with contexts[0]:
    _import_missing(name, *contexts[1:])


def test_a_missing_module_of_an_extra_names_the_extra():
  with pytest.raises(MissingExtraError, match=r"kd_jax.models needs 'flax'.*"
                     r"pip install 'kd_jax\[train\]'") as info:
    _import_missing("flax.linen", requires("train", "kd_jax.models"))
  assert isinstance(info.value, ImportError) and info.value.name == "flax.linen"


@pytest.mark.parametrize("name", ["kd_jax.nowhere", "some_unrelated_package", None])
def test_other_missing_modules_propagate_unchanged(name):
  with pytest.raises(ModuleNotFoundError) as info:
    _import_missing(name, requires("train", "kd_jax.models"))
  assert not isinstance(info.value, MissingExtraError)


def test_nested_requires_keep_the_innermost_message():
  with pytest.raises(MissingExtraError, match=r"kd_jax.models needs 'sklearn'"):
    _import_missing("sklearn", requires("train", "kd_jax.train"),
                    requires("train", "kd_jax.models"))


def test_models_and_offline_data_without_the_train_extra():
  """flax and scikit-learn made unimportable in a subprocess: both errors name the extra."""
  script = """
import sys
sys.modules["flax"] = None
sys.modules["sklearn"] = None
from kd_jax import data, losses, methods, targets  # the core still imports
for call in (lambda: __import__("kd_jax.models"), lambda: data.load("digits", "train")):
  try:
    call()
    print("imported")
  except ImportError as error:
    print(type(error).__name__, error)
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
                          timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2, result.stdout
  assert lines[0].startswith("MissingExtraError kd_jax.models needs 'flax'")
  assert lines[1].startswith("MissingExtraError kd_jax.data.offline.load_digits needs 'sklearn'")
  assert all("pip install 'kd_jax[train]'" in line for line in lines)
