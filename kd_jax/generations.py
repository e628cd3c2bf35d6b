r"""Training in generations with a tolerant teacher (Yang et al., AAAI 2019, arXiv 1805.05551).

Definition (what one generation is):

* Generations g = 0..G-1 all share one architecture (`teacher.model`; `student.model` must
  equal it). Each generation is a stage `generation_<g>` trained by `kd_jax.train.train`
  under `workdir/generation_<g>/`, from a FRESH initialisation (its own seed,
  `stage.stage_seed(config.seed, "generation_<g>")`), with a FRESH optimizer and the FULL
  learning-rate schedule (`num_epochs`). Nothing but knowledge flows from one generation to
  the next: no weights, no optimizer state.
* Generation 0 (the patriarch) learns from the labels alone with the `teacher` block's
  method, by default `tsd`: `CE(z, y) + u(epoch) * TSD(z)`, where `u` ramps linearly from 0
  to `tsd_eta` over `tsd_warmup_epochs` (default eta = 0.6, K = `tsd_num_secondary` = 5).
  `tsd_eta = 0` gives a strict teacher (plain CE) for comparison.
* Generation g >= 1 learns with the `student` block's method (default `kd` at T = 1):
  `lambda_g * CE(z_s, y) + (1 - lambda_g) * KD_T(z_s, z_t)`, i.e. `ce_weight = lambda_g`,
  `kd_weight = 1 - lambda_g` (default lambda = 0.6). `generations.ce_weights` may give one
  lambda per generation 1..G-1 (e.g. rising toward 1 to "gradually fit the one-hot
  labels"); empty means the student block's `ce_weight`/`kd_weight` for every generation.
  Label revision (`student.method.revise=True`) and data selection (`student.method.select=
  True` or a `*_ds` method, with the `selection` block) apply to the teacher term as in a
  plain teacher/student run (`kd_jax.train.selection_rounds`).
* The teacher of generation g >= 1 is generation g-1's FINAL checkpoint (the newest step of
  `generation_<g-1>/checkpoints/`, not the best-validation one), frozen (`stop_gradient`)
  and run in eval mode (BatchNorm running statistics, no dropout).

The run is a fold over generations, `reduce(step, range(G), Carry(teacher=None, ...))`,
whose carried state is the previous generation's frozen final model (handed over in memory
when this process trained it, else read from its final orbax checkpoint) and the summaries
written so far. Every generation resumes through `train`: a finished one (its
`summary.json` exists) is skipped, a killed one resumes mid-epoch from its newest
checkpoint, so rerunning the command after a kill ends with the metrics of an uninterrupted
run, and rerunning a finished command trains nothing.

Evaluation. After each generation its test logits are saved (`generation_<g>/
test_logits.npy`, float32 `[N_test, C]`; labels and superclasses once in
`workdir/test_targets.npz`), so ensembles are built without recomputing any model:
`ensemble_<g>` is the mean of the softmax outputs of generations `ensemble_first..g`
(default 1..g: the students; set `generations.ensemble_first=0` to include the patriarch).
Every entry of `workdir/summary.json` (`generation_<g>`, `ensemble_<g>`) holds
`kd_jax.metrics.evaluate_logits`: accuracy, top5, loss, ece, and the secondary-information
metrics mean_entropy, top_gap (p_(1) - p_(2)) and, where the data has superclasses
(synthetic groups, CIFAR-100 coarse labels), secondary_in_superclass (share of the top-K
non-true classes inside the true superclass). `workdir/generations.png` plots test accuracy
per generation, single models and ensembles.

  python -m kd_jax.main --config=configs/synthetic_generations.py --workdir=/tmp/gen \
      [--config.teacher.method.tsd_eta=0.0] [--config.generations.ce_weights="(0.6,0.8)"]
"""

import dataclasses
import functools
import os

import numpy as np

from kd_jax import _files, metrics
from kd_jax.train import evaluate as eval_lib
from kd_jax.train import loop, parallel
from kd_jax.train import stage as stage_lib
from kd_jax.train import teacher as teacher_lib
from kd_jax.train import workdir as workdir_lib

LOGITS, TARGETS, PLOT = "test_logits.npy", "test_targets.npz", "generations.png"


def stage_name(generation: int) -> str:
  return f"generation_{generation}"


def stage_configs(config) -> dict:
  """`generation_<g>` -> its stage config: the teacher block for g = 0 (the patriarch), the
  student block for g >= 1 with `ce_weight = lambda_g`, `kd_weight = 1 - lambda_g` when
  `generations.ce_weights` is set."""
  out = {stage_name(0): stage_lib.stage_config(config, "teacher")}
  out[stage_name(0)].stage = stage_name(0)
  weights = tuple(config.generations.ce_weights or ())
  for generation in range(1, config.generations.num):
    stage = stage_lib.stage_config(config, "student")
    stage.stage = stage_name(generation)
    if weights:
      stage.method.ce_weight = float(weights[generation - 1])
      stage.method.kd_weight = 1.0 - float(weights[generation - 1])
    out[stage_name(generation)] = stage
  return out


def _save_array(path: str, write) -> None:
  """`_files.atomic_write` on the primary process, then a barrier."""
  if parallel.is_primary():
    _files.atomic_write(path, write)
  parallel.sync(f"save_{os.path.basename(path)}")


def test_predictions(workdir: str, generation: int, model, variables, data, mesh,
                     eval_batch_size: int) -> np.ndarray:
  """float32 `[N_test, C]` test logits of a finished generation (cached in its directory)."""
  path = os.path.join(workdir, stage_name(generation), LOGITS)
  if not os.path.exists(path):
    out = eval_lib.predict(eval_lib.make_eval_fn(model), variables,
                           eval_lib.eval_loader(data.test, eval_batch_size), mesh)
    targets = {key: out[key] for key in ("label", "superclass") if key in out}
    targets_path = os.path.join(workdir, TARGETS)
    if not os.path.exists(targets_path):  # written before any logits file
      _save_array(targets_path, lambda tmp: np.savez(tmp, **targets))
    _save_array(path, lambda tmp: np.save(tmp, out["logits"].astype(np.float32)))
  return np.load(path)


def _test_targets(workdir: str) -> tuple[np.ndarray, np.ndarray | None]:
  with np.load(os.path.join(workdir, TARGETS)) as f:
    return f["label"], f.get("superclass")


def _entry(generation: int, stage, summary: dict, test: dict) -> dict:
  method = stage.method
  entry = dict(stage=stage_name(generation), model=stage.model, method=method.name,
               teacher=stage_name(generation - 1) if generation else None,
               num_epochs=stage.num_epochs, steps=summary["steps"],
               test_accuracy=test["accuracy"], test_metrics=test,
               best_val_accuracy=summary.get("best_val_accuracy"),
               best_val_checkpoint_test_accuracy=summary.get(
                   "best_val_checkpoint_test_accuracy"),
               train_seconds=summary.get("train_seconds"))
  if method.name == "tsd":
    entry.update(tsd_eta=method.tsd_eta, tsd_num_secondary=method.tsd_num_secondary,
                 tsd_schedule=method.tsd_schedule, tsd_primary=method.tsd_primary)
  if generation:
    entry.update(ce_weight=method.ce_weight, kd_weight=method.kd_weight,
                 temperature=method.temperature, revise=bool(method.revise))
  return entry


@dataclasses.dataclass(frozen=True)
class Carry:
  """The state folded over generations: the previous generation's frozen final model (the
  next teacher) and the summary entries so far."""
  teacher: teacher_lib.Teacher | None
  summary: dict


def run(config, workdir: str, data, mesh) -> dict:
  """Trains (or resumes, or skips) generations 0..G-1; returns and writes summary.json.

  Args:
    config: a config with `generations.num >= 1`, checked by `kd_jax.pipeline.prepare`.
    workdir: one directory per generation (`generation_<g>/`), plus summary.json,
      test_targets.npz and generations.png.
    data, mesh: the loaded splits and the device mesh.

  Returns:
    dict with `generation_<g>` and `ensemble_<g>` entries (test metrics of the final models
    and of the mean-softmax ensembles), plus config name, dataset and seed.
  """
  header = dict(config=config.get("name", ""), dataset=data.info.name, seed=int(config.seed),
                num_generations=int(config.generations.num))
  step = functools.partial(_generation_step, config, stage_configs(config), workdir, data,
                           mesh)
  carry = functools.reduce(step, range(config.generations.num), Carry(None, header))
  workdir_lib.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  return carry.summary


def _generation_step(config, stages, workdir, data, mesh, carry: Carry, generation: int):
  name = stage_name(generation)
  stage = stages[name]
  stage_dir = os.path.join(workdir, name)
  workdir_lib.claim(workdir, "generations", name, workdir_lib.fingerprint(stage))
  result = loop.train(stage, stage_dir, teacher=carry.teacher, data=data, mesh=mesh)
  final = teacher_lib.from_trained(result, stage_dir, stage.model, data.info, mesh)
  num_secondary = int(config.generations.num_secondary)
  logits = test_predictions(workdir, generation, final.model, final.variables, data, mesh,
                            config.eval_batch_size)
  labels, superclasses = _test_targets(workdir)
  test = metrics.evaluate_logits(logits, labels, superclasses, num_secondary)
  entries = dict(carry.summary)
  entries[name] = _entry(generation, stage, result.summary, test)
  first = int(config.generations.ensemble_first)
  if generation >= first:
    members = [stage_name(g) for g in range(first, generation + 1)]
    member_logits = [np.load(os.path.join(workdir, m, LOGITS)) for m in members]
    ensemble = metrics.evaluate_logits(metrics.ensemble_logits(member_logits), labels,
                                       superclasses, num_secondary)
    entries[f"ensemble_{generation}"] = dict(members=members, test_accuracy=ensemble["accuracy"],
                                             test_metrics=ensemble)
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.SUMMARY), entries)
  if parallel.is_primary():
    plot(entries, os.path.join(workdir, PLOT))
  line = f"kd_jax: {name}: test accuracy {test['accuracy']:.4f}"
  if f"ensemble_{generation}" in entries:
    accuracy = entries[f"ensemble_{generation}"]["test_accuracy"]
    line += f", ensemble of generations {first}..{generation} {accuracy:.4f}"
  print(line, flush=True)
  return Carry(final, entries)


def accuracy_curves(summary: dict) -> tuple[list, list, list, list]:
  """(generations, accuracies, ensemble generations, ensemble accuracies) of a summary."""
  def series(prefix):
    keys = sorted((int(k[len(prefix):]), k) for k in summary if k.startswith(prefix))
    return [g for g, _ in keys], [summary[k]["test_accuracy"] for _, k in keys]
  return (*series("generation_"), *series("ensemble_"))


def plot(summary: dict, path: str) -> str:
  """PNG of test accuracy per generation: single models and ensembles of generations."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  gens, accs, ens_gens, ens_accs = accuracy_curves(summary)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(gens, accs, marker="o", label="generation g")
  if ens_gens:
    ax.plot(ens_gens, ens_accs, marker="s", label=f"ensemble {ens_gens[0]}..g")
  ax.set_xlabel("generation g")
  ax.set_ylabel("test accuracy")
  ax.set_xticks(gens)
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(f"{summary.get('config', '')} seed {summary.get('seed', '')}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
