r"""Training in generations with a tolerant teacher (Yang et al., AAAI 2019, arXiv 1805.05551).

Definition (what one generation is):

* Generations g = 0..G-1 all share one architecture (`teacher.model`; `student.model` must
  equal it). Each generation is a separate role `generation_<g>` trained by
  `kd_jax.train.train_model` under `workdir/generation_<g>/`, from a FRESH initialisation
  (its own seed, `setup.role_seed(config.seed, "generation_<g>")`), with a FRESH optimizer
  and the FULL learning-rate schedule (`num_epochs`). Nothing but knowledge flows from one
  generation to the next: no weights, no optimizer state.
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
  plain teacher/student run (`kd_jax.train.data_selection`).
* The teacher of generation g >= 1 is generation g-1's FINAL checkpoint (the newest step of
  `generation_<g-1>/checkpoints/`, not the best-validation one), frozen (`stop_gradient`)
  and run in eval mode (BatchNorm running statistics, no dropout).

The run is a fold over generations, `reduce(step, range(G), Carry(previous=None, ...))`,
whose carried state is only the previous generation's role directory (its final orbax
checkpoint is the next teacher) and the summaries written so far. Every generation resumes
through `train_model`: a finished one (its `summary.json` exists) is skipped, a killed one
resumes mid-epoch from its newest checkpoint, so rerunning the command after a kill ends
with the metrics of an uninterrupted run, and rerunning a finished command trains nothing.

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

import ml_collections
import numpy as np

from kd_jax import methods, metrics
from kd_jax.train import evaluate as eval_lib
from kd_jax.train import loop, parallel, report, setup

LOGITS, TARGETS, PLOT = "test_logits.npy", "test_targets.npz", "generations.png"


def default_config() -> ml_collections.ConfigDict:
  """The `config.generations` block; `num = 0` means an ordinary teacher/student run."""
  return ml_collections.ConfigDict(dict(
      num=0,             # G generations (patriarch included); 0 disables generations
      ce_weights=(),     # lambda_g for g = 1..G-1 (G-1 values in [0, 1]); () -> student block's
      ensemble_first=1,  # ensemble_<g> averages generations ensemble_first..g
      num_secondary=5,   # K of the secondary_in_superclass metric
  ))


def enabled(config) -> bool:
  return bool(config.get("generations")) and config.generations.num > 0


def role(generation: int) -> str:
  return f"generation_{generation}"


def _fail(field, value, allowed):
  raise ValueError(f"{field}={value!r} is not allowed: {allowed}")


def check_config(config, num_classes: int) -> None:
  """Raises ValueError naming the field, its value and what is allowed (after
  `loop.prepare`, which checks the teacher and student blocks themselves)."""
  g = config.generations
  if not isinstance(g.num, int) or g.num < 1:
    _fail("generations.num", g.num, "must be an integer >= 1")
  if config.teacher.get("checkpoint"):
    _fail("teacher.checkpoint", config.teacher.checkpoint,
          "must be '' in a generations run: the patriarch (generation 0) is trained here")
  if config.student.model != config.teacher.model:
    _fail("student.model", config.student.model,
          f"must equal teacher.model={config.teacher.model!r}: generations share one "
          "architecture")
  if g.num > 1 and not methods.needs_teacher(config.student.method.name):
    _fail("student.method.name", config.student.method.name,
          "must learn from a teacher (kd, lr, ...) in generations 1..G-1")
  weights = tuple(g.ce_weights or ())
  if weights and (len(weights) != g.num - 1 or not all(0 <= w <= 1 for w in weights)):
    _fail("generations.ce_weights", weights,
          f"must be empty or {g.num - 1} values in [0, 1] (lambda of generations 1..G-1)")
  if not 0 <= g.ensemble_first < g.num:
    _fail("generations.ensemble_first", g.ensemble_first, f"must lie in [0, {g.num - 1}]")
  if not 1 <= g.num_secondary < num_classes:
    _fail("generations.num_secondary", g.num_secondary, f"must lie in [1, {num_classes - 1}]")


def generation_settings(config, generation: int) -> ml_collections.ConfigDict:
  """`setup.role_settings` of generation g: the teacher block for g = 0, the student block
  for g >= 1 with `ce_weight = lambda_g`, `kd_weight = 1 - lambda_g` when
  `generations.ce_weights` is set."""
  if generation == 0:
    return setup.role_settings(config, "teacher")
  settings = setup.role_settings(config, role(generation))  # the student block
  weights = tuple(config.generations.ce_weights or ())
  if weights:
    settings.method.ce_weight = float(weights[generation - 1])
    settings.method.kd_weight = 1.0 - float(weights[generation - 1])
  return settings


def _save_array(path: str, write) -> None:
  """Atomic write on the primary process (temporary file + rename), then a barrier."""
  if parallel.is_primary():
    tmp = f"{path}.tmp.npz" if path.endswith(".npz") else f"{path}.tmp.npy"
    write(tmp)
    os.replace(tmp, path)
  parallel.sync(f"save_{os.path.basename(path)}")


def test_predictions(workdir: str, generation: int, settings, data, mesh, config) -> np.ndarray:
  """float32 `[N_test, C]` test logits of a finished generation (cached in its role dir)."""
  role_dir = os.path.join(workdir, role(generation))
  path = os.path.join(role_dir, LOGITS)
  if not os.path.exists(path):
    summary = report.read_json(os.path.join(role_dir, "summary.json"))
    model = setup.trained_teacher(role_dir, settings.model, data.info, mesh, summary)
    out = eval_lib.predict(eval_lib.make_eval_fn(model.model), model.variables,
                           eval_lib.eval_loader(data.test, config.eval_batch_size), mesh)
    targets = {key: out[key] for key in ("label", "superclass") if key in out}
    targets_path = os.path.join(workdir, TARGETS)
    if not os.path.exists(targets_path):  # written before any logits file
      _save_array(targets_path, lambda tmp: np.savez(tmp, **targets))
    _save_array(path, lambda tmp: np.save(tmp, out["logits"].astype(np.float32)))
  return np.load(path)


def _test_targets(workdir: str) -> tuple[np.ndarray, np.ndarray | None]:
  with np.load(os.path.join(workdir, TARGETS)) as f:
    return f["label"], f.get("superclass")


def _entry(config, generation: int, settings, summary: dict, test: dict) -> dict:
  method = settings.method
  entry = dict(role=role(generation), model=settings.model, method=method.name,
               teacher=role(generation - 1) if generation else None,
               num_epochs=settings.num_epochs, steps=summary["steps"],
               test_accuracy=test["accuracy"], test_metrics=test,
               best_val_accuracy=summary.get("best_val_accuracy"),
               best_val_checkpoint_test_accuracy=summary.get(
                   "best_val_checkpoint_test_accuracy"),
               train_seconds=summary.get("train_seconds"))
  if method.name == "tsd":
    entry.update(tsd_eta=method.tsd_eta, tsd_num_secondary=method.tsd_num_secondary)
  if generation:
    entry.update(ce_weight=method.ce_weight, kd_weight=method.kd_weight,
                 temperature=method.temperature, revise=bool(method.revise))
  return entry


@dataclasses.dataclass(frozen=True)
class Carry:
  """The state folded over generations: the previous generation's role directory (its final
  checkpoint teaches the next generation) and the summary entries so far."""
  previous: str | None
  summary: dict


def run(config, workdir: str, *, mesh=None, data=None) -> dict:
  """Trains (or resumes, or skips) generations 0..G-1; returns and writes summary.json.

  Args:
    config: a config with a `generations` block (`default_config()`), `num >= 1`.
    workdir: one directory per generation (`generation_<g>/`), plus summary.json,
      test_targets.npz and generations.png.
    mesh, data: as `loop.prepare` returns them (built when None).

  Returns:
    dict with `generation_<g>` and `ensemble_<g>` entries (test metrics of the final models
    and of the mean-softmax ensembles), plus config name, dataset and seed.
  """
  if data is None:
    mesh, data = loop.prepare(config)
  mesh = mesh or parallel.make_mesh()
  check_config(config, data.info.num_classes)
  if parallel.is_primary():
    os.makedirs(workdir, exist_ok=True)
  report.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  header = dict(config=config.get("name", ""), dataset=data.info.name, seed=int(config.seed),
                num_generations=int(config.generations.num))
  step = functools.partial(_generation_step, config, workdir, data, mesh)
  carry = functools.reduce(step, range(config.generations.num), Carry(None, header))
  return carry.summary


def _generation_step(config, workdir, data, mesh, carry: Carry, generation: int):
  name = role(generation)
  settings = generation_settings(config, generation)
  role_dir = os.path.join(workdir, name)
  teacher = None
  if not os.path.exists(os.path.join(role_dir, "summary.json")) and generation:
    teacher = setup.trained_teacher(carry.previous, settings.model, data.info, mesh,
                                report.read_json(os.path.join(carry.previous, "summary.json")))
  summary = loop.train_model(config, name, workdir, teacher=teacher, data=data, mesh=mesh,
                             settings=settings)
  num_secondary = int(config.generations.num_secondary)
  logits = test_predictions(workdir, generation, settings, data, mesh, config)
  labels, superclasses = _test_targets(workdir)
  test = metrics.evaluate_logits(logits, labels, superclasses, num_secondary)
  entries = dict(carry.summary)
  entries[name] = _entry(config, generation, settings, summary, test)
  first = int(config.generations.ensemble_first)
  if generation >= first:
    members = [role(g) for g in range(first, generation + 1)]
    member_logits = [np.load(os.path.join(workdir, m, LOGITS)) for m in members]
    ensemble = metrics.evaluate_logits(metrics.ensemble_logits(member_logits), labels,
                                       superclasses, num_secondary)
    entries[f"ensemble_{generation}"] = dict(members=members, test_accuracy=ensemble["accuracy"],
                                             test_metrics=ensemble)
  report.write_json(os.path.join(workdir, "summary.json"), entries)
  if parallel.is_primary():
    plot(entries, os.path.join(workdir, PLOT))
  line = f"kd_jax: {name}: test accuracy {test['accuracy']:.4f}"
  if f"ensemble_{generation}" in entries:
    accuracy = entries[f"ensemble_{generation}"]["test_accuracy"]
    line += f", ensemble of generations {first}..{generation} {accuracy:.4f}"
  print(line, flush=True)
  return Carry(role_dir, entries)


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
