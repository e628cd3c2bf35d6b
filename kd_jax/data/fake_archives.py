"""Archives in the exact formats of the originals, with generated images.

`python -m kd_jax.prepare` reads CIFAR's `cifar-{10,100}-python.tar.gz` (pickled batches)
and ImageNet's ILSVRC2012 tars; these functions write small ones with the same member names,
pickle contents and tar layout, so that preparing, reading and training can be tried (and
are tested) without the 160 MB / 150 GB downloads:

  python -c "from kd_jax.data import fake_archives as f; f.cifar('cifar100', 'c.tar.gz')"
  python -m kd_jax.prepare cifar100 --archive=c.tar.gz --data_dir=/tmp/d --skip_checksum

Images are smooth random colour fields (a class's images share a colour), so a model can
learn them a little.
"""

import io
import os
import pickle
import struct
import tarfile
from typing import ClassVar

import numpy as np

_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", "batches.meta",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": ("cifar-100-python", "meta", ["train"], ["test"]),
}


class _Python2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Protocol 2 as Python 2's cPickle wrote the CIFAR batches: strings (here `bytes`) as
  BINSTRING, which Python 3 loads as bytes (`encoding="bytes"`) or str (`"latin1"`), and
  NumPy's globals under their NumPy 1 module path."""
  dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_bytes(self, obj):
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  dispatch[bytes] = save_bytes

  def save_global(self, obj, name=None):
    module = obj.__module__.replace("numpy._core", "numpy.core")
    self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
    self.memoize(obj)


def _python2_pickle(value) -> bytes:
  buffer = io.BytesIO()
  _Python2Pickler(buffer, protocol=2).dump(value)
  return buffer.getvalue()


def _images(rng, labels: np.ndarray, num_classes: int, height: int, width: int) -> np.ndarray:
  """uint8 [N, H, W, 3]: a per-class colour plus smooth noise."""
  colours = np.random.default_rng(1234).integers(0, 256, (num_classes, 3))
  noise = rng.normal(0, 40, (len(labels), height // 4 + 1, width // 4 + 1, 3))
  noise = np.repeat(np.repeat(noise, 4, axis=1), 4, axis=2)[:, :height, :width]
  return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  info.mtime = 1262304000
  tar.addfile(info, io.BytesIO(payload))


def cifar(name: str, path: str, num_train: int = 300, num_test: int = 100,
          seed: int = 0) -> str:
  """Writes `path`, a cifar-10-python.tar.gz / cifar-100-python.tar.gz of `num_train` and
  `num_test` generated images: the folder and batch names of the original, each batch a
  Python 2 pickle of a dict with `data` (uint8 [n, 3072], channel planes, rows of 32),
  `labels` (CIFAR-10) or `fine_labels` and `coarse_labels` (CIFAR-100), `filenames` and
  `batch_label`; the meta pickle names the classes."""
  folder, meta_name, train_files, test_files = _CIFAR_LAYOUT[name]
  num_classes = 10 if name == "cifar10" else 100
  rng = np.random.default_rng(seed)
  with tarfile.open(path, "w:gz") as tar:
    directory = tarfile.TarInfo(folder)
    directory.type, directory.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(directory)
    for files, total in ((train_files, num_train), (test_files, num_test)):
      for i, file in enumerate(files):
        n = total // len(files) + (i < total % len(files))
        fine = rng.integers(0, num_classes, n)
        pixels = _images(rng, fine, num_classes, 32, 32)
        batch = {b"batch_label": f"{file} (generated)".encode(),
                 b"data": pixels.transpose(0, 3, 1, 2).reshape(n, 3072),
                 b"filenames": [f"generated_{file}_{j}.png".encode() for j in range(n)]}
        if name == "cifar10":
          batch[b"labels"] = fine.tolist()
        else:
          batch.update({b"fine_labels": fine.tolist(), b"coarse_labels": (fine % 20).tolist()})
        _add(tar, f"{folder}/{file}", _python2_pickle(batch))
    meta = ({b"label_names": [f"class_{c}".encode() for c in range(10)],
             b"num_cases_per_batch": 10000, b"num_vis": 3072} if name == "cifar10" else
            {b"fine_label_names": [f"class_{c}".encode() for c in range(100)],
             b"coarse_label_names": [f"superclass_{c}".encode() for c in range(20)]})
    _add(tar, f"{folder}/{meta_name}", _python2_pickle(meta))
  return path


def _jpeg(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def imagenet(directory: str, num_classes: int = 3, per_class: int = 4, num_val: int = 6,
             seed: int = 0) -> str:
  """Writes ILSVRC2012_img_train.tar (one `<wnid>.tar` of `<wnid>_<i>.JPEG` per class) and
  ILSVRC2012_img_val.tar (flat `ILSVRC2012_val_<8 digits>.JPEG`) into `directory`, plus
  `validation_labels.txt` (one wnid per line, for the validation images in sorted order, as
  TFDS's file). Returns the path of the labels file."""
  rng = np.random.default_rng(seed)
  wnids = [f"n{1440764 + 9 * c:08d}" for c in range(num_classes)]
  os.makedirs(directory, exist_ok=True)
  with tarfile.open(os.path.join(directory, "ILSVRC2012_img_train.tar"), "w") as train:
    for c, wnid in enumerate(wnids):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as class_tar:
        for i in range(per_class):
          height, width = rng.integers(40, 80, 2)
          image = _images(rng, np.array([c]), num_classes, int(height), int(width))[0]
          _add(class_tar, f"{wnid}_{1000 + i}.JPEG", _jpeg(image))
      _add(train, f"{wnid}.tar", inner.getvalue())
  labels = rng.integers(0, num_classes, num_val)
  with tarfile.open(os.path.join(directory, "ILSVRC2012_img_val.tar"), "w") as val:
    for i in rng.permutation(num_val):  # the tar's order is not the sorted order
      image = _images(rng, labels[i:i + 1], num_classes, 50, 60)[0]
      _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(image))
  path = os.path.join(directory, "validation_labels.txt")
  with open(path, "w") as f:
    f.write("".join(f"{wnids[label]}\n" for label in labels))
  return path
