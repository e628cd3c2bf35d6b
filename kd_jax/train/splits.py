"""The three splits a run uses: train (minus the held-out slice), validation, test.

`record` is what a run writes in its summary about the data it trained on (the dataset's
identity and a CRC32 of its training examples), so a student can refuse a teacher of other
data, or one that trained on the student's validation examples (`kd_jax.train.checks`).
"""

import dataclasses
import json
import zlib

import numpy as np

from kd_jax import data as data_lib
from kd_jax.data import source as source_lib


@dataclasses.dataclass(frozen=True)
class Data:
  """Train (minus the held-out slice), validation (None without holdout) and test sources.

  The validation slice is carved from the train split with `dataset.holdout_seed`, the same
  for every run seed and every method of a comparison; the test split selects nothing.
  """
  train: data_lib.Source
  val: data_lib.Source | None
  test: data_lib.Source

  @property
  def info(self) -> data_lib.DatasetInfo:
    return self.test.info


def load_data(config) -> Data:
  """Loads train/test of `config.dataset` and carves `dataset.holdout` validation examples.

  Raises ValueError (one line) for an unknown dataset or option, data that is not prepared,
  or a holdout outside [0, number of training examples).
  """
  d = config.dataset
  options = dict(d.options) if d.get("options") else {}
  try:
    train = data_lib.load(d.name, "train", data_dir=d.data_dir, seed=d.seed, **options)
    test = data_lib.load(d.name, "test", data_dir=d.data_dir, seed=d.seed, **options)
  except (ValueError, TypeError, FileNotFoundError) as error:
    message = " ".join(str(error).split())
    raise ValueError(f"dataset.name={d.name!r} (options {options}): {message}") from None
  if not isinstance(d.holdout, int) or not 0 <= d.holdout < len(train):
    raise ValueError(f"dataset.holdout={d.holdout!r} is not allowed: must be an integer in "
                     f"[0, {len(train)}) (the training examples)")
  train, val = data_lib.split_holdout(train, int(d.holdout), int(d.holdout_seed))
  return Data(train, val, test)


def identity(dataset) -> dict:
  """What names a dataset's examples: name, generation seed and options (not `data_dir`),
  plus the held-out slice (size and seed), as JSON values."""
  options = dict(dataset.options) if dataset.get("options") else {}
  return json.loads(json.dumps(dict(
      name=dataset.name, seed=dataset.seed, options=options, holdout=dataset.holdout,
      holdout_seed=dataset.holdout_seed), default=str))


def positions(data: Data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels of the whole train split, positions of the training examples in it, positions
  of the validation examples), whatever views the loader's sources are."""
  if data.val is None:
    return np.asarray(data.train.labels), np.arange(len(data.train)), np.zeros(0, np.int64)
  parent = data.train.parent
  whole = np.sort(np.concatenate([data.train.parent_indices, data.val.parent_indices]))
  return (np.asarray(parent.labels)[whole], np.searchsorted(whole, data.train.parent_indices),
          np.searchsorted(whole, data.val.parent_indices))


def training_positions(labels: np.ndarray, holdout: int, holdout_seed: int) -> np.ndarray:
  """The training examples' positions in the whole train split for a held-out slice."""
  if not holdout:
    return np.arange(len(labels))
  return source_lib.stratified_split(labels, int(holdout), int(holdout_seed))[0]


def examples_crc32(labels: np.ndarray, train_positions: np.ndarray) -> str:
  """CRC32 (hex) of which examples of the train split trained a model, and their labels."""
  crc = zlib.crc32(np.ascontiguousarray(train_positions, np.int64).tobytes())
  return f"{zlib.crc32(np.ascontiguousarray(labels, np.int64).tobytes(), crc):08x}"


def record(dataset, data: Data) -> dict:
  """summary.json's `data`: `identity` plus `train_crc32` (`examples_crc32`)."""
  labels, train, _ = positions(data)
  return dict(identity(dataset), train_crc32=examples_crc32(labels, train))
