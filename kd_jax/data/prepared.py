"""CIFAR-10/100 and ImageNet as `python -m kd_jax.prepare` writes them: no TensorFlow anywhere.

Layout, under `data_dir/<name>/` (`<name>`: cifar10, cifar100, imagenet2012):

  prepared/                      complete: it appears, by one rename, only once finished
    manifest.json                what is there (format version, splits, classes, sources)
    <split>.<k>.array_record     the records, in archive order: raw uint8 pixels [32, 32, 3]
                                 for CIFAR (no decoding at all), the original JPEG bytes for
                                 ImageNet (decoded per batch, as TFDS's are)
    <split>.<k>.json             the shard's keys (TFDS's example keys) and labels
    <split>.order.npy            int64 [N]: example i (TFDS's order) is record order[i]
    <split>.labels.npy           int32 [N] labels in TFDS's order (cheap: no record is read)
    <split>.superclasses.npy     CIFAR-100's coarse labels, likewise
  prepared.partial/              an unfinished prepare: never read, resumed by the next one

Examples come in TFDS's order, with TFDS's labels, so a run reads the same example at the
same index whether its data came from here or from `tfds build`: TFDS sorts the examples
of a split by the MD5 of the split name followed by the example's key (the index in the
archive for CIFAR, the file name for ImageNet), and so does `tfds_order`.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

from kd_jax.data import images
from kd_jax.data.source import DatasetInfo, check_indices

FORMAT_VERSION = 1
FINAL, STAGING, MANIFEST = "prepared", "prepared.partial", "manifest.json"
NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet2012",
         "imagenet2012": "imagenet2012"}  # prepare's names -> kd_jax.data names


def default_data_dir() -> str:
  """Where data lives when `dataset.data_dir` is None: TFDS's default, $TFDS_DATA_DIR or
  ~/tensorflow_datasets (one place for both kinds of prepared data)."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def dataset_dir(name: str, data_dir: str | None) -> str:
  return os.path.join(os.path.expanduser(data_dir or default_data_dir()), NAMES[name])


def instructions(name: str, data_dir: str | None) -> str:
  """The one-line 'not prepared' message: the command that prepares `name` in `data_dir`."""
  directory = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  source = ("--archive=DIR (a directory with ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar, or their extracted train/ and val/ class folders; "
            "ImageNet cannot be downloaded without an account)" if "imagenet" in name
            else "(downloads the original archive; or --archive=PATH to a copy of it)")
  command = "imagenet" if "imagenet" in name else name
  return (f"{name} is not prepared in {directory}: prepare it once, no TensorFlow needed: "
          f"python -m kd_jax.prepare {command} --data_dir={directory} {source}; then set "
          f"--config.dataset.data_dir={directory} (a TFDS ArrayRecord build there, from "
          f"`tfds build {NAMES[name]} --file_format=array_record`, is read too)")


def tfds_order(keys: list, split_name: str) -> np.ndarray:
  """int64 [N]: the archive positions of `keys` in TFDS's order, i.e. sorted by the 128-bit
  MD5 of `split_name` + str(key) (tensorflow_datasets/core/hashing.py and shuffle.py)."""
  salt = hashlib.md5(split_name.encode())
  hashes = []
  for key in keys:
    digest = salt.copy()
    digest.update(str(key).replace("\\", "/").encode())
    hashes.append(int(digest.hexdigest(), 16))
  return np.asarray(sorted(range(len(keys)), key=hashes.__getitem__), np.int64)


def read_manifest(directory: str) -> dict | None:
  """The manifest of a complete prepared dataset in `directory` (its `prepared/`), or None."""
  path = os.path.join(directory, FINAL, MANIFEST)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def exists(name: str, data_dir: str | None) -> bool:
  """Whether `python -m kd_jax.prepare` finished preparing `name` in `data_dir`."""
  return name in NAMES and read_manifest(dataset_dir(name, data_dir)) is not None


@dataclasses.dataclass(eq=False)
class PreparedSource:
  """A split of a prepared dataset: images uint8 [n, 32, 32, 3] (CIFAR) or an object array
  of uint8 [H_i, W_i, 3] (ImageNet, decoded per batch), label int32 [n] and, for CIFAR-100,
  superclass int32 [n]; examples in TFDS's order."""
  info: DatasetInfo
  records: object  # array_record's ArrayRecordDataSource over the split's shards
  order: np.ndarray
  label_array: np.ndarray
  superclass_array: np.ndarray | None
  encoding: str  # "raw" (uint8 pixels) or "jpeg"

  def __len__(self) -> int:
    return len(self.order)

  @property
  def labels(self) -> np.ndarray:
    return self.label_array

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    indices = check_indices(indices, len(self))
    records = self.records.__getitems__([int(i) for i in self.order[indices]])
    superclasses = None if self.superclass_array is None else self.superclass_array[indices]
    if self.encoding == "jpeg":
      return images.decoded_batch(self.info, records, self.label_array[indices], superclasses)
    pixels = np.frombuffer(b"".join(records), np.uint8).reshape(
        (len(indices), *self.info.input_shape)).copy()  # writable, as other sources' batches
    batch = {"image": pixels, "label": self.label_array[indices]}
    if superclasses is not None:
      batch["superclass"] = superclasses
    return batch


def load(name: str, split: str, *, data_dir: str | None = None,
         cache_labels: bool = True) -> PreparedSource:
  """Opens `split` ("train" or "test"; ImageNet's "test" is its validation set) of `name`
  as prepared in `data_dir`. `cache_labels` is accepted for the TFDS source's options
  (labels are always stored here). Raises FileNotFoundError when it is not prepared."""
  del cache_labels
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  directory = dataset_dir(name, data_dir)
  manifest = read_manifest(directory)
  if manifest is None:
    raise FileNotFoundError(instructions(name, data_dir))
  if manifest.get("version") != FORMAT_VERSION:
    raise FileNotFoundError(f"{directory}/{FINAL} was written by another version of kd_jax "
                            f"(format {manifest.get('version')}, this one reads "
                            f"{FORMAT_VERSION}): prepare it again")
  tfds_split = manifest["splits"][split]
  root = os.path.join(directory, FINAL)
  records = array_record_data_source.ArrayRecordDataSource(
      [os.path.join(root, shard) for shard in tfds_split["shards"]])
  superclasses = None
  if manifest.get("num_superclasses"):
    superclasses = np.load(os.path.join(root, f"{split}.superclasses.npy"))
  source = PreparedSource(
      images.info(NAMES[name], manifest["num_classes"], manifest.get("num_superclasses")),
      records, np.load(os.path.join(root, f"{split}.order.npy")),
      np.load(os.path.join(root, f"{split}.labels.npy")), superclasses, manifest["encoding"])
  if len(records) != len(source):
    raise FileNotFoundError(f"{root}: {split} holds {len(records)} records but its order "
                            f"{len(source)}: the directory was changed; prepare it again")
  return source
