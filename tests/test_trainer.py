"""Trainer: the jitted step (masking, no recompilation), optimizer, a whole run's outputs,
skip of finished stages, NaN stop and corrupt-checkpoint fallback (in-process, tiny data)."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_util

from kd_jax import methods, models, pipeline
from kd_jax.train import loop, parallel, stage, teacher
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib
from kd_jax.train import workdir as workdir_lib
from kd_jax.train import writer as writer_lib


def _batch(rng, n, dim=16, num_classes=10, pad=0):
  images = rng.standard_normal((n + pad, dim)).astype(np.float32)
  labels = rng.integers(0, num_classes, n + pad).astype(np.int32)
  index = np.arange(n + pad, dtype=np.int32)
  index[n:] = -1
  return dict(image=images, label=labels, index=index, mask=index >= 0)


def _setup(method_name="kd", num_classes=10, dim=16):
  model = models.create("mlp_small", num_classes)
  teacher_model = models.create("mlp_large", num_classes)
  optim = trainer_util.tiny_config().optim
  optim.num_epochs = 2
  tx, _ = state_lib.make_optimizer(optim, steps_per_epoch=10)
  teacher_vars = state_lib.init_variables(teacher_model, jax.random.PRNGKey(1), (dim,))
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), (dim,),
                                       teacher_fn=state_lib.teacher_forward(teacher_model),
                                       teacher_variables=teacher_vars)
  method = methods.default_config()
  method.name = method_name
  step = functools.partial(step_lib.train_step, method=method, steps_per_epoch=10)
  return state, teacher_vars, step


def test_train_step_compiles_once_and_counts_only_real_examples():
  """Placed as the loop places them (replicated state, sharded batches): one compilation."""
  mesh = parallel.make_mesh()
  state, _, step = _setup()
  state = parallel.replicate(state, mesh)
  replicated = parallel.replicated(mesh)
  train_step = jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))
  rng = np.random.default_rng(0)
  counts = []
  for _ in range(4):
    batch = parallel.shard_batch(_batch(rng, 24, pad=8), mesh)
    state, metrics = train_step(state, batch)
    counts.append(float(metrics["count"]))
  assert train_step._cache_size() == 1  # pylint: disable=protected-access
  assert counts == [24.0] * 4
  assert int(state.step) == 4


@pytest.mark.parametrize("ahead", [0, 1, 5])
def test_prefetch_to_mesh_yields_every_batch_in_order(ahead):
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(2)
  batches = [_batch(rng, 8) for _ in range(3)]
  out = list(parallel.prefetch_to_mesh(iter(batches), mesh, ahead))
  assert len(out) == 3
  for host, placed in zip(batches, out):
    assert placed["image"].sharding == parallel.data_sharded(mesh)
    for key in host:
      np.testing.assert_array_equal(np.asarray(placed[key]), host[key])


def test_input_pipeline_fields_do_not_change_the_fingerprint():
  """Batches are a function of (seed, epoch, step): a run may resume with other workers."""
  config = stage.stage_config(trainer_util.tiny_config(), "student")
  other = config.copy_and_resolve_references()
  other.input.workers, other.input.prefetch, other.input.device_prefetch = 3, 0, 0
  assert workdir_lib.fingerprint(config) == workdir_lib.fingerprint(other)
  other.seed += 1  # a result-determining field does change it
  assert workdir_lib.fingerprint(config) != workdir_lib.fingerprint(other)


def test_padding_does_not_change_the_update():
  """A batch padded with garbage rows (mask False) gives the update of the unpadded batch."""
  state, _, step = _setup()
  rng = np.random.default_rng(1)
  padded = _batch(rng, 24, pad=8)
  padded["image"][24:] = 1e3  # garbage that would dominate an unmasked mean
  unpadded = {k: v[:24] for k, v in padded.items()}
  a, metrics_a = jax.jit(step)(state, padded)
  b, metrics_b = jax.jit(step)(state, unpadded)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-5)


def test_step_matches_manual_sgd_on_the_method_loss():
  """One step = SGD(momentum, coupled wd) on the masked mean of methods.per_example_losses."""
  state, teacher_vars, step = _setup("kd")
  batch = _batch(np.random.default_rng(2), 16, pad=4)
  new_state, _ = jax.jit(step)(state, batch)
  model, teacher_model = models.create("mlp_small", 10), models.create("mlp_large", 10)
  method = methods.default_config()
  z_t = teacher_model.apply(teacher_vars, batch["image"])
  mask = batch["mask"].astype(np.float32)

  def loss(params):
    z_s = model.apply({"params": params}, batch["image"])
    per_example = methods.per_example_losses(method, z_s, batch["label"], z_t)["loss"]
    return jnp.sum(per_example * mask) / mask.sum()

  grads = jax.grad(loss)(state.params)
  lr, wd = 0.05, 5e-4  # configs/synthetic.py; first step: momentum buffer = gradient
  expected = jax.tree.map(lambda p, g: p - lr * (g + wd * p), state.params, grads)
  for x, y in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  # The teacher's slot is passed through untouched.
  for x, y in zip(jax.tree.leaves(new_state.teacher_variables), jax.tree.leaves(teacher_vars)):
    np.testing.assert_array_equal(x, y)


def test_metric_sums_weight_steps_by_example_count_and_round_trip():
  sums = writer_lib.MetricSums()
  sums.append(dict(loss=jnp.float32(1.0), accuracy=jnp.float32(0.5), count=jnp.float32(3)))
  sums.append(dict(loss=jnp.float32(3.0), accuracy=jnp.float32(1.0), count=jnp.float32(1)))
  state = sums.state_dict()
  assert sums.window_means() == pytest.approx(dict(loss=1.5, accuracy=0.625))
  sums.append(dict(loss=jnp.float32(2.0), accuracy=jnp.float32(0.0), count=jnp.float32(4)))
  assert sums.window_means() == pytest.approx(dict(loss=2.0, accuracy=0.0))
  assert sums.epoch_means() == pytest.approx(dict(loss=1.75, accuracy=0.3125))
  resumed = writer_lib.MetricSums(json.loads(json.dumps(state)))  # as stored in the checkpoint
  assert resumed.epoch_means() == pytest.approx(dict(loss=1.5, accuracy=0.625))


def test_due_fires_on_multiples_and_the_last_step():
  assert [s for s in range(1, 11) if loop.due(s, 4, 10)] == [4, 8, 10]
  assert not any(loop.due(s, 0, 10) for s in range(1, 11))


def test_teacher_mask_for_looks_up_selected_and_excludes_padding():
  selected = jnp.array([True, False, True, False])
  batch = dict(index=jnp.array([2, 1, -1, 0]))
  np.testing.assert_array_equal(step_lib.teacher_mask_for(batch, selected),
                                [True, False, False, True])
  assert step_lib.teacher_mask_for(batch, None) is None
  explicit = dict(batch, teacher_mask=jnp.array([False] * 4))
  assert not step_lib.teacher_mask_for(explicit, selected).any()


def test_step_schedule_matches_torch_multistep():
  config = trainer_util.tiny_config().optim
  config.schedule, config.lr_decay_epochs, config.num_epochs = "step", (2, 3), 4
  schedule = state_lib.learning_rate_schedule(config, steps_per_epoch=10)
  got = [float(schedule(s)) for s in (0, 19, 20, 29, 30, 39)]
  np.testing.assert_allclose(got, [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005], rtol=1e-6)
  # With a warm-up the decay epochs still count from epoch 0 (torch's MultiStepLR).
  config.warmup_epochs = 1.0
  schedule = state_lib.learning_rate_schedule(config, steps_per_epoch=10)
  got = [float(schedule(s)) for s in (0, 5, 10, 19, 20, 30)]
  np.testing.assert_allclose(got, [0.0, 0.025, 0.05, 0.05, 0.005, 0.0005], rtol=1e-6)


def test_run_writes_outputs_and_skips_finished_stages(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = trainer_util.tiny_config()
  summary = pipeline.run(config, workdir)
  for role in ("teacher", "student"):
    s = summary[role]
    for field in ("test_accuracy", "test_top5", "ece", "best_val_accuracy",
                  "best_val_checkpoint_test_accuracy"):
      assert 0.0 <= s[field] <= 1.0, (role, field, s[field])
    assert s["test_loss"] > 0 and s["params"] > 0 and s["train_seconds"] > 0
    assert s["images_per_second"] > 0 and s["seed"] == 0 and s["config"] == "synthetic"
    assert s["train_step_compilations"] == 1  # no recompilation after the first step
    role_dir = os.path.join(workdir, role)
    assert os.path.exists(os.path.join(role_dir, "curves.png"))
    assert os.listdir(os.path.join(role_dir, "tensorboard"))
    with open(os.path.join(role_dir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f]
    assert {"train", "train_epoch", "val", "test", "final_test"} <= {r["split"] for r in records}
    final = next(r for r in records if r["split"] == "final_test")
    assert final["accuracy"] == s["test_accuracy"]
  assert summary["student"]["teacher_test_accuracy"] == summary["teacher"]["test_accuracy"]
  assert summary["teacher"]["test_accuracy"] > 0.5  # 10 separable classes: far above 0.1
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["num_epochs"] == 2
  assert trainer_util.read_summary(workdir) == json.loads(json.dumps(summary))

  # Rerun: nothing is retrained (teacher and student summaries are reused as they are).
  teacher_ckpts = sorted(os.listdir(os.path.join(workdir, "teacher", "checkpoints")))
  capsys.readouterr()
  again = pipeline.run(config, workdir)
  assert "teacher already trained" in capsys.readouterr().out
  assert again == json.loads(json.dumps(summary))
  assert sorted(os.listdir(os.path.join(workdir, "teacher", "checkpoints"))) == teacher_ckpts

  # A new student method reuses the finished teacher (read from its final checkpoint).
  shutil.rmtree(os.path.join(workdir, "student"))
  config.student.method.name = "kd_pt_sim"
  other = pipeline.run(config, workdir)
  assert other["teacher"] == again["teacher"]
  assert other["student"]["method"] == "kd_pt_sim"


def test_teacher_in_memory_equals_teacher_from_disk(tmp_path):
  """The teacher handed over in memory is the final checkpoint a later process reads."""
  config = trainer_util.tiny_config(num_epochs=1)
  pipeline.run(config, str(tmp_path / "one_process"))
  pipeline.run(trainer_util.tiny_config(num_epochs=1, stages="teacher"), str(tmp_path / "two"))
  second = pipeline.run(config, str(tmp_path / "two"))  # the teacher comes from disk
  first = trainer_util.read_summary(tmp_path / "one_process")
  assert (trainer_util.comparable(second["student"])
          == trainer_util.comparable(first["student"]))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = trainer_util.tiny_config(num_epochs=1, stages="teacher")
  config.teacher.learning_rate = 1e30
  with pytest.raises(loop.TrainingDiverged, match="non-finite"):
    pipeline.run(config, str(tmp_path))
  ckpt_dir = tmp_path / "teacher" / "checkpoints"
  steps = [int(s) for s in os.listdir(ckpt_dir) if s.isdigit()] if ckpt_dir.exists() else []
  for step in steps:
    variables = teacher.ckpt_lib.final_variables(
        str(tmp_path / "teacher"),
        teacher.abstract_variables(models.create("mlp_large", 10), (16,), parallel.make_mesh()),
        step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables)), step
  assert not (tmp_path / "teacher" / "summary.json").exists()


def test_selected_none_of_the_examples_equals_training_with_ce(tmp_path):
  """Data-selection hook: a KD student whose teacher supervises no example is a CE student."""
  config = trainer_util.tiny_config(num_epochs=1)
  pipeline.run(trainer_util.tiny_config(num_epochs=1, stages="teacher"), str(tmp_path))
  data = pipeline.prepare(config)
  mesh = parallel.make_mesh()
  frozen = teacher.from_run(str(tmp_path / "teacher"), "mlp_large", data.info, mesh)
  stage = pipeline.stage.stage_config(config, "student")
  stage.method.update(select=True)
  stage.selection.update(criterion="random", ratio=1.0, warmup_epochs=5)  # never reached
  masked = loop.train(stage, str(tmp_path / "masked"), teacher=frozen, data=data, mesh=mesh)
  stage.method.update(name="ce", select=False)
  ce = loop.train(stage, str(tmp_path / "ce"), data=data, mesh=mesh)
  np.testing.assert_allclose(masked.summary["test_loss"], ce.summary["test_loss"], rtol=1e-5)
  assert masked.summary["test_accuracy"] == ce.summary["test_accuracy"]
