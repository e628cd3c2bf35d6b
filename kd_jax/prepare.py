r"""`python -m kd_jax.prepare`: CIFAR-10/100 and ImageNet from their original archives, once.

  python -m kd_jax.prepare cifar100 --data_dir=/data    # downloads cifar-100-python.tar.gz
  python -m kd_jax.prepare cifar10 --data_dir=/data --archive=/downloads/cifar-10-python.tar.gz
  python -m kd_jax.prepare imagenet --data_dir=/data --archive=/downloads/ILSVRC2012

then train with `--config.dataset.data_dir=/data` (without --data_dir both default to
$TFDS_DATA_DIR or ~/tensorflow_datasets). Nothing here needs TensorFlow.

Sources. CIFAR: the Python version of the archives (`cifar-10-python.tar.gz`,
`cifar-100-python.tar.gz`: pickled batches of uint8 pixels), downloaded from
www.cs.toronto.edu/~kriz into DATA_DIR/downloads unless --archive names a copy. ImageNet
(ILSVRC2012; it needs an account, so it is never downloaded): --archive names a directory
holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, or their extracted class
folders train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (a flat val/ of the original file names
takes its labels from --val_labels, by default TFDS's validation_labels.txt when TFDS is
installed). An archive is compared with its published MD5 (and, for ImageNet, its size)
before anything is written; a mismatch stops unless --skip_checksum. Extracted folders have
no checksum.

What it writes (kd_jax/data/prepared.py reads it): DATA_DIR/<name>/prepared/ with the
examples in TFDS's order and with TFDS's labels, CIFAR as raw pixels (no decoding when
training), ImageNet as its original JPEG bytes (no re-encoding). It is resumable and atomic:
shards are written into DATA_DIR/<name>/prepared.partial/, each complete one kept by a rerun
(an interrupted prepare picks up where it stopped), and the finished directory appears by
one rename, so an interrupted prepare never leaves a dataset that looks complete.

Exit codes: 0 prepared (or already there); 2 bad input, in one line (no archive, a checksum
that differs, an archive of another format, no download); 1 a bug.
"""

import argparse
import io
import os
import pickle
import sys
import tarfile
from collections.abc import Iterator

import numpy as np

from kd_jax.data import images, prepared
from kd_jax.data.archives import (
  PrepareError,
  Staging,
  download,
  identity,
  say,
  verify,
)

_CIFAR = {
    "cifar10": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        file="cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py", meta="batches.meta", names_key="label_names",
        splits={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        label_key="labels", coarse_key=None, num_classes=10, num_superclasses=None),
    "cifar100": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        file="cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python", meta="meta", names_key="fine_label_names",
        splits={"train": ["train"], "test": ["test"]},
        label_key="fine_labels", coarse_key="coarse_labels", num_classes=100,
        num_superclasses=20),
}
# The ILSVRC2012 tars: MD5 as published by image-net.org, sizes as in TFDS's checksums.tsv.
_IMAGENET = {
    "train": dict(file="ILSVRC2012_img_train.tar", md5="1d675b47d978889d74fa0da5fadfb00e",
                  size=147897477120),
    "test": dict(file="ILSVRC2012_img_val.tar", md5="29b22e2961454d5413ddabcf34fc5622",
                 size=6744924160),
}
_VAL_SHARD = 1000  # ImageNet validation images per shard (train: one shard per class)


# --- CIFAR ---------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
  """The CIFAR batches hold dicts, lists, bytes and NumPy arrays: nothing else is built (an
  archive given with --skip_checksum cannot run code through pickle)."""
  # _codecs.encode: how a protocol-2 pickle written by Python 3 stores bytes.
  _ALLOWED = frozenset({
      ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")})

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
    return super().find_class(module, name)


def _open_tar(path: str, mode: str, fileobj=None) -> tarfile.TarFile:
  try:
    return tarfile.open(path, mode, fileobj=fileobj)
  except (tarfile.TarError, OSError) as error:
    kind = ".tar.gz" if mode.endswith("gz") else ".tar"
    raise PrepareError(f"{path or 'a member'} is not a {kind} archive ({error})") from None


def _cifar_batch(archive: tarfile.TarFile, member: str) -> dict:
  try:
    f = archive.extractfile(member)
  except KeyError:
    raise PrepareError(f"{archive.name} has no {member}: not the Python version of the CIFAR "
                       "archive (cifar-*-python.tar.gz)") from None
  try:
    batch = _CifarUnpickler(f, encoding="latin1").load()
  except Exception as error:  # a damaged or foreign pickle
    raise PrepareError(f"{archive.name}: {member} is not a CIFAR batch "
                       f"({type(error).__name__}: {error})") from None
  return {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}


def _cifar_examples(batch: dict, spec: dict, member: str, first_key: int) -> list[tuple]:
  data = np.asarray(batch.get("data"))
  labels = np.asarray(batch.get(spec["label_key"], []))
  coarse = np.asarray(batch[spec["coarse_key"]]) if spec["coarse_key"] else None
  n = len(data)
  if data.dtype != np.uint8 or data.shape != (n, 3072) or labels.shape != (n,) or (
      coarse is not None and coarse.shape != (n,)):
    raise PrepareError(f"{member}: expected data uint8 [N, 3072] and {spec['label_key']} [N]; "
                       f"got data {data.dtype} {list(data.shape)}, labels {list(labels.shape)}")
  if n and not (0 <= labels.min() and labels.max() < spec["num_classes"]):
    raise PrepareError(f"{member}: labels outside [0, {spec['num_classes']})")
  pixels = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)  # channel planes -> HWC
  return [(first_key + i, labels[i], None if coarse is None else coarse[i],
           np.ascontiguousarray(pixels[i]).tobytes()) for i in range(n)]


def prepare_cifar(name: str, data_dir: str, archive: str | None, skip_checksum: bool) -> str:
  spec = _CIFAR[name]
  if archive is None:
    archive = os.path.join(data_dir, "downloads", spec["file"])
    if not os.path.isfile(archive):
      download(spec["url"], archive)
  if not os.path.isfile(archive):
    raise PrepareError(f"--archive={archive} is not a file: give the path of {spec['file']}")
  staging = Staging(prepared.dataset_dir(name, data_dir), dict(archive=identity(archive)))
  verify(archive, spec["md5"], None, skip_checksum, staging.verified)
  staging.save()
  with _open_tar(archive, "r:gz") as tar:
    meta = _cifar_batch(tar, f"{spec['folder']}/{spec['meta']}")
    shards = {}
    for split, members in spec["splits"].items():
      key = 0
      for k, member in enumerate(members):
        examples = _cifar_examples(_cifar_batch(tar, f"{spec['folder']}/{member}"), spec,
                                   member, key)
        key += len(examples)
        if not staging.done(split, k):
          staging.write_shard(split, k, examples)
          say(f"{name} {split}: {member}, {len(examples)} images")
      shards[split] = len(members)
  names = [n.decode() if isinstance(n, bytes) else n for n in meta.get(spec["names_key"], [])]
  staging.finalize(shards, {"train": "train", "test": "test"}, dict(
      dataset=name, encoding="raw", num_classes=spec["num_classes"],
      num_superclasses=spec["num_superclasses"], label_names=names))
  return staging.final


# --- ImageNet ------------------------------------------------------------------------------


def _tfds_file(relative: str) -> str | None:
  """A data file shipped with TFDS (found without importing it), or None."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("tensorflow_datasets")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(next(iter(spec.submodule_search_locations)), relative)
  return path if os.path.isfile(path) else None


def _file_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
  return sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)


class _ImagenetTars:
  """ILSVRC2012_img_train.tar (a tar of one tar per class) and ILSVRC2012_img_val.tar, open
  (random access to their members) until the `with` block ends."""

  def __init__(self, directory: str):
    self.train = _open_tar(os.path.join(directory, _IMAGENET["train"]["file"]), "r:")
    self.classes = [m for m in _file_members(self.train) if m.name.endswith(".tar")]
    self.wnids = [os.path.basename(m.name)[:-4] for m in self.classes]
    self.val = _open_tar(os.path.join(directory, _IMAGENET["test"]["file"]), "r:")
    self.val_members = _file_members(self.val)

  def __enter__(self):
    return self

  def __exit__(self, *unused):
    self.train.close()
    self.val.close()

  def train_shard(self, k: int) -> Iterator[tuple]:
    payload = self.train.extractfile(self.classes[k]).read()  # one class, ~150 MB
    with _open_tar(None, "r:", io.BytesIO(payload)) as inner:
      for member in inner:
        if member.isfile():
          yield os.path.basename(member.name), k, None, inner.extractfile(member).read()

  def val_names(self) -> list[str]:
    return [os.path.basename(m.name) for m in self.val_members]

  def val_record(self, i: int) -> bytes:
    return self.val.extractfile(self.val_members[i]).read()


class _ImagenetFolders:
  """Extracted class folders: train/<wnid>/*.JPEG; val/<wnid>/*.JPEG or a flat val/."""

  def __init__(self, directory: str):
    self.root = directory
    train = os.path.join(directory, "train")
    self.wnids = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    val = os.path.join(directory, "val")
    entries = sorted(os.listdir(val))
    self.val_folders = {d: i for i, d in enumerate(entries)
                        if os.path.isdir(os.path.join(val, d))}
    if self.val_folders:
      self.val_paths = sorted((os.path.join(val, d, f) for d in self.val_folders
                               for f in os.listdir(os.path.join(val, d))),
                              key=os.path.basename)
    else:
      self.val_paths = [os.path.join(val, f) for f in entries]

  def __enter__(self):
    return self

  def __exit__(self, *unused):
    pass

  def train_shard(self, k: int) -> Iterator[tuple]:
    folder = os.path.join(self.root, "train", self.wnids[k])
    for name in sorted(os.listdir(folder)):
      with open(os.path.join(folder, name), "rb") as f:
        yield name, k, None, f.read()

  def val_names(self) -> list[str]:
    return [os.path.basename(p) for p in self.val_paths]

  def val_wnids(self) -> list[str] | None:
    if not self.val_folders:
      return None
    return [os.path.basename(os.path.dirname(p)) for p in self.val_paths]

  def val_record(self, i: int) -> bytes:
    with open(self.val_paths[i], "rb") as f:
      return f.read()


def _val_labels(source, wnids: list[str], val_labels: str | None) -> list[int]:
  """The class index of every validation image (in `source.val_names()` order)."""
  names = source.val_names()
  folders = source.val_wnids() if isinstance(source, _ImagenetFolders) else None
  if folders is None:
    path = val_labels or _tfds_file("datasets/imagenet2012/validation_labels.txt")
    if path is None:
      raise PrepareError("the validation images need their labels: pass --val_labels=PATH "
                         "(one wnid per line, for the images in sorted file-name order, as "
                         "TFDS's validation_labels.txt), or install tensorflow-datasets")
    with open(path) as f:
      listed = f.read().split()
    if len(listed) != len(names):
      raise PrepareError(f"{path} lists {len(listed)} labels for {len(names)} validation "
                         "images")
    by_name = dict(zip(sorted(names), listed))  # TFDS: labels follow sorted file names
    folders = [by_name[name] for name in names]
  index = {wnid: i for i, wnid in enumerate(wnids)}
  unknown = sorted(set(folders) - set(index))
  if unknown:
    raise PrepareError(f"validation labels name classes without training images: "
                       f"{', '.join(unknown[:5])}")
  return [index[w] for w in folders]


def prepare_imagenet(data_dir: str, archive: str | None, skip_checksum: bool,
                     val_labels: str | None) -> str:
  if archive is None or not os.path.isdir(archive):
    raise PrepareError("ImageNet is not downloadable without an account: pass "
                       "--archive=DIR, a directory with ILSVRC2012_img_train.tar and "
                       "ILSVRC2012_img_val.tar (from image-net.org), or with their extracted "
                       "train/ and val/ class folders")
  tars = all(os.path.isfile(os.path.join(archive, spec["file"])) for spec in _IMAGENET.values())
  if not tars and not all(os.path.isdir(os.path.join(archive, d)) for d in ("train", "val")):
    raise PrepareError(f"--archive={archive} holds neither ILSVRC2012_img_train.tar and "
                       "ILSVRC2012_img_val.tar nor train/ and val/ folders")
  source = ({split: identity(os.path.join(archive, spec["file"]))
             for split, spec in _IMAGENET.items()} if tars
            else dict(folders=os.path.abspath(archive)))
  staging = Staging(prepared.dataset_dir("imagenet2012", data_dir), source)
  if tars:
    for spec in _IMAGENET.values():
      verify(os.path.join(archive, spec["file"]), spec["md5"], spec["size"], skip_checksum,
              staging.verified)
  staging.save()
  try:
    source = _ImagenetTars(archive) if tars else _ImagenetFolders(archive)
  except OSError as error:
    raise PrepareError(f"--archive={archive} cannot be read ({error})") from None
  with source:
    wnids = source.wnids
    for k in range(len(wnids)):
      if not staging.done("train", k):
        count = staging.write_shard("train", k, source.train_shard(k))
        say(f"imagenet2012 train: class {k + 1}/{len(wnids)} ({wnids[k]}), {count} images")
    labels = _val_labels(source, wnids, val_labels)
    names = source.val_names()
    num_val_shards = -(-len(names) // _VAL_SHARD)
    for k in range(num_val_shards):
      if not staging.done("test", k):
        rows = range(k * _VAL_SHARD, min((k + 1) * _VAL_SHARD, len(names)))
        staging.write_shard("test", k, ((names[i], labels[i], None, source.val_record(i))
                                        for i in rows))
        say(f"imagenet2012 validation: shard {k + 1}/{num_val_shards}")
  staging.finalize({"train": len(wnids), "test": num_val_shards},
                   {"train": "train", "test": images.DATASETS["imagenet2012"].tfds_test_split},
                   dict(dataset="imagenet2012", encoding="jpeg", num_classes=len(wnids),
                        num_superclasses=None, label_names=wnids))
  return staging.final


# --- command line --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m kd_jax.prepare", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
  parser.add_argument("dataset", choices=["cifar10", "cifar100", "imagenet"])
  parser.add_argument("--data_dir", default=None,
                      help="where the prepared data goes (default: $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets); train with --config.dataset.data_dir=DATA_DIR")
  parser.add_argument("--archive", default=None,
                      help="CIFAR: the cifar-*-python.tar.gz file (default: download it); "
                      "ImageNet: a directory with the two ILSVRC2012 tars or train/, val/")
  parser.add_argument("--skip_checksum", action="store_true",
                      help="use an archive whose MD5 differs from the published one")
  parser.add_argument("--val_labels", default=None,
                      help="ImageNet with a flat val/ or the val tar: one wnid per line for "
                      "the validation images in sorted order (default: TFDS's file)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  data_dir = os.path.abspath(os.path.expanduser(args.data_dir or prepared.default_data_dir()))
  name = prepared.NAMES[args.dataset]
  archive = args.archive and os.path.expanduser(args.archive)
  final = os.path.join(prepared.dataset_dir(name, data_dir), prepared.FINAL)
  if prepared.exists(name, data_dir):
    say(f"{name} is already prepared in {final} (delete it to prepare it again)")
    return 0
  try:
    os.makedirs(data_dir, exist_ok=True)
    if name == "imagenet2012":
      final = prepare_imagenet(data_dir, archive, args.skip_checksum, args.val_labels)
    else:
      final = prepare_cifar(name, data_dir, archive, args.skip_checksum)
  except PrepareError as error:
    print(f"kd_jax.prepare: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    return 2
  except OSError as error:  # a full disk, a directory that cannot be written
    print(f"kd_jax.prepare: cannot write {data_dir}: {error}", file=sys.stderr, flush=True)
    return 2
  say(f"{name} prepared in {final}; train with --config.dataset.data_dir={data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
