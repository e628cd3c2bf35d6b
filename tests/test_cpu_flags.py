"""kd_jax.cpu_flags: the XLA:CPU flags are added once, only for the CPU, and still mean what
the module docstring says in this jaxlib."""

import os
import subprocess
import sys

import pytest

from kd_jax import cpu_flags

FLAGS = cpu_flags.CPU_XLA_FLAGS
CPU = {"JAX_PLATFORMS": "cpu"}


def test_flags_are_appended_once_and_keep_the_users_setting():
  assert len(FLAGS) == 2
  environ = dict(CPU, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  assert cpu_flags.use_cpu_xla_flags(environ) == FLAGS
  assert environ["XLA_FLAGS"] == " ".join(["--xla_force_host_platform_device_count=4", *FLAGS])
  assert cpu_flags.use_cpu_xla_flags(environ) == ()  # already there: not twice
  assert all(environ["XLA_FLAGS"].count(flag) == 1 for flag in FLAGS)
  # A flag the user set (any value) stays; the others are still added.
  mine = dict(CPU, XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=+individual_convolution")
  assert cpu_flags.use_cpu_xla_flags(mine) == FLAGS[1:]
  assert mine["XLA_FLAGS"] == ("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution "
                               + FLAGS[1])
  empty = dict(CPU)
  cpu_flags.use_cpu_xla_flags(empty)
  assert empty["XLA_FLAGS"] == " ".join(FLAGS)


@pytest.mark.parametrize("platforms, on_cpu", [
    ("cpu", True), ("CPU,cuda", True), ("cuda", False), ("tpu,cpu", False), ("rocm", False)])
def test_flags_are_set_only_where_jax_runs_on_the_cpu(platforms, on_cpu):
  environ = {"JAX_PLATFORMS": platforms}
  assert cpu_flags.runs_on_cpu(environ) == on_cpu
  assert bool(cpu_flags.use_cpu_xla_flags(environ)) == on_cpu
  assert ("XLA_FLAGS" in environ) == on_cpu


def test_no_platform_named_means_cpu_unless_an_accelerator_plugin_is_installed(monkeypatch):
  class Dist:
    def __init__(self, name):
      self.metadata = {"Name": name}
  monkeypatch.setattr(cpu_flags.importlib.metadata, "distributions",
                      lambda: [Dist("numpy"), Dist("jaxlib")])
  assert cpu_flags.runs_on_cpu({})
  for plugin in ("jax-cuda12-plugin", "jax_cuda13_plugin", "libtpu", "jax-rocm7-plugin"):
    monkeypatch.setattr(cpu_flags.importlib.metadata, "distributions",
                        lambda plugin=plugin: [Dist("numpy"), Dist(plugin)])
    assert not cpu_flags.runs_on_cpu({}), plugin
    assert cpu_flags.use_cpu_xla_flags({}) == ()


def test_importing_the_flags_starts_no_backend_and_needs_no_trainer():
  """A library user calls it before JAX starts; the trainer's extras are not needed."""
  code = ("import sys; from kd_jax import cpu_flags; cpu_flags.use_cpu_xla_flags(); "
          "print(sorted(m for m in ('flax', 'jax', 'orbax') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=dict(os.environ, **CPU))
  assert result.stdout.split() == ["[]"]


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
def test_the_convolution_flag_takes_convolutions_from_ynnpack(flags, in_ynnpack):
  """A 2-D convolution compiles to a YNNPACK fusion by default (and when the user opts back
  in), not with kd_jax's flags."""
  environ = dict(os.environ, XLA_FLAGS="", **CPU)
  if flags == "kd_jax":
    assert cpu_flags.use_cpu_xla_flags(environ), "no flags for this jaxlib"
  else:
    environ["XLA_FLAGS"] = flags
  result = subprocess.run([sys.executable, "-c", _COUNT_YNN_CONVOLUTIONS], env=environ,
                          capture_output=True, text=True, check=True)
  assert (int(result.stdout.split()[-1]) > 0) == in_ynnpack, (flags, result.stdout)


_COMPILE_EXP = """
import jax, jax.numpy as jnp
jax.jit(lambda z: jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))).lower(
    jnp.zeros((1024, 100))).compile()
"""


def _has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      return "avx512f" in cpuinfo.read().split()
  except OSError:
    return False


@pytest.mark.skipif(not _has_avx512(), reason="the vector width flag matters only with AVX-512")
@pytest.mark.parametrize("use_kd_jax_flags", [False, True])
def test_the_vector_width_flag_vectorises_a_softmax_exp_16_wide(use_kd_jax_flags, tmp_path):
  """XLA's loop emitter computes a softmax's exp pass 16 floats wide with the flag and 8 wide
  without it."""
  environ = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path}", **CPU)
  if use_kd_jax_flags:
    cpu_flags.use_cpu_xla_flags(environ)
  subprocess.run([sys.executable, "-c", _COMPILE_EXP], env=environ, check=True)
  text = "".join(p.read_text() for p in tmp_path.iterdir() if p.name.endswith("ir-with-opt.ll"))
  wide, narrow = text.count("<16 x float>"), text.count("<8 x float>")
  assert (wide > narrow) == use_kd_jax_flags, (wide, narrow)
