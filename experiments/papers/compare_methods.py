r"""Runs student methods side by side over seeds with the real CLI, and tabulates them.

For each seed, one teacher is trained (`python -m kd_jax.main ... --config.stages=teacher`),
then every variant's student is distilled from that seed's teacher (referenced through
`--config.teacher.checkpoint`) with the same seed. Reported per variant: mean +- std over
seeds of the LAST-EPOCH test accuracy, and, labelled separately, of the test accuracy of the
best-validation checkpoint (the validation slice is held out of the training split; the test
split selects nothing).

  python experiments/papers/compare_methods.py --config=configs/mnist1d.py --seeds=0,1,2 \
      --variants=ce,kd --out=experiments/results/papers/mnist1d_kd

A bare variant label trains `--config=CONFIG:method=label`; `--variant LABEL=ARG` (repeatable)
defines a label by a config argument (kd_jax/config_defaults.py VARIANT_KEYS), e.g.
`--variant lr_ds_random=method=lr_ds,criterion=random`. A label may also carry `--config.`
fields for what VARIANT_KEYS does not cover, `label:key=value;...` (the method name defaults
to the label; results/papers/*_lr_ds were made this way). Runs that finished are skipped on
rerun (the CLI's own resume), and every variant trains on the same examples (one config, one
holdout). `--report_only` rewrites OUT/results.md from OUT/results.json.
"""

import json
import os

import numpy as np
import report
from cli_runs import parse_experiment_args, parse_overrides, run_cli, runner_command
from report import mean_std


def parse_variant(text, defined):
  """(label, config argument, `--config.` overrides) of one entry of --variants."""
  label, _, rest = text.partition(":")
  if rest:  # `label:key=value;key=value`: --config. fields
    overrides = parse_overrides(rest)
    overrides.setdefault("student.method.name", label)
    return label, "", overrides
  return label, defined.get(label, f"method={label}"), {}


def _extra_per_seed(runs):
  """ECE, training time and, for Data Selection, the last round's selection statistics."""
  extra = {key: [r.get(key) for r in runs] for key in ("ece", "train_seconds")}
  last_rounds = [(r.get("selection") or [None])[-1] for r in runs]
  if any(last_rounds):
    for key in ("selected_ratio", "teacher_wrong_share", "teacher_wrong_share_selected",
                "teacher_wrong_share_rest"):
      extra[f"selection_{key}"] = [round_ and round_[key] for round_ in last_rounds]
  return extra


def main():
  experiment = parse_experiment_args(
      __doc__.splitlines()[0], variants=("ce,kd", "comma-separated variant labels"),
      variant=([], "LABEL=CONFIG_ARG, repeatable: a label's config argument"))
  args, seeds, extra = experiment.args, experiment.seeds, experiment.extra
  if args.report_only:
    report.write(args.out, markdown)
    return
  workdir, log_path = experiment.workdir, experiment.log_path
  defined = dict(item.split("=", 1) for item in args.variant)
  variants = [parse_variant(v, defined) for v in args.variants.split(",")]

  rows, commands = {}, []
  for seed in seeds:
    teacher_dir = os.path.join(workdir, f"seed{seed}", "teacher_run")
    teacher_overrides = {**extra, "seed": str(seed), "stages": "teacher"}
    command, seconds = run_cli(args.config, teacher_dir, teacher_overrides, log_path)
    commands.append(command)
    with open(os.path.join(teacher_dir, "summary.json")) as f:
      teacher = json.load(f)["teacher"]
    rows.setdefault("teacher", []).append(teacher)
    print(f"seed {seed} teacher: test {teacher['test_accuracy']:.4f} ({seconds:.0f} s)", flush=True)
    for label, config_arg, overrides in variants:
      run_dir = os.path.join(workdir, f"seed{seed}", label)
      overrides = {**extra, "seed": str(seed),
                   "teacher.checkpoint": os.path.join(teacher_dir, "teacher"), **overrides}
      config = f"{args.config}:{config_arg}" if config_arg else args.config
      command, seconds = run_cli(config, run_dir, overrides, log_path)
      commands.append(command)
      with open(os.path.join(run_dir, "summary.json")) as f:
        student = json.load(f)["student"]
      rows.setdefault(label, []).append(student)
      print(f"seed {seed} {label}: test {student['test_accuracy']:.4f} ({seconds:.0f} s)",
            flush=True)

  table = {}
  for label, runs in rows.items():
    last = mean_std([r["test_accuracy"] for r in runs])
    best = (mean_std([r.get("best_val_checkpoint_test_accuracy") for r in runs])
            or (np.nan, np.nan))
    table[label] = dict(last_epoch_test_accuracy=last, best_val_checkpoint_test_accuracy=best,
                        per_seed_last_epoch=[r["test_accuracy"] for r in runs],
                        extra_per_seed=_extra_per_seed(runs))
  runner = runner_command("experiments/papers/compare_methods.py")
  results = dict(config=args.config, seeds=seeds,
                 variants={label: dict(config_arg=arg, overrides=overrides)
                           for label, arg, overrides in variants}, extra=extra,
                 runner=runner, commands=commands, table=table)
  lines = report.save(args.out, results, markdown)
  print("\n".join(lines[:len(table) + 7]))


def markdown(results, out):
  """results.md's lines from results.json (see report.py)."""
  del out  # no hand-written notes here
  lines = [(f"Config `{results['config']}`, seeds {results['seeds']}, extra overrides "
            f"{results['extra'] or 'none'}."), report.reproduce(results["runner"], where=""), "",
           ("Test accuracy, mean +- std over seeds. `last epoch`: the final model (reported "
            "number); `best-val ckpt`: the checkpoint chosen on the held-out validation slice."),
           ""]
  lines += report.table(["model", "last epoch", "best-val ckpt", "per seed (last epoch)"],
                        [[label, *report.accuracy(entry),
                          report.per_seed(entry["per_seed_last_epoch"])]
                         for label, entry in results["table"].items()])
  return lines + ["", "Commands:", "", *[f"    {c}" for c in results["commands"]]]

if __name__ == "__main__":
  main()
