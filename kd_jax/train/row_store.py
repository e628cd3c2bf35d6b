"""Tables of per-example rows on disk: chunked, checksummed per chunk, written atomically and
read by example index, a batch at a time (the teacher-output cache's storage). `MemoryTable` serves the same rows from
memory, for a table that could not be written.

A table is a directory:

  <table>/<field>/     a zarr v3 array `[R, ...]` per field of the row, in chunks of about
                       `chunk_bytes`, each with a CRC32C (TensorStore's zarr3 driver and its
                       crc32c codec: reading a chunk that does not match raises)
  <table>/index/       int32 `[R]`: the example index row r holds. Rows are stored in the
                       order they were written (the order the teacher computed them: an
                       epoch's training order), so a training epoch reads the file in order
  <table>/meta.json    written last: the fields, the row count and the caller's `meta`

`TableWriter` writes to a temporary directory beside it (`kd_jax._files.temporary_path`: the
next run removes a killed writer's, `remove_orphans`) and renames it to `<table>` when
complete, so a table directory holds a whole table or does not exist, and two writers of the
same table only write the same rows twice. `Table.open` checks `meta.json` against what the caller expects,
`Table.verify` reads every chunk once (a flipped bit anywhere is found before training uses
the table), and `Table.rows(indices)` returns the rows of a batch: the reader holds the
batch's rows, never the table. A `Table` pickles without its open arrays, so loader worker
processes open their own.
"""

import dataclasses
import json
import os
import shutil

import numpy as np

from kd_jax import _files

META = "meta.json"
INDEX = "index"


def _spec(path: str, shape=None, dtype=None, chunk_rows: int = 0) -> dict:
  spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}
  if shape is None:
    return dict(spec, open=True)
  chunk = [chunk_rows, *shape[1:]]
  metadata = {"shape": list(shape), "data_type": np.dtype(dtype).name,
              "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
              "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                         {"name": "crc32c"}]}
  return dict(spec, metadata=metadata, create=True, delete_existing=True)


# Chunks a reader keeps in memory: a table read in another order than it was written (data
# without augmentation: one table, a new order every epoch) reads each chunk once per epoch
# instead of once per row.
READ_CACHE_BYTES = 256 << 20


def _open(spec: dict, cache_bytes: int = 0):
  import tensorstore as ts  # pylint: disable=g-import-not-at-top  (with orbax: the train extra)
  context = ts.Context({"cache_pool": {"total_bytes_limit": cache_bytes}})
  return ts.open(spec, context=context).result()


class TableWriter:
  """Writes `num_rows` rows of `fields` (name -> (shape per row, dtype)) in order.

  `append(rows, index)` takes the next rows (a dict of `[b, ...]` arrays) and the example
  index of each; `commit()` makes the table visible. Use as a context manager: leaving the
  block by an exception removes the temporary directory.
  """

  def __init__(self, path: str, fields: dict, num_rows: int, meta: dict,
               chunk_bytes: int = 1 << 20):
    self.path, self.num_rows, self.meta = path, int(num_rows), meta
    self.fields = {**{name: (tuple(shape), np.dtype(dtype))
                      for name, (shape, dtype) in fields.items()},
                   INDEX: ((), np.dtype(np.int32))}
    row_bytes = max(int(np.prod(s)) * d.itemsize for s, d in self.fields.values())
    self.chunk_rows = int(np.clip(chunk_bytes // row_bytes, 16, max(16, self.num_rows)))
    self.tmp = _files.temporary_path(path)
    shutil.rmtree(self.tmp, ignore_errors=True)
    os.makedirs(self.tmp)
    self.arrays = {name: _open(_spec(os.path.join(self.tmp, name), (self.num_rows, *shape),
                                     dtype, self.chunk_rows))
                   for name, (shape, dtype) in self.fields.items()}
    self.written = 0
    self.pending: list[dict] = []

  def append(self, rows: dict, index: np.ndarray) -> None:
    part = {name: np.asarray(rows[name], dtype) for name, (_, dtype) in self.fields.items()
            if name != INDEX}
    part[INDEX] = np.asarray(index, np.int32)
    self.pending.append(part)
    if sum(len(p[INDEX]) for p in self.pending) >= self.chunk_rows:
      self._flush()

  def _flush(self) -> None:
    if not self.pending:
      return
    block = {name: np.concatenate([p[name] for p in self.pending]) for name in self.fields}
    self.pending = []
    stop = self.written + len(block[INDEX])
    if stop > self.num_rows:
      raise ValueError(f"{self.path}: more than the {self.num_rows} rows declared")
    futures = [self.arrays[name][self.written:stop].write(block[name]) for name in self.fields]
    for future in futures:
      future.result()
    self.written = stop

  def commit(self) -> None:
    self._flush()
    if self.written != self.num_rows:
      raise ValueError(f"{self.path}: {self.written} rows written, {self.num_rows} declared")
    fields = {name: dict(shape=list(shape), dtype=dtype.name)
              for name, (shape, dtype) in self.fields.items()}
    with open(os.path.join(self.tmp, META), "w") as f:
      json.dump(dict(self.meta, fields=fields, num_rows=self.num_rows,
                     chunk_rows=self.chunk_rows), f, sort_keys=True)
    try:
      os.rename(self.tmp, self.path)
    except OSError:
      if not os.path.exists(os.path.join(self.path, META)):
        raise
      shutil.rmtree(self.tmp)  # another writer committed the same table first

  def __enter__(self):
    return self

  def __exit__(self, kind, *_):
    if kind is not None:
      shutil.rmtree(self.tmp, ignore_errors=True)


@dataclasses.dataclass
class Table:
  """A committed table, read by example index (see the module docstring)."""
  path: str
  meta: dict
  num_examples: int
  _arrays: dict | None = None
  _position: np.ndarray | None = None

  @classmethod
  def open(cls, path: str, expected: dict, num_examples: int) -> "Table | None":
    """The table at `path` when its meta holds every `expected` item; None when there is no
    table. ValueError naming what differs, or why it cannot be read."""
    meta_path = os.path.join(path, META)
    if not os.path.exists(meta_path):
      return None
    with open(meta_path) as f:
      meta = json.load(f)
    wrong = sorted(key for key, value in expected.items() if meta.get(key) != value)
    if wrong:
      raise ValueError(f"{', '.join(wrong)} do not match")
    return cls(path, meta, int(num_examples))

  def __getstate__(self):
    return dict(self.__dict__, _arrays=None, _position=None)

  def _open_arrays(self) -> dict:
    if self._arrays is None:
      self._arrays = {name: _open(_spec(os.path.join(self.path, name)), READ_CACHE_BYTES)
                      for name in self.meta["fields"]}
    return self._arrays

  def index(self) -> np.ndarray:
    """int32 `[R]`: the example index of each row, in the order the rows were written."""
    return self._open_arrays()[INDEX].read().result()

  @property
  def position(self) -> np.ndarray:
    """int64 `[N]`: the row of each example index, -1 where no row holds it."""
    if self._position is None:
      index = self.index()
      position = np.full(self.num_examples, -1, np.int64)
      position[index] = np.arange(len(index))
      self._position = position
    return self._position

  def verify(self) -> None:
    """Reads every chunk of every field; raises ValueError on a checksum mismatch."""
    arrays = self._open_arrays()
    chunk, num_rows = int(self.meta["chunk_rows"]), int(self.meta["num_rows"])
    try:
      for start in range(0, num_rows, chunk):
        for array in arrays.values():
          array[start:min(start + chunk, num_rows)].read().result()
    except ValueError as error:  # TensorStore's DATA_LOSS on a CRC32C mismatch
      raise ValueError(f"a chunk does not match its checksum ({str(error)[:200]})") from None

  def rows(self, indices: np.ndarray) -> dict:
    """The rows of example `indices` (int `[b]`; -1 = padding, given zeros) per field."""
    indices = np.asarray(indices, np.int64)
    positions = self.position[np.maximum(indices, 0)] if len(indices) else indices
    valid = (indices >= 0) & (positions >= 0)
    if not np.all(valid | (indices < 0)):
      missing = indices[(indices >= 0) & (positions < 0)][:5]
      raise ValueError(f"{self.path} holds no row for example indices {missing.tolist()}")
    wanted = positions[valid]
    out = {}
    for name, array in self._open_arrays().items():
      if name == INDEX:
        continue
      if len(wanted) and wanted[-1] - wanted[0] + 1 == len(wanted) and np.all(
          np.diff(wanted) == 1):
        values = array[int(wanted[0]):int(wanted[-1]) + 1].read().result()
      else:
        values = array.oindex[wanted].read().result() if len(wanted) else None
      field = self.meta["fields"][name]
      full = np.zeros((len(indices), *field["shape"]), field["dtype"])
      if values is not None:
        full[valid] = values
      out[name] = full
    return out


@dataclasses.dataclass
class MemoryTable:
  """The rows `{field: [R, ...]}` of examples `index [R]`, held in memory: `Table`'s reads."""
  fields: dict
  index: np.ndarray
  num_examples: int

  def __post_init__(self):
    self.position = np.full(self.num_examples, -1, np.int64)
    self.position[self.index] = np.arange(len(self.index))

  def rows(self, indices: np.ndarray) -> dict:
    indices = np.asarray(indices, np.int64)
    rows = self.position[np.maximum(indices, 0)]
    if np.any((indices >= 0) & (rows < 0)):
      raise ValueError("no row for some example indices")
    return {name: np.where((indices >= 0).reshape(-1, *[1] * (value.ndim - 1)),
                           value[np.maximum(rows, 0)], 0).astype(value.dtype)
            for name, value in self.fields.items()}
