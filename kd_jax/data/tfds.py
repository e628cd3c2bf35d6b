"""TFDS datasets (cifar10, cifar100, imagenet2012) read without TensorFlow.

`tfds.data_source` gives random access to a dataset that TFDS prepared in the ArrayRecord
format (`tfds build NAME --data_dir=DIR --file_format=array_record`, where TensorFlow is
installed). We ask it to skip image decoding (`tfds.decode.SkipDecoding`) and decode the PNG /
JPEG bytes with PIL in a thread pool, so reading labels never touches pixels and decoding uses
every core. `kd_jax.data.load` reads data prepared by `python -m kd_jax.prepare` first
(kd_jax/data/prepared.py: no TensorFlow needed anywhere) and a TFDS-built copy otherwise.
"""

import dataclasses
import os

import numpy as np
from absl import logging

from kd_jax.data import images, prepared
from kd_jax.data.images import EncodedSource, decode_image, decoded_batch, fake_imagenet
from kd_jax.data.source import DatasetInfo, check_indices

__all__ = ["EncodedSource", "TfdsSource", "decode_image", "decoded_batch", "fake_imagenet",
           "load"]

_LABEL_CHUNK = 4096  # records per read when collecting all labels


@dataclasses.dataclass(eq=False)
class TfdsSource:
  """A split of a TFDS dataset: images uint8 [n, 32, 32, 3] (CIFAR) or, for ImageNet, an
  object array of n uint8 [H_i, W_i, 3] images (sizes vary; the loader crops them to
  input_shape), label int32 [n] and, for CIFAR-100, superclass (coarse_label) int32 [n]."""
  info: DatasetInfo
  data_source: object  # tfds ArrayRecordDataSource with image decoding skipped
  cache_path: str | None = None  # where all labels are cached as .npy, when writable
  _labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.data_source)

  def _records(self, indices: np.ndarray) -> list[dict]:
    return self.data_source.__getitems__([int(i) for i in indices])

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    indices = check_indices(indices, len(self))
    records = self._records(indices)
    superclasses = ([r["coarse_label"] for r in records] if self.info.num_superclasses
                    else None)
    return decoded_batch(self.info, [r["image"] for r in records],
                         [r["label"] for r in records], superclasses)

  @property
  def labels(self) -> np.ndarray:
    """int32 [N], read once (records are parsed, images never decoded) and cached."""
    if self._labels is None:
      self._labels = self._load_labels()
    return self._labels

  def _load_labels(self) -> np.ndarray:
    if self.cache_path and os.path.exists(self.cache_path):
      labels = np.load(self.cache_path)
      if len(labels) == len(self):
        return labels
    labels = np.empty(len(self), np.int32)
    for start in range(0, len(self), _LABEL_CHUNK):
      chunk = np.arange(start, min(start + _LABEL_CHUNK, len(self)))
      labels[chunk] = [r["label"] for r in self._records(chunk)]
    if self.cache_path:
      try:
        np.save(self.cache_path, labels)
      except OSError:  # read-only data_dir (e.g. a shared bucket): keep them in memory
        logging.info("could not cache labels at %s", self.cache_path)
    return labels


def load(name: str, split: str, *, data_dir: str | None = None, seed: int = 0,
         cache_labels: bool = True) -> TfdsSource:
  """Opens `split` ("train" or "test"; ImageNet's "test" is its validation set) of `name`.

  Raises:
    ValueError: unknown name or split.
    FileNotFoundError: the dataset is not prepared in ArrayRecord format in `data_dir`; the
      message says how to prepare it.
  """
  del seed  # TFDS splits are fixed
  if name not in images.DATASETS:
    raise ValueError(f"unknown TFDS dataset {name!r}; available: {', '.join(images.DATASETS)}")
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r} is not supported; use 'train' or 'test'")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if data_dir is not None and not os.path.isdir(os.path.expanduser(data_dir)):
    raise FileNotFoundError(f"data_dir={data_dir!r} does not exist. "
                            + prepared.instructions(name, data_dir))
  if not os.path.isdir(os.path.join(os.path.expanduser(data_dir or prepared.default_data_dir()),
                                    name)):
    raise FileNotFoundError(prepared.instructions(name, data_dir))  # no TFDS build either
  try:
    data_source = tfds.data_source(
        name, split=split if split == "train" else images.DATASETS[name].tfds_test_split,
        data_dir=data_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()})
  except (NotImplementedError, AssertionError, FileNotFoundError, OSError, ValueError,
          KeyError) as e:  # KeyError: TFDS's "splits is empty" when nothing is there
    raise FileNotFoundError(f"{prepared.instructions(name, data_dir)} (TFDS found no "
                            f"ArrayRecord copy either: {' '.join(str(e).split())[:200]})"
                            ) from e
  features = data_source.dataset_info.features
  num_superclasses = (features["coarse_label"].num_classes if "coarse_label" in features
                      else None)
  info = images.info(name, features["label"].num_classes, num_superclasses)
  cache_path = None
  if cache_labels:
    cache_path = os.path.join(str(data_source.dataset_info.data_dir),
                              f"kd_jax_labels.{split}.npy")
  return TfdsSource(info, data_source, cache_path)
