"""Teacher-output cache and mixed precision: a cached teacher trains exactly as the live one
(float32) or closely (float16, topk, sampled), streams its rows with the batches, is written
once and read by later runs, never uses a mismatched or corrupt table, resumes identically;
bfloat16 compute keeps float32 state."""

import functools
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_util

from kd_jax import config_defaults, models, pipeline
from kd_jax import data as data_lib
from kd_jax.data import augment
from kd_jax.train import cache_formats, checks, loop, parallel, row_store, splits, teacher_cache
from kd_jax.train import stage as stage_lib
from kd_jax.train import state as state_lib
from kd_jax.train import teacher as teacher_lib

# One epoch, no test evaluation nor checkpoint before the end: seconds per run.
_FAST = dict(num_epochs=1, eval_test_every_epochs=0, checkpoint__every_steps=0)


def _comparable(summary):
  """The summary without timings, paths and the cache's own entry (None for a live run)."""
  return {k: v for k, v in trainer_util.comparable(summary).items() if k != "teacher_cache"}


def _random_teacher(name, input_shape, num_classes=10):
  """A frozen teacher without training one: random weights are a teacher all the same."""
  model = models.create(name, num_classes)
  variables = state_lib.init_variables(model, jax.random.PRNGKey(7), input_shape)
  return teacher_lib.Teacher(name, model, variables, "random")


@pytest.fixture(scope="module")
def tiny():
  """Synthetic tiny data (no augmentation), the student stage, a teacher, the live run."""
  config = trainer_util.tiny_config(**_FAST)
  data, mesh = pipeline.prepare(config), parallel.make_mesh()
  stage = pipeline.stage.stage_config(config, "student")
  teacher = _random_teacher("mlp_large", (16,))
  return data, mesh, stage, teacher


@pytest.fixture(scope="module")
def live(tiny, tmp_path_factory):
  data, mesh, stage, teacher = tiny
  workdir = str(tmp_path_factory.mktemp("live"))
  return loop.train(stage, workdir, teacher=teacher, data=data, mesh=mesh).summary


def _counting(monkeypatch):
  """Counts the teacher passes that fill the cache (one per table computed)."""
  calls = []
  original = teacher_cache.compute_rows

  def counted(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(teacher_cache, "compute_rows", counted)
  return calls


def test_float32_cache_is_bit_identical_written_once_and_read_by_the_next_run(
    tiny, live, tmp_path, monkeypatch):
  data, mesh, stage, teacher = tiny
  calls = _counting(monkeypatch)
  stage = stage.copy_and_resolve_references()
  stage.teacher_cache.update(dir=str(tmp_path / "cache"), format="float32")
  first = loop.train(stage, str(tmp_path / "a"), teacher=teacher, data=data, mesh=mesh).summary
  assert len(calls) == 1
  assert _comparable(first) == _comparable(live)  # every metric, bit for bit
  assert first["fingerprint"] == live["fingerprint"]  # exact logits: the same result
  assert first["train_step_compilations"] == 1
  key_dir = tmp_path / "cache" / first["teacher_cache"]["key"]
  assert sorted(os.listdir(key_dir)) == ["key.json", "views"]  # one table, every epoch

  # Another method of the sweep: the teacher does not run again.
  stage.method.name = "lr"
  second = loop.train(stage, str(tmp_path / "b"), teacher=teacher, data=data, mesh=mesh)
  assert len(calls) == 1
  assert second.summary["teacher_cache"] == first["teacher_cache"]


def test_float16_cache_is_close_and_recorded_in_the_fingerprint(tiny, live, tmp_path):
  data, mesh, stage, teacher = tiny
  stage = stage.copy_and_resolve_references()
  stage.teacher_cache.update(dir=str(tmp_path / "cache"), format="float16")
  half = loop.train(stage, str(tmp_path / "a"), teacher=teacher, data=data, mesh=mesh).summary
  assert half["fingerprint"]["teacher.cache_format"] == "float16"
  assert {k: v for k, v in half["fingerprint"].items() if k != "teacher.cache_format"} == (
      live["fingerprint"])
  np.testing.assert_allclose(half["test_loss"], live["test_loss"], rtol=1e-3)
  assert abs(half["test_accuracy"] - live["test_accuracy"]) <= 2 / 256  # 256 test examples


def _cache(tmp_path, fields=None, calls=None, fmt="float16"):
  """A TeacherCache of 6 examples x 3 classes whose 'teacher' is a fixed array."""
  fields = fields or dict(version=teacher_cache._VERSION, augmentation=None, format=fmt, num_examples=6,
                          num_classes=3, teacher={"variables_crc32": "0"}, k=2)
  logits = np.arange(18, dtype=np.float32).reshape(6, 3) / 7
  keys = jax.random.split(jax.random.key(0), 6)

  def compute(epoch):
    if calls is not None:
      calls.append(epoch)
    order = np.arange(6)[::-1].copy()  # rows come in the order the teacher computed them
    rows = cache_formats.pack(fields["format"], jnp.asarray(logits[order]),
                              jnp.asarray(order % 3), k=2, keys=keys)
    return jax.tree.map(np.asarray, rows), order
  return teacher_cache.TeacherCache(str(tmp_path), fields, compute), logits


def _read(cache, epoch=0):
  """The rows a loader would put in a batch of every example, in index order."""
  cache.prepare(epoch)
  return cache.reader()(epoch, np.arange(6))


def _by_index(cache):
  """What `_read` must give: the computed rows put in index order."""
  rows, order = cache.compute(None)
  return {teacher_cache.FIELD_PREFIX + name: value[np.argsort(order)]
          for name, value in rows.items()}


def _assert_rows_equal(got, want):
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _chunk_files(array_path):
  """The chunk files of a zarr v3 array (`<array>/c/<i>/<j>`)."""
  return sorted(p for p in (array_path / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("fmt", ["float16", "topk", "sampled"])
def test_corrupt_or_mismatched_tables_are_recomputed_never_used(fmt, tmp_path, capsys):
  calls = []
  cache, _ = _cache(tmp_path, calls=calls, fmt=fmt)
  want = _by_index(cache)
  calls.clear()
  # Without augmentation one table serves every epoch; sampled draws anew every epoch.
  e = 0 if fmt == "sampled" else None
  _assert_rows_equal(_read(cache), want)
  _assert_rows_equal(_read(cache, 0 if fmt == "sampled" else 5), want)  # read, not computed
  assert calls == [e] and cache.read == [e]
  path = pathlib.Path(cache.path(0))
  array = path / ("logits" if fmt == "float16" else "classes")

  (chunk,) = _chunk_files(array)
  data = bytearray(chunk.read_bytes())  # a flipped bit in one array's one chunk
  data[len(data) // 2] ^= 0x01
  chunk.write_bytes(bytes(data))
  capsys.readouterr()
  _assert_rows_equal(_read(cache), want)
  assert calls == [e, e] and "does not match its checksum" in capsys.readouterr().out

  # A table stored under another key (e.g. copied by hand) is not this key's table.
  other, _ = _cache(tmp_path, dict(cache.fields, teacher={"variables_crc32": "1"}))
  other.prepare(0)
  shutil.rmtree(path)
  os.replace(other.path(0), path)
  _read(cache)
  assert calls == [e, e, e] and "key do not match" in capsys.readouterr().out
  _read(cache)  # and the recomputed one is read again
  assert calls == [e, e, e]

  (chunk,) = _chunk_files(array)
  chunk.write_bytes(b"")  # truncated to nothing
  _assert_rows_equal(_read(cache), want)
  assert len(calls) == 4

  # A cache that cannot be written (here: under a file) warns; the run keeps its rows.
  (tmp_path / "a_file").write_text("")
  unwritable, _ = _cache(tmp_path / "a_file" / "cache", fmt=fmt)
  _assert_rows_equal(_read(unwritable), want)
  assert "could not be written" in capsys.readouterr().out


def test_two_writers_of_one_table_both_read_the_same_rows(tmp_path):
  """Two runs that fill one key at once each compute and commit the table; the second's
  commit keeps the first's, and both read the same rows."""
  first, _ = _cache(tmp_path)
  second, _ = _cache(tmp_path)
  rows, index = first.compute(None)
  table_a = first.save(0, rows, index)
  table_b = second.save(0, rows, index)
  np.testing.assert_array_equal(table_a.rows(np.arange(6))["logits"],
                                table_b.rows(np.arange(6))["logits"])
  assert sorted(os.listdir(tmp_path / first.key)) == ["key.json", "views"]


def _fake_cifar(n_train=100, n_test=64):
  info = data_lib.DatasetInfo("fake_cifar", 10, (32, 32, 3), None, "cifar",
                              augment.CIFAR10_MEAN, augment.CIFAR10_STD)
  rng = np.random.default_rng(0)

  def source(n):
    return data_lib.ArraySource(info, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                                rng.integers(0, 10, n).astype(np.int32))
  return splits.Data(source(n_train), None, source(n_test))


def test_augmented_views_are_cached_per_epoch_and_a_resumed_run_matches(tmp_path):
  """CIFAR-style augmentation: one table per epoch holding the teacher's logits of that
  epoch's views (the batches the run trains on); a run resumed mid-epoch reads its epoch's
  table and ends exactly as the uninterrupted run."""
  data, mesh = _fake_cifar(), parallel.make_mesh()
  config = trainer_util.tiny_config(num_epochs=2, dataset__holdout=0, eval_test_every_epochs=0,
                                    checkpoint__every_steps=4)
  stage = pipeline.stage.stage_config(config, "student")
  teacher = _random_teacher("mlp_large", (32, 32, 3))
  train = functools.partial(loop.train, teacher=teacher, data=data, mesh=mesh)
  stage.teacher_cache.update(dir=str(tmp_path / "cache"), format="float32")
  cached = train(stage, str(tmp_path / "cached")).summary
  key_dir = tmp_path / "cache" / cached["teacher_cache"]["key"]
  assert sorted(os.listdir(key_dir)) == ["epoch_0000", "epoch_0001", "key.json"]
  loader = stage_lib.training_loader(stage, data)  # the run's own data order and teacher pass
  forward = jax.jit(stage_lib.live_teacher_fn(stage, teacher))
  for epoch in (0, 1):
    table = row_store.Table.open(str(key_dir / f"epoch_{epoch:04d}"), {"epoch": epoch}, 100)
    for batch in loader.epoch(epoch):  # the live teacher on the views the run trained on
      np.testing.assert_array_equal(table.rows(batch["index"])["logits"],
                                    forward(teacher.variables, batch))
    visited = [loader.global_indices(epoch, s) for s in range(loader.steps_per_epoch)]
    assert table.meta["num_rows"] == 96  # 100 % 32 dropped each epoch: never computed
    with pytest.raises(ValueError, match="holds no row"):
      table.rows(np.setdiff1d(np.arange(100), np.concatenate(visited))[:1])

  # Interrupted in epoch 1 (3 steps per epoch; saved at 3, 4, 6): keep only step 4's.
  run = tmp_path / "cached"
  os.remove(run / "summary.json")
  for step in os.listdir(run / "checkpoints"):
    if step.isdigit() and int(step) != 4:
      os.rename(run / "checkpoints" / step, tmp_path / f"removed_{step}")
  resumed = train(stage, str(run)).summary
  assert _comparable(resumed) == _comparable(cached)


def test_bfloat16_compute_trains_and_keeps_float32_state(tmp_path):
  config = trainer_util.tiny_config(**_FAST, stages="teacher", compute_dtype="bfloat16")
  trained = loop.train(pipeline.stage.stage_config(config, "teacher"), str(tmp_path),
                       data=pipeline.prepare(config))
  assert trained.summary["compute_dtype"] == "bfloat16"
  assert trained.summary["fingerprint"]["compute_dtype"] == "bfloat16"
  assert trained.summary["test_accuracy"] > 0.3  # 10 classes: it learned
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trained.variables))


# One model per family file: every family honours `dtype` in train mode.
FAMILIES = ("mlp_small", "cnn1d_large", "cnn_digits_large", "resnet8", "wrn_16_1", "vgg8",
            "MobileNetV1", "MobileNetV2", "ShuffleV2", "ResNet18")


def _conv_and_matmul_input_dtypes(jaxpr) -> set:
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      found |= {str(v.aval.dtype) for v in eqn.invars}
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        found |= _conv_and_matmul_input_dtypes(inner)
  return found


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_computes_in_bfloat16_with_float32_state(name):
  info = models.info(name)
  shape = info.input_shape or {"image": (32, 32, 3), "signal": (40, 1), "vector": (16,)}[
      info.input_kind]
  model = state_lib.with_compute_dtype(models.create(name, 10), "bfloat16")
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  logits, updates = jax.eval_shape(apply, variables, x)
  assert logits.dtype == jnp.float32  # the classifier accumulates in float32 (layers.linear)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves((variables, updates)))
  assert _conv_and_matmul_input_dtypes(jax.make_jaxpr(apply)(variables, x).jaxpr) == {
      "bfloat16"}


def test_bad_dtype_format_or_cache_dir_names_the_field(tmp_path):
  config = pipeline.stage.stage_config(trainer_util.tiny_config(), "student")
  check = functools.partial(checks.check_performance, num_classes=10)
  check(config)
  with pytest.raises(ValueError, match=r"compute_dtype='float16' is not allowed: must be one "
                                       r"of \('float32', 'bfloat16'\)"):
    check(_with(config, compute_dtype="float16"))
  with pytest.raises(ValueError, match=r"teacher_cache.format='int8' is not allowed"):
    check(_with(config, teacher_cache__format="int8"))
  with pytest.raises(ValueError, match=r"^precision='fp8' is not allowed: must be one of None, "
                                       r"'default', 'high', 'highest'"):
    check(_with(config, precision="fp8"))
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ValueError, match=r"teacher_cache.dir='.*a_file/cache' is not allowed: "
                                       "must be a directory this process can create and write"):
    check(_with(config, teacher_cache__dir=str(blocker / "cache")))
  check(_with(config, teacher_cache__dir=str(tmp_path / "new" / "cache")))  # created
  assert (tmp_path / "new" / "cache").is_dir()


def _with(config, **fields):
  return config_defaults.set_fields(config.copy_and_resolve_references(),
                           {k.replace("__", "."): v for k, v in fields.items()})


def test_precompute_stage_fills_the_cache_that_the_student_runs_read(tmp_path, monkeypatch):
  """`stages=teacher,precompute` trains the teacher and writes its outputs; two students of
  the sweep (teacher from its checkpoint) then read them: no teacher pass of their own."""
  cache_dir = str(tmp_path / "cache")
  config = trainer_util.tiny_config(**_FAST, stages="teacher,precompute",
                                    teacher_cache__dir=cache_dir)
  summary = pipeline.run(config, str(tmp_path / "teacher_run"))
  assert "student" not in summary and summary["precompute"]["computed"] == 1
  assert summary["precompute"]["key"] in os.listdir(cache_dir)
  calls = _counting(monkeypatch)
  for method in ("kd", "lr"):
    student = trainer_util.tiny_config(**_FAST, stages="student", teacher_cache__dir=cache_dir,
                                       teacher__checkpoint=str(tmp_path / "teacher_run" /
                                                               "teacher"))
    student.student.method.name = method
    result = pipeline.run(student, str(tmp_path / method))["student"]
    assert result["teacher_cache"]["key"] == summary["precompute"]["key"]
  assert not calls
  # Rerun: the tables are there, nothing is computed again.
  again = pipeline.run(config, str(tmp_path / "teacher_run"))["precompute"]
  assert (again["key"], again["computed"], again["read"]) == (summary["precompute"]["key"], 0, 1)


@pytest.mark.parametrize("overrides, field", [
    (dict(teacher_cache__dir=""), "teacher_cache.dir"),
    (dict(teacher_cache__dir="CACHE", student__method__name="ce"), "stages"),
])
def test_precompute_without_a_cache_or_a_teacher_method_names_the_field(
    overrides, field, tmp_path):
  overrides = {k: v.replace("CACHE", str(tmp_path)) for k, v in overrides.items()}
  config = trainer_util.tiny_config(**_FAST, stages="teacher,precompute", **overrides)
  with pytest.raises(ValueError, match=f"^{field}="):
    pipeline.prepare(config)


def test_a_rerun_takes_the_loaded_teachers_test_metrics_from_its_summary(tmp_path, monkeypatch):
  """A teacher from teacher.checkpoint is evaluated once per workdir; a rerun with the same
  teacher (same fingerprint) reuses the recorded metrics and evaluates nothing."""
  teacher_run = str(tmp_path / "teacher_run")
  pipeline.run(trainer_util.tiny_config(**_FAST, stages="teacher"), teacher_run)
  config = trainer_util.tiny_config(**_FAST, stages="student",
                                    teacher__checkpoint=os.path.join(teacher_run, "teacher"))
  first = pipeline.run(config, str(tmp_path / "student_run"))
  calls = []
  original = pipeline.evaluate.evaluate
  monkeypatch.setattr(pipeline.evaluate, "evaluate",
                      lambda *a, **k: calls.append(1) or original(*a, **k))
  again = pipeline.run(config, str(tmp_path / "student_run"))
  assert not calls and again["teacher"] == first["teacher"]
  assert again["teacher"]["test_accuracy"] == first["student"]["teacher_test_accuracy"]


def test_sampled_rows_are_drawn_anew_every_epoch(tiny, tmp_path, monkeypatch):
  """Without augmentation too: one table per epoch, its draws from the epoch's keys, so over
  the epochs the student sees the teacher's distribution, not one fixed draw per example; a
  rerun reads both tables."""
  data, mesh, stage, teacher = tiny
  stage = stage.copy_and_resolve_references()
  stage.num_epochs = 2
  stage.teacher_cache.update(dir=str(tmp_path / "cache"), format="sampled", k=4)
  calls = _counting(monkeypatch)
  loop.train(stage, str(tmp_path / "a"), teacher=teacher, data=data, mesh=mesh)
  assert len(calls) == 2
  (key,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
  assert sorted(p.name for p in key.iterdir() if p.is_dir()) == ["epoch_0000", "epoch_0001"]
  first, second = (row_store.Table.open(str(key / f"epoch_{e:04d}"), {}, len(data.train))
                   .rows(np.arange(len(data.train)))["classes"] for e in (0, 1))
  assert np.mean(np.any(first != second, axis=-1)) > 0.5
  loop.train(stage, str(tmp_path / "b"), teacher=teacher, data=data, mesh=mesh)
  assert len(calls) == 2  # the rerun reads both epochs' tables


@pytest.mark.parametrize("fmt, k", [("topk", 10), ("topk", 3), ("sampled", 8)])
def test_sparse_formats_stream_their_rows_with_the_batch_and_train(fmt, k, tiny, live, tmp_path,
                                                                   monkeypatch):
  """The train state holds no table: each batch brings its examples' rows (`cached_*`) and
  the step unpacks them; the format and k enter the fingerprint and the key. At k = C a
  top-k row is the whole row: the run matches the live one to float16 rounding."""
  data, mesh, stage, teacher = tiny
  seen = []
  original = teacher_cache._unpack_batch

  def spy(fmt_, num_classes, temperature, variables, batch):
    seen.append((variables, {name: (value.shape, str(value.dtype))
                             for name, value in batch.items() if name.startswith("cached_")},
                 temperature))
    return original(fmt_, num_classes, temperature, variables, batch)

  monkeypatch.setattr(teacher_cache, "_unpack_batch", spy)
  stage = stage.copy_and_resolve_references()
  stage.teacher_cache.update(dir=str(tmp_path / "cache"), format=fmt, k=k)
  summary = loop.train(stage, str(tmp_path / "run"), teacher=teacher, data=data,
                       mesh=mesh).summary
  variables, fields, temperature = seen[0]
  assert variables is None  # no [N, C] table on the device
  batch = stage.batch_size
  if fmt == "topk":
    assert fields == {"cached_values": ((batch, k), "float16"),
                      "cached_classes": ((batch, k), "uint8"),
                      "cached_label_value": ((batch,), "float32"),
                      "cached_lse": ((batch,), "float32")}
  else:
    assert fields == {"cached_classes": ((batch, k), "uint8")}
  assert temperature == stage.method.temperature  # kd's T: the rows are written and read at it
  fingerprint = summary["fingerprint"]
  assert (fingerprint["teacher.cache_format"], fingerprint["teacher.cache_k"],
          fingerprint["teacher.cache_temperature"]) == (fmt, k, stage.method.temperature)
  assert summary["teacher_cache"]["temperature"] == stage.method.temperature
  assert summary["teacher_cache"]["k"] == k and np.isfinite(summary["test_loss"])
  if (fmt, k) == ("topk", 10):
    np.testing.assert_allclose(summary["test_loss"], live["test_loss"], rtol=1e-3)
    assert abs(summary["test_accuracy"] - live["test_accuracy"]) <= 2 / 256


@pytest.mark.parametrize("fields, message", [
    (dict(teacher_cache__format="topk", teacher_cache__k=0),
     r"teacher_cache.k=0 is not allowed: must be an integer in \[1, 10\]"),
    (dict(teacher_cache__format="topk", teacher_cache__k=11),
     r"teacher_cache.k=11 is not allowed: must be an integer in \[1, 10\]"),
    (dict(teacher_cache__format="sampled", method__name="lr", method__lr_form="mse"),
     r"teacher_cache.format='sampled' is not allowed: the mse form of label revision"),
    (dict(teacher_cache__format="topk", teacher_cache__k=3, method__name="kd_topk",
          method__topk=5), r"teacher_cache.k=3 is not allowed: must be >= method.topk=5"),
    (dict(teacher_cache__format="sampled", method__name="lr",
          method__revision_temperature=1.0),
     (r"teacher_cache.format='sampled' is not allowed: the draws are at the temperature the "
      r"method reads its teacher at \(4.0\)")),
])
def test_a_format_a_method_cannot_read_is_refused_in_one_line(fields, message, tmp_path):
  config = pipeline.stage.stage_config(trainer_util.tiny_config(), "student")
  config = _with(config, teacher_cache__dir=str(tmp_path), **fields)
  with pytest.raises(ValueError, match=f"^{message}"):
    checks.check_performance(config, num_classes=10)
