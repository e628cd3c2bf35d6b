"""`python -m kd_jax.prepare` on generated archives in the original formats: what is read back
equals the archive's images and labels in TFDS's order; checksums; an interrupted prepare
never looks complete and resumes; a one-epoch resnet8 run trains on the result."""

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import trainer_util
from PIL import Image

from kd_jax import data, prepare
from kd_jax.data import archives, fake_archives, prepared

hashing = pytest.importorskip("tensorflow_datasets.core.hashing")


def _tfds_order(keys, split_name):
  """TFDS's own order: its Hasher's 128-bit keys, sorted (tensorflow_datasets/core/shuffle)."""
  hasher = hashing.Hasher(split_name)
  return sorted(range(len(keys)), key=lambda i: hasher.hash_key(keys[i]))


def _pickled_split(archive, name, split):
  """(uint8 [N, 32, 32, 3], labels, coarse labels or None) of a split, read from the archive
  as its format is documented (not through kd_jax), in archive order."""
  folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
  files = ({"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
           if name == "cifar10" else {"train": ["train"], "test": ["test"]})[split]
  images, labels, coarse = [], [], []
  with tarfile.open(archive) as tar:
    for file in files:
      batch = pickle.load(tar.extractfile(f"{folder}/{file}"), encoding="bytes")
      images.append(batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      labels += batch[b"labels" if name == "cifar10" else b"fine_labels"]
      coarse += batch.get(b"coarse_labels", [])
  return np.concatenate(images), np.array(labels), np.array(coarse) if coarse else None


def _prepare(*args):
  assert prepare.main([*map(str, args)]) == 0


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_back_the_archive_in_tfds_order(tmp_path, name):
  archive = fake_archives.cifar(name, str(tmp_path / f"{name}.tar.gz"), 120, 40)
  _prepare(name, f"--archive={archive}", f"--data_dir={tmp_path / 'd'}", "--skip_checksum")
  for split in ("train", "test"):
    pixels, labels, coarse = _pickled_split(archive, name, split)
    order = _tfds_order(list(range(len(labels))), split)
    source = data.load(name, split, data_dir=str(tmp_path / "d"))
    assert isinstance(source, prepared.PreparedSource) and len(source) == len(labels)
    assert source.info.num_classes == (10 if name == "cifar10" else 100)
    np.testing.assert_array_equal(source.labels, labels[order])
    batch = source.get_batch(np.arange(len(source)))
    np.testing.assert_array_equal(batch["image"], pixels[order])
    np.testing.assert_array_equal(batch["label"], labels[order])
    if name == "cifar100":
      assert source.info.num_superclasses == 20
      np.testing.assert_array_equal(batch["superclass"], coarse[order])
    else:
      assert "superclass" not in batch and source.info.num_superclasses is None
    batch["image"][0, 0, 0] = 0  # batches are writable, as other sources' are


def test_checksum_mismatch_stops_before_writing_and_rerun_is_a_no_op(tmp_path, capsys):
  archive = fake_archives.cifar("cifar100", str(tmp_path / "c.tar.gz"), 20, 10)
  assert prepare.main([f"--archive={archive}", f"--data_dir={tmp_path / 'd'}", "cifar100"]) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and "is not the published eb9058c3a382ffc7106e4002c42a8d85" in error
  assert "--skip_checksum" in error and not (tmp_path / "d" / "cifar100").exists()
  with open(archive, "rb") as f:
    assert archives.md5sum(archive) == hashlib.md5(f.read()).hexdigest()
  _prepare("cifar100", f"--archive={archive}", f"--data_dir={tmp_path / 'd'}", "--skip_checksum")
  _prepare("cifar100", f"--archive={archive}", f"--data_dir={tmp_path / 'd'}")  # no checksum
  assert "already prepared" in capsys.readouterr().out


def test_published_checksums_and_urls():
  assert prepare._CIFAR["cifar100"]["md5"] == "eb9058c3a382ffc7106e4002c42a8d85"
  assert prepare._CIFAR["cifar10"]["md5"] == "c58f30108f718f92721af3b95e74349a"
  assert prepare._CIFAR["cifar100"]["url"].endswith("~kriz/cifar-100-python.tar.gz")
  assert prepare._IMAGENET["train"]["md5"] == "1d675b47d978889d74fa0da5fadfb00e"
  assert prepare._IMAGENET["test"]["md5"] == "29b22e2961454d5413ddabcf34fc5622"
  tsv = prepare._tfds_file("datasets/imagenet2012/checksums.tsv")  # TFDS's sizes agree
  if tsv:
    with open(tsv) as f:
      sizes = {line.split()[0].rsplit("/", 1)[1]: int(line.split()[1]) for line in f}
    assert {spec["file"]: spec["size"] for spec in prepare._IMAGENET.values()} == sizes


@pytest.mark.parametrize("bad, message", [
    (b"not a tar", "is not a .tar.gz archive"),
    ("wrong_layout", "has no cifar-100-python/meta"),
    ("evil_pickle", "is not a CIFAR batch (UnpicklingError: posix.system is not allowed"),
])
def test_archive_of_another_format_is_one_line(tmp_path, capsys, bad, message):
  path = tmp_path / "c.tar.gz"
  if isinstance(bad, bytes):
    path.write_bytes(bad)
  else:
    with tarfile.open(path, "w:gz") as tar:
      payload = (pickle.dumps(os.system, protocol=2) if bad == "evil_pickle"
                 else b"x")
      member = "cifar-100-python/meta" if bad == "evil_pickle" else "other/meta"
      info = tarfile.TarInfo(member)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  assert prepare.main(["cifar100", f"--archive={path}", f"--data_dir={tmp_path / 'd'}",
                       "--skip_checksum"]) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and message in error, error
  assert not prepared.exists("cifar100", str(tmp_path / "d"))


def test_interrupted_prepare_never_looks_complete_and_resumes(tmp_path, monkeypatch):
  """CIFAR-10 has 5 training shards: a failure while writing the third leaves a staging
  directory (not read, reported as not prepared) whose two complete shards the rerun keeps."""
  archive = fake_archives.cifar("cifar10", str(tmp_path / "c.tar.gz"), 100, 20)
  args = ["cifar10", f"--archive={archive}", f"--data_dir={tmp_path}", "--skip_checksum"]
  written, original = [], prepare.Staging.write_shard

  def failing(self, split, k, examples):
    if len(written) == 2:
      list(examples)[:1]  # a shard half-written when the failure hits
      with open(os.path.join(self.dir, self.shard(split, k) + ".array_record.tmp"), "w"):
        pass
      raise KeyboardInterrupt("killed")
    written.append((split, k))
    return original(self, split, k, examples)

  monkeypatch.setattr(prepare.Staging, "write_shard", failing)
  with pytest.raises(KeyboardInterrupt):
    prepare.main(args)
  staging = tmp_path / "cifar10" / prepared.STAGING
  assert sorted(p.name for p in staging.glob("*.json")) == [
      "source.json", "train.00000.json", "train.00001.json"]
  assert not (tmp_path / "cifar10" / prepared.FINAL).exists()
  assert not prepared.exists("cifar10", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="is not prepared"):
    data.load("cifar10", "train", data_dir=str(tmp_path))
  kept = (staging / "train.00000.array_record").stat().st_mtime_ns
  written.clear()
  monkeypatch.setattr(prepare.Staging, "write_shard", lambda self, split, k, examples: (
      written.append((split, k)), original(self, split, k, examples))[1])
  assert prepare.main(args) == 0
  assert written == [("train", 2), ("train", 3), ("train", 4), ("test", 0)]
  final = tmp_path / "cifar10" / prepared.FINAL
  assert (final / "train.00000.array_record").stat().st_mtime_ns == kept
  assert not staging.exists() and not list(final.glob("*.tmp"))
  pixels, labels, _ = _pickled_split(archive, "cifar10", "train")
  source = data.load("cifar10", "train", data_dir=str(tmp_path))
  order = _tfds_order(list(range(len(labels))), "train")
  np.testing.assert_array_equal(source.get_batch(np.arange(100))["image"], pixels[order])


def test_other_archives_in_the_staging_directory_start_afresh(tmp_path):
  first = fake_archives.cifar("cifar100", str(tmp_path / "a.tar.gz"), 20, 10, seed=0)
  staging = prepare.Staging(prepared.dataset_dir("cifar100", str(tmp_path)),
                            dict(archive=archives.identity(first)))
  staging.save()
  staging.write_shard("train", 0, [(0, 1, 1, b"\0" * 3072)])
  second = fake_archives.cifar("cifar100", str(tmp_path / "b.tar.gz"), 20, 10, seed=1)
  _prepare("cifar100", f"--archive={second}", f"--data_dir={tmp_path}", "--skip_checksum")
  labels = _pickled_split(second, "cifar100", "train")[1]
  assert sorted(data.load("cifar100", "train", data_dir=str(tmp_path)).labels) == sorted(labels)


def _decode(encoded):
  with Image.open(io.BytesIO(encoded)) as image:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("layout", ["tars", "folders"])
def test_imagenet_tars_or_folders_read_back_in_tfds_order(tmp_path, layout):
  labels_file = fake_archives.imagenet(str(tmp_path / "src"), num_classes=3, per_class=4,
                                       num_val=7)
  with open(labels_file) as f:
    val_wnids = f.read().split()
  train, val = {}, {}  # key -> (jpeg bytes, label)
  with tarfile.open(tmp_path / "src" / "ILSVRC2012_img_train.tar") as outer:
    wnids = sorted(name[:-4] for name in outer.getnames())
    for member in outer.getmembers():
      with tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read())) as inner:
        for m in inner.getmembers():
          train[m.name] = (inner.extractfile(m).read(), wnids.index(member.name[:-4]))
  with tarfile.open(tmp_path / "src" / "ILSVRC2012_img_val.tar") as tar:
    for i, m in enumerate(sorted(tar.getmembers(), key=lambda m: m.name)):
      val[m.name] = (tar.extractfile(m).read(), wnids.index(val_wnids[i]))
  archive = tmp_path / "src"
  extra = [f"--val_labels={labels_file}"]
  if layout == "folders":  # the PyTorch layout: train/<wnid>/, val/<wnid>/
    archive = tmp_path / "folders"
    for split, examples in (("train", train), ("val", val)):
      for key, (encoded, label) in examples.items():
        (archive / split / wnids[label]).mkdir(parents=True, exist_ok=True)
        (archive / split / wnids[label] / key).write_bytes(encoded)
    extra = []
  _prepare("imagenet", f"--archive={archive}", f"--data_dir={tmp_path / 'd'}",
           "--skip_checksum", *extra)
  for split, examples, salt in (("train", train, "train"), ("test", val, "validation")):
    keys = list(examples)
    order = [keys[i] for i in _tfds_order(keys, salt)]
    source = data.load("imagenet2012", split, data_dir=str(tmp_path / "d"))
    assert source.info.num_classes == 3 and source.info.augmentation == "imagenet"
    np.testing.assert_array_equal(source.labels, [examples[k][1] for k in order])
    batch = source.get_batch(np.arange(len(source)))
    for image, key in zip(batch["image"], order):
      np.testing.assert_array_equal(image, _decode(examples[key][0]))


def test_imagenet_is_never_downloaded_and_val_labels_are_needed(tmp_path, capsys):
  assert prepare.main(["imagenet", f"--data_dir={tmp_path}"]) == 2
  assert "not downloadable without an account" in capsys.readouterr().err
  fake_archives.imagenet(str(tmp_path / "src"), num_val=5)
  os.remove(tmp_path / "src" / "validation_labels.txt")
  (tmp_path / "short.txt").write_text("n01440764\n")
  assert prepare.main(["imagenet", f"--archive={tmp_path / 'src'}", f"--data_dir={tmp_path}",
                       "--skip_checksum", f"--val_labels={tmp_path / 'short.txt'}"]) == 2
  assert "lists 1 labels for 5 validation images" in capsys.readouterr().err
  assert not prepared.exists("imagenet2012", str(tmp_path))


def test_one_epoch_of_resnet8_on_prepared_cifar100_through_the_cli(tmp_path):
  """The issue's done-when, in small: prepare a generated cifar-100-python.tar.gz with the
  command line, then train one epoch of resnet8 on it with the shipped config."""
  archive = fake_archives.cifar("cifar100", str(tmp_path / "cifar-100-python.tar.gz"), 256, 64)
  env = trainer_util.env()
  result = subprocess.run([sys.executable, "-m", "kd_jax.prepare", "cifar100",
                           f"--archive={archive}", f"--data_dir={tmp_path / 'data'}",
                           "--skip_checksum"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", "--config=cifar100:method=ce,student=resnet8,epochs=1",
       f"--workdir={tmp_path / 'run'}", f"--config.dataset.data_dir={tmp_path / 'data'}",
       "--config.batch_size=32", "--config.eval_batch_size=64", "--config.log_every_steps=4"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = trainer_util.read_summary(tmp_path / "run")
  assert summary["student"]["steps"] == 8 and summary["dataset"] == "cifar100"
  assert "teacher" not in summary  # ce needs no teacher
