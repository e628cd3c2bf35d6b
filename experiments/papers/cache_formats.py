r"""Sparse teacher caches (Anshumann et al., ACL 2025, arXiv 2503.16870): top-k vs sampled rows.

The claims tested, on the students of the real trainer (`kd_jax.pipeline.run`, one run each,
in one process), every method that reads a teacher:
  1. A top-k cache (the k largest teacher probabilities, the rest spread evenly) gives the
     student a biased target: worse calibration (ECE) than the full logits.
  2. A sampled cache (k classes drawn from the teacher, counts / k as the target) is unbiased:
     its students match the full logits' accuracy and calibration.
And the issue's bar for both: within one std (over seeds) of the float16 cache in accuracy.

  python experiments/papers/cache_formats.py --out=experiments/results/papers/cache_formats

Datasets: `synthetic` (configs/synthetic.py at class correlation rho = 0.75: 100 classes in 20
superclasses, where secondary classes matter, Tang et al.'s setup) with k = 5, 10, 20, and
`mnist1d` (configs/mnist1d.py, 10 classes) with k = 2, 5 (k < C). Per dataset and seed one
teacher is trained (`stages="teacher"`), then every (method, format) student reads it with that
seed: `live` (no cache), `float16`, `topk<k>`, `sampled<k>` (`teacher_cache.format`, `.k`); the
cache directory is shared by the seed's students (its key separates formats, k and
temperatures). Methods: the config's own method block with `name` = kd, lr, dkd, kd_ds (the
other fields, e.g. T = 4, from the config), except DKD's beta on mnist1d (`--mnist1d_dkd_beta`,
1 by default): at mdistiller's CIFAR beta = 8 the live-teacher DKD student ends at chance there
(and at beta = 2 near it), so the formats could not be told apart. Every run of a dataset trains on the same
examples; the seed changes init, data order and the sampled draws.

Also, per dataset, how far each format's target is from the full teacher's at the methods'
temperature T, on the first seed's teacher and training examples: the mean total variation
0.5 ||p(z', T) - p(z, T)||_1 between the target from the cached row `z'` (`cache_formats.pack`
then `unpack`, as the trainer does) and the full one, the mean mass outside the top k and the
label, and the same for the earlier top-k rule (the rest spread evenly at T = 1, then tempered).

Reported per dataset, method and format: the last-epoch test accuracy and ECE (15 bins) mean
+- std over seeds, the best-validation checkpoint's test accuracy (labelled), and the paired
(same seed) accuracy and ECE differences to float16. Writes OUT/results.json and
OUT/results.md; the runs go to OUT/runs (git-ignored); finished runs are skipped on rerun.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import report
from in_process import logits_on, run_args, softmax, start
from report import fmt, mean_std

from configs import mnist1d, synthetic
from kd_jax import config_defaults, methods
from kd_jax.train import cache_formats
from kd_jax.train import teacher as teacher_lib

METHODS = ("kd", "lr", "dkd", "kd_ds")
DATASETS = {"synthetic": (synthetic, (5, 10, 20)), "mnist1d": (mnist1d, (2, 5))}
CORRELATION = 0.75


def parse_args(argv=None):
  p = run_args(__doc__)
  p.add_argument("--datasets", default="synthetic,mnist1d")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--formats", default="",
                 help="only these format labels, e.g. topk5,topk10 (default: all)")
  p.add_argument("--mnist1d_dkd_beta", type=float, default=1.0,
                 help="dkd_beta on mnist1d (mdistiller's CIFAR 8 diverges there)")
  p.add_argument("--epochs", type=int, default=0, help="epochs of every run (0: the config's)")
  p.add_argument("--train", type=int, default=0,
                 help="synthetic training examples (0: the config's)")
  return p.parse_args(argv)


def formats(ks):
  """label -> (teacher_cache.format, k); `live` reads no cache."""
  out = {"live": (None, 0), "float16": ("float16", 0)}
  for fmt_name in ("topk", "sampled"):
    out.update({f"{fmt_name}{k}": (fmt_name, k) for k in ks})
  return out


def base_config(args, dataset, seed):
  """The dataset's config with one seed, the test at the end only, no periodic checkpoint."""
  c = DATASETS[dataset][0].get_config()
  c.name = f"cache_formats_{dataset}"
  c.seed = seed
  if dataset == "synthetic":
    c.dataset.options.correlation = CORRELATION
    if args.train:
      c.dataset.options.num_train = args.train
  if args.epochs:
    c.num_epochs = args.epochs
  c.eval_test_every_epochs = 0
  c.log_every_steps = 10_000
  c.checkpoint.every_steps = 0
  c.checkpoint.keep = 1
  return c


def teacher_config(args, dataset, seed):
  c = base_config(args, dataset, seed)
  c.stages = "teacher"
  return c


def student_config(args, dataset, seed, teacher_dir, cache_dir, method, cache):
  c = base_config(args, dataset, seed)
  c.stages = "student"
  c.teacher = config_defaults.teacher(c.teacher.model, "ce", checkpoint=teacher_dir)
  c.student.method.name = method
  if dataset == "mnist1d" and method.startswith("dkd"):
    c.student.method.dkd_beta = args.mnist1d_dkd_beta
  fmt_name, k = cache
  if fmt_name:
    c.teacher_cache.dir = cache_dir
    c.teacher_cache.format = fmt_name
    c.teacher_cache.k = k or c.teacher_cache.k
  return c


def spread_at_t1_target(logits, labels, k, temperature):
  """p(., T) of the earlier top-k rule: the top k and the label keep their logits, the rest's
  exact mass at T = 1 is spread evenly at T = 1, and the row is tempered afterwards."""
  z = np.asarray(logits, np.float64)
  p1 = softmax(z)
  rows = np.arange(len(z))[:, None]
  kept = np.zeros(z.shape, bool)
  kept[rows, np.argsort(-z, axis=1)[:, :k]] = True
  kept[rows[:, 0], labels] = True
  rest_mass = np.maximum(1.0 - np.where(kept, p1, 0.0).sum(1), 1e-300)
  lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
  rest_logit = np.log(rest_mass / (~kept).sum(1)) + lse
  return softmax(np.where(kept, z, rest_logit[:, None]) / temperature)


def target_distances(logits, labels, ks, temperature, seed=0):
  """label -> mean total variation to p(z, T) and mean mass outside the top k and the label,
  for each format's target (the trainer's pack and unpack) and the earlier top-k rule."""
  z, y = jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.int32)
  full = softmax(np.asarray(logits) / temperature)
  num_classes = z.shape[-1]
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(len(y)))

  def stats(target, k):
    kept = np.zeros(full.shape, bool)
    kept[np.arange(len(y))[:, None], np.argsort(-full, axis=1)[:, :k]] = True
    kept[np.arange(len(y)), labels] = True
    return dict(total_variation=float(0.5 * np.abs(target - full).sum(1).mean()),
                rest_mass=float(np.where(kept, 0.0, target).sum(1).mean()),
                full_rest_mass=float(np.where(kept, 0.0, full).sum(1).mean()))

  out = {}
  for fmt_name in ("float16", "topk", "sampled"):
    for k in ks if fmt_name != "float16" else [0]:
      rows = cache_formats.pack(fmt_name, z, y, k=k, temperature=temperature, keys=keys)
      dense = cache_formats.unpack(fmt_name, rows, y, num_classes, temperature=temperature)
      target = softmax(np.asarray(dense, np.float64) / temperature)
      out[fmt_name + (str(k) if k else "")] = stats(target, k or 1)
  for k in ks:
    out[f"topk{k} spread at T=1"] = stats(spread_at_t1_target(logits, labels, k, temperature), k)
  return out


def entry(runs, reference=None):
  """Table cells of one (method, format) over seeds; `reference`: float16's runs (paired)."""
  acc = [r["test_accuracy"] for r in runs]
  ece = [r["ece"] for r in runs]
  out = dict(last_epoch_test_accuracy=mean_std(acc), ece=mean_std(ece),
             best_val_checkpoint_test_accuracy=mean_std(
                 [r.get("best_val_checkpoint_test_accuracy") for r in runs]),
             per_seed_last_epoch=acc, per_seed_ece=ece,
             train_seconds=mean_std([r.get("train_seconds") for r in runs]))
  if reference:
    ref_acc = [r["test_accuracy"] for r in reference]
    out["accuracy_minus_float16"] = mean_std(np.subtract(acc, ref_acc))
    out["ece_minus_float16"] = mean_std(np.subtract(ece, [r["ece"] for r in reference]))
    ref = mean_std(ref_acc)
    out["within_one_std_of_float16"] = bool(abs(np.mean(acc) - ref[0]) <= ref[1])
  return out


def main():
  args = parse_args()
  if args.report_only:
    report.write(args.out, markdown)
    return
  seeds = args.seeds
  methods_run = args.methods.split(",")
  workdir, runner, command = start("cache_formats", args)
  tables, teachers, scale, distances = {}, {}, {}, {}
  for dataset in args.datasets.split(","):
    caches = formats(DATASETS[dataset][1])
    if args.formats:
      caches = {label: caches[label] for label in args.formats.split(",") if label in caches}
    runs, teachers[dataset] = {}, []
    for seed in seeds:
      seed_dir = os.path.join(workdir, dataset, f"seed{seed}")
      t_dir = os.path.join(seed_dir, "teacher_run")
      summary, sec, data = runner.run(teacher_config(args, dataset, seed), t_dir)
      teachers[dataset].append(summary["teacher"])
      print(f"{dataset} seed={seed} teacher: test {summary['teacher']['test_accuracy']:.4f} "
            f"({sec:.0f} s)", flush=True)
      if seed == seeds[0]:
        c = teacher_config(args, dataset, seed)
        teacher = teacher_lib.from_run(os.path.join(t_dir, "teacher"), c.teacher.model,
                                       data.info, runner.mesh)
        logits, classes = logits_on(c.teacher.model, teacher.variables, data.train,
                                    runner.mesh)
        distances[dataset] = target_distances(
            logits, classes, DATASETS[dataset][1],
            methods.teacher_temperature(c.student.method), seed)
      for method in methods_run:
        for label, cache in caches.items():
          config = student_config(args, dataset, seed, os.path.join(t_dir, "teacher"),
                                  os.path.join(seed_dir, "teacher_cache"), method, cache)
          summary, sec, _ = runner.run(config, os.path.join(seed_dir, method, label))
          runs.setdefault(method, {}).setdefault(label, []).append(summary["student"])
          print(f"{dataset} seed={seed} {method} {label}: test "
                f"{summary['student']['test_accuracy']:.4f} ece {summary['student']['ece']:.4f} "
                f"({sec:.0f} s)", flush=True)
    c = base_config(args, dataset, seeds[0])
    student = c.student.method
    scale[dataset] = dict(
        config=f"configs/{dataset}.py", classes=data.info.num_classes,
        train_examples=len(data.train), validation_examples=len(data.val or ()),
        test_examples=len(data.test), epochs=c.num_epochs, batch_size=c.batch_size,
        teacher=c.teacher.model, student=c.student.model, ks=list(DATASETS[dataset][1]),
        method_fields=dict(temperature=student.temperature, ce_weight=student.ce_weight,
                           kd_weight=student.kd_weight,
                           dkd_beta=student_config(args, dataset, seeds[0], "", "", "dkd",
                                                   (None, 0)).student.method.dkd_beta),
        correlation=CORRELATION if dataset == "synthetic" else None)
    tables[dataset] = {"teacher": entry(teachers[dataset])}
    for m in methods_run:
      reference = runs[m].get("float16")
      tables[dataset][m] = {label: entry(r, None if label == "float16" else reference)
                            for label, r in runs[m].items()}
  timing = runner.record_time(args.out)
  results = dict(command=command, seeds=seeds, methods=methods_run, scale=scale,
                 target_distances=distances, tables=tables, timing=timing)
  print("\n".join(report.save(args.out, results, markdown)), flush=True)


def markdown(results, out):
  """results.md's lines from results.json (see report.py)."""
  lines = ["# Sparse teacher caches: top-k vs sampled rows against float16 and the live teacher",
           "", report.reproduce(results["command"]), "",
           report.run_times("Run time on this 2-core CPU (wall clock of each invocation, runs "
                            "trained / skipped)", results["timing"]), "",
           (report.ACCURACY + ", labelled. ECE: 15 equal-width confidence bins, last-epoch "
            "model, test split. `- float16`: paired (same seed) difference to the float16 "
            "cache's student, mean +- std over seeds. `within 1 std`: |mean accuracy - "
            "float16's mean| <= float16's std over seeds."), ""]
  notes = report.notes(out)
  if notes:
    lines += [notes, ""]
  for dataset, table in results["tables"].items():
    s = results["scale"][dataset]
    lines += [f"## {dataset}", "",
              (f"Scale: `{s['config']}`"
               + (f" at rho = {s['correlation']}" if s["correlation"] is not None else "")
               + f", {s['classes']} classes, {s['train_examples']} training examples "
               f"(+{s['validation_examples']} held out for validation), {s['test_examples']} "
               f"test; teacher {s['teacher']}, student {s['student']}, {s['epochs']} epochs, "
               f"batch {s['batch_size']}; method fields {s['method_fields']} (the config's); "
               f"seeds {results['seeds']}; k in {s['ks']}."), "",
              (f"Teacher: test accuracy {fmt(table['teacher']['last_epoch_test_accuracy'])}, "
               f"ECE {fmt(table['teacher']['ece'])}."), ""]
    d = results["target_distances"].get(dataset)
    if d:
      lines += [(f"Targets at T = {s['method_fields']['temperature']} on the training examples "
                 f"(seed {results['seeds'][0]}'s teacher): mean total variation to the full "
                 "teacher's p(z, T), mean mass outside the top k and the label (the full row's "
                 "beside it). `spread at T=1`: the earlier top-k rule (rest spread evenly at "
                 "T = 1, then tempered)."), ""]
      lines += report.table(["target", "total variation", "rest mass", "full row's rest mass"],
                            [[label, f"{v['total_variation']:.4f}", f"{v['rest_mass']:.4f}",
                              f"{v['full_rest_mass']:.4f}"] for label, v in d.items()])
      lines += [""]
    for method in results["methods"]:
      rows = []
      for label, e in table[method].items():
        within = e.get("within_one_std_of_float16")
        rows.append([label, *report.accuracy(e), fmt(e.get("accuracy_minus_float16"),
                                                     signed=True),
                     "" if within is None else ("yes" if within else "**no**"), fmt(e["ece"]),
                     fmt(e.get("ece_minus_float16"), signed=True),
                     report.per_seed(e["per_seed_last_epoch"])])
      lines += [f"### {dataset}: {method}", ""]
      lines += report.table(["format", "last epoch", "best-val ckpt", "acc - float16",
                             "within 1 std", "ECE", "ECE - float16", "per seed (last epoch)"],
                            rows)
      lines += [""]
  return lines


if __name__ == "__main__":
  main()
