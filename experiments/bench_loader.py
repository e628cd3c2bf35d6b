"""Host loader throughput on CIFAR-shaped data (in memory, so no decoding is measured).

  PYTHONPATH=. python experiments/bench_loader.py [--num_batches=390] [--batch_size=128]

Prints examples/s of `kd_jax.data.make_loader` with CIFAR augmentation (pad-4 random crop,
flip, normalisation) for 50,000 random uint8 32x32x3 images, with and without prefetch,
plus the evaluation path (normalisation only).
"""

import argparse
import time

import numpy as np

from kd_jax import data
from kd_jax.data import augment


def cifar_shaped_source(num_examples: int) -> data.ArraySource:
  rng = np.random.default_rng(0)
  info = data.DatasetInfo("mock_cifar100", 100, (32, 32, 3), num_superclasses=20,
                          augmentation="cifar", mean=augment.CIFAR100_MEAN,
                          std=augment.CIFAR100_STD)
  labels = rng.integers(0, 100, num_examples).astype(np.int32)
  images = rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8)
  return data.ArraySource(info, images, labels, labels // 5)


def examples_per_second(loader: data.Loader, num_batches: int) -> float:
  start = time.perf_counter()
  count = 0
  for step, batch in enumerate(loader.epoch(0)):
    count += len(batch["label"])
    if step + 1 == num_batches:
      break
  return count / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_examples", type=int, default=50_000)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_batches", type=int, default=390)  # one epoch of 50k / 128
  args = parser.parse_args()
  source = cifar_shaped_source(args.num_examples)
  common = dict(batch_size=args.batch_size, seed=0, process_index=0, process_count=1,
                num_devices=1)
  for name, options in [("train, cifar augmentation, no prefetch",
                         dict(train=True, augment="cifar", prefetch=0)),
                        ("train, cifar augmentation, prefetch=2",
                         dict(train=True, augment="cifar", prefetch=2)),
                        ("eval, normalisation only, prefetch=2",
                         dict(train=False, augment=None, prefetch=2))]:
    rate = examples_per_second(data.make_loader(source, **common, **options),
                               args.num_batches)
    print(f"{name:42s} {rate:10,.0f} examples/s")


if __name__ == "__main__":
  main()
