"""Training one model: `train(config, workdir, *, teacher=None) -> Trained`.

`config` is a stage config (kd_jax/config_defaults.py: the shared fields plus `stage`, `model`,
`method`, `num_epochs`); `kd_jax.train.stage.stage_config` derives one per stage from a
config file. The run is resumable (newest good checkpoint, data iterator position and metric
sums included), skipped when finished (its summary.json exists and its fingerprint matches),
and refuses a directory of another configuration or one held by another process. The
function reads top to bottom as big_vision's train.py: setup, restore, loop, final
evaluation.
"""

import dataclasses
import functools
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import methods, models, targets
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import checks, evaluate, parallel, selection_rounds, splits
from kd_jax.train import stage as stage_lib
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib
from kd_jax.train import teacher_cache as cache_lib
from kd_jax.train import workdir as workdir_lib
from kd_jax.train import writer as writer_lib


class TrainingDiverged(RuntimeError):
  """The loss or the weights became NaN or inf; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Trained:
  """A finished stage: its summary, and its final variables when this call trained it
  (None when it was already finished: load it with `kd_jax.train.teacher.from_run`)."""
  summary: dict
  variables: dict | None


@dataclasses.dataclass(frozen=True)
class Position:
  """Where the run stands: `step` steps done, `step_in_epoch` of them in epoch `epoch`, after
  `train_seconds` of training. Saved in every checkpoint's meta: a resumed run starts there."""
  step: int = 0
  epoch: int = 0
  step_in_epoch: int = 0
  train_seconds: float = 0.0


def due(step: int, every: int, total: int) -> bool:
  """Whether a cadence of `every` (0: never) fires at `step`; the last step always does."""
  return every > 0 and (step % every == 0 or step == total)


def _last_good(checkpointer) -> str:
  step = checkpointer.latest_step()
  if step is None:
    return "none was saved before it diverged (rerunning starts afresh)"
  return f"step {step} in {checkpointer.manager.directory}"


def _diverged(stage: str, what: str, step: int, checkpointer) -> TrainingDiverged:
  return TrainingDiverged(f"{stage} training stopped: non-finite {what} (NaN or inf) at step "
                          f"{step}; the last good checkpoint is kept: {_last_good(checkpointer)}")


def _save(checkpointer, state, meta: dict, metric_sums, val_accuracy=None,
          blame_teacher=None) -> None:
  """A checkpoint of `state`, only when its weights and pending metrics are all finite
  (else `blame_teacher()` runs first: a teacher's non-finite logits are its own error)."""
  items = state.checkpoint_items()
  if not (metric_sums.finite() and ckpt_lib.all_finite(items)):
    if blame_teacher is not None:
      blame_teacher()
    raise _diverged(meta["stage"], "loss or weights", meta["step"], checkpointer)
  checkpointer.save(meta["step"], items, dict(meta, metric_sums=metric_sums.state_dict()),
                    val_accuracy)


def _teacher_slot(config, teacher, loader, mesh, info):
  """`(teacher_fn, teacher_variables, cache)` of the train state: the live teacher (a copy
  of its variables, as the step donates its state and the caller keeps using the teacher),
  or the rows of the teacher-output cache that the loader puts in each batch (the loop
  prepares each epoch's table)."""
  if teacher is None:
    return None, None, None
  teacher_fn = stage_lib.live_teacher_fn(config, teacher)
  if not cache_lib.enabled(config, teacher):
    return teacher_fn, jax.tree.map(jnp.copy, teacher.variables), None
  cache = cache_lib.open_cache(config, teacher, teacher_fn, loader, mesh, info)
  print(f"kd_jax: {config.stage} reads its teacher's outputs from {cache.directory}/"
        f"{cache.key} ({config.teacher_cache.format})", flush=True)
  fields = cache.fields
  return (cache_lib.teacher_fn(fields["format"], info.num_classes, fields.get("temperature")),
          None, cache)


def _check_live_teacher(config, teacher, loader, mesh, epoch: int, first: int,
                        last: int) -> None:
  """After a non-finite loss: raises `TeacherLogitsNotFinite` when the live teacher's logits
  on the batches of steps `first + 1 .. last` of `epoch` (the window behind that loss) are
  not finite, so the teacher is blamed, as the cache blames it, not the student."""
  forward = jax.jit(stage_lib.live_teacher_fn(config, teacher))
  batches = itertools.islice(loader.epoch(epoch, first), last - first)
  for offset, batch in enumerate(parallel.prefetch_to_mesh(batches, mesh, 0)):
    if not ckpt_lib.all_finite(forward(teacher.variables, batch)):
      step = epoch * loader.steps_per_epoch + first + offset + 1
      raise cache_lib.TeacherLogitsNotFinite(
          teacher.source, f"the training batch of step {step} (epoch {epoch})")


def _class_similarity(method, teacher) -> jax.Array | None:
  """KD-sim's `[C, C]` class relationships from the teacher's classifier, or None."""
  if not methods.needs_class_similarity(method.name):
    return None
  kernel = teacher.variables["params"]["classifier"]["kernel"]
  return jax.jit(targets.class_similarity, static_argnums=1)(kernel,
                                                             float(method.sim_temperature))


def _best_checkpoint_test(checkpointer, best_step, eval_fn, abstract_variables, loader,
                          mesh) -> dict | None:
  """Test metrics of the best-validation checkpoint (None without a validation slice)."""
  if best_step is None:
    return None
  best = checkpointer.restore(best_step, dict(variables=abstract_variables))
  return evaluate.evaluate(eval_fn, best["variables"], loader, mesh)


def _summary(config, data, fingerprint, state, meta, test, best_test, teacher, cache,
             **measured) -> dict:
  """summary.json of a finished stage: what was trained on what, the final model's test
  metrics, the best-validation checkpoint's (labelled), and `measured` (steps, timings)."""
  info = data.info
  return dict(
      stage=config.stage, config=config.get("name", ""), dataset=info.name,
      data=splits.record(config.dataset, data), num_classes=info.num_classes,
      input_shape=list(info.input_shape), model=config.model, method=config.method.name,
      seed=int(config.seed), num_epochs=config.num_epochs, **measured,
      params=state_lib.param_count(state.params), test_accuracy=test["accuracy"],
      test_top5=test["top5"], test_loss=test["loss"], ece=test["ece"], test_metrics=test,
      best_val_accuracy=meta["best_val_accuracy"], best_val_step=meta["best_val_step"],
      best_val_checkpoint_test_accuracy=best_test and best_test["accuracy"],
      teacher=teacher and teacher.source,
      teacher_test_accuracy=teacher and teacher.test_accuracy,
      teacher_cache=cache and dict(key=cache.key, **cache_lib.format_fields(config)),
      compute_dtype=config.compute_dtype, selection=meta["selection"] or None,
      fingerprint=fingerprint)


def train(config, workdir: str, *, teacher=None, data: splits.Data | None = None,
          mesh=None) -> Trained:
  """Trains (or resumes, or skips when finished) the model of stage config `config`.

  Args:
    config: a stage config (`kd_jax.train.stage.stage_config`).
    workdir: this run's directory: checkpoints/, metrics.jsonl, tensorboard/, config.json,
      summary.json.
    teacher: a `kd_jax.train.teacher.Teacher`, required by teacher-based methods.
    data, mesh: reused across stages (loaded/built when None).

  Returns:
    `Trained(summary, final variables)`. Test metrics are of the final model; the
    best-validation checkpoint's test accuracy is reported beside them, labelled.
  """
  data = data or splits.load_data(config)
  checks.check_stage(config, data)
  if methods.needs_teacher(config.method.name) and teacher is None:
    raise ValueError(f"{config.stage}.method.name={config.method.name!r} needs a teacher; "
                     "none was given")
  mesh = mesh or parallel.make_mesh()
  info, method, stage = data.info, config.method, config.stage
  fingerprint = workdir_lib.fingerprint(config, cache_lib.teacher_fingerprint(config, teacher))
  summary_path = os.path.join(workdir, workdir_lib.SUMMARY)
  with workdir_lib.locked(workdir):
    if os.path.exists(summary_path):
      summary = workdir_lib.read_json(summary_path)
      workdir_lib.check_fingerprint(summary.get("fingerprint", {}), fingerprint, workdir)
      print(f"kd_jax: {stage} already trained ({summary_path}); skipping", flush=True)
      return Trained(summary, None)

    # Setup: data order, model, optimizer, the teacher's slot, data selection.
    seed = stage_lib.stage_seed(config.seed, stage)
    model = state_lib.with_compute_dtype(models.create(config.model, info.num_classes),
                                         config.compute_dtype, config.get("precision"))
    loader = stage_lib.training_loader(config, data)
    steps_per_epoch = loader.steps_per_epoch
    total_steps = config.num_epochs * steps_per_epoch
    tx, schedule = state_lib.make_optimizer(config.optim, steps_per_epoch)
    teacher_fn, teacher_variables, cache = _teacher_slot(config, teacher, loader, mesh, info)
    if cache is not None:  # each batch brings its cached rows
      loader = dataclasses.replace(loader, extra=cache.reader())
    selector = selected = None
    if methods.selects(method):
      selector = selection_rounds.Selector(config, teacher, data, mesh, model, seed)
      selected = np.zeros(len(data.train), bool)  # until round 0: CE only (the warm-up)
    state = state_lib.create_train_state(
        model, tx, jax.random.PRNGKey(seed), info.input_shape, teacher_fn=teacher_fn,
        teacher_variables=teacher_variables, class_similarity=_class_similarity(method, teacher),
        selected=selected)
    state = parallel.replicate(state, mesh)
    replicated = parallel.replicated(mesh)
    train_step = jax.jit(functools.partial(step_lib.train_step, method=method,
                                           steps_per_epoch=steps_per_epoch),
                         donate_argnums=0, out_shardings=(replicated, replicated))
    eval_fn = evaluate.make_eval_fn(model)
    val_loader = data.val and evaluate.eval_loader(data.val, config.eval_batch_size)
    test_loader = evaluate.eval_loader(data.test, config.eval_batch_size)

    # Restore: the newest good checkpoint of this configuration, if any.
    checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint.keep,
                                         config.checkpoint.async_save)
    restored = checkpointer.restore_latest(ckpt_lib.abstract(state.checkpoint_items()),
                                           fingerprint)
    # What a checkpoint records beside the arrays (JSON): the position is added at each save.
    meta = dict(stage=stage, fingerprint=fingerprint, best_val_accuracy=None,
                best_val_step=None, selection=[], selection_epoch=None)
    position = Position()
    if restored is None:
      workdir_lib.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    else:
      state = state.restore(restored)
      meta = {key: restored["meta"][key] for key in meta}
      position = Position(**{f.name: restored["meta"][f.name]
                             for f in dataclasses.fields(Position)})
      print(f"kd_jax: {stage} resumes at step {position.step} (epoch {position.epoch}, step "
            f"{position.step_in_epoch} in epoch)", flush=True)
    if cache is not None:  # the tables this session reads are there, or can be written
      checks.check_cache_files(cache, range(position.epoch, config.num_epochs)
                               if cache.per_epoch else [0])
    metric_sums = writer_lib.MetricSums(restored and restored["meta"]["metric_sums"])
    writer = writer_lib.MetricsWriter(workdir, stage, position.step if restored else None)
    clock = writer_lib.Progress(total_steps, config.batch_size)
    step, first_epoch, first_in_epoch = position.step, position.epoch, position.step_in_epoch
    seconds_before, session_start = position.train_seconds, time.time()

    def blame_teacher(epoch, first, last):
      """Before a divergence is the student's: a live teacher's non-finite logits on the
      window of steps behind it are the teacher's error (the cache checks its tables)."""
      if teacher is not None and cache is None:
        _check_live_teacher(config, teacher, loader, mesh, epoch, first, last)

    # Loop: epochs of steps; logs, evaluations and checkpoints at their cadences.
    for epoch in range(first_epoch, config.num_epochs):
      if cache is not None and (cache.per_epoch or epoch == first_epoch):
        # This epoch's table of teacher rows (read, or computed once and written), which the
        # loader streams with the batches. Without augmentation one table serves every epoch.
        with clock.paused():
          cache.prepare(epoch)
      if selector and selector.is_round(epoch) and meta["selection_epoch"] != epoch:
        with clock.paused():
          mask, stats = selector(state.variables, epoch)
        state = state.replace(selected=parallel.replicate(mask, mesh))
        meta.update(selection=[*meta["selection"], stats], selection_epoch=epoch)
        print(f"kd_jax: {stage} selection round at epoch {epoch}: {stats['num_selected']} of "
              f"{stats['num_examples']} examples selected ({stats['criterion']})", flush=True)
      start = first_in_epoch if epoch == first_epoch else 0
      logged = start  # the in-epoch step of the last log: the window behind the next one
      batches = parallel.prefetch_to_mesh(loader.epoch(epoch, start), mesh,
                                          config.input.device_prefetch)
      for in_epoch, batch in enumerate(batches, start=start + 1):
        state, metrics = train_step(state, batch)
        metric_sums.append(metrics)
        step += 1
        if clock.measured_from is None:  # compilation is not training time
          jax.block_until_ready(metrics)
          clock.step_done(step)
        end_of_epoch = in_epoch == steps_per_epoch
        if step % config.log_every_steps == 0 or end_of_epoch:
          values = metric_sums.window_means()
          if not np.isfinite(values["loss"]):
            blame_teacher(epoch, logged, in_epoch)
            raise _diverged(stage, "loss", step, checkpointer)
          values.update(epoch=step / steps_per_epoch, learning_rate=float(schedule(step - 1)),
                        images_per_second=clock.images_per_second(step) or 0.0)
          writer.write_scalars(step, values, "train", clock.report(step))
          logged = in_epoch
        # Mid-epoch saves only: the epoch's end, below, saves after its evaluations.
        if not end_of_epoch and due(step, config.checkpoint.every_steps, total_steps):
          position = Position(step, epoch, in_epoch,
                              seconds_before + time.time() - session_start)
          with clock.paused():
            _save(checkpointer, state, dict(meta, **dataclasses.asdict(position)),
                  metric_sums, blame_teacher=functools.partial(blame_teacher, epoch, logged,
                                                               in_epoch))

      # The epoch's end: its train means, validation (best checkpoint), test, a checkpoint.
      writer.write_scalars(step, dict(metric_sums.epoch_means(), epoch=epoch + 1),
                           "train_epoch")
      val_accuracy = None
      with clock.paused():
        if val_loader and due(epoch + 1, config.eval_every_epochs, config.num_epochs):
          val = evaluate.evaluate(eval_fn, state.variables, val_loader, mesh)
          writer.write_scalars(step, dict(val, epoch=epoch + 1), "val")
          val_accuracy = val["accuracy"]
          if meta["best_val_accuracy"] is None or val_accuracy > meta["best_val_accuracy"]:
            meta.update(best_val_accuracy=val_accuracy, best_val_step=step)
        if due(epoch + 1, config.eval_test_every_epochs, config.num_epochs):
          test = evaluate.evaluate(eval_fn, state.variables, test_loader, mesh)
          writer.write_scalars(step, dict(test, epoch=epoch + 1), "test")
        position = Position(step, epoch + 1, 0, seconds_before + time.time() - session_start)
        _save(checkpointer, state, dict(meta, **dataclasses.asdict(position)), metric_sums,
              val_accuracy, functools.partial(blame_teacher, epoch, logged, steps_per_epoch))

    # The final model's test metrics, and the best-validation checkpoint's (labelled).
    test = evaluate.evaluate(eval_fn, state.variables, test_loader, mesh)
    writer.write_scalars(step, dict(test, epoch=config.num_epochs), "final_test")
    best_test = _best_checkpoint_test(checkpointer, meta["best_val_step"], eval_fn,
                                      ckpt_lib.abstract(state.variables), test_loader, mesh)
    compilations = train_step._cache_size()  # pylint: disable=protected-access
    summary = _summary(config, data, fingerprint, state, meta, test, best_test,
                       teacher, cache, steps=step, train_seconds=position.train_seconds,
                       images_per_second=clock.images_per_second(step),
                       train_step_compilations=compilations)
    writer.close()
    checkpointer.close()
    workdir_lib.write_json(summary_path, summary)
    parallel.sync(f"{stage}_done")
    return Trained(summary, state.variables)
