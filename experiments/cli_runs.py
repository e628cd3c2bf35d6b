"""Shared by the experiment scripts: run the real CLI, parse overrides, mean +- std."""

import os
import shlex
import subprocess
import sys
import time

import numpy as np


def parse_overrides(text: str) -> dict:
  """'key=value;key=value' (keys without the `--config.` prefix) -> dict."""
  return dict(item.split("=", 1) for item in text.split(";") if item)


def run_cli(config: str, workdir: str, overrides: dict, log_path: str) -> tuple[str, float]:
  """Runs `python -m kd_jax.main` (output appended to log_path); returns (command, seconds).

  A finished run is skipped by the CLI itself (it reads its summaries), a killed one resumes.
  """
  command = [sys.executable, "-m", "kd_jax.main", f"--config={config}", f"--workdir={workdir}"]
  command += [f"--config.{key}={value}" for key, value in overrides.items()]
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  with open(log_path, "a") as log:
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
  return shlex.join(["python", *command[1:]]), time.time() - start


def mean_std(values):
  """(mean, sample std) of the non-None values; std 0 for one value; None for none."""
  values = np.asarray([v for v in values if v is not None], float)
  if not values.size:
    return None
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def runner_command(script: str) -> str:
  """The command line that reproduces this script's run."""
  return shlex.join(["python", script, *sys.argv[1:]])
