"""Data parallelism gives the single-device result: 4 forced host devices in one process, and
two local processes joined by jax.distributed (gloo CPU collectives)."""

import socket
import subprocess

import numpy as np
import pytest
import trainer_util


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single")
  result = trainer_util.run_cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return trainer_util.read_summary(workdir)


def _assert_close(a: dict, b: dict):
  """Same metrics up to float reassociation: the reductions run in another order."""
  for role in ("teacher", "student"):
    x, y = trainer_util.comparable(a[role]), trainer_util.comparable(b[role])
    assert x["steps"] == y["steps"] and x["params"] == y["params"]
    for key in ("test_loss", "ece"):
      np.testing.assert_allclose(x[key], y[key], rtol=2e-3, atol=2e-4, err_msg=(role, key))
    for key in ("test_accuracy", "test_top5", "best_val_accuracy"):
      assert abs(x[key] - y[key]) <= 2 / 256, (role, key, x[key], y[key])


def test_four_devices_match_one(tmp_path, single_device):
  result = trainer_util.run_cli(tmp_path, num_devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_close(trainer_util.read_summary(tmp_path), single_device)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path, single_device):
  port = _free_port()
  procs = [
      subprocess.Popen(
          trainer_util.cli_args(
              tmp_path, **{"distributed.num_processes": 2, "distributed.process_id": i,
                           "distributed.coordinator_address": f"127.0.0.1:{port}"}),
          cwd=trainer_util.REPO, env=trainer_util.env(1), stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  _assert_close(trainer_util.read_summary(tmp_path), single_device)
