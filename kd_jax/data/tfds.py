"""TFDS datasets (cifar10, cifar100, imagenet2012) read without TensorFlow.

`tfds.data_source` gives random access to a dataset prepared in the ArrayRecord format. We
ask it to skip image decoding (`tfds.decode.SkipDecoding`) and decode the PNG / JPEG bytes
with PIL in a thread pool, so reading labels never touches pixels and decoding uses every
core. Preparing a dataset (once, where TensorFlow is installed) is:

  tfds build cifar100 --data_dir=DIR --file_format=array_record
  # or: tfds.builder("cifar100", data_dir=DIR, file_format="array_record").download_and_prepare()

ImageNet needs ILSVRC2012_img_{train,val}.tar placed in DIR/downloads/manual first.
"""

import concurrent.futures
import dataclasses
import functools
import io
import os

import numpy as np
from absl import logging

from kd_jax.data import augment
from kd_jax.data.source import DatasetInfo, check_indices

# name -> (our "test" split in TFDS, input_shape as the loader yields it, mean, std)
_DATASETS = {
    "cifar10": ("test", (32, 32, 3), augment.CIFAR10_MEAN, augment.CIFAR10_STD, "cifar"),
    "cifar100": ("test", (32, 32, 3), augment.CIFAR100_MEAN, augment.CIFAR100_STD, "cifar"),
    "imagenet2012": ("validation", (augment.IMAGENET_SIZE, augment.IMAGENET_SIZE, 3),
                     augment.IMAGENET_MEAN, augment.IMAGENET_STD, "imagenet"),
}
_LABEL_CHUNK = 4096  # records per read when collecting all labels


def prepare_instructions(name: str, data_dir) -> str:
  target = data_dir or "~/tensorflow_datasets (the TFDS default)"
  manual = (f" ImageNet cannot be downloaded automatically: first put ILSVRC2012_img_train.tar"
            f" and ILSVRC2012_img_val.tar in {data_dir or '~/tensorflow_datasets'}"
            "/downloads/manual." if name == "imagenet2012" else "")
  return (f"TFDS dataset {name!r} is not prepared in the ArrayRecord format in {target}. "
          f"Prepare it once (this step needs TensorFlow; training does not):\n"
          f"  tfds build {name} --data_dir={data_dir or '~/tensorflow_datasets'} "
          f"--file_format=array_record\n"
          f"or in Python: tfds.builder({name!r}, data_dir={data_dir!r}, "
          f"file_format='array_record').download_and_prepare().{manual}")


@functools.lru_cache(maxsize=1)
def _decode_pool() -> concurrent.futures.ThreadPoolExecutor:
  # PIL releases the GIL while decoding, so threads give real parallelism.
  return concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))


def decode_image(encoded) -> np.ndarray:
  """PNG / JPEG bytes -> uint8 [H, W, 3] (grey or CMYK images are converted to RGB)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if isinstance(encoded, np.ndarray):  # TFDS may hand bytes back as a 0-d object array
    encoded = encoded.item()
  with Image.open(io.BytesIO(encoded)) as image:
    if image.mode != "RGB":
      image = image.convert("RGB")
    return np.asarray(image, np.uint8)


def decoded_batch(info: DatasetInfo, encoded: list, labels, superclasses=None) -> dict:
  """A source batch from encoded images: decoded in the thread pool; ImageNet's (sizes vary)
  as an object array of uint8 [H_i, W_i, 3], others stacked to uint8 [n, *input_shape]."""
  images = list(_decode_pool().map(decode_image, encoded))
  if info.augmentation == "imagenet":
    image_array = np.empty(len(images), object)
    image_array[:] = images
  else:
    image_array = np.stack(images) if images else np.zeros((0,) + info.input_shape, np.uint8)
  batch = {"image": image_array, "label": np.asarray(labels, np.int32)}
  if info.num_superclasses:
    batch["superclass"] = np.asarray(superclasses, np.int32)
  return batch


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSource:
  """An in-memory source of encoded (PNG / JPEG) images, decoded per batch exactly as TFDS
  records are: generated data for the input-pipeline benchmark and tests."""
  info: DatasetInfo
  encoded: list  # bytes per example
  label_array: np.ndarray

  def __len__(self) -> int:
    return len(self.encoded)

  @property
  def labels(self) -> np.ndarray:
    return self.label_array

  def get_batch(self, indices) -> dict[str, np.ndarray]:
    indices = check_indices(indices, len(self))
    return decoded_batch(self.info, [self.encoded[i] for i in indices], self.label_array[indices])


def fake_imagenet(num_examples: int, seed: int = 0, quality: int = 90) -> EncodedSource:
  """Generated ImageNet-like JPEGs (smooth random images of 300-500 x 300-500 pixels, like
  ImageNet's typical sizes, 1000 classes) for the input-pipeline benchmark and tests."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  encoded = []
  for _ in range(num_examples):
    height, width = rng.integers(300, 501, 2)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    image = np.asarray(coarse.resize((int(width), int(height)), Image.BILINEAR), np.int16)
    image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    encoded.append(buffer.getvalue())
  shape = (augment.IMAGENET_SIZE, augment.IMAGENET_SIZE, 3)
  info = DatasetInfo("fake_imagenet", 1000, shape, None, augmentation="imagenet", mean=augment.IMAGENET_MEAN,
                     std=augment.IMAGENET_STD)
  return EncodedSource(info, encoded, rng.integers(0, 1000, num_examples).astype(np.int32))


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
  if name not in _DATASETS:
    raise ValueError(f"unknown TFDS dataset {name!r}; available: {', '.join(_DATASETS)}")
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r} is not supported; use 'train' or 'test'")
  test_split, input_shape, mean, std, family = _DATASETS[name]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if data_dir is not None and not os.path.isdir(os.path.expanduser(data_dir)):
    raise FileNotFoundError(f"data_dir={data_dir!r} does not exist. "
                            + prepare_instructions(name, data_dir))
  try:
    data_source = tfds.data_source(
        name, split=split if split == "train" else test_split, data_dir=data_dir,
        download=False, decoders={"image": tfds.decode.SkipDecoding()})
  except (NotImplementedError, AssertionError, FileNotFoundError, OSError, ValueError) as e:
    raise FileNotFoundError(prepare_instructions(name, data_dir) + f"\n(TFDS said: {e})"
                            ) from e
  features = data_source.dataset_info.features
  num_superclasses = (features["coarse_label"].num_classes if "coarse_label" in features
                      else None)
  info = DatasetInfo(name, num_classes=features["label"].num_classes, input_shape=input_shape,
                     num_superclasses=num_superclasses, augmentation=family, mean=mean,
                     std=std)
  cache_path = None
  if cache_labels:
    cache_path = os.path.join(str(data_source.dataset_info.data_dir),
                              f"kd_jax_labels.{split}.npy")
  return TfdsSource(info, data_source, cache_path)
