"""Trainer: the jitted step (masking, no recompilation), optimizer, a whole run's outputs,
skip of finished stages, NaN stop and corrupt-checkpoint fallback (in-process, tiny data)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_util

from kd_jax import methods, models
from kd_jax.train import loop, parallel
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib


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
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), (dim,))
  teacher_vars = state_lib.init_variables(teacher_model, jax.random.PRNGKey(1), (dim,))
  method = methods.default_config()
  method.name = method_name
  keys = step_lib.metric_keys(method, num_classes)
  step = step_lib.make_train_step(model, method, 10, step_lib.teacher_forward(teacher_model))
  return state, step_lib.init_accumulators(keys), teacher_vars, step


def test_train_step_compiles_once_and_counts_only_real_examples():
  """Placed as the loop places them (replicated state, sharded batches): one compilation."""
  mesh = parallel.make_mesh()
  state, accum, teacher_vars, step = _setup()
  state, accum, teacher_vars, key = parallel.replicate(
      (state, accum, teacher_vars, jax.random.PRNGKey(2)), mesh)
  replicated = parallel.replicated(mesh)
  train_step = jax.jit(step, donate_argnums=(0, 1), out_shardings=(replicated, replicated))
  rng = np.random.default_rng(0)
  for _ in range(4):
    batch = parallel.shard_batch(_batch(rng, 24, pad=8), mesh)
    state, accum = train_step(state, accum, batch, teacher_vars, None, None, key)
  assert train_step._cache_size() == 1  # pylint: disable=protected-access
  assert float(accum["epoch"]["count"]) == 4 * 24
  assert int(state.step) == 4


def test_padding_does_not_change_the_update():
  """A batch padded with garbage rows (mask False) gives the update of the unpadded batch."""
  state, accum, teacher_vars, step = _setup()
  rng = np.random.default_rng(1)
  padded = _batch(rng, 24, pad=8)
  padded["image"][24:] = 1e3  # garbage that would dominate an unmasked mean
  unpadded = {k: v[:24] for k, v in padded.items()}
  key = jax.random.PRNGKey(3)
  a, acc_a = jax.jit(step)(state, accum, padded, teacher_vars, None, None, key)
  b, acc_b = jax.jit(step)(state, accum, unpadded, teacher_vars, None, None, key)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(acc_a["epoch"]["loss"], acc_b["epoch"]["loss"], rtol=1e-5)


def test_step_matches_manual_sgd_on_the_method_loss():
  """One step = SGD(momentum, coupled wd) on the masked mean of methods.per_example_losses."""
  state, accum, teacher_vars, step = _setup("kd")
  batch = _batch(np.random.default_rng(2), 16, pad=4)
  new_state, _ = jax.jit(step)(state, accum, batch, teacher_vars, None, None,
                               jax.random.PRNGKey(0))
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


def test_run_writes_outputs_and_skips_finished_stages(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = trainer_util.tiny_config()
  summary = loop.run(config, workdir)
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
  again = loop.run(config, workdir)
  assert "teacher already trained" in capsys.readouterr().out
  assert again == json.loads(json.dumps(summary))
  assert sorted(os.listdir(os.path.join(workdir, "teacher", "checkpoints"))) == teacher_ckpts

  # A new student method reuses the finished teacher (teacher only skipped).
  shutil.rmtree(os.path.join(workdir, "student"))
  config.student.method.name = "kd_pt_sim"
  other = loop.run(config, workdir)
  assert other["teacher"] == again["teacher"]
  assert other["student"]["method"] == "kd_pt_sim"


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = trainer_util.tiny_config(num_epochs=1)
  config.student.model = ""  # teacher only
  config.teacher.learning_rate = 1e30
  with pytest.raises(loop.TrainingDiverged, match="non-finite loss"):
    loop.run(config, str(tmp_path))
  ckpt_dir = tmp_path / "teacher" / "checkpoints"
  for step in os.listdir(ckpt_dir) if ckpt_dir.exists() else []:
    variables = loop.setup.restore_trained(str(ckpt_dir), models.create("mlp_large", 10), (16,),
                                           parallel.make_mesh())
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables)), step
  assert not (tmp_path / "teacher" / "summary.json").exists()


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  config = trainer_util.tiny_config()
  config.student.model = ""  # teacher only
  workdir = tmp_path / "run"
  reference = loop.run(config, str(workdir))["teacher"]
  # Make the run look interrupted after its final checkpoint was damaged.
  os.remove(workdir / "teacher" / "summary.json")
  steps = sorted(int(s) for s in os.listdir(workdir / "teacher" / "checkpoints"))
  for root, _, files in os.walk(workdir / "teacher" / "checkpoints" / str(steps[-1])):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  capsys.readouterr()
  resumed = loop.run(config, str(workdir))["teacher"]
  out = capsys.readouterr().out
  assert f"checkpoints/{steps[-1]} is unreadable" in out
  assert f"resumes at step {steps[-2]}" in out
  assert trainer_util.comparable(resumed) == trainer_util.comparable(reference)


def test_selected_none_of_the_examples_equals_training_with_ce(tmp_path):
  """Data-selection hook: a KD student whose teacher supervises no example is a CE student."""
  config = trainer_util.tiny_config(num_epochs=1)
  teacher_summary = loop.run(trainer_util.tiny_config(num_epochs=1, student__model=""),
                             str(tmp_path))
  del teacher_summary
  mesh = parallel.make_mesh()
  data = loop.setup.load_data(config)
  teacher_model = models.create("mlp_large", 10)
  teacher = loop.setup.Teacher("mlp_large", teacher_model, loop.setup.restore_trained(
      str(tmp_path / "teacher" / "checkpoints"), teacher_model, (16,), mesh), "t")
  none = np.zeros(len(data.train), bool)
  masked = loop.train_model(config, "student", str(tmp_path / "masked"), teacher=teacher,
                            data=data, mesh=mesh, selected=none)
  config.student.method.name = "ce"
  ce = loop.train_model(config, "student", str(tmp_path / "ce"), data=data, mesh=mesh)
  np.testing.assert_allclose(masked["test_loss"], ce["test_loss"], rtol=1e-5)
  assert masked["test_accuracy"] == ce["test_accuracy"]
