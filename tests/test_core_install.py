"""The light install: `pip install kd_jax` (no extra) in a fresh virtualenv runs the losses.

The project is installed the way a user would (`pip install <project>`, dependencies
resolved from pyproject.toml), constrained to the pinned versions of requirements.txt. The
test then checks that only the core was installed (no Flax, TFDS, scikit-learn, ...), that
`losses`, `targets` and `methods` import and a jitted loss runs, and that importing a
module of the `train` extra says which extra to install. Needs the package index (pip's
cache makes a rerun fast).
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The core dependencies of pyproject.toml and what they pull in, as pip names them.
CORE_DISTRIBUTIONS = {"kd-jax", "jax", "jaxlib", "optax", "numpy", "ml-collections",
                      "ml-dtypes", "opt-einsum", "scipy", "absl-py", "pyyaml"}
VENV_TOOLS = {"pip", "setuptools", "wheel"}

CHECK = r"""
import importlib.metadata, importlib.util, json, re
import jax, jax.numpy as jnp
from kd_jax import losses, methods, targets

@jax.jit
def objective(student_logits, teacher_logits, labels):
  q = jax.nn.softmax(teacher_logits / 4.0)
  revised = targets.revise(q, labels, eta=0.8)
  return jnp.mean(0.1 * losses.cross_entropy(student_logits, labels)
                  + 0.9 * losses.kl_to_targets(student_logits, revised, 4.0)
                  + losses.tsd(student_logits, num_secondary=2))

keys = jax.random.split(jax.random.key(0), 2)
value = float(objective(jax.random.normal(keys[0], (8, 10)), jax.random.normal(keys[1], (8, 10)),
                        jnp.arange(8) % 10))
config = methods.default_config()
per_example = methods.per_example_losses(config, jnp.zeros((4, 10)), jnp.arange(4),
                                         jnp.ones((4, 10)))
missing = {}
for module in ("kd_jax.models", "kd_jax.train", "kd_jax.main"):
  try:
    importlib.import_module(module)
    missing[module] = None
  except ImportError as error:
    missing[module] = str(error)
from kd_jax import data
try:
  data.load("digits", "train")
  missing["data.load('digits')"] = None
except ImportError as error:
  missing["data.load('digits')"] = str(error)
installed = sorted(re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower()
                   for d in importlib.metadata.distributions())
print(json.dumps(dict(value=value, loss_shape=list(per_example["loss"].shape),
                      flax=importlib.util.find_spec("flax") is not None,
                      missing=missing, installed=installed)))
"""


def _run(args, **kwargs):
  result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
  assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  return result.stdout


def test_core_install_runs_the_losses_without_the_trainer(tmp_path):
  start = time.monotonic()
  # A copy of what the package build reads, so the build leaves nothing in the repository.
  source = tmp_path / "src"
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), source / name)
  for package in ("kd_jax", "configs"):  # configs/ is installed as kd_jax/configs
    shutil.copytree(os.path.join(REPO, package), source / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)])
  python = str(venv / "bin" / "python")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env.update(JAX_PLATFORMS="cpu", PIP_DISABLE_PIP_VERSION_CHECK="1")
  _run([python, "-m", "pip", "install", "-q", "-c", os.path.join(REPO, "requirements.txt"),
        str(source)], env=env)
  # Run from an empty directory: `kd_jax` must come from the installed package.
  output = _run([python, "-c", CHECK], env=env, cwd=str(tmp_path))
  report = json.loads(output.strip().splitlines()[-1])
  print(f"fresh virtualenv: install and check took {time.monotonic() - start:.1f} s")

  assert math.isfinite(report["value"]) and report["value"] > 0
  assert report["loss_shape"] == [4]
  assert not report["flax"]
  extra_installed = set(report["installed"]) - CORE_DISTRIBUTIONS - VENV_TOOLS
  assert not extra_installed, f"the core install pulled more than the core: {extra_installed}"
  for module, message in report["missing"].items():
    assert message is not None, f"{module} imported without the train extra"
    assert "pip install 'kd_jax[train]'" in message, message
