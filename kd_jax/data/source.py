"""Random-access data sources: the one protocol every dataset of `kd_jax.data` implements.

A source is a sequence of examples addressed by integer index:

  len(source)                -> N
  source.info                -> DatasetInfo
  source.labels              -> int32 [N], every label (cheap: no image decoding)
  source.get_batch(indices)  -> {"image": [n, *input_shape], "label": int32 [n],
                                 "superclass": int32 [n] (only when info.num_superclasses)}

Sources hold no randomness and no augmentation: shuffling, sharding and augmentation are the
loader's job (`kd_jax.data.loader`), so one source serves training, evaluation and scoring.
"""

import dataclasses
from typing import Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    name: registered name, e.g. "cifar100".
    num_classes: number of classes C; labels lie in [0, C).
    input_shape: shape of one example as the loader yields it, e.g. (32, 32, 3), (40, 1),
      (8, 8, 1), (D,).
    num_superclasses: number of coarse classes (CIFAR-100: 20, synthetic: G) or None.
    augmentation: the augmentation family, "cifar", "imagenet" or None (offline data).
    mean, std: per-channel statistics of the [0, 1]-scaled pixels that the loader normalises
      uint8 images with; None for data already stored as normalised float32.
  """
  name: str
  num_classes: int
  input_shape: tuple[int, ...]
  num_superclasses: int | None
  augmentation: str | None
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None


class Source(Protocol):
  info: DatasetInfo

  def __len__(self) -> int:
    ...

  @property
  def labels(self) -> np.ndarray:
    ...

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


def check_indices(indices, size: int) -> np.ndarray:
  """Returns `indices` as int64 [n]; raises IndexError when one is outside [0, size)."""
  indices = np.asarray(indices, dtype=np.int64).reshape(-1)
  if indices.size and (indices.min() < 0 or indices.max() >= size):
    raise IndexError(f"indices must lie in [0, {size}); got min {indices.min()}, "
                     f"max {indices.max()}")
  return indices


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
  """A source held in memory: `images [N, ...]`, `labels int32 [N]`, optional superclasses."""
  info: DatasetInfo
  images: np.ndarray
  label_array: np.ndarray
  superclass_array: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.images)
    if len(self.label_array) != n or (self.superclass_array is not None
                                      and len(self.superclass_array) != n):
      raise ValueError(f"images ({n}), labels ({len(self.label_array)}) and superclasses "
                       "must have the same length")

  def __len__(self) -> int:
    return len(self.images)

  @property
  def labels(self) -> np.ndarray:
    return self.label_array

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    indices = check_indices(indices, len(self))
    batch = {"image": self.images[indices], "label": self.label_array[indices]}
    if self.superclass_array is not None:
      batch["superclass"] = self.superclass_array[indices]
    return batch


@dataclasses.dataclass(frozen=True, eq=False)
class SubsetSource:
  """A view of `parent` restricted to `parent_indices` (no copy of the examples)."""
  parent: Source
  parent_indices: np.ndarray

  @property
  def info(self) -> DatasetInfo:
    return self.parent.info

  def __len__(self) -> int:
    return len(self.parent_indices)

  @property
  def labels(self) -> np.ndarray:
    return self.parent.labels[self.parent_indices]

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    indices = check_indices(indices, len(self))
    return self.parent.get_batch(self.parent_indices[indices])


def subset(source: Source, indices) -> Source:
  """A view of `source` with the examples `indices` (int [n]); index i of the view is
  `source[indices[i]]`. Nested subsets collapse to one view of the original source."""
  indices = check_indices(indices, len(source))
  if isinstance(source, SubsetSource):
    return SubsetSource(source.parent, source.parent_indices[indices])
  return SubsetSource(source, indices)


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits range(len(labels)) into (rest, held_out) with len(held_out) == size.

  Each class gets a share of `held_out` proportional to its frequency (largest remainders
  round the total to exactly `size`), chosen uniformly at random with `seed`. Both index
  arrays are sorted, so a view over them keeps the source's order.
  """
  labels = np.asarray(labels)
  n = len(labels)
  if not 0 <= size <= n:
    raise ValueError(f"size={size} must lie in [0, {n}] (the number of examples)")
  rng = np.random.default_rng(seed)
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  exact = counts * (size / n)
  quota = np.floor(exact).astype(np.int64)
  remainder_order = np.argsort(-(exact - quota), kind="stable")
  quota[remainder_order[:size - quota.sum()]] += 1
  held_out = []
  for c in range(len(classes)):
    members = np.flatnonzero(inverse == c)
    held_out.append(rng.choice(members, size=quota[c], replace=False))
  held_out = np.sort(np.concatenate(held_out)) if held_out else np.zeros(0, np.int64)
  rest = np.setdiff1d(np.arange(n), held_out, assume_unique=True)
  return rest, held_out


def split_holdout(source: Source, size: int, seed: int) -> tuple[Source, Source | None]:
  """Carves a seeded, class-stratified held-out slice of `size` examples from `source`.

  Returns (train_view, held_out_view); size 0 returns (source, None).
  """
  if size == 0:
    return source, None
  rest, held_out = stratified_split(source.labels, size, seed)
  return subset(source, rest), subset(source, held_out)
