"""Benchmark: how long a checkpoint save stalls training, synchronous against asynchronous.

  PYTHONPATH=. python experiments/bench/checkpoint.py [--models resnet8x4,wrn_16_2,ResNet18]
      [--rounds 3] [--out FILE.jsonl] [--quick]

For each model, the train state the trainer checkpoints (`TrainState.checkpoint_items()`:
parameters, BatchNorm statistics, SGD momentum, step, key) is saved by the trainer's own
`kd_jax.train.checkpoint.Checkpointer`, with `async_save` False and True in alternating rounds:
  stall    seconds `save` blocks the training loop (asynchronous: the copy off the device and
           the CRC32 checksums; the files are written in the background)
  on disk  seconds until the step is complete on disk (`wait`)
The stall is set against an epoch of the CIFAR protocol (batch 64, 781 steps; ImageNet: batch
512, 2502 steps) at the step times of experiments/results/bench/wallclock_estimate (XLA FLOPs
at 40% of an accelerator's peak: estimates, no accelerator measured): the share of an epoch
one save per epoch costs. One JSON line per case, then a markdown table.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import common
import jax
import numpy as np
import optax

from kd_jax import models
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import state as state_lib

ESTIMATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "results", "bench", "wallclock_estimate", "results.json")
# model -> (input shape, classes, the estimate's teacher -> student pair, steps per epoch)
CASES = {
    "resnet8x4": ((32, 32, 3), 100, "resnet32x4 -> resnet8x4", 50_000 // 64),
    "wrn_16_2": ((32, 32, 3), 100, "wrn_40_2 -> wrn_16_2", 50_000 // 64),
    "ResNet18": ((224, 224, 3), 1000, "ResNet34 -> ResNet18", 1_281_167 // 512),
    "mlp_small": ((16,), 10, None, 100),
}


def step_seconds(pair: str | None) -> dict:
  """Estimated seconds per step per device of the estimate's pair ({} without one)."""
  if pair is None or not os.path.exists(ESTIMATES):
    return {}
  with open(ESTIMATES) as f:
    rows = json.load(f)["rows"]
  row = next(r for r in rows if r["pair"] == pair)
  return {device: seconds / row["steps"] for device, seconds in row["estimate_seconds"].items()}


def checkpoint_items(name: str) -> dict:
  shape, classes, _, _ = CASES[name]
  model = models.create(name, classes)
  tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9))
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), shape)
  # Momentum as after some training (zeros compress to nothing, trained values do not).
  noise = lambda x: x + np.random.default_rng(0).normal(size=x.shape).astype(x.dtype) * 1e-3
  state = state.replace(opt_state=jax.tree.map(noise, state.opt_state))
  return state.checkpoint_items()


def time_saves(items: dict, async_save: bool, directory: str, step: int) -> tuple[float, float]:
  checkpointer = ckpt_lib.Checkpointer(directory, keep=2, async_save=async_save)
  start = time.perf_counter()
  checkpointer.save(step, items, {"step": step})
  stall = time.perf_counter() - start
  checkpointer.wait()
  on_disk = time.perf_counter() - start
  checkpointer.close()
  return stall, on_disk


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet8x4,wrn_16_2,ResNet18")
  parser.add_argument("--rounds", type=int, default=3)
  common.add_jsonl_args(parser)
  args = parser.parse_args()
  if args.quick:
    args.models, args.rounds = "mlp_small", 1
  environment = dict(kind="environment", cpu_count=os.cpu_count(),
                     load_average_1min=round(os.getloadavg()[0], 2), jax=jax.__version__)
  common.emit(environment)
  records = [environment]
  scratch = tempfile.mkdtemp(prefix="kd_jax_bench_checkpoint_")
  try:
    for name in args.models.split(","):
      items = checkpoint_items(name)
      megabytes = sum(x.nbytes for x in jax.tree.leaves(items)) / 1e6
      times = {False: [], True: []}
      for round_ in range(args.rounds + 1):  # round 0 warms orbax and the CRC up
        for async_save in (False, True) if round_ % 2 else (True, False):
          directory = os.path.join(scratch, f"{name}_{async_save}_{round_}")
          measured = time_saves(items, async_save, directory, step=round_ + 1)
          if round_:
            times[async_save].append(measured)
          shutil.rmtree(directory)
      _, _, pair, steps_per_epoch = CASES[name]
      record = dict(kind="checkpoint", model=name, megabytes=round(megabytes, 1))
      for async_save, label in ((False, "sync"), (True, "async")):
        record[f"{label}_stall_s"] = round(statistics.median(t[0] for t in times[async_save]), 4)
        record[f"{label}_on_disk_s"] = round(statistics.median(t[1] for t in times[async_save]),
                                             4)
      record["epoch_share_per_save"] = {
          device: {label: round(record[f"{label}_stall_s"] / (seconds * steps_per_epoch), 4)
                   for label in ("sync", "async")}
          for device, seconds in step_seconds(pair).items()}
      records.append(record)
      common.emit(record)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  common.append_jsonl(args.out, records)
  rows = [[r["model"], r["megabytes"], r["sync_stall_s"], r["async_stall_s"],
           r["async_on_disk_s"],
           ", ".join(f"{d.split(' (')[0]}: {v['sync']:.1%} -> {v['async']:.1%}"
                     for d, v in r["epoch_share_per_save"].items())] for r in records[1:]]
  print(common.markdown_table(["model", "MB", "sync stall (s)", "async stall (s)",
                               "async on disk (s)", "one save per epoch, share of an epoch"],
                              rows))


if __name__ == "__main__":
  main()
