"""Smoke test of the kd_jax-vs-PyTorch benchmarks: each script runs with --quick.

The scripts run concurrently in subprocesses (each is mostly single-threaded compilation at
these sizes); every JSON line must parse, every case must report that kd_jax and torch
agree, the step benchmark must compile its step once (also with its batch sharded over two
CPU devices), the convolution profile must find every convolution of the network, and the
token-level loss benchmark must report time and memory for kd, lr and dkd.
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


@pytest.mark.slow  # about 70 s: seven benchmark scripts at --quick sizes
def test_bench_scripts_quick():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  runs = {"losses.py": ("losses.py", "--device", "cpu"),
          "step.py": ("step.py", "--device", "cpu"),
          "step.py sharded": ("step.py", "--host-devices", "2"),
          "convs.py": ("convs.py", "--device", "cpu"),
          "losses.py --token": ("losses.py", "--token", "--device", "cpu"),
          "cache.py": ("cache.py",),
          "checkpoint.py": ("checkpoint.py",)}
  processes = {
      name: subprocess.Popen([sys.executable, str(ROOT / "experiments" / "bench" / script), "--quick",
                              *flags],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
      for name, (script, *flags) in runs.items()}
  outputs = {}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, f"{name} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    outputs[name] = _records(stdout)

  losses = outputs["losses.py"]
  assert losses[0]["kind"] == "environment" and losses[0]["threads"] >= 1
  cases = [r for r in losses if r["kind"] == "loss"]
  # Every method of the table but the *_ds names (per example they are their base method).
  expected = {name for name in methods.NAMES if not methods.uses_selection(name)}
  assert {r["method"] for r in cases} == expected
  for r in cases:
    assert r["agree"], r
    assert r["jax_us"] > 0 and r["torch_us"] > 0 and r["speedup"] > 0
    assert r["jax_floor_us"] > 0 and set(r["reps_per_round"]) == {"jax", "torch", "floor"}
    assert r["cache_size"] == 1

  for run, devices in (("step.py", 1), ("step.py sharded", 2)):
    steps = [r for r in outputs[run] if r["kind"] == "step"]
    assert steps
    for r in steps:
      assert r["agree"], r
      assert r["jax_devices"] == devices
      assert r["jax_cache_size"] == 1 and r["jax_cached_cache_size"] == 1
      assert r["jax_trainer_cached_cache_size"] == 1  # the trainer's own step, too
      assert r["jax_trainer_cached_images_per_s"] > 0 and len(r["trainer_losses"]) == 2
      assert r["jax_images_per_s"] > 0 and r["torch_images_per_s"] > 0
      assert r["flops_per_step"] > 0
  # Sharded, XLA reports the per-device program; the benchmark counts every device's share.
  assert ([r["flops_per_step"] for r in outputs["step.py sharded"] if r["kind"] == "step"]
          == pytest.approx([r["flops_per_step"] for r in outputs["step.py"]
                            if r["kind"] == "step"], rel=0.05))

  (model,) = [r for r in outputs["convs.py"] if r["kind"] == "model"]
  # resnet8: the stem, two per basic block (3 stages x 1 block) and two 1x1 shortcuts.
  assert model["model"] == "resnet8" and model["convolutions"] == 9
  convolutions = [r for r in outputs["convs.py"] if r["kind"] == "convolution"]
  assert sum(r["count"] for r in convolutions) == 9
  for r in convolutions:
    assert all(r[f"{impl}_{part}_ms"] > 0 for impl in ("kd_jax", "torch")
               for part in ("fwd", "dx", "dw")), r

  tokens = [r for r in outputs["losses.py --token"] if r["kind"] == "token"]
  assert [r["method"] for r in tokens] == ["kd", "lr", "dkd"]
  for r in tokens:
    assert r["agree"], r
    assert r["jax_ms"] > 0 and r["torch_ms"] > 0 and r["jax_temp_mib"] >= 0
    assert r["jax_peak_mib"] is not None and r["torch_peak_mib"] is not None

  formats = [r for r in outputs["cache.py"] if r["kind"] == "cache"]
  assert [(r["format"], r["k"]) for r in formats] == [("float16", None), ("topk", 5)]
  for r in formats:  # the table on disk is the rows, plus index, metadata and checksums
    assert r["bytes_per_example_rows"] <= r["bytes_per_example_disk"] < 2 * (
        r["bytes_per_example_rows"] + 4)
    assert r["device_bytes_per_batch"] == r["bytes_per_example_rows"] * 64
    assert set(r["read"]) == {"in_order_workers_0", "other_order_workers_0"}
    assert min(r["read"].values()) > 0

  (saves,) = [r for r in outputs["checkpoint.py"] if r["kind"] == "checkpoint"]
  assert saves["model"] == "mlp_small"
  assert 0 < saves["async_stall_s"] <= saves["async_on_disk_s"]  # the write finishes later
  assert 0 < saves["sync_stall_s"] == pytest.approx(saves["sync_on_disk_s"], abs=0.05)
