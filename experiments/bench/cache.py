"""Benchmark: the teacher-output cache's size and read rate per format, against what a step
consumes.

  PYTHONPATH=. python experiments/bench/cache.py [--examples 20000] [--classes 1000]
      [--formats float32,float16,topk:5,topk:10,topk:20,sampled:5,sampled:10,sampled:20]
      [--workers 0,1,2] [--batch 256] [--out FILE.jsonl] [--quick]

For each format, `--examples` rows of random teacher logits `[N, C]` are packed
(`kd_jax.train.cache_formats.pack`) and written by the cache's own code
(`kd_jax.train.row_store.TableWriter`) in an epoch's training order, as the trainer writes a
table; then, per format:
  disk    the table directory's bytes per example, and extrapolated to ImageNet's training
          set (1,281,167 examples: per epoch, and for 90 augmented epochs). Measured at N;
          the size is linear in N (chunks of about 1 MiB, a few KB of metadata per table).
  device  the bytes of one batch's rows at `--batch`: all the step holds of the cache.
  read    examples/s of the trainer's loader (`kd_jax.data.make_loader` with the cache's
          `RowReader` as its `extra` fields) over the table, on a source of 1-float
          examples so that the rows are the cost, with 0 (in this process), 1 and 2 worker
          processes; "in order" reads the epoch the table was written for (augmented data:
          one table per epoch), "other order" the next epoch's order from the same table
          (data without augmentation: one table, a new order each epoch).
Each rate is set against the images/s that the ResNet34 -> ResNet18 step would consume on one
device, from experiments/results/bench/wallclock_estimate (XLA FLOPs at 40% of peak:
estimates, no accelerator measured). One JSON line per case, then a markdown table.
"""

import argparse
import dataclasses
import os
import shutil
import tempfile
import time

import common
import input_pipeline
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from kd_jax import data
from kd_jax.train import cache_formats, row_store, teacher_cache

IMAGENET_TRAIN = 1_281_167
EPOCHS = 90


def parse_formats(text: str) -> list[tuple[str, int]]:
  out = []
  for item in text.split(","):
    fmt, _, k = item.partition(":")
    out.append((fmt, int(k or 0)))
  return out


def write_table(path, fmt, k, logits, labels, order, batch):
  """Packs `logits` in `order` (a batch at a time, as the cache computes them) and writes the
  table; returns the seconds it took."""
  start = time.perf_counter()
  spec = cache_formats.row_spec(fmt, logits.shape[1], k)
  pack = jax.jit(lambda z, y, keys: cache_formats.pack(fmt, z, y, k=k, keys=keys))
  with row_store.TableWriter(path, spec, len(order), {"format": fmt}) as writer:
    for start_row in range(0, len(order), batch):
      index = order[start_row:start_row + batch]
      keys = teacher_cache.example_keys(0, 0, jnp.asarray(index))
      rows = pack(jnp.asarray(logits[index]), jnp.asarray(labels[index]), keys)
      writer.append(jax.tree.map(np.asarray, rows), index)
    writer.commit()
  return time.perf_counter() - start


def directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def read_rate(source, table, batch, workers, epoch, num_batches) -> float:
  """Examples/s of the loader streaming the table's rows with `num_batches` batches."""
  reader = teacher_cache.RowReader({None: table}, per_epoch=False)
  loader = data.make_loader(source, batch_size=batch, seed=0, train=True, process_index=0,
                            process_count=1, num_devices=1, prefetch=2, workers=workers)
  loader = dataclasses.replace(loader, extra=reader)
  iterator = loader.epoch(epoch)
  next(iterator)  # start-up (worker processes import kd_jax) is not the steady rate
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  rate = num_batches * batch / (time.perf_counter() - start)
  iterator.close()
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=20_000)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--formats", default="float32,float16,topk:5,topk:10,topk:20,sampled:5,"
                      "sampled:10,sampled:20")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batch", type=int, default=256)
  common.add_jsonl_args(parser)
  args = parser.parse_args()
  if args.quick:
    args.examples, args.classes, args.formats, args.workers = 600, 50, "float16,topk:5", "0"
    args.batch = 64
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(args.examples, args.classes)) * 3).astype(np.float32)
  labels = rng.integers(0, args.classes, args.examples).astype(np.int32)
  info = data.DatasetInfo("rows_only", args.classes, (1,), None, None)
  source = data.ArraySource(info, np.zeros((args.examples, 1), np.float32), labels)
  steps = args.examples // args.batch
  # Every example, in epoch 0's training order: epoch 0 reads the table in order, epoch 1 in
  # another order (and finds the examples epoch 0 drops).
  order = np.array(data.epoch_permutation(args.examples, 0, 0))
  consumers = input_pipeline.consumption_rates("imagenet")
  num_batches = min(steps - 2, 40)
  environment = dict(kind="environment", cpu_count=os.cpu_count(),
                     load_average_1min=round(os.getloadavg()[0], 2), examples=args.examples,
                     classes=args.classes, batch=args.batch)
  common.emit(environment)
  records = [environment]
  scratch = tempfile.mkdtemp(prefix="kd_jax_bench_cache_")
  try:
    for fmt, k in parse_formats(args.formats):
      path = os.path.join(scratch, f"{fmt}_{k}")
      write_s = write_table(path, fmt, k, logits, labels, order, args.batch)
      table = row_store.Table.open(path, {"format": fmt}, args.examples)
      per_example = directory_bytes(path) / len(order)
      record = dict(kind="cache", format=fmt, k=k or None, classes=args.classes,
                    bytes_per_example_disk=round(per_example, 1),
                    bytes_per_example_rows=cache_formats.bytes_per_example(fmt, args.classes,
                                                                           k),
                    imagenet_epoch_mb_disk=round(per_example * IMAGENET_TRAIN / 1e6, 1),
                    imagenet_90_epochs_gb_disk=round(
                        per_example * IMAGENET_TRAIN * EPOCHS / 1e9, 2),
                    device_bytes_per_batch=cache_formats.bytes_per_example(
                        fmt, args.classes, k) * args.batch,
                    write_examples_per_s=round(len(order) / write_s, 1), read={})
      for workers in [int(w) for w in args.workers.split(",")]:
        for name, epoch in (("in_order", 0), ("other_order", 1)):
          rate = read_rate(source, table, args.batch, workers, epoch, num_batches)
          record["read"][f"{name}_workers_{workers}"] = round(rate, 1)
      record["step_consumption"] = consumers
      record["read_over_step"] = {
          device: round(min(record["read"].values()) / rate, 2)
          for device, rate in consumers.items()}
      records.append(record)
      common.emit(record)
      shutil.rmtree(path)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  common.append_jsonl(args.out, records)
  rows = [[r["format"], r["k"] or "", r["bytes_per_example_disk"], r["imagenet_epoch_mb_disk"],
           r["imagenet_90_epochs_gb_disk"], round(r["device_bytes_per_batch"] / 1024, 1),
           min(r["read"].values())] for r in records[1:]]
  print(common.markdown_table(["format", "k", "bytes / example (disk)",
                               "ImageNet epoch (MB)", "90 epochs (GB)",
                               f"rows per batch of {args.batch} (KiB)",
                               "slowest read (examples/s)"], rows))


if __name__ == "__main__":
  main()
