"""Shared helpers of the trainer tests: a tiny config (seconds per run) and a CLI runner."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# synthetic data, 10 classes, 512 training + 64 validation examples, MLPs, 2 epochs of 16 steps.
TINY_OVERRIDES = {
    "dataset.options.num_classes": 10,
    "dataset.options.num_superclasses": 2,
    "dataset.options.dim": 16,
    "dataset.options.noise": 1.0,
    "dataset.options.num_train": 576,
    "dataset.options.num_test": 256,
    "dataset.holdout": 64,
    "batch_size": 32,
    "eval_batch_size": 64,
    "num_epochs": 2,
    "log_every_steps": 5,
    "checkpoint.every_steps": 5,
}
# Timing fields differ between runs; everything else in summary.json must match exactly.
TIMING_FIELDS = ("train_seconds", "images_per_second", "seconds")


def tiny_config(**overrides):
  """configs/synthetic.py with TINY_OVERRIDES and `overrides` ("a.b" keys as "a__b")."""
  from kd_jax import config_defaults, config_files  # pylint: disable=g-import-not-at-top
  return config_defaults.set_fields(config_files.shipped("synthetic"), {
      **TINY_OVERRIDES, **{k.replace("__", "."): v for k, v in overrides.items()}})


def cli_args(workdir, config="configs/synthetic.py", **overrides):
  flags = {**TINY_OVERRIDES, **{k.replace("__", "."): v for k, v in overrides.items()}}
  return [sys.executable, "-m", "kd_jax.main", f"--config={config}",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def env(num_devices: int = 1):
  variables = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  variables["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  return variables


def run_cli(workdir, num_devices=1, timeout=180, **overrides):
  return subprocess.run(cli_args(workdir, **overrides), cwd=REPO, env=env(num_devices),
                        capture_output=True, text=True, timeout=timeout)


def comparable(summary: dict) -> dict:
  """summary.json without timing fields (and without paths, which name the workdir: the
  teacher's source and the fingerprint that holds it)."""
  out = {}
  for key, value in summary.items():
    if key == "fingerprint":
      continue
    if isinstance(value, dict):
      out[key] = comparable(value)
    elif key not in TIMING_FIELDS and not (key == "teacher" and isinstance(value, str)):
      out[key] = value
  return out


def read_summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)
