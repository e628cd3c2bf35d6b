"""Image datasets shared by the prepared and the TFDS sources: what each one is, and decoding.

`DATASETS` names the image datasets (CIFAR-10, CIFAR-100, ImageNet) with the shape the loader
yields, the normalisation statistics and the augmentation family; `decode_image` /
`decoded_batch` turn encoded (PNG / JPEG) images into a source batch, decoding in a thread
pool. `EncodedSource` and `fake_imagenet` are generated encoded data for benchmarks and
tests.
"""

import concurrent.futures
import dataclasses
import functools
import io
import os

import numpy as np

from kd_jax.data import augment
from kd_jax.data.source import DatasetInfo, check_indices


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """`tfds_test_split`: TFDS's split behind our "test" (ImageNet's is its validation set)."""
  tfds_test_split: str
  input_shape: tuple[int, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augmentation: str


DATASETS = {
    "cifar10": ImageDataset("test", (32, 32, 3), augment.CIFAR10_MEAN, augment.CIFAR10_STD,
                            "cifar"),
    "cifar100": ImageDataset("test", (32, 32, 3), augment.CIFAR100_MEAN, augment.CIFAR100_STD,
                             "cifar"),
    "imagenet2012": ImageDataset(
        "validation", (augment.IMAGENET_SIZE, augment.IMAGENET_SIZE, 3), augment.IMAGENET_MEAN,
        augment.IMAGENET_STD, "imagenet"),
}


def info(name: str, num_classes: int, num_superclasses: int | None) -> DatasetInfo:
  """The DatasetInfo of image dataset `name`."""
  d = DATASETS[name]
  return DatasetInfo(name, num_classes=num_classes, input_shape=d.input_shape,
                     num_superclasses=num_superclasses, augmentation=d.augmentation,
                     mean=d.mean, std=d.std)


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
