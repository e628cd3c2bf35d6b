"""Host-side batch loader: deterministic shuffling, per-process sharding, augmentation and a
background-thread prefetch, in plain NumPy.

Batches are dicts of NumPy arrays, per process (b = batch_size // process_count rows):

  image  float32 [b, *input_shape]   augmented (train) and normalised; offline data as stored
  label  int32 [b]
  superclass int32 [b]               only when the dataset has superclasses
  index  int32 [b]                   the example's index in `source`; -1 for padding
  mask   bool [b]                    False for padding

Training (`train=True`): epoch e visits the examples in the order of a permutation that
depends only on (seed, e), and DROPS THE LAST PARTIAL BATCH (len(source) % batch_size
examples, a different set each epoch), so every step has a full batch and the jitted step
compiles once. Augmentation draws depend only on (seed, e, index), so `epoch(e, start_step)`
yields exactly the batches an uninterrupted epoch yields from that step on.

Evaluation (`train=False`): the source's order, nothing dropped; the last batch is padded
to full size with mask False and index -1 (label 0, image 0), so reductions must use `mask`.

Sharding: global batch s holds examples order[s·B:(s+1)·B]; process p takes rows
[p·b, (p+1)·b), so the processes together see each example of an epoch exactly once.

Extra fields (`extra`): a callable `extra(epoch, indices) -> {name: [n, ...] array}` whose
arrays join every batch of real examples (padding rows get zeros), e.g. the teacher-output
cache's rows of the batch (`kd_jax.train.teacher_cache`): read by example index as the batch
is built, in the same thread or worker process, so they travel with it.

Worker processes (`workers > 0`): the batches of an epoch are built in that many processes
by grain (`MapDataset.range(steps).map(batch at step).mp_prefetch`), which hands them back in
step order. A batch is a pure function of (seed, epoch, step), so the batches are identical
to the in-process ones. For JPEG decoding and random-resized crops (ImageNet), where one
process's thread pools are not enough; CIFAR's in-memory augmentation is faster in-process
(the images' transfer between processes costs more than the augmentation). Each epoch
starts its workers anew (a few seconds, as each imports kd_jax).
"""

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from kd_jax.data import augment as augment_lib
from kd_jax.data.source import Source

_EPOCH_STREAM = 0x5EED  # keeps the shuffle stream apart from other users of `seed`


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """int64 [N]: the training order of `epoch`, a function of (seed, epoch) only (cached:
  every step of the epoch slices it; read-only)."""
  order = np.random.default_rng([seed, epoch, _EPOCH_STREAM]).permutation(num_examples)
  order.flags.writeable = False
  return order


@dataclasses.dataclass(frozen=True, eq=False)
class Loader:
  """Iterates a source in (global) batches; see the module docstring. Build with
  `make_loader`."""
  source: Source
  batch_size: int  # global
  seed: int
  train: bool
  augment: str | None
  process_index: int
  process_count: int
  prefetch: int
  workers: int = 0
  extra: Callable[[int, np.ndarray], dict] | None = None

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count

  @property
  def steps_per_epoch(self) -> int:
    n = len(self.source)
    return n // self.batch_size if self.train else -(-n // self.batch_size)

  def global_indices(self, epoch: int, step: int) -> np.ndarray:
    """int64 [batch_size]: source indices of global batch `step` of `epoch`; -1 = padding."""
    start = step * self.batch_size
    if self.train:
      return epoch_permutation(len(self.source), self.seed, epoch)[start:start +
                                                                   self.batch_size]
    indices = np.arange(start, start + self.batch_size)
    return np.where(indices < len(self.source), indices, -1)

  def local_indices(self, epoch: int, step: int) -> np.ndarray:
    """int64 [local_batch_size]: this process's rows of global batch `step`."""
    start = self.process_index * self.local_batch_size
    return self.global_indices(epoch, step)[start:start + self.local_batch_size]

  def make_batch(self, indices: np.ndarray, epoch: int) -> dict[str, np.ndarray]:
    """Reads, augments and pads the examples `indices` (int [b], -1 = padding)."""
    valid = indices >= 0
    num_valid = int(valid.sum())
    if not valid[:num_valid].all():
      raise ValueError("padding (-1) must come after the real indices")
    real = indices[:num_valid]
    info = self.source.info
    if not num_valid:  # a process whose whole share of the last eval batch is padding
      return self._padding_batch(len(indices), epoch)
    data = self.source.get_batch(real)
    images = augment_lib.transform(
        data["image"], family=info.augmentation, train=self.train and bool(self.augment),
        seed=self.seed, epoch=epoch, indices=real, mean=info.mean, std=info.std)
    batch = {"image": images, "label": np.asarray(data["label"], np.int32)}
    if "superclass" in data:
      batch["superclass"] = np.asarray(data["superclass"], np.int32)
    batch["index"] = real.astype(np.int32)
    batch["mask"] = np.ones(num_valid, bool)
    if self.extra is not None:
      batch.update(self.extra(epoch, real))
    pad = len(indices) - num_valid
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
      batch["index"][num_valid:] = -1
    return batch

  def _padding_batch(self, size: int, epoch: int) -> dict[str, np.ndarray]:
    info = self.source.info
    batch = {"image": np.zeros((size,) + tuple(info.input_shape), np.float32),
             "label": np.zeros(size, np.int32)}
    if info.num_superclasses:
      batch["superclass"] = np.zeros(size, np.int32)
    if self.extra is not None:
      batch.update({key: np.zeros((size,) + value.shape[1:], value.dtype)
                    for key, value in self.extra(epoch, np.zeros(0, np.int64)).items()})
    return batch | {"index": np.full(size, -1, np.int32), "mask": np.zeros(size, bool)}

  def _batches(self, epoch: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    for step in range(start_step, self.steps_per_epoch):
      yield self.make_batch(self.local_indices(epoch, step), epoch)

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yields this process's batches of `epoch`, from global step `start_step` on."""
    if not 0 <= start_step <= self.steps_per_epoch:
      raise ValueError(f"start_step={start_step} must lie in [0, {self.steps_per_epoch}] "
                       "(steps_per_epoch)")
    if self.workers:
      batches = _in_worker_processes(self, epoch, start_step)
    else:
      batches = self._batches(epoch, start_step)
    return _prefetched(batches, self.prefetch) if self.prefetch > 0 else batches


def _batch_at(loader: Loader, epoch: int, step: int) -> dict[str, np.ndarray]:
  """This process's batch `step` of `epoch` (module level: pickled into grain's workers)."""
  return loader.make_batch(loader.local_indices(epoch, step), epoch)


def _in_worker_processes(loader: Loader, epoch: int, start_step: int) -> Iterator:
  """The batches of `epoch` from `start_step` on, built in `loader.workers` processes."""
  import grain  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain reads absl flags; a library caller never parsed any
    flags.FLAGS.mark_as_parsed()
  steps = grain.MapDataset.range(start_step, loader.steps_per_epoch)
  # One batch at a time per worker (its decoding and crops already use a thread pool), with
  # `prefetch` batches ahead: grain's default (16 threads, 500 elements) would hold hundreds
  # of ImageNet batches in memory per worker.
  read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(1, loader.prefetch))
  batches = steps.map(functools.partial(_batch_at, loader, epoch)).to_iter_dataset(read)
  options = grain.MultiprocessingOptions(num_workers=loader.workers,
                                         per_worker_buffer_size=max(1, loader.prefetch))
  for batch in batches.mp_prefetch(options):
    # A copy out of grain's shared memory, which is released when the worker moves on.
    yield {key: np.array(value) for key, value in batch.items()}


def _prefetched(iterator: Iterator, size: int) -> Iterator:
  """Runs `iterator` in a daemon thread, `size` items ahead; re-raises its exceptions.

  Closing the returned generator (or dropping it) stops the thread at its next item.
  """
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterator:
        if not put((item, None)):
          return
      put((done, None))
    except BaseException as error:  # pylint: disable=broad-except
      put((done, error))

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()

  def consume():
    try:
      while True:
        item, error = items.get()
        if error is not None:
          raise error
        if item is done:
          return
        yield item
    finally:
      stop.set()

  return consume()


def make_loader(source: Source, *, batch_size: int, seed: int, train: bool,
                augment: str | None = None, process_index: int | None = None,
                process_count: int | None = None, num_devices: int | None = None,
                prefetch: int = 2, workers: int = 0) -> Loader:
  """Builds a `Loader` over `source`.

  Args:
    source: any `kd_jax.data` source (or a `subset` view of one).
    batch_size: the GLOBAL batch size B; each process yields B // process_count rows.
    seed: seeds the shuffle and the augmentation (with the epoch and example index).
    train: shuffle, drop the last partial batch and augment; else fixed order with padding.
    augment: None (no random augmentation) or the dataset's family ("cifar", "imagenet");
      used only when `train`. Normalisation follows `source.info` in every case.
    process_index, process_count: this host's rank and the number of hosts; default
      jax.process_index() / jax.process_count().
    num_devices: local devices per process (default jax.local_device_count()); B must be
      divisible by process_count · num_devices so the batch shards evenly.
    prefetch: batches prepared ahead in a background thread (0: synchronous).
    workers: processes that build the training batches (grain); 0 = this process.
  """
  if augment in ("", "none", "None"):
    augment = None
  family = source.info.augmentation
  if augment is not None and augment != family:
    raise ValueError(f"augment={augment!r} does not fit dataset {source.info.name!r}; "
                     f"use None or {family!r}" if family else
                     f"augment={augment!r} given but dataset {source.info.name!r} has no "
                     "augmentation; use None")
  if process_index is None or process_count is None or num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    num_devices = jax.local_device_count() if num_devices is None else num_devices
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, "
                     f"process_count={process_count})")
  if batch_size <= 0 or batch_size % (process_count * num_devices):
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                     f"process_count ({process_count}) x num_devices ({num_devices}) = "
                     f"{process_count * num_devices}")
  if train and len(source) < batch_size:
    raise ValueError(f"batch_size={batch_size} exceeds the {len(source)} training examples "
                     f"of {source.info.name!r}; training drops partial batches, so no step "
                     "would run")
  if prefetch < 0:
    raise ValueError(f"prefetch={prefetch} must be >= 0")
  if workers < 0:
    raise ValueError(f"workers={workers} must be >= 0 (0: batches built in this process)")
  return Loader(source, batch_size, seed, train, augment, process_index, process_count,
                prefetch, workers)
