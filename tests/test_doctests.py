"""The `>>>` examples of every public function of `kd_jax.losses`, `targets` and `selection`
run, and the README's library snippet runs verbatim as a program.

Examples print arrays with NumPy's `precision=4` (as optax's do); each public function must
have one.
"""

import doctest
import inspect
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from kd_jax import losses, selection, targets

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = (losses, targets, selection)


def _public_functions(module):
  return [(name, fn) for name, fn in vars(module).items()
          if inspect.isfunction(fn) and not name.startswith("_")
          and fn.__module__ == module.__name__]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
  with np.printoptions(precision=4, suppress=True):
    for test in finder.find(module):
      runner.run(test)
  results = runner.summarize(verbose=False)
  assert results.attempted > 0
  assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_public_function_has_an_example_and_annotations(module):
  for name, fn in _public_functions(module):
    assert ">>> " in (fn.__doc__ or ""), f"{module.__name__}.{name} has no >>> example"
    signature = inspect.signature(fn)
    assert signature.return_annotation is not inspect.Signature.empty, name
    for parameter in signature.parameters.values():
      assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)


def _readme_snippet() -> str:
  """The first ```python block after the README's "The losses in your own JAX code"."""
  text = (ROOT / "README.md").read_text()
  section = text[text.index("## The losses in your own JAX code"):]
  return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_library_snippet_runs_verbatim(tmp_path):
  script = tmp_path / "snippet.py"
  script.write_text(_readme_snippet())
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
