r"""Lan et al. (arXiv 2404.03693) on synthetic data: Label Revision and Data Selection.

One command, offline, in one process (the real trainer, `kd_jax.pipeline.run`, per run):

  python experiments/papers/lan.py --out=experiments/results/papers/lan

The teacher errs on a controlled share of the student's training examples by its training
length: one mlp_large teacher per (teacher epochs, seed) is trained with CE on the same data
(`stages="teacher"`); fewer epochs leave it wrong on more training examples. The share it
actually gets wrong (argmax != label on the student's training split, the validation slice
excluded) is MEASURED and reported; the nominal levels only name the teachers. Every student
(mlp_small, `stages="student"`, the teacher through `teacher.checkpoint`) of a level trains on
the same examples (`dataset.seed`, `dataset.holdout`, `dataset.holdout_seed` fixed); the seed
changes init and data order. `ce` needs no teacher and is trained once per seed.

Students (the synthetic config's KD: T = 4, 0.1 CE + 0.9 T^2 KL; LR eta = 0.8; DKD alpha 1,
beta 8, T = 4, its warm-up scaled to the short schedule, `--dkd_warmup`):
  ce, kd, lr, dkd, dkd_lr                        no selection
  kd_ds, lr_ds, dkd_lr_ds                        the main selection (`MAIN`, ratio `--main_ratio`;
                                                 lr_ds is the grid's run of that cell)
  lr_ds.<criterion>.r<ratio>                     every criterion of `CRITERIA` x `--ratios`
  lr_ds.influence_untrained / _refreshed         the scored-model comparison (main ratio)
Criteria (`selection.*`): influence scored by the warmed student (W = `--warmup` epochs of CE,
then one round) or by the teacher (`selection.model=teacher`), teacher_correct, teacher_margin
and random (the control). The scored-model comparison for influence at the main ratio:
untrained student (W = 0), warmed (W), refreshed (W, then a round every `--refresh` epochs)
and teacher. Each selection run's rounds report the share of teacher-wrong examples inside
and outside the selection (the last round's is tabulated).

Writes OUT/results.json, OUT/results.md (with OUT/NOTES.md, the hand-written verdicts, when it
exists), OUT/*.png, OUT/timing.json; the runs go to OUT/runs (git-ignored). Finished runs are
skipped on rerun, so an interrupted command continues.
"""

import os

import numpy as np
import report
from in_process import (
  add_synthetic_args,
  logits_on,
  pyplot,
  run_args,
  start,
  synthetic_config,
)
from report import fmt, mean_std

from kd_jax import config_defaults
from kd_jax.train import teacher as teacher_lib

TEACHER_MODEL, STUDENT_MODEL = "mlp_large", "mlp_small"
METHODS = ("ce", "kd", "lr", "kd_ds", "lr_ds", "dkd", "dkd_lr", "dkd_lr_ds")
CRITERIA = ("influence_warmed", "influence_teacher", "teacher_correct", "teacher_margin",
            "random")
MAIN = "influence_warmed"
SCORED = ("influence_untrained", "influence_warmed", "influence_refreshed", "influence_teacher")


def parse_args(argv=None):
  p = run_args(__doc__)
  p.add_argument("--teacher_epochs", default="6,3,1",
                 help="one teacher training length per error level (nominal 5%%, 15%%, 30%%)")
  p.add_argument("--correlation", type=float, default=0.5)
  add_synthetic_args(p, noise=2.2, train=11_000, test=5_000, epochs=8)
  p.add_argument("--ratios", default="0.5,0.7,0.9")
  p.add_argument("--main_ratio", type=float, default=0.5)
  p.add_argument("--warmup", type=int, default=2, help="W of the warmed student")
  p.add_argument("--refresh", type=int, default=2, help="R of the refreshed student")
  p.add_argument("--dkd_warmup", type=float, default=1.0, help="DKD's loss warm-up epochs")
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- configs

def base_config(args, seed):
  return synthetic_config(args, "lan", seed, args.correlation)


def teacher_config(args, seed, epochs):
  c = base_config(args, seed)
  c.stages = "teacher"
  c.teacher.num_epochs = epochs
  return c


def criterion_fields(args, criterion):
  """The `selection` fields of a criterion label (CRITERIA and SCORED)."""
  influence = dict(criterion="influence", model="student", warmup_epochs=0, refresh_epochs=0)
  return {
      "influence_untrained": influence,
      "influence_warmed": dict(influence, warmup_epochs=args.warmup),
      "influence_refreshed": dict(influence, warmup_epochs=args.warmup,
                                  refresh_epochs=args.refresh),
      "influence_teacher": dict(influence, model="teacher"),
      "teacher_correct": dict(criterion="teacher_correct"),
      "teacher_margin": dict(criterion="teacher_margin"),
      "random": dict(criterion="random"),
  }[criterion]


def student_runs(args, ratios):
  """label -> (method name, selection fields): every student of one teacher (not ce)."""
  main = dict(criterion_fields(args, MAIN), ratio=args.main_ratio)
  runs = {name: (name, {}) for name in ("kd", "lr", "dkd", "dkd_lr")}
  runs.update({name: (name, main) for name in ("kd_ds", "dkd_lr_ds")})  # lr_ds: in the grid
  for criterion in CRITERIA:
    for ratio in ratios:
      runs[grid_label(criterion, ratio)] = (
          "lr_ds", dict(criterion_fields(args, criterion), ratio=ratio))
  for criterion in SCORED:
    runs.setdefault(grid_label(criterion, args.main_ratio),
                    ("lr_ds", dict(criterion_fields(args, criterion), ratio=args.main_ratio)))
  return runs


def grid_label(criterion, ratio):
  return f"lr_ds.{criterion}.r{ratio:g}"


def student_config(args, seed, teacher_dir, method, selection):
  c = base_config(args, seed)
  c.stages = "student"
  c.teacher = config_defaults.teacher(TEACHER_MODEL, "ce", checkpoint=teacher_dir)
  c.student.method.name = method
  c.student.method.dkd_warmup_epochs = args.dkd_warmup
  for key, value in selection.items():
    c.selection[key] = value
  return c


# ----------------------------------------------------------------------------- statistics

def teacher_wrong_share(run_dir, data, mesh):
  """Share of the student's training examples (validation slice excluded) the teacher gets
  wrong: argmax of its logits != label."""
  teacher = teacher_lib.from_run(run_dir, TEACHER_MODEL, data.info, mesh)
  logits, labels = logits_on(TEACHER_MODEL, teacher.variables, data.train, mesh)
  return float(np.mean(np.argmax(logits, -1) != labels))


def row(summaries, baseline=None):
  """Per-label stats over seeds; `gain` paired by seed against `baseline` summaries."""
  last = [s["test_accuracy"] for s in summaries]
  out = dict(last_epoch_test_accuracy=mean_std(last),
             best_val_checkpoint_test_accuracy=mean_std(
                 [s.get("best_val_checkpoint_test_accuracy") for s in summaries]),
             per_seed_last_epoch=last)
  rounds = [(s.get("selection") or [None])[-1] for s in summaries]
  if all(rounds):
    for key in ("teacher_wrong_share_selected", "teacher_wrong_share_rest"):
      out[key] = mean_std([r[key] for r in rounds])
    out["selection_rounds"] = len(summaries[0]["selection"])
    out["selection_seconds"] = mean_std([sum(r["seconds"] for r in s["selection"])
                                         for s in summaries])
  return out


def paired(table, level, a, b):
  """a - b, last-epoch accuracy paired by seed: [mean, std]."""
  return mean_std(np.subtract(table[level][a]["per_seed_last_epoch"],
                              table[level][b]["per_seed_last_epoch"]))


# ----------------------------------------------------------------------------- claims

def beats(ms):
  return ms[0] > 0 and ms[0] > ms[1]


def verdict(wins, total):
  return "reproduced" if wins == total else "not reproduced" if not wins else "mixed"


def claims(table, levels, errors, main_ratio):
  """(claim, verdict, numbers) per claim of the paper; the criteria are in results.md."""
  at = {lv: f"{100 * errors[lv][0]:.1f}% wrong" for lv in levels}

  def gains(a, b):
    return {lv: paired(table, lv, a, b) for lv in levels}

  def cell(g):
    return "; ".join(f"{at[lv]}: {fmt(g[lv], signed=True)}" for lv in levels)

  out = []
  g = gains("lr", "kd")
  out.append(("LR helps (lr - kd)", verdict(sum(beats(g[lv]) for lv in levels), len(levels)),
              "lr - kd: " + cell(g)))

  g, gk = gains("lr_ds", "lr"), gains("kd_ds", "kd")
  gr = gains("lr_ds", grid_label("random", main_ratio))
  wins = sum(beats(g[lv]) and beats(gk[lv]) for lv in levels)
  out.append(("DS helps (lr_ds - lr and kd_ds - kd, main selection)", verdict(wins, len(levels)),
              (f"lr_ds - lr: {cell(g)}. kd_ds - kd: {cell(gk)}. lr_ds - lr_ds(random, same "
               f"ratio): {cell(gr)}")))

  others = ("kd", "lr", "kd_ds")
  best_grid = {lv: max((lab for lab in table[lv] if lab.startswith("lr_ds.")),
                       key=lambda lab, lv=lv: table[lv][lab]["last_epoch_test_accuracy"][0])
               for lv in levels}
  margin = {lv: min(paired(table, lv, "lr_ds", o)[0] for o in others) for lv in levels}
  wins = sum(all(beats(paired(table, lv, "lr_ds", o)) for o in others) for lv in levels)
  out.append(("LR+DS helps most (lr_ds above kd, lr, kd_ds)", verdict(wins, len(levels)),
              "lr_ds - best of (kd, lr, kd_ds): "
              + "; ".join(f"{at[lv]}: {margin[lv]:+.4f}" for lv in levels)
              + ". Best lr_ds of the grid: " + "; ".join(
                  f"{at[lv]}: {best_grid[lv][6:]} "
                  f"{fmt(table[lv][best_grid[lv]]['last_epoch_test_accuracy'])} vs lr "
                  f"{fmt(table[lv]['lr']['last_epoch_test_accuracy'])}" for lv in levels)))

  g1, g2 = gains("dkd_lr", "dkd"), gains("dkd_lr_ds", "dkd_lr")
  wins = sum(beats(g1[lv]) and beats(g2[lv]) for lv in levels)
  out.append(("LR and DS both help DKD (dkd_lr - dkd, dkd_lr_ds - dkd_lr)",
              verdict(wins, len(levels)),
              f"dkd_lr - dkd: {cell(g1)}. dkd_lr_ds - dkd_lr: {cell(g2)}"))
  return out


# ----------------------------------------------------------------------------- plots

def plot_methods(table, levels, errors, path):
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  x = np.array([errors[lv][0] for lv in levels])
  for i, name in enumerate(METHODS):
    ms = np.array([table[lv][name]["last_epoch_test_accuracy"] for lv in levels])
    ax.errorbar(100 * x + (i - len(METHODS) / 2) * 0.15, ms[:, 0], yerr=ms[:, 1], capsize=3,
                fmt="--s" if name.startswith("dkd") else "-o", ms=4, label=name)
  ax.set_xlabel("teacher-wrong share of the student's training examples (%, measured)")
  ax.set_ylabel("student test accuracy (last epoch)")
  ax.set_title("Students vs teacher error, mean +- std over seeds")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_grid(table, levels, errors, ratios, main_ratio, path):
  """lr_ds - lr per criterion vs ratio, and teacher-wrong share inside / outside."""
  plt = pyplot()
  fig, axes = plt.subplots(2, len(levels), figsize=(4.2 * len(levels), 7.5), squeeze=False)
  for j, lv in enumerate(levels):
    ax = axes[0, j]
    for criterion in CRITERIA:
      g = np.array([paired(table, lv, grid_label(criterion, r), "lr") for r in ratios])
      ax.errorbar(ratios, g[:, 0], yerr=g[:, 1], fmt="-o", capsize=3, ms=4, label=criterion)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title(f"teacher wrong on {100 * errors[lv][0]:.1f}%")
    ax.set_xlabel("selection ratio r")
    ax.set_ylabel("lr_ds - lr (test acc, paired)")
    ax.grid(alpha=0.3)
    ax = axes[1, j]
    pos = np.arange(len(CRITERIA))
    r = main_ratio
    inside = [table[lv][grid_label(c, r)]["teacher_wrong_share_selected"][0] for c in CRITERIA]
    rest = [table[lv][grid_label(c, r)]["teacher_wrong_share_rest"][0] for c in CRITERIA]
    ax.bar(pos - 0.2, inside, 0.4, label="inside the selection")
    ax.bar(pos + 0.2, rest, 0.4, label="outside")
    ax.axhline(errors[lv][0], color="k", lw=0.8, ls="--", label="all examples")
    ax.set_xticks(pos)
    ax.set_xticklabels(CRITERIA, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"teacher-wrong share (r = {r:g})")
    ax.grid(alpha=0.3, axis="y")
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ----------------------------------------------------------------------------- main

def main():
  args = parse_args()
  if args.report_only:
    report.write(args.out, markdown)
    return
  seeds = args.seeds
  levels = [int(e) for e in args.teacher_epochs.split(",")]
  ratios = [float(r) for r in args.ratios.split(",")]
  workdir, runner, command = start("lan", args)

  runs = student_runs(args, ratios)
  summaries = {lv: {} for lv in levels}
  teachers = {lv: [] for lv in levels}
  wrong = {lv: [] for lv in levels}
  seconds = {}
  for seed in seeds:
    ce, sec, _ = runner.run(student_config(args, seed, "", "ce", {}),
                            os.path.join(workdir, f"seed{seed}", "ce"))
    seconds[f"seed{seed}/ce"] = sec
    for lv in levels:
      summaries[lv].setdefault("ce", []).append(ce["student"])
      t_dir = os.path.join(workdir, f"teacher{lv}ep", f"seed{seed}")
      summary, sec, data = runner.run(teacher_config(args, seed, lv), os.path.join(t_dir, "teacher_run"))
      teachers[lv].append(summary["teacher"])
      wrong[lv].append(teacher_wrong_share(os.path.join(t_dir, "teacher_run", "teacher"), data,
                                           runner.mesh))
      print(f"teacher {lv} ep seed {seed}: test {summary['teacher']['test_accuracy']:.4f}, "
            f"wrong on {wrong[lv][-1]:.4f} of the training examples ({sec:.0f} s)", flush=True)
      for label, (method, selection) in runs.items():
        config = student_config(args, seed, os.path.join(t_dir, "teacher_run", "teacher"),
                                method, selection)
        summary, sec, _ = runner.run(config, os.path.join(t_dir, label))
        summaries[lv].setdefault(label, []).append(summary["student"])
        seconds[f"teacher{lv}ep/seed{seed}/{label}"] = sec
        print(f"  {label}: test {summary['student']['test_accuracy']:.4f} ({sec:.0f} s)",
              flush=True)

  for lv in levels:  # the main lr_ds is the grid's run of the main criterion and ratio
    summaries[lv]["lr_ds"] = summaries[lv][grid_label(MAIN, args.main_ratio)]
  table = {lv: {label: row(rows) for label, rows in summaries[lv].items()} for lv in levels}
  for lv in levels:
    table[lv]["teacher"] = row(teachers[lv])
  errors = {lv: mean_std(wrong[lv]) for lv in levels}
  claim_rows = claims(table, levels, errors, args.main_ratio)
  plot_methods(table, levels, errors, os.path.join(args.out, "accuracy_vs_teacher_error.png"))
  plot_grid(table, levels, errors, ratios, args.main_ratio, os.path.join(args.out, "selection_grid.png"))

  timing = runner.record_time(
      args.out, median_run_seconds=round(float(np.median(list(seconds.values()))), 1))

  scale = dict(classes=args.classes, superclasses=args.superclasses,
               correlation=args.correlation, dim=args.dim, noise=args.noise,
               train_examples=args.train - args.holdout, validation_examples=args.holdout,
               test_examples=args.test, teacher_epochs=levels, student_epochs=args.epochs,
               batch_size=args.batch, learning_rate=args.lr, schedule="cosine",
               teacher=TEACHER_MODEL, student=STUDENT_MODEL, seeds=seeds, ratios=ratios,
               main_ratio=args.main_ratio, main_criterion=MAIN, warmup_epochs=args.warmup,
               refresh_epochs=args.refresh, dkd_warmup_epochs=args.dkd_warmup)
  results = dict(command=command, scale=scale, timing=timing,
                 teacher_wrong_share={str(lv): dict(mean_std=errors[lv], per_seed=wrong[lv])
                                      for lv in levels},
                 runs={label: dict(method=m, selection=s) for label, (m, s) in runs.items()},
                 tables={str(lv): t for lv, t in table.items()},
                 claims=[dict(claim=a, verdict=b, numbers=n) for a, b, n in claim_rows])
  report.save(args.out, results, markdown)
  print(f"lan: done in {timing[-1]['wall_seconds']:.0f} s ({runner.trained} runs trained, {runner.skipped} skipped)"
        f"; {os.path.join(args.out, 'results.md')}", flush=True)


def markdown(results, out):
  """results.md's lines from results.json (see report.py)."""
  s = results["scale"]
  levels, ratios, r = s["teacher_epochs"], s["ratios"], s["main_ratio"]
  table = {lv: results["tables"][str(lv)] for lv in levels}
  errors = {lv: results["teacher_wrong_share"][str(lv)]["mean_std"] for lv in levels}
  claim_rows = [(x["claim"], x["verdict"], x["numbers"]) for x in results["claims"]]
  head = [f"{100 * errors[lv][0]:.1f}% ({lv} ep)" for lv in levels]
  lines = [
      "# Lan et al. (arXiv 2404.03693) on synthetic data: Label Revision and Data Selection", "",
      report.reproduce(results["command"]), "",
      ("Each run is the real trainer (`kd_jax.pipeline.prepare` + `kd_jax.pipeline.run`, the "
       "code behind `python -m kd_jax.main`) in its own workdir under OUT/runs; "
       "experiments/papers/lan.py documents every config."), "",
      (f"Scale: {s['classes']} classes in {s['superclasses']} superclasses (correlation "
       f"{s['correlation']}), dim {s['dim']}, noise {s['noise']}; {s['train_examples']} training "
       f"examples (+{s['validation_examples']} held out for validation), {s['test_examples']} "
       f"test; teacher {s['teacher']} trained {s['teacher_epochs']} epochs (one teacher per "
       f"error level and seed), student {s['student']} {s['student_epochs']} epochs, batch "
       f"{s['batch_size']}, SGD lr {s['learning_rate']} cosine; seeds {s['seeds']}. DS: main "
       f"selection `{s['main_criterion']}` (influence scored by the student after W = "
       f"{s['warmup_epochs']} CE epochs) at ratio {s['main_ratio']}; refreshed: a round every "
       f"R = {s['refresh_epochs']} epochs after W; DKD loss warm-up {s['dkd_warmup_epochs']} "
       "epoch(s)."), "",
      report.run_times("Run time (wall clock of each invocation that trained, runs trained / "
                       "skipped)", results["timing"],
                       lambda t: f", median {t['median_run_seconds']} s a run"), "",
      (report.ACCURACY + ", labelled separately. Gains are paired by seed (same teacher, same "
       "init and data order). Error levels are named by the MEASURED share of the student's "
       "training examples the teacher gets wrong (mean over seeds) and the teacher's epochs."),
      "", "## Teachers", ""]
  lines += report.table(
      ["teacher epochs", "wrong on training examples (measured)", "per seed", "test acc (last)"],
      [[str(lv), fmt(errors[lv]),
        report.per_seed(results["teacher_wrong_share"][str(lv)]["per_seed"]),
        fmt(table[lv]["teacher"]["last_epoch_test_accuracy"])] for lv in levels])
  notes = report.notes(out)
  if notes:
    lines += ["", notes]
  lines += ["", "## Claims (mechanical verdicts)", "",
            *report.claims(claim_rows, "numbers (paired gains, last epoch)"),
            "", ("Criteria: 'beats' = mean paired gain > 0 and > its std over seeds. Each claim "
                 "is reproduced when it holds at every error level, mixed at some, not "
                 "reproduced at none. DS helps: lr_ds beats lr and kd_ds beats kd. LR+DS helps "
                 "most: lr_ds beats each of kd, lr and kd_ds. Both help DKD: dkd_lr beats dkd "
                 "and dkd_lr_ds beats dkd_lr."), "",
            "![accuracy vs teacher error](accuracy_vs_teacher_error.png)", ""]
  for key, title in (("last_epoch_test_accuracy", "last epoch"),
                     ("best_val_checkpoint_test_accuracy", "best-val ckpt")):
    lines += [f"## Methods: test accuracy ({title}), seeds {s['seeds']}", ""]
    lines += report.table(["method", *head], [[name, *[fmt(table[lv][name][key]) for lv in levels]]
                                              for name in ("teacher", *METHODS)])
    lines.append("")

  def inside_outside(lv, label):
    return (f"{table[lv][label]['teacher_wrong_share_selected'][0]:.3f} / "
            f"{table[lv][label]['teacher_wrong_share_rest'][0]:.3f}")

  lines += ["## Teacher-wrong share inside / outside the selection (last round)", "",
            ("Share of the selected (teacher-supervised) examples the teacher gets wrong / of the "
             "rest (CE only), mean over seeds."), ""]
  sel_labels = ["kd_ds", "lr_ds", "dkd_lr_ds",
                *[grid_label(c, q) for c in (*CRITERIA, *SCORED[::2]) for q in ratios
                  if grid_label(c, q) in table[levels[0]]]]
  lines += report.table(["run", *head], [[label, *[inside_outside(lv, label) for lv in levels]]
                                         for label in dict.fromkeys(sel_labels)])
  lines += ["", f"## lr_ds grid: criterion x ratio, seeds {s['seeds']}", "",
            "![selection grid](selection_grid.png)", "",
            ("Last-epoch test accuracy; in brackets the paired gain over lr (no selection) and "
             "over lr_ds with the random control at the same ratio."), ""]

  def grid_cell(lv, criterion, q):
    label = grid_label(criterion, q)
    return (f"{fmt(table[lv][label]['last_epoch_test_accuracy'])} "
            f"({fmt(paired(table, lv, label, 'lr'), signed=True)}; "
            f"{fmt(paired(table, lv, label, grid_label('random', q)), signed=True)})")

  lines += report.table(["criterion", "ratio", *head],
                        [[criterion, f"{q:g}", *[grid_cell(lv, criterion, q) for lv in levels]]
                         for criterion in CRITERIA for q in ratios])
  lines += ["", f"## Which model Data Selection scores (lr_ds, influence, ratio {r:g})", "",
            ("untrained: the student at initialisation (W = 0); warmed: after W CE epochs; "
             "refreshed: warmed, then re-scored every R epochs; teacher: the teacher's features "
             "and classifier. Per level: accuracy (paired gain over lr_ds random at the same "
             "ratio; teacher-wrong share inside / outside the selection). Pooled gains: paired "
             f"by (level, seed), mean +- std over the {len(levels) * len(s['seeds'])} pairs. "
             "Scoring seconds: all rounds of a run, mean over levels of the mean over seeds (a "
             "machine shared with other jobs)."), ""]

  def pooled(a, b):  # a - b paired by (level, seed), pooled over the levels
    return fmt(mean_std(np.concatenate([
        np.subtract(table[lv][a]["per_seed_last_epoch"], table[lv][b]["per_seed_last_epoch"])
        for lv in levels])), signed=True)

  random, untrained = grid_label("random", r), grid_label(SCORED[0], r)
  rows = []
  for criterion in SCORED:
    label = grid_label(criterion, r)
    rows.append([criterion.split("_")[1], *[
        f"{fmt(table[lv][label]['last_epoch_test_accuracy'])} "
        f"({fmt(paired(table, lv, label, random), signed=True)}; {inside_outside(lv, label)})"
        for lv in levels], pooled(label, random), pooled(label, untrained),
        fmt(mean_std([table[lv][label]["selection_seconds"][0] for lv in levels]), 1)])
  lines += report.table(["scored model", *head, "gain over random, all levels",
                         "gain over untrained, all levels", "scoring seconds a run"], rows)
  return lines

if __name__ == "__main__":
  main()
