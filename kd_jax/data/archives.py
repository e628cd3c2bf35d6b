"""What `python -m kd_jax.prepare` shares between datasets: archives downloaded and checked
against their published checksums, and the staging directory a prepared dataset is written
into, shard by shard, before the one rename that makes it complete (`Staging`).
"""

import hashlib
import json
import os
import shutil
import urllib.request
from collections.abc import Iterable

import numpy as np

from kd_jax import _files
from kd_jax.data import prepared


class PrepareError(Exception):
  """Bad input: reported in one line, exit 2."""


def say(message: str) -> None:
  print(f"kd_jax.prepare: {message}", flush=True)


def md5sum(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def verify(path: str, md5: str, size: int | None, skip: bool, verified: set) -> None:
  """Stops on a size or MD5 that differs from the published one (unless `skip`); a file
  already verified by an earlier (interrupted) run, unchanged since, is not hashed again."""
  stat = os.stat(path)
  identity = f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
  if skip or identity in verified:
    return
  if size is not None and stat.st_size != size:
    raise PrepareError(f"{path} has {stat.st_size} bytes, the published archive {size}: a "
                       "truncated or different file (pass --skip_checksum to use it anyway)")
  say(f"checking the MD5 of {path} ...")
  actual = md5sum(path)
  if actual != md5:
    raise PrepareError(f"{path}: MD5 {actual} is not the published {md5}: a damaged or "
                       "different file; download it again, or pass --skip_checksum to use "
                       "it anyway")
  verified.add(identity)


def download(url: str, path: str) -> None:
  """`url` to `path`, through `path.partial` (a download cut off never looks complete)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  say(f"downloading {url} to {path}")
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(path + ".partial",
                                                                    "wb") as out:
      shutil.copyfileobj(response, out, 1 << 22)
  except OSError as error:  # URLError, timeouts, a full disk
    raise PrepareError(f"cannot download {url} ({error}): download it yourself and pass "
                       "--archive=PATH") from None
  os.replace(path + ".partial", path)


class Staging:
  """DATA_DIR/<name>/prepared.partial: the shards written so far, then the atomic rename."""

  def __init__(self, dataset_dir: str, source: dict):
    self.final = os.path.join(dataset_dir, prepared.FINAL)
    self.dir = os.path.join(dataset_dir, prepared.STAGING)
    self.source = source
    earlier = None
    source_path = os.path.join(self.dir, "source.json")
    if os.path.isfile(source_path):
      with open(source_path) as f:
        earlier = json.load(f)
    if earlier is not None and earlier.get("source") != source:
      say(f"{self.dir} holds a prepare of other archives: starting afresh")
      shutil.rmtree(self.dir)
      earlier = None
    if earlier is not None:
      for name in os.listdir(self.dir):  # pieces of a shard being written when it was killed
        if name.endswith(".tmp"):
          os.remove(os.path.join(self.dir, name))
    self.verified = set((earlier or {}).get("verified", []))

  def save(self) -> None:
    """Creates the staging directory (nothing is written before the checksums pass) and
    records the sources and the archives verified, for a rerun."""
    os.makedirs(self.dir, exist_ok=True)
    write_json(os.path.join(self.dir, "source.json"),
                dict(source=self.source, verified=sorted(self.verified)))

  @staticmethod
  def shard(split: str, k: int) -> str:
    return f"{split}.{k:05d}"

  def done(self, split: str, k: int) -> bool:
    return os.path.isfile(os.path.join(self.dir, self.shard(split, k) + ".json"))

  def write_shard(self, split: str, k: int, examples: Iterable[tuple]) -> int:
    """Writes shard k of `split` from `(key, label, superclass, record bytes)`; the shard
    counts as written only once its .json (keys and labels) exists."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    base = os.path.join(self.dir, self.shard(split, k))
    writer = array_record_module.ArrayRecordWriter(base + ".array_record.tmp", "group_size:1")
    keys, labels, superclasses = [], [], []
    try:
      for key, label, superclass, record in examples:
        writer.write(record)
        keys.append(key)
        labels.append(int(label))
        superclasses.append(None if superclass is None else int(superclass))
    finally:
      writer.close()
    os.replace(base + ".array_record.tmp", base + ".array_record")
    write_json(base + ".json", dict(keys=keys, labels=labels, superclasses=superclasses))
    return len(keys)

  def finalize(self, shards: dict[str, int], salts: dict[str, str], manifest: dict) -> None:
    """The order, labels and manifest of every split, then the rename to prepared/."""
    splits = {}
    for split, count in shards.items():
      keys, labels, superclasses = [], [], []
      for k in range(count):
        with open(os.path.join(self.dir, self.shard(split, k) + ".json")) as f:
          sidecar = json.load(f)
        keys += sidecar["keys"]
        labels += sidecar["labels"]
        superclasses += sidecar["superclasses"]
      order = prepared.tfds_order(keys, salts[split])
      np.save(os.path.join(self.dir, f"{split}.order.npy"), order)
      np.save(os.path.join(self.dir, f"{split}.labels.npy"),
              np.asarray(labels, np.int32)[order])
      if manifest.get("num_superclasses"):
        np.save(os.path.join(self.dir, f"{split}.superclasses.npy"),
                np.asarray(superclasses, np.int32)[order])
      splits[split] = dict(num_examples=len(keys), tfds_split=salts[split],
                           shards=[self.shard(split, k) + ".array_record"
                                   for k in range(count)])
    write_json(os.path.join(self.dir, prepared.MANIFEST),
                dict(manifest, version=prepared.FORMAT_VERSION, splits=splits,
                     source=self.source))
    os.rename(self.dir, self.final)  # the one step after which it looks complete


def write_json(path: str, value) -> None:
  _files.write_text(path, json.dumps(value))


def identity(path: str) -> dict:
  stat = os.stat(path)
  return dict(path=os.path.abspath(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
