"""Smoke test of the kd_jax-vs-PyTorch benchmarks: both scripts run with --quick.

The two scripts run concurrently in subprocesses (each is mostly single-threaded
compilation at these sizes); every JSON line must parse, every case must report that kd_jax
and torch agree, and the step benchmark must compile its step once.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from kd_jax import methods

pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _records(stdout: str) -> list[dict]:
  lines = [line for line in stdout.splitlines() if line.startswith("{")]
  return [json.loads(line) for line in lines]


def test_bench_scripts_quick():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  scripts = ("bench_losses.py", "bench_step.py")
  processes = {
      script: subprocess.Popen([sys.executable, str(ROOT / "experiments" / script), "--quick",
                                "--device", "cpu"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
      for script in scripts}
  outputs = {}
  for script, process in processes.items():
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, f"{script} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    outputs[script] = _records(stdout)

  losses = outputs["bench_losses.py"]
  assert losses[0]["kind"] == "environment" and losses[0]["threads"] >= 1
  cases = [r for r in losses if r["kind"] == "loss"]
  # Every method of the table but the *_ds names (per example they are their base method).
  expected = {name for name in methods.NAMES if not methods.uses_selection(name)}
  assert {r["method"] for r in cases} == expected
  for r in cases:
    assert r["agree"], r
    assert r["jax_us"] > 0 and r["torch_us"] > 0 and r["speedup"] > 0
    assert r["cache_size"] == 1

  steps = [r for r in outputs["bench_step.py"] if r["kind"] == "step"]
  assert steps
  for r in steps:
    assert r["agree"], r
    assert r["jax_cache_size"] == 1
    assert r["jax_images_per_s"] > 0 and r["torch_images_per_s"] > 0
    assert r["flops_per_step"] > 0
