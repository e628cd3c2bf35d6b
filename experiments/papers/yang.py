r"""Yang et al. 2019 (arXiv 1805.05551): a tolerant teacher and training in generations.

One command per dataset, offline, in one process (the real trainer, `kd_jax.pipeline.run`
with `generations.num = G`, per chain):

  python experiments/papers/yang.py --dataset=synthetic \
      --out=experiments/results/papers/yang_synthetic
  python experiments/papers/yang.py --dataset=mnist1d --seeds=0,1,2,3,4 \
      --out=experiments/results/papers/yang_mnist1d

For every seed, every patriarch (generation 0) and every lambda schedule, one chain of G
generations of the dataset's generations config (`configs/<dataset>_generations.py`: one
architecture, each generation from scratch, the previous generation's final model as its
teacher, `kd_jax/generations.py`). Patriarchs (`--patriarchs`):
  strict    CE(z, y)                                    (method ce; Yang et al.'s eta = 0)
  ls        H((1 - eps) e_y + eps / C, p)               (method ls, eps = `--ls_epsilon`)
  cp        CE(z, y) - beta H(p)                        (method cp, beta = `--cp_beta`)
  eta<x>    CE(z, y) + u(x) TSD_K(z), K = `--num_secondary`, u ramped linearly over the
            config's tsd_warmup_epochs                  (method tsd, the tolerant teacher)
Students g >= 1: lambda_g CE(z_s, y) + (1 - lambda_g) KD_{T=1}(z_s, z_t); lambda schedules:
`constant` (`--constant` for every g) for every patriarch and `rising` (`--rising`, one value
per g = 1..G-1) for the patriarchs of `--rising_patriarchs`. A chain of the rising schedule
shares its patriarch with the constant chain of the same patriarch and seed (generation 0
is the same stage config; its directory is linked, not retrained).

All chains train on the same examples (`dataset.seed`, `dataset.holdout_seed` fixed); the
seed changes init and data order, so differences between patriarchs are paired by seed.
Reported per generation g: the LAST-EPOCH test accuracy of generation g and of the ensemble
(mean softmax) of generations 1..g, the best-validation checkpoint's test accuracy
(labelled), and the secondary-information metrics of `kd_jax.metrics.evaluate_logits`
(secondary_in_superclass where the data has superclasses, mean_entropy, top_gap, ECE).
Writes OUT/results.json, OUT/results.md, OUT/generations.png; the runs go to OUT/runs
(git-ignored). Finished generations are skipped on rerun, so an interrupted command continues.
"""

import json
import os
import shlex
import shutil
import time

import numpy as np
import report
from in_process import pyplot, run_args, start
from report import fmt, mean_std

from configs import mnist1d_generations, synthetic_generations
from kd_jax import config_defaults

CONFIGS = {"synthetic": ("configs/synthetic_generations.py", synthetic_generations),
           "mnist1d": ("configs/mnist1d_generations.py", mnist1d_generations)}
METRICS = ("accuracy", "secondary_in_superclass", "mean_entropy", "top_gap", "ece")


def parse_args(argv=None):
  p = run_args(__doc__)
  p.add_argument("--dataset", required=True, choices=sorted(CONFIGS))
  p.add_argument("--patriarchs", default="strict,ls,cp,eta0.3,eta0.6,eta0.9")
  p.add_argument("--rising_patriarchs", default="strict,eta0.6",
                 help="patriarchs also run with the rising lambda schedule ('' for none)")
  p.add_argument("--generations", type=int, default=4, help="G, the patriarch included")
  p.add_argument("--constant", type=float, default=0.6, help="lambda of every student")
  p.add_argument("--rising", default="0.4,0.6,0.8", help="lambda_1..lambda_{G-1}")
  p.add_argument("--num_secondary", type=int, default=5, help="K of TSD and of the metric")
  p.add_argument("--ls_epsilon", type=float, default=0.1)
  p.add_argument("--cp_beta", type=float, default=0.1)
  p.add_argument("--epochs", type=int, default=0, help="epochs per generation (0: config's)")
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- configs

def patriarch_fields(name, args):
  """The teacher-block fields of a patriarch label (see the module docstring)."""
  if name == "strict":
    return {"teacher.method.name": "ce"}
  if name == "ls":
    return {"teacher.method.name": "ls", "teacher.method.label_smoothing": args.ls_epsilon,
            "teacher.method.smoothing_spread": "all"}
  if name == "cp":
    return {"teacher.method.name": "cp", "teacher.method.cp_beta": args.cp_beta}
  if name.startswith("eta"):
    return {"teacher.method.name": "tsd", "teacher.method.tsd_eta": float(name[3:]),
            "teacher.method.tsd_num_secondary": args.num_secondary}
  raise ValueError(f"unknown patriarch {name!r}: strict, ls, cp or eta<x>")


def chain_fields(args, seed, patriarch, weights):
  fields = {"seed": seed, **patriarch_fields(patriarch, args),
            "generations.num": args.generations, "generations.ce_weights": tuple(weights),
            "generations.num_secondary": args.num_secondary}
  if args.epochs:
    fields["num_epochs"] = args.epochs
  return fields


def cli_command(config_path, workdir, fields):
  """The `kd_jax.main` command line that trains the same chain on its own."""
  flags = [f"--config.{k}={v if not isinstance(v, tuple) else '(' + ','.join(map(str, v)) + ')'}"
           for k, v in fields.items()]
  return shlex.join(["python", "-m", "kd_jax.main", f"--config={config_path}",
                     f"--workdir={workdir}", *flags])


def share_patriarch(source, target):
  """Links the finished generation_0 of `source` (and its test targets) into `target`."""
  os.makedirs(target, exist_ok=True)
  link = os.path.join(target, "generation_0")
  if not os.path.lexists(link):
    os.symlink(os.path.abspath(os.path.join(source, "generation_0")), link)
  targets = os.path.join(target, "test_targets.npz")
  if not os.path.exists(targets):
    shutil.copy(os.path.join(source, "test_targets.npz"), targets)


# ----------------------------------------------------------------------------- tables

def entry_names(num):
  return ([f"generation_{g}" for g in range(num)] + [f"ensemble_{g}" for g in range(1, num)])


def tabulate(summaries, num):
  """{entry: {metric: mean_std, per_seed, best_val_checkpoint_test_accuracy}} over seeds."""
  table = {}
  for name in entry_names(num):
    rows = [s[name] for s in summaries]
    table[name] = {m: mean_std([r["test_metrics"].get(m) for r in rows]) for m in METRICS}
    table[name]["per_seed"] = [r["test_accuracy"] for r in rows]
    table[name]["best_val_checkpoint_test_accuracy"] = mean_std(
        [r.get("best_val_checkpoint_test_accuracy") for r in rows])
  return table


def paired(summaries, reference, num):
  """Per-seed differences of a patriarch's chain: against the strict chain (`reference`),
  over generations, and ensemble vs the best single student."""
  def acc(s, name):
    return s[name]["test_accuracy"]
  last = num - 1
  students = range(1, num)
  out = dict(
      keep_improving=[acc(s, f"generation_{last}") - acc(s, "generation_1") for s in summaries],
      **{f"step_{g}_to_{g + 1}": [acc(s, f"generation_{g + 1}") - acc(s, f"generation_{g}")
                                  for s in summaries] for g in range(1, last)},
      last_minus_patriarch=[acc(s, f"generation_{last}") - acc(s, "generation_0")
                            for s in summaries],
      ensemble_minus_best_single=[acc(s, f"ensemble_{last}")
                                  - max(acc(s, f"generation_{g}") for g in students)
                                  for s in summaries])
  if reference is not None:
    out.update(
        patriarch_vs_strict=[acc(s, "generation_0") - acc(r, "generation_0")
                             for s, r in zip(summaries, reference)],
        students_vs_strict=[np.mean([acc(s, f"generation_{g}") - acc(r, f"generation_{g}")
                                     for g in students]) for s, r in zip(summaries, reference)],
        last_vs_strict=[acc(s, f"generation_{last}") - acc(r, f"generation_{last}")
                        for s, r in zip(summaries, reference)],
        ensemble_vs_strict=[acc(s, f"ensemble_{last}") - acc(r, f"ensemble_{last}")
                            for s, r in zip(summaries, reference)])
  return {k: dict(mean_std=mean_std(v), per_seed=[float(x) for x in v]) for k, v in out.items()}


def beats(ms):
  """A mechanical 'positive': mean > 0 and larger than its std over seeds."""
  return ms[0] > 0 and ms[0] > ms[1]


def claims(diffs, tolerant, num):
  """Per tolerant patriarch of one lambda schedule: the four claims' mechanical checks."""
  last = num - 1
  rows = {}
  for p in tolerant:
    d = {k: v["mean_std"] for k, v in diffs[p].items()}
    rows[p] = {
        "tolerant teacher is less accurate": (d["patriarch_vs_strict"][0] < 0,
                                              d["patriarch_vs_strict"]),
        "its students are better (mean over g >= 1, vs strict)": (
            beats(d["students_vs_strict"]), d["students_vs_strict"]),
        f"its students keep improving (g={last} - g=1; and every step g -> g+1 up)": (
            beats(d["keep_improving"]) and all(d[f"step_{g}_to_{g + 1}"][0] > 0
                                               for g in range(1, last)),
            d["keep_improving"]),
        f"ensembles improve further (ensemble 1..{last} - best single)": (
            beats(d["ensemble_minus_best_single"]), d["ensemble_minus_best_single"]),
    }
  return rows


# ----------------------------------------------------------------------------- plot

def plot(tables, schedules, secondary_metric, path):
  plt = pyplot()
  fig, axes = plt.subplots(len(schedules), 2, figsize=(13, 4.2 * len(schedules)), squeeze=False)
  colors = {p: f"C{i}" for i, p in enumerate(tables["constant"])}  # one per patriarch
  for (acc_ax, sec_ax), (schedule, weights) in zip(axes, schedules.items()):
    for patriarch, table in tables[schedule].items():
      color = colors[patriarch]
      gens = sorted(int(k.split("_")[1]) for k in table if k.startswith("generation_"))
      single = np.array([table[f"generation_{g}"]["accuracy"] for g in gens])
      acc_ax.errorbar(gens, single[:, 0], yerr=single[:, 1], fmt="-o", capsize=3, color=color,
                      label=f"{patriarch}: generation g")
      ens = np.array([table[f"ensemble_{g}"]["accuracy"] for g in gens[1:]])
      acc_ax.errorbar(np.array(gens[1:]) + 0.05, ens[:, 0], yerr=ens[:, 1], fmt="--s",
                      capsize=3, color=color, alpha=0.6, label=f"{patriarch}: ensemble 1..g")
      sec = np.array([table[f"generation_{g}"][secondary_metric] for g in gens])
      sec_ax.errorbar(gens, sec[:, 0], yerr=sec[:, 1], fmt="-o", capsize=3, color=color,
                      label=patriarch)
    lam = ", ".join(f"{w:g}" for w in weights)
    acc_ax.set(xlabel="generation g", ylabel="test accuracy (last epoch)",
               title=f"{schedule} lambda ({lam}): accuracy, mean +- std over seeds")
    sec_ax.set(xlabel="generation g", ylabel=secondary_metric,
               title=f"{schedule} lambda: {secondary_metric} (test)")
    for ax in (acc_ax, sec_ax):
      ax.set_xticks(gens)
      ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=6, ncol=2)
    sec_ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ----------------------------------------------------------------------------- main

def main():
  args = parse_args()
  if args.report_only:
    report.write(args.out, markdown)
    return
  start_wall = time.time()
  config_path, config_module = CONFIGS[args.dataset]
  seeds = args.seeds
  patriarchs = args.patriarchs.split(",")
  num = args.generations
  schedules = {"constant": (args.constant,) * (num - 1)}
  rising_patriarchs = [p for p in args.rising_patriarchs.split(",") if p in patriarchs]
  if rising_patriarchs:
    schedules["rising"] = tuple(float(w) for w in args.rising.split(","))
    if len(schedules["rising"]) != num - 1:
      raise ValueError(f"--rising needs {num - 1} values (generations 1..{num - 1})")
  members = {"constant": patriarchs, "rising": rising_patriarchs}
  workdir, runner, command = start("yang", args)

  summaries, seconds, commands = {}, {}, []
  for schedule, weights in schedules.items():
    for patriarch in members[schedule]:
      for seed in seeds:
        fields = chain_fields(args, seed, patriarch, weights)
        chain_dir = os.path.join(workdir, schedule, patriarch, f"seed{seed}")
        if schedule != "constant":
          share_patriarch(os.path.join(workdir, "constant", patriarch, f"seed{seed}"), chain_dir)
        config = config_defaults.set_fields(config_module.get_config(), fields)
        summary, sec, data = runner.run(config, chain_dir)
        summaries.setdefault(schedule, {}).setdefault(patriarch, []).append(summary)
        trained = range(1 if schedule != "constant" else 0, num)  # patriarch counted once
        seconds[f"{schedule}/{patriarch}/seed{seed}"] = dict(
            this_invocation=round(sec, 1),
            train_seconds=round(sum(summary[f"generation_{g}"]["train_seconds"] or 0.0
                                    for g in trained), 1))
        commands.append(cli_command(config_path, chain_dir, fields))
        accs = [summary[f"generation_{g}"]["test_accuracy"] for g in range(num)]
        print(f"{schedule} {patriarch} seed {seed}: generations "
              f"{', '.join(f'{a:.4f}' for a in accs)}, ensemble 1..{num - 1} "
              f"{summary[f'ensemble_{num - 1}']['test_accuracy']:.4f} ({sec:.0f} s)", flush=True)

  tables = {s: {p: tabulate(runs, num) for p, runs in by_p.items()}
            for s, by_p in summaries.items()}
  diffs = {s: {p: paired(runs, by_p.get("strict") if p != "strict" else None, num)
               for p, runs in by_p.items()} for s, by_p in summaries.items()}
  tolerant = [p for p in patriarchs if p.startswith("eta")]
  checks = {s: claims(diffs[s], [p for p in tolerant if p in diffs[s]], num)
            for s in diffs if "strict" in diffs[s]}
  wall = time.time() - start_wall
  # The wall time of the invocation that trained every chain, kept when a rerun skips them.
  full_wall = wall if not runner.skipped else None
  previous = os.path.join(args.out, "results.json")
  if full_wall is None and os.path.exists(previous):
    with open(previous) as f:
      before = json.load(f)
    full_wall = before.get("full_run_wall_seconds") or (
        before.get("wall_seconds") if before.get("skipped") == 0 else None)
  config = config_module.get_config()
  epochs = args.epochs or config.num_epochs
  scale = dict(dataset=args.dataset, config=config_path, model=config.teacher.model,
               epochs_per_generation=epochs, generations=num, batch_size=config.batch_size,
               train_examples=len(data.train), holdout=int(config.dataset.holdout),
               test_examples=len(data.test), num_classes=int(data.info.num_classes),
               dataset_options=dict(config.dataset.options),
               tsd_warmup_epochs=config.teacher.method.tsd_warmup_epochs,
               tsd_schedule=config.teacher.method.tsd_schedule, temperature=1.0)
  secondary_metric = ("secondary_in_superclass"
                      if tables["constant"][patriarchs[0]]["generation_0"][
                          "secondary_in_superclass"] is not None else "mean_entropy")
  plot(tables, schedules, secondary_metric, os.path.join(args.out, "generations.png"))
  results = dict(runner=command, config=config_path, seeds=seeds, scale=scale,
                 patriarchs={p: patriarch_fields(p, args) for p in patriarchs},
                 schedules={s: list(w) for s, w in schedules.items()},
                 members={s: members[s] for s in schedules}, table=tables, paired=diffs,
                 claims={s: {p: {c: dict(holds=bool(h), mean_std=ms) for c, (h, ms) in r.items()}
                             for p, r in rows.items()} for s, rows in checks.items()},
                 secondary_metric=secondary_metric, chain_seconds=seconds,
                 wall_seconds=round(wall, 1), trained=runner.trained, skipped=runner.skipped,
                 full_run_wall_seconds=full_wall and round(full_wall, 1),
                 train_seconds_total=round(sum(v["train_seconds"] for v in seconds.values()), 1),
                 commands=commands)
  report.save(args.out, results, markdown)
  print(f"yang: done in {wall:.0f} s ({runner.trained} chains run, {runner.skipped} already "
        f"finished); {os.path.join(args.out, 'results.md')}", flush=True)


def markdown(r, out):
  """results.md's lines from results.json (see report.py)."""
  del out  # no hand-written notes here
  args = report.recorded_args(parse_args, r["runner"])
  s, seeds, num = r["scale"], r["seeds"], r["scale"]["generations"]
  opts = ", ".join(f"{k}={v}" for k, v in s["dataset_options"].items())
  lines = [
      f"# Yang et al.: tolerant teacher and generations, {s['dataset']}", "",
      report.reproduce(r["runner"], where=""), "",
      ("**Run time** on 2 CPU cores shared with other jobs: "
       + (f"{r['full_run_wall_seconds'] / 60:.1f} min wall for the run that trained every "
          "chain; " if r["full_run_wall_seconds"] else "")
       + f"{r['train_seconds_total'] / 60:.1f} min of training (the trainer's train_seconds, "
       f"summed over every generation trained); this file was written by an invocation of "
       f"{r['wall_seconds'] / 60:.1f} min that trained {r['trained']} chains and found "
       f"{r['skipped']} finished. Per chain: the table at the end."), "",
      (f"**Scale**: `{s['config']}`, {s['num_classes']} classes, {s['train_examples']} training "
      f"examples ({s['holdout']} of the train split held out for validation), "
      f"{s['test_examples']} test examples{'; ' + opts if opts else ''}. G = {num} generations "
      f"of `{s['model']}`, each {s['epochs_per_generation']} epochs (batch {s['batch_size']}, "
      f"cosine schedule) from scratch. **Seeds {seeds}** (every table: mean +- sample std over "
      "these seeds; all chains train on the same examples, differences are paired by seed)."), "",
      ("**Patriarchs** (generation 0): " + "; ".join(
          f"`{p}` = " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in f.items())
          for p, f in r["patriarchs"].items())
       + f" (TSD: K = {args.num_secondary} secondary classes, u ramped {s['tsd_schedule']} "
         f"over {s['tsd_warmup_epochs']:g} epochs, primary = argmax). **Students** g >= 1: "
         "lambda_g CE + (1 - lambda_g) KD at T = 1 from generation g-1's final model; lambda "
         "schedules: " + "; ".join(f"{k} = ({', '.join(f'{w:g}' for w in v)}) for "
                                   f"{', '.join(r['members'][k])}"
                                   for k, v in r["schedules"].items())
       + ". The rising chains share their patriarch with the constant chain of the same "
         "seed."), "",
      ("Accuracy: the LAST-EPOCH test accuracy; `best-val ckpt` labels the test accuracy of "
       "the best-validation checkpoint (the test split selects nothing). Ensemble 1..g: mean "
       "softmax of generations 1..g. Secondary information: `secondary_in_superclass` = share "
       f"of the top-{args.num_secondary} non-true classes inside the true superclass (synthetic "
       "only); `mean_entropy` of p; `top_gap` = p_(1) - p_(2); ECE."), "",
      "![accuracy per generation](generations.png)", ""]
  const = r["table"]["constant"]
  has_sup = const[next(iter(const))]["generation_0"]["secondary_in_superclass"] is not None
  sec_cols = (["secondary_in_superclass"] if has_sup else []) + ["mean_entropy", "top_gap", "ece"]

  def patriarch_row(p, t):
    g0, diff = t["generation_0"], r["paired"]["constant"][p].get("patriarch_vs_strict")
    return [p, fmt(g0["accuracy"]), fmt(diff["mean_std"], signed=True) if diff else "",
            fmt(g0["best_val_checkpoint_test_accuracy"]), *[fmt(g0[m], 3) for m in sec_cols],
            report.per_seed(g0["per_seed"])]

  lines += ["## The patriarchs (generation 0)", ""]
  lines += report.table(["patriarch", "test acc (last epoch)", "- strict (paired)",
                         "best-val ckpt", *sec_cols, "per seed"],
                        [patriarch_row(p, t) for p, t in const.items()])
  for schedule, rows in r["claims"].items():
    lines += ["", f"## Claims, mechanical checks ({schedule} lambda, tolerant vs strict)", ""]
    lines += report.table(["tolerant patriarch", "claim", "holds", "numbers (paired by seed)"],
                          [[p, claim, "yes" if c["holds"] else "no",
                            fmt(c["mean_std"], signed=True)]
                           for p, row in rows.items() for claim, c in row.items()])
  lines += ["", ("'holds': the tolerant teacher is less accurate if its mean paired difference "
                 "to strict is < 0; every other claim holds if its mean paired difference is > 0 "
                 "and larger than its std over seeds; 'keep improving' also needs every step "
                 "g -> g+1 (g >= 1) to be up on average."), ""]
  gens = range(num)
  for schedule, table in r["table"].items():
    lam = ", ".join(f"{w:g}" for w in r["schedules"][schedule])
    lines += [f"## {schedule} lambda ({lam}): test accuracy (last epoch) per generation", ""]
    lines += report.table(
        ["patriarch", *[f"g={g}" for g in gens], *[f"ensemble 1..{g}" for g in range(2, num)]],
        [[p, *[fmt(t[f"generation_{g}"]["accuracy"]) for g in gens],
          *[fmt(t[f"ensemble_{g}"]["accuracy"]) for g in range(2, num)]]
         for p, t in table.items()])
    lines += ["", (f"Paired differences ({schedule} lambda): students (mean over g >= 1), the "
              f"last generation and the ensemble 1..{num - 1} minus the strict chain's; "
              f"g={num - 1} - g=1 and each step; ensemble 1..{num - 1} - the best single "
              "student."), ""]
    keys = ["students_vs_strict", "last_vs_strict", "ensemble_vs_strict", "keep_improving",
            *[f"step_{g}_to_{g + 1}" for g in range(1, num - 1)], "ensemble_minus_best_single"]
    lines += report.table(
        ["patriarch", "students - strict", "last gen - strict", "ensemble - strict",
         "last - g=1", *[f"g={g + 1} - g={g}" for g in range(1, num - 1)],
         "ensemble - best single"],
        [[p, *[fmt(d[k]["mean_std"], signed=True) if k in d else "" for k in keys]]
         for p, d in r["paired"][schedule].items()])
    lines += ["", (f"Best-validation checkpoint's test accuracy ({schedule} lambda; the NEXT "
              "generation's teacher is the final model, not this one):"), ""]
    lines += report.table(
        ["patriarch", *[f"g={g}" for g in gens]],
        [[p, *[fmt(t[f"generation_{g}"]["best_val_checkpoint_test_accuracy"]) for g in gens]]
         for p, t in table.items()])
    lines += ["", f"Secondary information per generation ({schedule} lambda; test split):", ""]
    lines += report.table(
        ["patriarch", "metric", *[f"g={g}" for g in gens], f"ensemble 1..{num - 1}"],
        [[p, m, *[fmt(t[f"generation_{g}"][m], 3) for g in gens],
          fmt(t[f"ensemble_{num - 1}"][m], 3)] for p, t in table.items() for m in sec_cols])
    lines.append("")
  lines += ["## Run time per chain (seconds)", "",
            ("`train_seconds`: the trainer's, summed over the chain's generations (a rising "
             "chain's shared patriarch counted in its constant chain); `this invocation`: the "
             "wall time of the chain in the invocation that wrote this file."), ""]
  lines += report.table(["chain", "train_seconds", "this invocation"],
                        [[k, str(v["train_seconds"]), str(v["this_invocation"])]
                         for k, v in r["chain_seconds"].items()])
  lines += ["", "## Commands", "", (f"All of it: `{r['runner']}`. Each chain on its own (same "
            "config fields, the CLI):"), ""]
  lines += [f"    {c}" for c in r["commands"]]
  return lines

if __name__ == "__main__":
  main()
