"""The notebooks (notebooks/*.ipynb) run top to bottom and are committed without outputs.

Each notebook is executed by a Jupyter kernel (nbclient, the `notebooks` extra) from the
repository root with KD_JAX_SMALL=1: offline data, tiny sizes and steps, CPU. XLA's backend
optimisation is turned off for these runs: the models are tiny, so compiling dominates
and unoptimised code compiles several times faster.
"""

import glob
import json
import os
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
NAMES = [os.path.basename(path) for path in NOTEBOOKS]


def _load(path):
  with open(path) as f:
    return json.load(f)


def test_the_notebooks_are_there():
  assert set(NAMES) >= {"losses_in_your_code.ipynb", "cifar100_colab_tpu.ipynb",
                        "reproductions.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_committed_without_outputs(path):
  for index, cell in enumerate(_load(path)["cells"]):
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [], f"cell {index} has outputs: clear them before committing"
      assert cell["execution_count"] is None, f"cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_every_code_cell_is_explained(path):
  cells = _load(path)["cells"]
  assert cells[0]["cell_type"] == "markdown"
  for index, cell in enumerate(cells):
    if cell["cell_type"] == "code":
      assert cells[index - 1]["cell_type"] == "markdown", (
          f"code cell {index} has no markdown cell before it saying what it does")


# The Colab notebook's small CPU run (prepare, a download, the CLI) takes about 50 s: slow.
_RUNS = [pytest.param(path, id=name, marks=[pytest.mark.slow] if "colab" in name else [])
         for path, name in zip(NOTEBOOKS, NAMES)]


@pytest.mark.parametrize("path", _RUNS)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
  if os.environ.get("CI"):  # CI installs the notebooks extra: a missing one is an error
    import nbclient  # pylint: disable=g-import-not-at-top
    import nbformat  # pylint: disable=g-import-not-at-top
  else:
    nbclient = pytest.importorskip("nbclient", reason="needs the notebooks extra")
    nbformat = pytest.importorskip("nbformat", reason="needs the notebooks extra")
  monkeypatch.setenv("KD_JAX_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
  monkeypatch.setenv("XLA_FLAGS", " ".join(
      f for f in (os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0") if f))
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws PNGs
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": REPO}})
  start = time.monotonic()
  client.execute()
  print(f"{os.path.basename(path)}: {time.monotonic() - start:.1f} s")
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was drawn"


def test_colab_notebook_needs_no_tensorflow_and_installs_the_pins():
  """The Colab TPU notebook prepares its data with kd_jax.prepare (no TensorFlow on Colab's
  TPU runtimes), installs requirements.txt's pins plus jax[tpu] of the pinned version,
  copies the data to the VM's disk, keeps work directories on Drive, downloads its teacher
  atomically and names only the TPU runtimes Colab offers."""
  cells = _load(os.path.join(REPO, "notebooks", "cifar100_colab_tpu.ipynb"))["cells"]
  code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
  text = "\n".join("".join(c["source"]) for c in cells)
  for tensorflow_step in ("tfds build", "import tensorflow", "pip install tensorflow",
                          "download_and_prepare", "tensorflow_datasets"):
    assert tensorflow_step not in code, tensorflow_step
  assert "-m kd_jax.prepare cifar100" in code
  assert '-r requirements.txt ".[train]"' in code and 'jax[{JAX_EXTRA}]=={jax_version}' in code
  assert 'JAX_EXTRA = "tpu"' in code and "pinned_jax_version(" in code
  with open(os.path.join(REPO, "requirements.txt")) as f:
    assert "\njax==" in f.read()  # the pin the install cell reads
  assert 'LOCAL_DATA = os.path.join(SCRATCH, "local_data") if SMALL else "/content/data"' in code
  assert 'WORKDIR = os.path.join(DRIVE_DIR if IN_COLAB' in code  # work directories on Drive
  assert 'path + ".partial"' in code and "os.replace(path + \".partial\", path)" in code
  assert "v3-8" not in text and all(runtime in text for runtime in ("v2-8", "v5e-1", "v6e-1"))
