"""Tests of kd_jax.data: offline datasets, TFDS sources (mocked), augmentation and loader."""

import random
import sys

import numpy as np
import pytest

from kd_jax import data
from kd_jax.data import augment, offline, synthetic
from kd_jax.data import loader as loader_lib
from kd_jax.data import tfds as tfds_lib

# --- offline datasets ----------------------------------------------------------------------


def test_names_and_unknown_dataset():
  assert set(data.names()) == {"cifar10", "cifar100", "imagenet2012", "digits", "mnist1d",
                               "synthetic"}
  with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits"):
    data.load("mnist", "train")
  with pytest.raises(ValueError, match="split='validation'"):
    data.load("digits", "validation")


def test_mnist1d_default_split_and_no_global_rng_side_effect():
  np.random.seed(123)
  random.seed(123)
  expected_numpy, expected_python = np.random.rand(), random.random()
  np.random.seed(123)
  random.seed(123)
  train = data.load("mnist1d", "train")
  test = data.load("mnist1d", "test")
  assert (np.random.rand(), random.random()) == (expected_numpy, expected_python)
  assert (len(train), len(test)) == (4000, 1000)
  assert train.info.input_shape == (40, 1) and train.info.num_classes == 10
  batch = train.get_batch(np.arange(4000))
  assert batch["image"].shape == (4000, 40, 1) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and set(np.unique(batch["label"])) == set(range(10))
  assert "superclass" not in batch
  # the package standardises the whole 5000-example set
  everything = np.concatenate([train.images, test.images])
  np.testing.assert_allclose([everything.mean(), everything.std()], [0, 1], atol=1e-4)


def test_mnist1d_matches_the_package_generator():
  from mnist1d.data import get_dataset_args, make_dataset
  args = get_dataset_args()
  args.num_samples = 500
  reference = make_dataset(args)  # train_split 0.8 -> 400 / 100, as requested below
  train = data.load("mnist1d", "train", num_train=400, num_test=100)
  test = data.load("mnist1d", "test", num_train=400, num_test=100)
  np.testing.assert_allclose(train.images[..., 0], reference["x"], rtol=1e-6)
  np.testing.assert_array_equal(train.labels, reference["y"])
  np.testing.assert_allclose(test.images[..., 0], reference["x_test"], rtol=1e-6)
  np.testing.assert_array_equal(test.labels, reference["y_test"])
  with pytest.raises(ValueError, match="num_train=0"):
    data.load("mnist1d", "train", num_train=0)


def test_digits_split_is_stratified_and_seeded():
  from sklearn.datasets import load_digits
  all_labels = load_digits().target
  train, test = data.load("digits", "train", seed=3), data.load("digits", "test", seed=3)
  assert (len(train), len(test)) == (1437, 360)
  assert train.info.input_shape == (8, 8, 1)
  images = train.get_batch(np.arange(len(train)))["image"]
  assert images.dtype == np.float32 and images.min() == 0 and images.max() == 1
  np.testing.assert_array_equal(
      np.bincount(train.labels, minlength=10) + np.bincount(test.labels, minlength=10),
      np.bincount(all_labels))
  test_share = np.bincount(test.labels) / np.bincount(all_labels)
  assert np.all(np.abs(test_share - 360 / 1797) < 0.02)
  again = data.load("digits", "test", seed=3)
  np.testing.assert_array_equal(again.images, test.images)
  other = data.load("digits", "test", seed=4)
  assert not np.array_equal(other.images, test.images)
  standardized = data.load("digits", "train", seed=3, standardize=True).images
  np.testing.assert_allclose([standardized.mean(), standardized.std()], [0, 1], atol=1e-5)


def test_synthetic_shapes_superclasses_and_determinism():
  options = dict(num_classes=12, num_superclasses=4, dim=5, num_train=120, num_test=60)
  train = data.load("synthetic", "train", seed=1, **options)
  test = data.load("synthetic", "test", seed=1, **options)
  assert (len(train), len(test)) == (120, 60)
  assert train.info.num_superclasses == 4 and train.info.input_shape == (5,)
  batch = train.get_batch(np.arange(120))
  assert batch["image"].shape == (120, 5) and batch["image"].dtype == np.float32
  np.testing.assert_array_equal(np.bincount(batch["label"]), np.full(12, 10))
  np.testing.assert_array_equal(batch["superclass"], batch["label"] // 3)
  np.testing.assert_array_equal(data.load("synthetic", "train", seed=1, **options).images,
                                train.images)
  assert not np.array_equal(data.load("synthetic", "train", seed=2, **options).images,
                            train.images)
  assert not np.array_equal(train.images[:60], test.images)


@pytest.mark.parametrize("correlation", [1.0, -0.1, 1.5])
def test_synthetic_rejects_bad_correlation(correlation):
  with pytest.raises(ValueError, match=f"correlation={correlation}"):
    data.load("synthetic", "train", correlation=correlation)


def test_synthetic_correlation_brings_sibling_classes_together():

  def within_over_between(correlation):
    source = data.load("synthetic", "train", seed=0, correlation=correlation,
                       num_classes=20, num_superclasses=4, dim=32, num_train=4000)
    means = np.stack([source.images[source.labels == c].mean(0) for c in range(20)])
    distance = np.linalg.norm(means[:, None] - means[None], axis=-1)
    group = synthetic.superclass_of(20, 4)
    same = (group[:, None] == group[None]) & ~np.eye(20, dtype=bool)
    return distance[same].mean() / distance[group[:, None] != group[None]].mean()

  low, high = within_over_between(0.1), within_over_between(0.9)
  assert high < 0.6 * low
  # E|m_c − m_c'|² = 2·D·(1 − ρ) within a superclass, 2·D across: ratio ≈ sqrt(1 − ρ)
  assert abs(high - np.sqrt(0.1)) < 0.1


# --- subsets and held-out splits -----------------------------------------------------------


def test_subset_and_split_holdout():
  source = data.load("synthetic", "train", num_classes=10, num_superclasses=2, dim=3,
                     num_train=200)
  view = data.subset(source, np.arange(50, 150))
  nested = data.subset(view, np.array([0, 5, 99]))
  np.testing.assert_array_equal(nested.get_batch(np.arange(3))["image"],
                                source.get_batch(np.array([50, 55, 149]))["image"])
  np.testing.assert_array_equal(nested.labels, source.labels[[50, 55, 149]])
  with pytest.raises(IndexError):
    view.get_batch(np.array([100]))
  train, held_out = data.split_holdout(source, 30, seed=0)
  assert (len(train), len(held_out)) == (170, 30)
  np.testing.assert_array_equal(np.bincount(held_out.labels, minlength=10), np.full(10, 3))
  both = np.concatenate([train.parent_indices, held_out.parent_indices])
  np.testing.assert_array_equal(np.sort(both), np.arange(200))
  _, again = data.split_holdout(source, 30, seed=0)
  np.testing.assert_array_equal(again.parent_indices, held_out.parent_indices)
  _, other = data.split_holdout(source, 30, seed=1)
  assert not np.array_equal(other.parent_indices, held_out.parent_indices)
  assert data.split_holdout(source, 0, seed=0) == (source, None)
  with pytest.raises(ValueError, match="size=201"):
    data.split_holdout(source, 201, seed=0)


# --- TFDS through tfds.testing.mock_data ---------------------------------------------------


def test_tfds_cifar100_source(mock_tfds):
  source = data.load("cifar100", "train", data_dir=mock_tfds, cache_labels=False)
  assert len(source) == 40
  assert source.info.num_classes == 100 and source.info.num_superclasses == 20
  assert source.info.augmentation == "cifar" and source.info.input_shape == (32, 32, 3)
  batch = source.get_batch(np.array([3, 0, 7]))
  assert batch["image"].shape == (3, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and batch["superclass"].dtype == np.int32
  np.testing.assert_array_equal(source.labels[[3, 0, 7]], batch["label"])
  assert np.all((0 <= source.labels) & (source.labels < 100))
  cifar10 = data.load("cifar10", "test", data_dir=mock_tfds, cache_labels=False)
  assert cifar10.info.num_superclasses is None and cifar10.info.num_classes == 10
  assert "superclass" not in cifar10.get_batch(np.arange(2))
  loader = data.make_loader(source, batch_size=8, seed=0, train=True, augment="cifar",
                            process_index=0, process_count=1, num_devices=1)
  batch = next(iter(loader.epoch(0)))
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert "tensorflow" not in sys.modules


def test_tfds_imagenet_source_and_crops(mock_tfds):
  source = data.load("imagenet2012", "test", data_dir=mock_tfds, cache_labels=False)
  assert source.info.num_classes == 1000 and source.info.input_shape == (224, 224, 3)
  raw = source.get_batch(np.arange(3))["image"]
  assert raw.dtype == object and all(im.ndim == 3 and im.shape[2] == 3 for im in raw)
  for train in (True, False):
    loader = data.make_loader(source, batch_size=4, seed=0, train=train,
                              augment="imagenet" if train else None, process_index=0,
                              process_count=1, num_devices=1, prefetch=0)
    batch = next(iter(loader.epoch(0)))
    assert batch["image"].shape == (4, 224, 224, 3) and np.isfinite(batch["image"]).all()


def test_worker_processes_build_the_same_batches():
  """grain's worker processes (for ImageNet's JPEG decoding) hand back the in-process batches,
  in order, from a resumed step on."""
  source = tfds_lib.fake_imagenet(20)
  options = dict(batch_size=4, seed=3, train=True, augment="imagenet", prefetch=1)
  in_process = list(make(source, **options).epoch(1, 2))
  in_workers = list(make(source, **options, workers=2).epoch(1, 2))
  assert len(in_process) == make(source, **options).steps_per_epoch - 2 >= 3
  assert_batches_equal(in_process, in_workers)
  with pytest.raises(ValueError, match="workers=-1 must be >= 0"):
    make(source, augment="imagenet", workers=-1)


def test_missing_data_says_how_to_prepare_it(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match="python -m kd_jax.prepare cifar100 --data_dir="):
    data.load("cifar100", "train", data_dir=str(tmp_path / "absent"))
  with pytest.raises(FileNotFoundError, match="array_record"):
    data.load("cifar10", "test", data_dir=str(tmp_path))  # exists, nothing prepared
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # the default data_dir, empty
  with pytest.raises(FileNotFoundError, match=f"prepare imagenet --data_dir={tmp_path} "):
    data.load("imagenet2012", "train")


# --- augmentation ----------------------------------------------------------------------------


def test_example_uniforms_are_a_function_of_seed_epoch_index():
  u = augment.example_uniforms(0, 1, np.arange(20000), 3)
  assert u.shape == (20000, 3) and u.min() >= 0 and u.max() < 1
  np.testing.assert_allclose(u.mean(0), 0.5, atol=0.01)
  np.testing.assert_array_equal(augment.example_uniforms(0, 1, [7, 3], 3), u[[7, 3]])
  assert not np.array_equal(augment.example_uniforms(0, 2, [7], 3), u[[7]])
  assert not np.array_equal(augment.example_uniforms(1, 1, [7], 3), u[[7]])


def test_cifar_train_matches_a_per_example_reference():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  uniforms = augment.example_uniforms(0, 0, np.arange(64), 3)
  mean, std = augment.CIFAR100_MEAN, augment.CIFAR100_STD
  out = augment.cifar_train(images, uniforms, mean, std)
  assert out.shape == images.shape and out.dtype == np.float32
  for image, u, got in zip(images, uniforms, out):
    top, left = int(u[0] * 9), int(u[1] * 9)
    crop = np.pad(image, ((4, 4), (4, 4), (0, 0)))[top:top + 32, left:left + 32]
    if u[2] < 0.5:
      crop = crop[:, ::-1]
    expected = (crop / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(got, expected, atol=1e-5)
  low, high = -np.array(mean) / np.array(std), (1 - np.array(mean)) / np.array(std)
  assert np.all(out >= low - 1e-5) and np.all(out <= high + 1e-5)
  # zero padding shows up as exactly the normalised 0 on some border
  assert np.isclose(out, low, atol=1e-5).all(-1).any()


def test_random_resized_box_stays_inside_and_follows_torchvision_ranges():
  uniforms = augment.example_uniforms(0, 0, np.arange(500), augment.IMAGENET_DRAWS)
  for height, width, u in zip([300, 500, 64, 1000] * 125, [400, 200, 64, 90] * 125, uniforms):
    top, left, h, w = augment.random_resized_box(height, width, u)
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    assert h > 0 and w > 0


def test_imagenet_eval_is_resize_then_center_crop():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)  # shorter side already 256
  out = augment.imagenet_eval([image])
  expected = augment.normalize(image[16:240, 38:262], augment.IMAGENET_MEAN,
                               augment.IMAGENET_STD)
  np.testing.assert_allclose(out[0], expected, atol=1e-5)


# --- loader ----------------------------------------------------------------------------------


def cifar_like(n=100, num_classes=10):
  rng = np.random.default_rng(0)
  info = data.DatasetInfo("mock_cifar", num_classes, (32, 32, 3), num_superclasses=2,
                          augmentation="cifar", mean=augment.CIFAR10_MEAN,
                          std=augment.CIFAR10_STD)
  labels = (np.arange(n) % num_classes).astype(np.int32)
  return data.ArraySource(info, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels,
                          labels % 2)


def make(source, **kwargs):
  options = dict(batch_size=8, seed=0, train=True, augment="cifar", process_index=0,
                 process_count=1, num_devices=1)
  return data.make_loader(source, **(options | kwargs))


def assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_loader_is_deterministic_and_epochs_differ():
  source = cifar_like()
  loader = make(source)
  assert loader.steps_per_epoch == 12  # 100 // 8: the last partial batch is dropped
  epoch0 = list(loader.epoch(0))
  assert_batches_equal(epoch0, list(make(source).epoch(0)))
  epoch1 = list(loader.epoch(1))
  assert not np.array_equal(epoch0[0]["index"], epoch1[0]["index"])
  assert not np.array_equal(epoch0[0]["index"], next(make(source, seed=1).epoch(0))["index"])
  batch = epoch0[0]
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, 32, 32, 3)
  assert batch["mask"].all()
  np.testing.assert_array_equal(batch["label"], source.labels[batch["index"]])
  np.testing.assert_array_equal(batch["superclass"], batch["label"] % 2)


def test_loader_resume_yields_the_same_batches():
  loader = make(cifar_like())
  full = list(loader.epoch(3))
  assert_batches_equal(list(loader.epoch(3, start_step=5)), full[5:])
  assert list(loader.epoch(3, start_step=12)) == []
  with pytest.raises(ValueError, match="start_step=13"):
    loader.epoch(3, start_step=13)


@pytest.mark.parametrize("process_count", [1, 2])
def test_train_processes_share_each_global_batch_without_loss_or_duplicates(process_count):
  source = cifar_like(n=100)
  single = list(make(source).epoch(2))
  per_process = [list(make(source, process_index=p, process_count=process_count).epoch(2))
                 for p in range(process_count)]
  seen = []
  for step, global_batch in enumerate(single):
    rows = [per_process[p][step] for p in range(process_count)]
    for key in global_batch:  # process p holds rows [p·b, (p+1)·b), augmentation included
      np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), global_batch[key])
    seen.extend(np.concatenate([r["index"] for r in rows]))
  assert len(seen) == len(set(seen)) == 96 and set(seen) <= set(range(100))


@pytest.mark.parametrize("process_count,num_examples", [(1, 21), (2, 21), (2, 3)])
def test_eval_padding_covers_every_example_once(process_count, num_examples):
  source = cifar_like(n=num_examples)
  batches = [list(make(source, train=False, augment=None, process_index=p,
                       process_count=process_count).epoch(0)) for p in range(process_count)]
  index = np.concatenate([b["index"] for batch_list in batches for b in batch_list])
  mask = np.concatenate([b["mask"] for batch_list in batches for b in batch_list])
  assert len(index) == -(-num_examples // 8) * 8
  np.testing.assert_array_equal(np.sort(index[mask]), np.arange(num_examples))
  assert np.all(index[~mask] == -1)
  for batch_list in batches:
    for batch in batch_list:
      assert batch["image"].shape == (8 // process_count, 32, 32, 3)
      real = batch["mask"]
      expected = augment.normalize(source.images[batch["index"][real]],
                                   augment.CIFAR10_MEAN, augment.CIFAR10_STD)
      np.testing.assert_allclose(batch["image"][real], expected)  # no augmentation at eval
      assert np.all(batch["image"][~real] == 0)


def test_offline_loader_yields_data_as_stored():
  source = data.load("digits", "test")
  batch = next(iter(make(source, augment=None, train=False).epoch(0)))
  np.testing.assert_array_equal(batch["image"], source.images[:8])
  assert "superclass" not in batch


def test_loader_argument_errors():
  source = cifar_like()
  with pytest.raises(ValueError, match=r"batch_size=10 .*process_count \(1\) x num_devices "
                     r"\(4\) = 4"):
    make(source, batch_size=10, num_devices=4)
  with pytest.raises(ValueError, match="batch_size=12 .* = 8"):
    make(source, batch_size=12, process_count=2, num_devices=4)
  with pytest.raises(ValueError, match="process_index=2"):
    make(source, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="augment='imagenet'"):
    make(source, augment="imagenet")
  with pytest.raises(ValueError, match="augment='cifar'.*no augmentation"):
    make(data.load("digits", "test"))
  with pytest.raises(ValueError, match="batch_size=128 exceeds the 100"):
    make(source, batch_size=128)


def test_default_devices_come_from_jax():
  jax = pytest.importorskip("jax")
  loader = data.make_loader(cifar_like(), batch_size=8 * jax.local_device_count(), seed=0,
                            train=False)
  assert (loader.process_index, loader.process_count) == (jax.process_index(),
                                                          jax.process_count())


def test_prefetch_reraises_source_errors_and_stops_early():

  class Broken(data.ArraySource):

    def get_batch(self, indices):
      if 16 in indices:
        raise RuntimeError("disk on fire")
      return super().get_batch(indices)

    def __len__(self):
      return len(self.images)

  source = cifar_like()
  broken = Broken(source.info, source.images, source.label_array, source.superclass_array)
  with pytest.raises(RuntimeError, match="disk on fire"):
    list(make(broken, train=False, augment=None, prefetch=2).epoch(0))
  iterator = make(source, prefetch=1).epoch(0)
  next(iterator)
  iterator.close()  # must not hang


def test_epoch_permutation_is_a_permutation():
  order = loader_lib.epoch_permutation(1000, 5, 2)
  np.testing.assert_array_equal(np.sort(order), np.arange(1000))
  np.testing.assert_array_equal(order, loader_lib.epoch_permutation(1000, 5, 2))
  assert offline.MNIST1D_NUM_TRAIN == 4000
