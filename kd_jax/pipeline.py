"""The stages a config asks for, each one call of `kd_jax.train.train` in its own directory.

A config file (defaults: kd_jax/config_defaults.py) describes a teacher and a student;
`run` trains the teacher (`workdir/teacher/`) unless the student needs none or
`teacher.checkpoint` names one, then the student (`workdir/student/`), or hands over to the
generations fold (`kd_jax.generations`). The `precompute` stage (`stages="teacher,precompute"`
or `"precompute"`) trains no student: it fills the teacher-output cache (`teacher_cache.dir`)
for the student's runs, so a sweep's methods all read it (kd_jax/train/teacher_cache.py). A
teacher the same process just trained is handed over in memory; one from an earlier process
is read from its final checkpoint. Every stage resumes or skips on its own, so rerunning a
command after a kill or after it finished is safe.

Before anything trains, `prepare` checks the whole config: every stage's model fits the
data, and a loaded teacher fits it too (`kd_jax.train.checks`). A workdir holds one kind of
pipeline, stages or generations (`workdir.claim`): a run of the other kind stops before it
writes anything.
"""

import dataclasses
import os

from kd_jax import generations, methods
from kd_jax.train import (
  checks,
  evaluate,
  loop,
  parallel,
  plots,
  splits,
  stage,
  teacher,
  teacher_cache,
  workdir,
)


def stages(config) -> dict:
  """Stage name -> stage config, for the stages this config runs (in order); `precompute`
  gets the student's stage config (its data order, batch and epochs are what it caches)."""
  checks.check_stages(config.stages)
  names = config.stages.split(",")
  needs_teacher = methods.needs_teacher(config.student.method.name)
  uses_teacher = "student" in names or "precompute" in names
  if uses_teacher and (not needs_teacher or config.teacher.checkpoint):
    names = [name for name in names if name != "teacher"]
  return {name: stage.stage_config(config, "student" if name == "precompute" else name)
          for name in names}


def prepare(config) -> splits.Data:
  """The data, after every check of the config (ValueError naming the bad field)."""
  data = splits.load_data(config)
  if config.generations.num:
    checks.check_generations(config, data.info.num_classes)
    checks.check_pipeline(config, data, generations.stage_configs(config))
  else:
    checks.check_pipeline(config, data, stages(config))
  return data


def run(config, workdir_path: str, *, data: splits.Data | None = None) -> dict:
  """Runs the config's stages; returns and writes `workdir/summary.json`."""
  data = data or prepare(config)
  kind = "generations" if config.generations.num else "stages"
  workdir.check_kind(workdir_path, kind)  # before anything is written (the lock included)
  mesh = parallel.make_mesh()
  with workdir.locked(workdir_path):
    if config.generations.num:
      return generations.run(config, workdir_path, data, mesh)
    summary = dict(config=config.name, dataset=data.info.name, seed=int(config.seed))
    trained_teacher = None
    if config.teacher.checkpoint and methods.needs_teacher(config.student.method.name):
      trained_teacher = teacher.load(config, data, mesh)
      summary["teacher"] = loaded_teacher_summary(trained_teacher, data, mesh, config,
                                                  workdir_path)
      trained_teacher = dataclasses.replace(
          trained_teacher, test_accuracy=summary["teacher"]["test_accuracy"])
    for name, stage_cfg in stages(config).items():
      workdir.claim(workdir_path, kind, name, workdir.fingerprint(stage_cfg))
      if name == "precompute":
        summary[name] = precompute(stage_cfg, trained_teacher, data, mesh)
        continue
      stage_dir = os.path.join(workdir_path, name)
      result = loop.train(stage_cfg, stage_dir, teacher=trained_teacher, data=data, mesh=mesh)
      summary[name] = result.summary
      if parallel.is_primary():
        plots.plot_curves(stage_dir, f"{config.name} {name}: {stage_cfg.model}, "
                          f"{stage_cfg.method.name}")
      print(f"kd_jax: {name} {stage_cfg.model}: test accuracy {result.summary['test_accuracy']:.4f}"
            f" (top-5 {result.summary['test_top5']:.4f}, ECE {result.summary['ece']:.4f})",
            flush=True)
      if name == "teacher":
        trained_teacher = teacher.from_trained(result, stage_dir, stage_cfg.model, data.info,
                                               mesh)
    workdir.write_json(os.path.join(workdir_path, "config.json"), config.to_dict())
    workdir.write_json(os.path.join(workdir_path, workdir.SUMMARY), summary)
  return summary


def precompute(student_config, trained_teacher, data, mesh) -> dict:
  """Fills the teacher-output cache for `student_config`'s runs (every epoch's views with
  augmentation, one table without); tables already there and valid are kept. Returns what
  it wrote and read."""
  cache = teacher_cache.open_cache(
      student_config, trained_teacher, stage.live_teacher_fn(student_config, trained_teacher),
      stage.training_loader(student_config, data), mesh, data.info)
  cache.must_write = True  # filling the cache is this stage's whole job
  epochs = range(student_config.num_epochs if cache.per_epoch else 1)
  checks.check_cache_files(cache, epochs)
  for epoch in epochs:
    cache.prepare(epoch)
  print(f"kd_jax: precompute: teacher outputs for {student_config.num_epochs} epoch(s) in "
        f"{cache.directory}/{cache.key} ({len(cache.computed)} computed, {len(cache.read)} "
        "already there)", flush=True)
  return dict(stage="precompute", cache_dir=cache.directory, key=cache.key,
              per_epoch=cache.per_epoch, computed=len(cache.computed), read=len(cache.read))


def loaded_teacher_summary(loaded: teacher.Teacher, data, mesh, config,
                           workdir_path: str | None = None) -> dict:
  """Test metrics of a teacher loaded from `teacher.checkpoint` (its source recorded); taken
  from the workdir's earlier summary.json when it holds this very teacher (same fingerprint:
  model and variables CRC32), so a rerun does not evaluate it again."""
  earlier_path = os.path.join(workdir_path or "", workdir.SUMMARY)
  if workdir_path and os.path.exists(earlier_path):
    earlier = workdir.read_json(earlier_path).get("teacher") or {}
    if earlier.get("trained") is False and earlier.get("fingerprint") == loaded.fingerprint:
      return dict(earlier, teacher_checkpoint=loaded.source)
  test = evaluate.evaluate(evaluate.make_eval_fn(loaded.model), loaded.variables,
                           evaluate.eval_loader(data.test, config.eval_batch_size), mesh)
  return dict(stage="teacher", model=loaded.model_name, teacher_checkpoint=loaded.source,
              trained=False, dataset=data.info.name, test_accuracy=test["accuracy"],
              test_top5=test["top5"], test_loss=test["loss"], ece=test["ece"],
              test_metrics=test, fingerprint=loaded.fingerprint)
