"""Benchmark: input-pipeline examples/s by worker count, against the rate a step consumes.

  PYTHONPATH=. python experiments/bench/input_pipeline.py [--workers 0,1,2] [--batches 20]
      [--pipelines cifar,imagenet] [--out FILE.jsonl]

Two training pipelines of `kd_jax.data.make_loader` (the trainer's), each with `workers` =
0 (batches built in this process; decoding and crops in its thread pools) and k > 0 (grain
worker processes, `input.workers` in a config):
  cifar     50,000 in-memory uint8 32x32x3 images, pad-4 random crop + flip + normalisation,
            batch 64 (the CIFAR protocol).
  imagenet  generated JPEGs of ImageNet-like sizes (`kd_jax.data.tfds.fake_imagenet`):
            decode + RandomResizedCrop(224) + flip + normalisation, batch 128.
The first batch (worker start-up: each process imports kd_jax) is timed apart, and the next
`--warmup` batches (built while it was awaited) are not timed: the rate is the steady one. Then each rate is set against the images/s that a train step would consume:
the GPU and TPU estimates of experiments/results/bench/wallclock_estimate/results.json (XLA FLOPs
at 40% of peak, `experiments/bench/estimate_wallclock.py`; ESTIMATES, no accelerator measured) for
resnet32x4 -> resnet8x4 (CIFAR) and ResNet34 -> ResNet18 (ImageNet). One JSON line per case.
"""

import argparse
import json
import os
import time

import numpy as np
from absl import flags

from kd_jax import data
from kd_jax.data import augment
from kd_jax.data import tfds as tfds_lib

EXPERIMENTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ESTIMATES = os.path.join(EXPERIMENTS, "results", "bench", "wallclock_estimate", "results.json")
CONSUMER = {"cifar": "resnet32x4 -> resnet8x4", "imagenet": "ResNet34 -> ResNet18"}


def cifar_source(num_examples: int = 50_000) -> data.ArraySource:
  rng = np.random.default_rng(0)
  info = data.DatasetInfo("mock_cifar100", 100, (32, 32, 3), num_superclasses=20,
                          augmentation="cifar", mean=augment.CIFAR100_MEAN,
                          std=augment.CIFAR100_STD)
  labels = rng.integers(0, 100, num_examples).astype(np.int32)
  images = rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8)
  return data.ArraySource(info, images, labels, labels // 5)


def measure(source, batch_size: int, workers: int, batches: int, warmup: int) -> dict:
  """First-batch seconds, then the steady examples/s over `batches` batches after `warmup`
  more (batches the workers and the prefetch thread built while the first was awaited)."""
  loader = data.make_loader(source, batch_size=batch_size, seed=0, train=True,
                            augment=source.info.augmentation, process_index=0,
                            process_count=1, num_devices=1, prefetch=2, workers=workers)
  start = time.perf_counter()
  iterator = loader.epoch(0)
  next(iterator)
  first = time.perf_counter() - start
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  rate = batches * batch_size / (time.perf_counter() - start)
  iterator.close()
  return dict(first_batch_s=round(first, 2), examples_per_s=round(rate, 1))


def consumption_rates(pipeline: str) -> dict:
  """Estimated images/s of the step per device, from the committed FLOP estimates."""
  if not os.path.exists(ESTIMATES):
    return {}
  with open(ESTIMATES) as f:
    estimates = json.load(f)
  row = next(r for r in estimates["rows"] if r["pair"] == CONSUMER[pipeline])
  steps = row["steps"]
  return {device: round(steps * row["batch"] / seconds, 1)
          for device, seconds in row["estimate_seconds"].items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batches", type=int, default=20, help="timed batches per case")
  parser.add_argument("--warmup", type=int, default=12, help="untimed batches after the first")
  parser.add_argument("--pipelines", default="cifar,imagenet")
  parser.add_argument("--out", default="", help="also append the JSON lines to this file")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  # ImageNet: just enough generated JPEGs for the timed batches (one epoch, no wrap-around).
  sources = {"cifar": (cifar_source, 64),
             "imagenet": (lambda: tfds_lib.fake_imagenet(128 * (args.batches + args.warmup + 2)),
                          128)}
  environment = dict(kind="environment", cpu_count=os.cpu_count(),
                     load_average_1min=round(os.getloadavg()[0], 2))
  records = [environment]
  print(json.dumps(environment), flush=True)
  for pipeline in args.pipelines.split(","):
    make_source, batch_size = sources[pipeline]
    source = make_source()
    consumers = consumption_rates(pipeline)
    for workers in [int(w) for w in args.workers.split(",")]:
      record = dict(kind="input", pipeline=pipeline, batch=batch_size, workers=workers,
                    **measure(source, batch_size, workers, args.batches, args.warmup),
                    consumer=CONSUMER[pipeline], estimated_step_images_per_s=consumers)
      record["loader_over_step"] = {device: round(record["examples_per_s"] / rate, 3)
                                    for device, rate in consumers.items()}
      records.append(record)
      print(json.dumps(record), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
  main()
