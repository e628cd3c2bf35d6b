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


def test_use_cpu_xla_flags_appends_once_and_keeps_the_users_setting():
  from kd_jax.train import parallel
  flags = parallel.CPU_XLA_FLAGS
  assert len(flags) == 2
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert parallel.use_cpu_xla_flags(environ) == flags
  assert environ["XLA_FLAGS"] == " ".join(["--xla_force_host_platform_device_count=4", *flags])
  assert parallel.use_cpu_xla_flags(environ) == ()  # already there: not twice
  assert all(environ["XLA_FLAGS"].count(flag) == 1 for flag in flags)
  # A flag the user set (any value) stays; the others are still added.
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"}
  assert parallel.use_cpu_xla_flags(mine) == flags[1:]
  assert mine["XLA_FLAGS"] == ("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution "
                               + flags[1])
  empty = {}
  parallel.use_cpu_xla_flags(empty)
  assert empty["XLA_FLAGS"] == " ".join(flags)


_COUNT_YNN_CONVOLUTIONS = """
import jax, jax.numpy as jnp
from jax import lax
conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
text = jax.jit(conv).lower(jnp.zeros((8, 16, 16, 32)), jnp.zeros((3, 3, 32, 32))).compile().as_text()
print(text.count("__ynn_fusion"))
"""


@pytest.mark.parametrize("flags, in_ynnpack", [
    ("", True), ("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution", True),
    ("kd_jax", False)])
def test_cpu_xla_flags_take_convolutions_from_ynnpack(flags, in_ynnpack):
  """The flag still means what CPU_XLA_FLAGS's comment says in this jaxlib: a 2-D convolution
  compiles to a YNNPACK fusion by default (and when the user opts back in), not with it."""
  import os
  import sys

  from kd_jax.train import parallel
  environ = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  if flags == "kd_jax":
    assert parallel.use_cpu_xla_flags(environ), "no flags for this jaxlib"
  else:
    environ["XLA_FLAGS"] = flags
  result = subprocess.run([sys.executable, "-c", _COUNT_YNN_CONVOLUTIONS], env=environ,
                          capture_output=True, text=True, check=True)
  assert (int(result.stdout.split()[-1]) > 0) == in_ynnpack, (flags, result.stdout)


_COMPILE_CROSS_ENTROPY = """
import jax, jax.numpy as jnp
from kd_jax import losses
z, y = jnp.zeros((1024, 100)), jnp.zeros(1024, jnp.int32)  # the loss benchmark's C = 100 case
jax.jit(jax.value_and_grad(lambda z, y: losses.cross_entropy(z, y).mean())).lower(z, y).compile()
"""


def _has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      return "avx512f" in cpuinfo.read().split()
  except OSError:
    return False


@pytest.mark.skipif(not _has_avx512(), reason="the vector width flag matters only with AVX-512")
@pytest.mark.parametrize("use_kd_jax_flags", [False, True])
def test_cpu_xla_flags_vectorise_exp_16_wide(use_kd_jax_flags, tmp_path):
  """The vector width flag still means what CPU_XLA_FLAGS's comment says: XLA's loop emitter
  computes cross entropy's exp pass (the fusion XLA names after its exponential) 16 floats
  wide with it and 8 wide without it."""
  import os
  import sys

  from kd_jax.train import parallel
  environ = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path}", JAX_PLATFORMS="cpu")
  if use_kd_jax_flags:
    parallel.use_cpu_xla_flags(environ)
  subprocess.run([sys.executable, "-c", _COMPILE_CROSS_ENTROPY], env=environ, check=True)
  (kernel,) = [p for p in tmp_path.iterdir()
               if p.name.endswith("ir-with-opt.ll") and "exponential" in p.name]
  text = kernel.read_text()
  wide, narrow = text.count("<16 x float>"), text.count("<8 x float>")
  assert (wide > narrow) == use_kd_jax_flags, (kernel.name, wide, narrow)
