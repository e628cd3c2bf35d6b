"""The training loop of one model, and a run (teacher then student) built from it.

`train_model(config, role, workdir, teacher=...)` trains one model under `workdir/<role>/`,
resuming from its newest readable checkpoint and returning its cached summary when it has
already finished; generations (issue 6) call it once per generation with the previous
generation's model as teacher. `run(config, workdir)` is what the CLI does.
"""

import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging

from kd_jax import data as data_lib
from kd_jax import methods, models, targets
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import data_selection, parallel, report, setup
from kd_jax.train import evaluate as eval_lib
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib


class TrainingDiverged(RuntimeError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


def _means(sums: dict) -> dict:
  count = max(float(sums["count"]), 1.0)
  out = {key: float(value) / count for key, value in sums.items()
         if key not in ("count", "correct", "nonfinite")}
  out["accuracy"] = float(sums["correct"]) / count
  return out


def train_model(config, role: str, workdir: str, *, teacher: setup.Teacher | None = None,
                data: setup.Data | None = None, mesh=None, settings=None,
                selected=None) -> dict:
  """Trains (or resumes, or skips when finished) model `role`; returns its summary.

  Args:
    config: the run's ConfigDict (see configs/common.py).
    role: "teacher", "student", "generation_<g>"...: names `workdir/<role>/` and, through
      `setup.role_seed`, the seed of init, shuffling and dropout.
    teacher: the teacher for methods that need one (`methods.needs_teacher`).
    data, mesh: reuse across roles (loaded/built when None).
    settings: model/method/optim/num_epochs (default `setup.role_settings(config, role)`).
    selected: optional fixed bool `[len(data.train)]`: examples the teacher supervises;
      the others get plain CE. When None and the method selects (`methods.selects`), the
      selection rounds of `kd_jax.train.data_selection` compute it (and refresh it).

  Returns:
    summary dict (also `workdir/<role>/summary.json`); test metrics are of the final model.
  """
  settings = settings or setup.role_settings(config, role)
  role_dir = os.path.join(workdir, role)
  summary_path = os.path.join(role_dir, "summary.json")
  if os.path.exists(summary_path):
    print(f"kd_jax: {role} already trained ({summary_path}); skipping", flush=True)
    return report.read_json(summary_path)
  mesh = mesh or parallel.make_mesh()
  data = data or setup.load_data(config)
  info, method = data.info, settings.method
  if methods.needs_teacher(method.name) and teacher is None:
    raise ValueError(f"{role}.method.name={method.name!r} needs a teacher; none was given")
  model = models.create(settings.model, info.num_classes)
  seed = setup.role_seed(config.seed, role)
  loader = data_lib.make_loader(data.train, batch_size=config.batch_size, seed=seed,
                                train=True, augment=info.augmentation)
  steps_per_epoch = loader.steps_per_epoch
  total_steps = settings.num_epochs * steps_per_epoch
  tx, schedule = state_lib.make_optimizer(settings.optim, steps_per_epoch)
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  selector = None
  if selected is None and methods.selects(method):
    selector = data_selection.make_selector(config, settings, teacher, data, mesh, model, seed)
    selected = np.ones(len(data.train), bool)  # replaced by round 0; fixes the ckpt layout
  state = state_lib.create_train_state(model, tx, init_rng, info.input_shape)
  keys = step_lib.metric_keys(method, info.num_classes)
  state, accum, rng, selected = parallel.replicate(
      (state, step_lib.init_accumulators(keys), dropout_rng, selected), mesh)
  num_params = state_lib.param_count(state.params)

  def train_tree():  # everything besides the variables that a resumed run needs
    tree = dict(step=state.step, opt_state=state.opt_state, accum=accum, rng=rng)
    return tree if selected is None else dict(tree, selected=selected)

  ckpts = ckpt_lib.Checkpoints(role_dir, config.checkpoint.keep)
  restored = ckpts.restore_latest(ckpt_lib.abstract(state.variables),
                                  ckpt_lib.abstract(train_tree()))
  meta = dict(role=role, model=settings.model, num_classes=info.num_classes,
              dataset=info.name, seed=int(config.seed), epoch=0, step_in_epoch=0, step=0,
              best_val_accuracy=None, best_val_step=None, train_seconds=0.0,
              selection=[], selection_epoch=None)
  if restored is not None:
    variables, train, meta = restored["variables"], restored["train"], restored["meta"]
    state = state.replace(params=variables["params"],
                          batch_stats=variables.get("batch_stats", {}),
                          step=train["step"], opt_state=train["opt_state"])
    accum, rng, selected = train["accum"], train["rng"], train.get("selected")
    print(f"kd_jax: {role} resumes at step {meta['step']} (epoch {meta['epoch']}, step "
          f"{meta['step_in_epoch']} in epoch)", flush=True)

  teacher_inputs = class_similarity = None
  teacher_fn = None
  if methods.needs_teacher(method.name):
    teacher_inputs, teacher_fn = teacher.variables, step_lib.teacher_forward(teacher.model)
    if methods.needs_class_similarity(method.name):
      class_similarity = jax.jit(targets.class_similarity, static_argnums=1)(
          teacher.variables["params"]["classifier"]["kernel"], float(method.sim_temperature))
  replicated = parallel.replicated(mesh)
  train_step = jax.jit(step_lib.make_train_step(model, method, steps_per_epoch, teacher_fn),
                       donate_argnums=(0, 1), out_shardings=(replicated, replicated))
  reset = jax.jit(step_lib.reset, static_argnums=1, donate_argnums=0,
                  out_shardings=replicated)
  eval_fn = eval_lib.make_eval_fn(model)
  val_loader = data.val and eval_lib.eval_loader(data.val, config.eval_batch_size)
  test_loader = eval_lib.eval_loader(data.test, config.eval_batch_size)

  writer = report.MetricsWriter(role_dir, meta["step"] if restored is not None else None)
  bar = report.progress_bar(total_steps, meta["step"], role)
  step, start_epoch, start = meta["step"], meta["epoch"], meta["step_in_epoch"]
  clock = dict(session=time.time(), excluded=0.0, images=0)
  log_clock = [time.time(), step]

  def check_finite(sums, where):
    if float(sums["nonfinite"]) > 0:
      raise TrainingDiverged(
          f"{role} training stopped: non-finite loss (NaN or inf) before step {step} "
          f"({where}); the last good checkpoint is kept: step {ckpts.latest.latest_step()} "
          f"in {ckpts.latest.directory}")

  def save(epoch, step_in_epoch):
    tick = time.time()
    check_finite(parallel.to_host(accum["epoch"]), "checkpoint")
    meta.update(epoch=epoch, step_in_epoch=step_in_epoch, step=step,
                train_seconds=meta_seconds())
    ckpts.save(step, state.variables, train_tree(), meta)
    clock["excluded"] += time.time() - tick

  def meta_seconds():
    return float(restored_seconds + time.time() - clock["session"])

  def run_eval(loader, split, epoch, variables):
    tick = time.time()
    values = eval_lib.evaluate(eval_fn, variables, loader, mesh)
    writer.write(step, epoch, split, values)
    clock["excluded"] += time.time() - tick
    return values

  restored_seconds = float(meta["train_seconds"])
  selection_config = config.get("selection") or data_selection.default_config()
  for epoch in range(start_epoch, settings.num_epochs):
    if start == 0:
      accum = reset(accum, "epoch")
    if (selector and data_selection.is_round(selection_config, epoch)
        and meta.get("selection_epoch") != epoch):
      tick = time.time()
      mask, stats = selector(state.variables, epoch)
      selected = parallel.replicate(mask, mesh)
      meta.update(selection=list(meta.get("selection") or []) + [stats], selection_epoch=epoch)
      logging.info("%s selection round at epoch %d: %s", role, epoch, stats)
      if clock.get("first_step") is not None:  # else already inside first_step's time
        clock["excluded"] += time.time() - tick
    for in_epoch, batch in enumerate(loader.epoch(epoch, start), start=start + 1):
      state, accum = train_step(state, accum, parallel.shard_batch(batch, mesh),
                                teacher_inputs, class_similarity, selected, rng)
      step += 1
      clock["images"] += config.batch_size
      bar.update(1)
      if clock.get("first_step") is None:  # exclude compilation from images/s
        jax.block_until_ready(state.step)
        clock["first_step"] = time.time() - clock["session"]
        clock["images"] = 0
      end_of_epoch = in_epoch == steps_per_epoch
      if step % config.log_every_steps == 0 or end_of_epoch:
        window = parallel.to_host(accum["window"])
        accum = reset(accum, "window")
        check_finite(window, f"epoch {epoch}")
        now = time.time()
        values = _means(window)
        values.update(learning_rate=float(schedule(step - 1)),
                      images_per_second=(step - log_clock[1]) * config.batch_size
                      / max(now - log_clock[0], 1e-9))
        log_clock[:] = [now, step]
        writer.write(step, step / steps_per_epoch, "train", values)
        bar.set_postfix(epoch=epoch + 1, loss=f"{values['loss']:.4f}",
                        acc=f"{values['accuracy']:.4f}",
                        img_s=f"{values['images_per_second']:.0f}", refresh=False)
      if end_of_epoch:
        epoch_values = _means(parallel.to_host(accum["epoch"]))
        writer.write(step, epoch + 1, "train_epoch", epoch_values)
        last = epoch + 1 == settings.num_epochs
        line = f"{role} epoch {epoch + 1}/{settings.num_epochs}: train loss " \
               f"{epoch_values['loss']:.4f} acc {epoch_values['accuracy']:.4f}"
        if val_loader and ((epoch + 1) % config.eval_every_epochs == 0 or last):
          val = run_eval(val_loader, "val", epoch + 1, state.variables)
          line += f", val acc {val['accuracy']:.4f}"
          if meta["best_val_accuracy"] is None or val["accuracy"] > meta["best_val_accuracy"]:
            meta.update(best_val_accuracy=val["accuracy"], best_val_step=step)
            ckpts.save_best(step, state.variables, dict(meta, val=val))
        every = config.eval_test_every_epochs
        if every and ((epoch + 1) % every == 0 or last):
          test = run_eval(test_loader, "test", epoch + 1, state.variables)
          line += f", test acc {test['accuracy']:.4f}"
        logging.info(line)
        save(epoch + 1, 0)
      elif config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
        save(epoch, in_epoch)
    start = 0
  bar.close()

  session_seconds = time.time() - clock["session"] - clock.get("first_step", 0.0)
  images_per_second = clock["images"] / max(session_seconds - clock["excluded"], 1e-9)
  test = eval_lib.evaluate(eval_fn, state.variables, test_loader, mesh)
  writer.write(step, settings.num_epochs, "final_test", test)
  best = ckpts.restore_best(ckpt_lib.abstract(state.variables))
  best_test = best and eval_lib.evaluate(eval_fn, best[0], test_loader, mesh)
  summary = dict(
      role=role, config=config.get("name", ""), dataset=info.name, model=settings.model,
      method=method.name, seed=int(config.seed), num_epochs=settings.num_epochs, steps=step,
      params=num_params, test_accuracy=test["accuracy"], test_top5=test["top5"],
      test_loss=test["loss"], ece=test["ece"], test_metrics=test,
      best_val_accuracy=meta["best_val_accuracy"], best_val_step=meta["best_val_step"],
      best_val_checkpoint_test_accuracy=best_test and best_test["accuracy"],
      train_seconds=meta_seconds(),
      images_per_second=images_per_second if clock["images"] else None,
      train_step_compilations=train_step._cache_size(),  # pylint: disable=protected-access
      teacher=teacher and teacher.source,
      teacher_test_accuracy=teacher and getattr(teacher, "test_accuracy", None),
      selection=meta.get("selection") or None)
  writer.close()
  ckpts.close()
  if parallel.is_primary():
    report.plot_curves(role_dir, f"{config.get('name', '')} {role}: {settings.model}, "
                       f"{method.name}")
  report.write_json(summary_path, summary)
  parallel.sync(f"{role}_done")
  return summary


def _teacher_line(role: str, summary: dict) -> str:
  return (f"{role} {summary.get('model')}: test accuracy {summary['test_accuracy']:.4f} "
          f"(top-5 {summary['test_top5']:.4f}, loss {summary['test_loss']:.4f}, "
          f"ECE {summary['ece']:.4f})")


def evaluate_loaded_teacher(config, teacher: setup.Teacher, data, mesh, workdir) -> dict:
  """Test metrics of a teacher loaded from a checkpoint (cached in the workdir)."""
  path = os.path.join(workdir, "loaded_teacher.json")
  if os.path.exists(path):
    cached = report.read_json(path)
    if cached.get("teacher_checkpoint") == teacher.source:
      return cached
  test = eval_lib.evaluate(eval_lib.make_eval_fn(teacher.model), teacher.variables,
                           eval_lib.eval_loader(data.test, config.eval_batch_size), mesh)
  summary = dict(role="teacher", config=config.get("name", ""), dataset=data.info.name,
                 model=teacher.model_name, teacher_checkpoint=teacher.source, trained=False,
                 params=state_lib.param_count(teacher.variables["params"]),
                 test_accuracy=test["accuracy"], test_top5=test["top5"], test_loss=test["loss"],
                 ece=test["ece"], test_metrics=test)
  report.write_json(path, summary)
  return summary


def prepare(config):
  """(mesh, data) after every check of the config; raises ValueError on bad input."""
  data = setup.load_data(config)
  setup.check_config(config, data.info.num_classes)
  data_selection.check_config(config, data.val is not None)
  return parallel.make_mesh(), data


def run(config, workdir: str, *, mesh=None, data=None) -> dict:
  """Trains (or loads) the teacher when needed, then the student; writes summary.json.

  Stages whose summary exists are skipped, so rerunning a finished or killed command is safe.
  """
  if data is None:
    mesh, data = prepare(config)
  if parallel.is_primary():
    os.makedirs(workdir, exist_ok=True)
  report.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  summary = dict(config=config.get("name", ""), dataset=data.info.name, seed=int(config.seed))
  teacher = None
  teacher_settings = setup.role_settings(config, "teacher")
  if setup.uses_teacher(config) or not config.student.model:
    if teacher_settings.checkpoint:
      teacher = setup.load_teacher(teacher_settings, data.info.num_classes,
                                   data.info.input_shape, mesh)
      summary["teacher"] = evaluate_loaded_teacher(config, teacher, data, mesh, workdir)
      teacher = dataclasses.replace(teacher, test_accuracy=summary["teacher"]["test_accuracy"])
    else:
      summary["teacher"] = train_model(config, "teacher", workdir, data=data, mesh=mesh,
                                       settings=teacher_settings)
      teacher = setup.trained_teacher(os.path.join(workdir, "teacher"), teacher_settings.model,
                                      data.info, mesh, summary["teacher"])
    print(f"kd_jax: {_teacher_line('teacher', summary['teacher'])}", flush=True)
  if config.student.model:
    summary["student"] = train_model(config, "student", workdir, teacher=teacher, data=data,
                                     mesh=mesh)
    print(f"kd_jax: {_teacher_line('student', summary['student'])}", flush=True)
  report.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
