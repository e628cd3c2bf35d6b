"""Offline datasets that need no download: scikit-learn's `digits` and MNIST-1D.

Both are small enough to live in memory as float32 arrays (`ArraySource`), so the loader
yields them as stored (no augmentation, no further normalisation).
"""

import functools
import random

import numpy as np

from kd_jax.data.source import ArraySource, DatasetInfo, stratified_split


def _check_split(split: str) -> None:
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r} is not supported; use 'train' or 'test'")


def _check_positive(name: str, value: int) -> None:
  if not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a positive integer")


# --- digits ------------------------------------------------------------------------------

DIGITS_TEST_SIZE = 360  # 1797 examples -> 1437 train / 360 test (20%).


def load_digits(split: str, *, seed: int = 0, test_size: int = DIGITS_TEST_SIZE,
                standardize: bool = False) -> ArraySource:
  """scikit-learn's 8x8 handwritten digits (1797 examples, 10 classes).

  Images are float32 [N, 8, 8, 1] scaled from the original 0..16 grey levels to [0, 1]
  (or, with `standardize`, shifted and scaled by the training split's mean and std).
  The train/test split is stratified by class and seeded by `seed`.
  """
  _check_split(split)
  from sklearn.datasets import load_digits as sklearn_digits  # pylint: disable=g-import-not-at-top
  bunch = sklearn_digits()
  images = (bunch.images / 16.0).astype(np.float32)[..., None]
  labels = bunch.target.astype(np.int32)
  if not 0 < test_size < len(labels):
    raise ValueError(f"test_size={test_size} must lie in (0, {len(labels)})")
  train_idx, test_idx = stratified_split(labels, test_size, seed)
  if standardize:
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
  idx = train_idx if split == "train" else test_idx
  info = DatasetInfo("digits", num_classes=10, input_shape=(8, 8, 1), num_superclasses=None,
                     augmentation=None)
  return ArraySource(info, np.ascontiguousarray(images[idx]), labels[idx])


# --- MNIST-1D ----------------------------------------------------------------------------

MNIST1D_NUM_TRAIN = 4000
MNIST1D_NUM_TEST = 1000
MNIST1D_SEED = 42  # mnist1d.data.get_dataset_args()'s seed: the published dataset.


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
  """All `num_samples` MNIST-1D examples in the package's (shuffled) order: x [N, 40], y [N].

  Generated locally by `mnist1d.data.make_dataset` with its default arguments apart from
  `num_samples` and `seed`; nothing is downloaded. `make_dataset` reseeds the global
  `random` and `numpy.random` generators, so their states are restored afterwards.
  """
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
  args = get_dataset_args()
  args.num_samples = num_samples
  args.seed = data_seed
  numpy_state, python_state = np.random.get_state(), random.getstate()
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(numpy_state)
    random.setstate(python_state)
  x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
  y = np.concatenate([data["y"], data["y_test"]]).astype(np.int32)
  x.flags.writeable = False
  y.flags.writeable = False
  return x, y


def load_mnist1d(split: str, *, num_train: int = MNIST1D_NUM_TRAIN,
                 num_test: int = MNIST1D_NUM_TEST, data_seed: int = MNIST1D_SEED,
                 seed: int = 0) -> ArraySource:
  """MNIST-1D (Greydanus 2020): 10 classes of 1-D signals, examples float32 [N, 40, 1].

  The defaults reproduce the published split (4000 train / 1000 test, generator seed 42,
  whole dataset standardised to zero mean and unit std by the package). `seed` is unused:
  the dataset is fixed by `data_seed`, so every run sees the same benchmark. The train split
  is the first `num_train` generated examples and the test split the next `num_test`.
  """
  del seed
  _check_split(split)
  _check_positive("num_train", num_train)
  _check_positive("num_test", num_test)
  total = num_train + num_test
  num_samples = -(-total // 10) * 10  # make_dataset generates num_samples // 10 per class
  x, y = _mnist1d_arrays(num_samples, data_seed)
  part = slice(0, num_train) if split == "train" else slice(num_train, total)
  info = DatasetInfo("mnist1d", num_classes=10, input_shape=(40, 1), num_superclasses=None,
                     augmentation=None)
  return ArraySource(info, x[part, :, None], y[part])
