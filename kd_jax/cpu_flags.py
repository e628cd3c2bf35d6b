"""The XLA:CPU flags kd_jax trains with, for anyone who runs JAX on a CPU.

  from kd_jax import cpu_flags
  cpu_flags.use_cpu_xla_flags()   # first thing: before JAX creates any array

What they give, measured on a 2-core AVX-512 CPU with jaxlib 0.10 (experiments/PERF.md):
- `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: 2-D convolutions go to
  XLA's own emitter instead of YNNPACK, whose convolution weight gradients ran 2.0-2.7x
  slower than PyTorch's; the CIFAR KD train step with a cached teacher ran 1.3-1.5x faster.
- `--xla_cpu_prefer_vector_width=512`: XLA's loop emitter vectorises 16 floats wide instead
  of 8 on CPUs with AVX-512 (ignored elsewhere); elementwise passes such as a softmax's exp
  run faster, the KD step itself 1.02-1.04x.

`kd_jax.main` calls `use_cpu_xla_flags` before anything else. It changes nothing when JAX
will not run on the CPU (`JAX_PLATFORMS` names another platform first, or an accelerator
plugin, CUDA, ROCm or TPU, is installed and no platform is named), when the jaxlib is not
one the flags were measured with (XLA aborts on a flag it does not know), or for a flag the
user's `XLA_FLAGS` already sets. This module imports nothing but the standard library and
jaxlib's version, so it is part of the core install.
"""

import importlib.metadata
import os

CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
                 "--xla_cpu_prefer_vector_width=512")
CPU_XLA_FLAGS_JAXLIB = ("0.10.",)  # the jaxlib releases they were measured with
# Distributions whose presence makes JAX pick an accelerator when no platform is named.
_ACCELERATOR_PREFIXES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def runs_on_cpu(environ=os.environ) -> bool:
  """Whether JAX's default backend will be the CPU, decided before it starts: the first
  platform of `JAX_PLATFORMS` when set, else whether no accelerator plugin is installed."""
  platforms = environ.get("JAX_PLATFORMS", "") or environ.get("JAX_PLATFORM_NAME", "")
  if platforms.strip():
    return platforms.split(",")[0].strip().lower() == "cpu"
  names = (dist.metadata["Name"] or "" for dist in importlib.metadata.distributions())
  return not any(name.lower().startswith(_ACCELERATOR_PREFIXES) for name in names)


def use_cpu_xla_flags(environ=os.environ) -> tuple[str, ...]:
  """Appends `CPU_XLA_FLAGS` to `environ["XLA_FLAGS"]` when JAX will run on the CPU, except
  a flag the user already set (the part before '='); returns the flags added.

  XLA reads XLA_FLAGS when JAX starts its first backend, so call this before any array is
  created. Opt out of one flag by setting it yourself, e.g.
  `XLA_FLAGS=--xla_cpu_prefer_vector_width=256`.
  """
  from jaxlib import version  # pylint: disable=g-import-not-at-top  (starts no backend)
  if not version.__version__.startswith(CPU_XLA_FLAGS_JAXLIB) or not runs_on_cpu(environ):
    return ()
  present = environ.get("XLA_FLAGS", "")
  added = tuple(flag for flag in CPU_XLA_FLAGS if flag.split("=")[0] not in present)
  if added:
    environ["XLA_FLAGS"] = " ".join(filter(None, [present, *added]))
  return added
