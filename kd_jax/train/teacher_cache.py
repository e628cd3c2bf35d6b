"""Teacher-output cache: the frozen teacher's logits for every (epoch, example) of a run's
deterministic data order, computed once and read by every later run that shares them.

Why: a sweep of M methods x S seeds runs the same teacher forward pass on the same views M
times per seed. The loader makes every view a pure function of (data-order seed, epoch,
example index) (`kd_jax.data.loader`), so the teacher's logits can be stored per (epoch,
index) and looked up: the teacher runs S times, not M x S (once per teacher, whatever the
seed, without augmentation).

How the step reads it: through the train state's ordinary teacher slot. `teacher_fn` is
`lookup` and `teacher_variables` the current epoch's logits table `[N, C]` (float16 or
float32, replicated), indexed by `batch["index"]`; the loop swaps the table at each epoch
start when views change per epoch. No method code knows whether the teacher ran.

Key (`key_fields`, hashed by `cache_key`): the teacher's fingerprint (model + CRC32 of its
variables), the dataset (name, generation seed, options, holdout size and seed: they fix
which example index i names; not `data_dir`), the augmentation family, the data-order seed
(only with augmentation: without it a view depends on neither the epoch nor the order),
the global batch size and the compute dtype (the forward's numerics: same shapes, same
bits; for the exact float32 format also the backend and device count), the storage
format, N and C. A changed field is another key, hence another directory:
never a silent reuse.

Layout under `teacher_cache.dir`:

  <key>/key.json           the key's fields (for people; the key is their SHA-256)
  <key>/views.npz          no augmentation: one table for every epoch
  <key>/epoch_<e>.npz      augmentation: epoch e's views

Each .npz holds `logits` `[N, C]` in the format's dtype (rows of the N % B examples that a
training epoch drops are 0: training batches are full, so they are never read) and `meta`
(a JSON string: key, epoch, format, shape, CRC32 of `logits` via
`checkpoint.tree_checksum`). A file that cannot be read, or whose meta or checksum does not
match, is reported and recomputed; files are written atomically (temporary file + rename),
so two runs filling one cache at once only write the same bytes twice.

Shared caches: a cache directory this process cannot write is read all the same when it
holds the tables a stage needs (a lab's pre-filled, read-only cache); only a missing table
needs write access, and the stage stops before training, naming it
(`checks.check_cache_files`). A table that cannot be written mid-run (disk full) is a
warning for a training stage (it keeps the logits it computed) and an error for the
precompute stage, whose whole job it is. The temporary files of a writer killed mid-write
are removed by the next run that opens the key (`workdir.remove_orphans`).

Formats (`teacher_cache.format`): "float32" stores the forward's exact output (a run with the
cache is bit-identical to one without, so its fingerprint does not change); "float16" halves
the disk and device memory (4 bytes -> 2 per logit; CIFAR-100: 10 MB per epoch of 50k
examples) at a relative rounding error <= 2^-11 per logit, and the run's fingerprint records
`teacher.cache_format` (see the measurement in experiments/PERF.md).
"""

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import methods
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import parallel, workdir

FORMATS = {"float32": np.float32, "float16": np.float16}
EXACT_FORMAT = "float32"  # the only format whose cached logits equal the live ones bit for bit
_VERSION = 1  # bump when the file layout or key fields change
_FETCH_EVERY = 16  # batches dispatched before one device-to-host fetch (bounds device memory)


class TeacherLogitsNotFinite(ValueError):
  """The teacher's logits are NaN or inf: the teacher's fault, never the student's."""

  def __init__(self, source: str, where: str):
    super().__init__(f"teacher {source!r} gives non-finite logits (NaN or inf) on {where}: "
                     "its weights are finite, but its outputs on this data are not usable; "
                     "check that it was trained on this data and its input scaling, or use "
                     "another teacher")


def enabled(config, teacher) -> bool:
  """Whether this stage reads its teacher from the cache: a directory is set, there is a
  teacher and the method uses it (teacher-free methods never touch the cache)."""
  return bool(config.teacher_cache.dir) and teacher is not None and methods.needs_teacher(
      config.method.name)


def teacher_fingerprint(config, teacher) -> dict | None:
  """The teacher's entry of the stage fingerprint: its own fingerprint, plus `cache_format`
  when the cache stores rounded logits (a float16 run is another result than a live one;
  a float32 cache is bit-identical, so the fingerprint stays that of the live run)."""
  if teacher is None:
    return None
  fingerprint = teacher.fingerprint
  if enabled(config, teacher) and config.teacher_cache.format != EXACT_FORMAT:
    fingerprint = dict(fingerprint, cache_format=config.teacher_cache.format)
  return fingerprint


def key_fields(config, teacher_fp: dict, info, num_examples: int, loader_seed: int) -> dict:
  """Everything the cached logits depend on (see the module docstring)."""
  d = config.dataset
  fields = dict(
      version=_VERSION, teacher=teacher_fp,
      dataset=dict(name=d.name, seed=d.seed, holdout=d.holdout, holdout_seed=d.holdout_seed,
                   options=dict(d.options) if d.get("options") else {}),
      augmentation=info.augmentation,
      order_seed=int(loader_seed) if info.augmentation else None,
      batch_size=int(config.batch_size), compute_dtype=config.compute_dtype,
      format=config.teacher_cache.format, num_examples=int(num_examples),
      num_classes=int(info.num_classes))
  if fields["format"] == EXACT_FORMAT:
    # Bit-identity with the live step also needs the same per-device shapes and kernels.
    fields.update(backend=jax.default_backend(), devices=jax.device_count())
  return fields


def cache_key(fields: dict) -> str:
  """16 hex digits of the SHA-256 of `fields` as canonical JSON."""
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def lookup(logits, batch: dict) -> jax.Array:
  """`teacher_fn` over a cached table: `logits` `[N, C]` (float16/float32) at `batch["index"]`
  `[B]` -> float32 `[B, C]`. Padding (index -1) reads row 0; the step masks it out."""
  return logits[jnp.maximum(batch["index"], 0)].astype(jnp.float32)


def compute_logits(forward, variables, batches: Iterator[dict], mesh, num_examples: int,
                   num_classes: int) -> np.ndarray:
  """float32 `[N, C]`: `forward(variables, batch)` of every real example of `batches`
  (each process's local rows, as the loader yields them), scattered to its `batch["index"]`;
  rows no batch holds stay 0. `forward` is jitted by the caller."""
  out = np.zeros((num_examples, num_classes), np.float32)
  pending = []

  def drain():
    for logits, index in parallel.to_host(pending):
      real = index >= 0
      out[index[real]] = logits[real]
    pending.clear()

  for batch in batches:
    batch = parallel.shard_batch({k: batch[k] for k in ("image", "index")}, mesh)
    pending.append(forward(variables, batch))  # dispatched asynchronously
    if len(pending) >= _FETCH_EVERY:
      drain()
  drain()
  return out


@dataclasses.dataclass
class TeacherCache:
  """One key's directory and how to fill it.

  `compute(epoch)` returns the live teacher's float32 logits `[N, C]` of that epoch's views
  (epoch None: the fixed views of data without augmentation).
  """
  directory: str
  fields: dict
  compute: Callable[[int | None], np.ndarray]
  computed: list = dataclasses.field(default_factory=list)  # epochs computed by this process
  read: list = dataclasses.field(default_factory=list)  # epochs read from files
  teacher_source: str = "the teacher"  # named in errors
  must_write: bool = False  # a table that cannot be written is an error (precompute)

  @property
  def key(self) -> str:
    return cache_key(self.fields)

  @property
  def per_epoch(self) -> bool:
    """Whether views (hence logits) change every epoch: with augmentation."""
    return self.fields["augmentation"] is not None

  @property
  def dtype(self):
    return FORMATS[self.fields["format"]]

  def path(self, epoch: int) -> str:
    name = f"epoch_{epoch:04d}.npz" if self.per_epoch else "views.npz"
    return os.path.join(self.directory, self.key, name)

  def _epoch(self, epoch: int) -> int | None:
    return epoch if self.per_epoch else None

  def load(self, epoch: int) -> np.ndarray | None:
    """The verified table of `epoch`, or None when it is missing; a file that is unreadable
    or does not match (key, epoch, format, shape, CRC32) is reported and gives None."""
    path = self.path(epoch)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path, allow_pickle=False) as f:
        logits, meta = f["logits"], json.loads(str(f["meta"]))
      expected = dict(key=self.key, epoch=self._epoch(epoch), format=self.fields["format"],
                      shape=[self.fields["num_examples"], self.fields["num_classes"]])
      wrong = [k for k, v in expected.items() if meta.get(k) != v]
      if logits.dtype != self.dtype or list(logits.shape) != expected["shape"]:
        wrong.append("array dtype/shape")
      if not wrong and ckpt_lib.tree_checksum(logits) != meta.get("crc32"):
        wrong.append("crc32")
      if wrong:
        raise ValueError(f"{', '.join(wrong)} do not match")
    except Exception as error:  # any unreadable or mismatched file: recompute, never use it
      print(f"kd_jax: warning: teacher cache file {path} is not usable "
            f"({type(error).__name__}: {str(error)[:200]}); recomputing it", flush=True)
      return None
    return logits

  def save(self, epoch: int, logits: np.ndarray) -> bool:
    """Writes `logits` (already in the format's dtype) atomically (primary process).

    A failed write (disk full, directory removed) is reported and returns False: this run
    goes on with the logits it holds, and a later run computes them again; with
    `must_write`, it raises `workdir.WriteFailed` on every process instead.
    """
    written, failure = True, None
    if parallel.is_primary():
      directory = os.path.join(self.directory, self.key)
      meta = dict(key=self.key, epoch=self._epoch(epoch), format=self.fields["format"],
                  shape=list(logits.shape), crc32=ckpt_lib.tree_checksum(logits))
      try:
        os.makedirs(directory, exist_ok=True)
        key_json = os.path.join(directory, "key.json")
        if not os.path.exists(key_json):
          workdir.write_text(key_json, json.dumps(self.fields, indent=2, sort_keys=True,
                                                  default=str))
        workdir.atomic_write(self.path(epoch), lambda tmp: np.savez(
            tmp, logits=logits, meta=np.array(json.dumps(meta))))
      except OSError as error:
        failure = workdir.write_failed(self.path(epoch), error)
        if not self.must_write:
          print(f"kd_jax: warning: teacher cache {self.path(epoch)} could not be written "
                f"({workdir.io_cause(error.errno, error.strerror or str(error))}); this run "
                "uses the logits it computed", flush=True)
        written = False
    parallel.sync(f"teacher_cache_{epoch}")
    if self.must_write and parallel.any_process(failure is not None):
      raise failure or workdir.WriteFailed(f"cannot write {self.path(epoch)}: see process 0")
    return written

  def table(self, epoch: int) -> np.ndarray:
    """Host `[N, C]` table of `epoch` in the format's dtype: read, or computed and written."""
    logits = self.load(epoch)
    # Every process must take part in a computation (it is a collective over the mesh).
    if parallel.any_process(logits is None):
      start = time.time()
      full = self.compute(self._epoch(epoch))
      if not np.all(np.isfinite(full)):
        where = f"epoch {epoch}'s views" if self.per_epoch else "the training examples"
        raise TeacherLogitsNotFinite(self.teacher_source, f"{where} (nothing was cached)")
      logits = full.astype(self.dtype)
      if not np.all(np.isfinite(logits)):
        raise ValueError(f"teacher logits of magnitude up to {np.abs(full).max():.3g} overflow "
                         f"teacher_cache.format={self.fields['format']!r}; use 'float32'")
      self.computed.append(self._epoch(epoch))
      if self.save(epoch, logits):
        print(f"kd_jax: teacher cache {self.path(epoch)} written ({time.time() - start:.1f} s "
              "of teacher forward passes)", flush=True)
    else:
      self.read.append(self._epoch(epoch))
    return logits

  def device_table(self, epoch: int, mesh) -> jax.Array:
    """`table(epoch)` replicated over `mesh`: the train state's `teacher_variables`."""
    return parallel.replicate(self.table(epoch), mesh)


def open_cache(config, teacher, forward, loader, mesh, info) -> TeacherCache:
  """The cache of this stage (`enabled` must hold).

  Args:
    config: the stage config (`teacher_cache.dir`, `.format`, `compute_dtype`, dataset...).
    teacher: the frozen `Teacher` (its fingerprint keys the cache).
    forward: the live `teacher_fn(variables, batch) -> float32 [B, C]` (compute dtype set).
    loader: the stage's training loader (its seed is the data-order seed).
    mesh: the device mesh.
    info: the dataset's `DatasetInfo`.
  """
  num_examples = len(loader.source)
  fields = key_fields(config, teacher.fingerprint, info, num_examples, loader.seed)
  jitted = jax.jit(lambda v, b: (forward(v, b), b["index"]),
                   out_shardings=parallel.replicated(mesh))
  static_loader = dataclasses.replace(loader, train=False)  # every example, fixed order

  def compute(epoch):
    # With augmentation: the epoch's own training batches (the views and the batch
    # composition the live step sees). Without: every example once, in batches of the
    # training batch size (the last one padded), so the numerics match the live step's.
    batches = loader.epoch(epoch) if epoch is not None else static_loader.epoch(0)
    return compute_logits(jitted, teacher.variables, batches, mesh, num_examples,
                          info.num_classes)

  cache = TeacherCache(os.path.abspath(config.teacher_cache.dir), fields, compute,
                       teacher_source=teacher.source)
  if parallel.is_primary():  # this run owns the key: a killed writer's leftovers go
    for path in workdir.remove_orphans(os.path.join(cache.directory, cache.key)):
      print(f"kd_jax: removed {path}, left by a writer that was killed", flush=True)
  return cache
