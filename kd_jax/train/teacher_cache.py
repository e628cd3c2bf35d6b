"""Teacher-output cache: the frozen teacher's outputs for every (epoch, example) of a run's
deterministic data order, computed once and read by every later run that shares them.

Why: a sweep of M methods x S seeds runs the same teacher forward pass on the same views M
times per seed. The loader makes every view a pure function of (data-order seed, epoch,
example index) (`kd_jax.data.loader`), so the teacher's outputs can be stored per (epoch,
index) and looked up: the teacher runs S times, not M x S (once per teacher, whatever the
seed, without augmentation).

How the step reads it: streamed with the batch. The loader reads each batch's rows by example
index from the epoch's table on disk (`RowReader`, the loader's `extra` fields, named
`cached_<field>`), and the train state's teacher slot turns them into the `[B, C]` teacher
logits every method reads (`teacher_fn`, `cache_formats.unpack`), so the device holds the
batch's rows only, never a table `[N, C]`. No method code knows whether the teacher ran.

Formats (`teacher_cache.format`, `kd_jax.train.cache_formats` has what each stores and the
target each method then gets): "float32" stores the forward's exact output (a run with the
cache is bit-identical to one without, so its fingerprint does not change); "float16" halves
it (relative rounding error <= 2^-11 per logit); "topk" keeps `teacher_cache.k` log-
probabilities, the label's and the log-sum-exp (48 bytes per example at k = 10 against
4,000 for ImageNet's 1000 float32 logits); "sampled" keeps k classes drawn from the teacher's
distribution at the method's temperature, anew every epoch (20 bytes at k = 10; an unbiased
target). A lossy
format enters the run's fingerprint (`teacher.cache_format`).

Key (`key_fields`, hashed by `cache_key`): the teacher's fingerprint (model + CRC32 of its
variables), the dataset (name, generation seed, options, holdout size and seed: they fix
which example index i names; not `data_dir`), the augmentation family, the data-order seed
(with augmentation, and for sampled draws: without augmentation a view depends on neither
the epoch nor the order), the global batch size and the compute dtype (the forward's
numerics), the format with its k and temperature (sparse formats), N and C; for the exact float32
format also the backend and device count. A changed field is another key, hence another
directory: never a silent reuse.

Layout under `teacher_cache.dir` (each table a `kd_jax.train.row_store` table: chunked,
CRC32C per chunk, written atomically, its rows in the order the teacher computed them):

  <key>/key.json           the key's fields (for people; the key is their SHA-256)
  <key>/views/             no augmentation: one table for every epoch
  <key>/epoch_<e>/         augmentation: epoch e's views; sampled: epoch e's draws

A table whose meta does not match its key, epoch and format, or whose chunks fail their
checksums, is reported, removed and recomputed; two runs filling one cache at once only
write the same rows twice.

Shared caches: a cache directory this process cannot write is read all the same when it
holds the tables a stage needs (a lab's pre-filled, read-only cache); only a missing table
needs write access, and the stage stops before training, naming it
(`checks.check_cache_files`). A table that cannot be written mid-run (disk full) is a
warning for a training stage (it keeps the rows it computed, in memory) and an error for the
precompute stage, whose whole job it is. The temporary files and directories of a writer
killed mid-write are removed by the next run that opens the key (`workdir.remove_orphans`).
"""
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import _files, methods
from kd_jax.train import cache_formats, parallel, row_store, workdir

FORMATS = cache_formats.FORMATS
EXACT_FORMAT = "float32"  # the only format whose cached logits equal the live ones bit for bit
FIELD_PREFIX = "cached_"  # the batch fields of the cached rows: cached_logits, cached_values...
_VERSION = 4  # bump when the file layout or key fields change
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


def format_temperature(config) -> float | None:
  """The temperature a sparse format is written at (`topk`'s log-probabilities, `sampled`'s
  draws): the one the method reads its teacher at (`methods.teacher_temperature`); None for
  the dense formats."""
  if config.teacher_cache.format not in cache_formats.SPARSE_FORMATS:
    return None
  return float(methods.teacher_temperature(config.method))


def format_fields(config) -> dict:
  """The cache settings a run's result depends on: the format, and a sparse format's k and
  temperature."""
  fmt = config.teacher_cache.format
  fields = dict(format=fmt)
  if fmt in cache_formats.SPARSE_FORMATS:
    fields["k"] = int(config.teacher_cache.k)
    fields["temperature"] = format_temperature(config)
  return fields


def teacher_fingerprint(config, teacher) -> dict | None:
  """The teacher's entry of the stage fingerprint: its own fingerprint, plus the cache's
  format (with k) when it stores anything but the exact logits (a float16 or top-k run is
  another result than a live one; a float32 cache is bit-identical, so the fingerprint stays
  that of the live run)."""
  if teacher is None:
    return None
  fingerprint = teacher.fingerprint
  if enabled(config, teacher) and config.teacher_cache.format != EXACT_FORMAT:
    fields = format_fields(config)
    fingerprint = dict(fingerprint, cache_format=fields.pop("format"),
                       **{f"cache_{key}": value for key, value in fields.items()})
  return fingerprint


def key_fields(config, teacher_fp: dict, info, num_examples: int, loader_seed: int) -> dict:
  """Everything the cached rows depend on (see the module docstring)."""
  d = config.dataset
  fmt = format_fields(config)
  seeded = info.augmentation is not None or fmt["format"] == "sampled"
  fields = dict(
      version=_VERSION, teacher=teacher_fp,
      dataset=dict(name=d.name, seed=d.seed, holdout=d.holdout, holdout_seed=d.holdout_seed,
                   options=dict(d.options) if d.get("options") else {}),
      augmentation=info.augmentation, order_seed=int(loader_seed) if seeded else None,
      batch_size=int(config.batch_size), compute_dtype=config.compute_dtype,
      precision=config.get("precision"), **fmt, num_examples=int(num_examples),
      num_classes=int(info.num_classes))
  if fields["format"] == EXACT_FORMAT:
    # Bit-identity with the live step also needs the same per-device shapes and kernels.
    fields.update(backend=jax.default_backend(), devices=jax.device_count())
  return fields


def cache_key(fields: dict) -> str:
  """16 hex digits of the SHA-256 of `fields` as canonical JSON."""
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def teacher_fn(fmt: str, num_classes: int, temperature: float | None):
  """The train state's `teacher_fn` for cached rows: the batch's `cached_*` fields (and its
  labels) -> float32 teacher logits `[B, C]` (`cache_formats.unpack`). Padding rows read
  zeros; the step masks them out."""
  return functools.partial(_unpack_batch, fmt, num_classes, temperature or 1.0)


def _unpack_batch(fmt, num_classes, temperature, variables, batch):
  del variables  # the rows travel with the batch
  rows = {key[len(FIELD_PREFIX):]: value for key, value in batch.items()
          if key.startswith(FIELD_PREFIX)}
  return cache_formats.unpack(fmt, rows, batch["label"], num_classes, temperature=temperature)


def example_keys(seed: int, epoch, index: jax.Array) -> jax.Array:
  """One PRNG key per example for the sampled draws: a function of (data-order seed, epoch,
  example index) only, so a rerun draws the same classes whatever the batch."""
  base = jax.random.fold_in(jax.random.key(seed), epoch)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.maximum(index, 0))


@dataclasses.dataclass
class RowReader:
  """The loader's `extra` fields: the rows of a batch's examples from this process's table of
  the epoch (`TeacherCache.prepare` puts it in `tables` first). Pickled into loader worker
  processes with the tables (row_store tables pickle without their open arrays)."""
  tables: dict
  per_epoch: bool

  def __call__(self, epoch: int, indices: np.ndarray) -> dict:
    table = self.tables[epoch if self.per_epoch else None]
    return {FIELD_PREFIX + name: value for name, value in table.rows(indices).items()}


@dataclasses.dataclass
class TeacherCache:
  """One key's directory and how to fill it.

  `compute(epoch)` returns the packed rows `{field: [R, ...]}` and example indices `[R]` of
  that epoch's views (epoch None: the fixed views of data without augmentation), from the
  live teacher.
  """
  directory: str
  fields: dict
  compute: Callable[[int | None], tuple[dict, np.ndarray]]
  computed: list = dataclasses.field(default_factory=list)  # epochs computed by this process
  read: list = dataclasses.field(default_factory=list)  # epochs read from files
  teacher_source: str = "the teacher"  # named in errors
  must_write: bool = False  # a table that cannot be written is an error (precompute)
  tables: dict = dataclasses.field(default_factory=dict)  # the prepared table (RowReader's)

  @property
  def key(self) -> str:
    return cache_key(self.fields)

  @property
  def per_epoch(self) -> bool:
    """Whether the rows change every epoch: with augmentation (new views), and for sampled
    draws (new classes drawn every epoch, so over the epochs the noise of k draws averages
    out instead of fixing one noisy target per example)."""
    return self.fields["augmentation"] is not None or self.fields["format"] == "sampled"

  @property
  def row_fields(self) -> dict:
    return cache_formats.row_spec(self.fields["format"], self.fields["num_classes"],
                                  self.fields.get("k", 0))

  def path(self, epoch: int) -> str:
    name = f"epoch_{epoch:04d}" if self.per_epoch else "views"
    return os.path.join(self.directory, self.key, name)

  def _epoch(self, epoch: int) -> int | None:
    return epoch if self.per_epoch else None

  def _expected_meta(self, epoch: int) -> dict:
    return dict(key=self.key, epoch=self._epoch(epoch), format=self.fields["format"])

  def load(self, epoch: int) -> row_store.Table | None:
    """The verified table of `epoch`, or None when it is missing; a table that does not match
    (key, epoch, format, fields) or fails a chunk's checksum is reported, removed (when the
    directory can be written) and gives None."""
    path = self.path(epoch)
    try:
      table = row_store.Table.open(path, self._expected_meta(epoch),
                                   self.fields["num_examples"])
      if table is None:
        return None
      stored = {name: (tuple(f["shape"]), f["dtype"]) for name, f in table.meta["fields"].items()
                if name != row_store.INDEX}
      if stored != {name: (shape, dtype.name) for name, (shape, dtype) in
                    self.row_fields.items()}:
        raise ValueError("its fields do not match the format's")
      table.verify()
    except Exception as error:  # any unreadable or mismatched table: recompute, never use it
      print(f"kd_jax: warning: teacher cache table {path} is not usable "
            f"({type(error).__name__}: {str(error)[:200]}); recomputing it", flush=True)
      if parallel.is_primary():
        shutil.rmtree(path, ignore_errors=True)
      return None
    return table

  def save(self, epoch: int, rows: dict, index: np.ndarray):
    """Writes the table of `epoch` (primary process) and returns it, opened; a table that
    cannot be written (disk full, directory removed) is reported and served from memory: a
    later run computes it again. With `must_write` that raises `workdir.WriteFailed` on every
    process instead."""
    failure = None
    if parallel.is_primary():
      path = self.path(epoch)
      try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        key_json = os.path.join(self.directory, self.key, "key.json")
        if not os.path.exists(key_json):
          _files.write_text(key_json, json.dumps(self.fields, indent=2, sort_keys=True,
                                                  default=str))
        with row_store.TableWriter(path, self.row_fields, len(index),
                                   self._expected_meta(epoch)) as writer:
          writer.append(rows, index)
          writer.commit()
      except OSError as error:
        failure = workdir.write_failed(path, error)
        if not self.must_write:
          print(f"kd_jax: warning: teacher cache {path} could not be written "
                f"({workdir.io_cause(error.errno, error.strerror or str(error))}); this run "
                "uses the rows it computed", flush=True)
    parallel.sync(f"teacher_cache_{epoch}")
    if self.must_write and parallel.any_process(failure is not None):
      raise failure or workdir.WriteFailed(f"cannot write {self.path(epoch)}: see process 0")
    table = None if failure else row_store.Table.open(
        self.path(epoch), self._expected_meta(epoch), self.fields["num_examples"])
    return table or row_store.MemoryTable(rows, index, self.fields["num_examples"])

  def prepare(self, epoch: int) -> None:
    """Makes the table of `epoch` the one `RowReader` reads: read and verified, or computed
    and written. Tables of other epochs are let go."""
    table = self.load(epoch)
    # Every process must take part in a computation (it is a collective over the mesh).
    if parallel.any_process(table is None):
      start = time.time()
      rows, index = self.compute(self._epoch(epoch))
      self.computed.append(self._epoch(epoch))
      table = self.save(epoch, rows, index)
      if isinstance(table, row_store.Table):
        print(f"kd_jax: teacher cache {self.path(epoch)} written ({time.time() - start:.1f} s "
              "of teacher forward passes)", flush=True)
    else:
      self.read.append(self._epoch(epoch))
    self.tables.clear()
    self.tables[self._epoch(epoch)] = table

  def reader(self) -> RowReader:
    return RowReader(self.tables, self.per_epoch)


def compute_rows(pack, variables, batches: Iterator[dict], mesh, epoch: int) -> tuple:
  """`(rows, index, problem)`: `pack(variables, batch, epoch)` of every real example of
  `batches` (each process's local rows, as the loader yields them), in the order they come.
  `pack` is jitted by the caller and returns `(rows, index, logits_finite, rows_finite)`;
  `problem` is None, "logits" (the teacher's are not finite) or "rows" (the format
  overflows), from the first bad batch on, where the computation stops."""
  parts, pending = [], []

  def drain():
    for rows, index, logits_finite, rows_finite in parallel.to_host(pending):
      if not logits_finite or not rows_finite:
        return "logits" if not logits_finite else "rows"
      real = index >= 0
      parts.append(({name: value[real] for name, value in rows.items()}, index[real]))
    pending.clear()
    return None

  for batch in batches:
    batch = parallel.shard_batch({k: batch[k] for k in ("image", "index", "label")}, mesh)
    pending.append(pack(variables, batch, epoch))  # dispatched asynchronously
    if len(pending) >= _FETCH_EVERY and (problem := drain()):
      return None, None, problem
  if problem := drain():
    return None, None, problem
  rows = {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]}
  return rows, np.concatenate([p[1] for p in parts]), None


def open_cache(config, teacher, forward, loader, mesh, info) -> TeacherCache:
  """The cache of this stage (`enabled` must hold).

  Args:
    config: the stage config (`teacher_cache.dir`, `.format`, `.k`, `compute_dtype`, ...).
    teacher: the frozen `Teacher` (its fingerprint keys the cache).
    forward: the live `teacher_fn(variables, batch) -> float32 [B, C]` (compute dtype set).
    loader: the stage's training loader (its seed is the data-order seed).
    mesh: the device mesh.
    info: the dataset's `DatasetInfo`.
  """
  num_examples = len(loader.source)
  fields = key_fields(config, teacher.fingerprint, info, num_examples, loader.seed)
  fmt, k = fields["format"], fields.get("k", 0)
  temperature = fields.get("temperature", 1.0)

  def pack(variables, batch, epoch):
    logits = forward(variables, batch)
    keys = example_keys(loader.seed, epoch, batch["index"]) if fmt == "sampled" else None
    rows = cache_formats.pack(fmt, logits, batch["label"], k=k, temperature=temperature,
                              keys=keys)
    real = (batch["index"] >= 0)[:, None]
    finite = lambda x: jnp.all(jnp.isfinite(jnp.where(real, x.reshape(len(real), -1), 0.0)))
    rows_finite = finite(rows["logits"]) if "logits" in rows else jnp.array(True)
    return rows, batch["index"], finite(logits), rows_finite

  jitted = jax.jit(pack, out_shardings=parallel.replicated(mesh))
  static_loader = dataclasses.replace(loader, train=False, extra=None)  # every example once
  plain_loader = dataclasses.replace(loader, extra=None)

  def compute(epoch):
    # With augmentation: the epoch's own training batches (the views and the batch
    # composition the live step sees). Without: every example once, in batches of the
    # training batch size (the last one padded), so the numerics match the live step's;
    # sampled draws still take the epoch's keys.
    augmented = info.augmentation is not None
    batches = plain_loader.epoch(epoch) if augmented else static_loader.epoch(0)
    rows, index, problem = compute_rows(jitted, teacher.variables, batches, mesh, epoch or 0)
    where = f"epoch {epoch}'s views" if augmented else "the training examples"
    if problem == "logits":
      raise TeacherLogitsNotFinite(teacher.source, f"{where} (nothing was cached)")
    if problem == "rows":
      raise ValueError(f"teacher logits on {where} overflow teacher_cache.format={fmt!r}; "
                       "use 'float32'")
    return rows, index

  cache = TeacherCache(os.path.abspath(config.teacher_cache.dir), fields, compute,
                       teacher_source=teacher.source)
  if parallel.is_primary():  # this run owns the key: a killed writer's leftovers go
    for path in _files.remove_orphans(os.path.join(cache.directory, cache.key)):
      print(f"kd_jax: removed {path}, left by a writer that was killed", flush=True)
  return cache
