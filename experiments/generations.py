r"""Strict vs tolerant patriarch: generation chains over seeds with the real CLI, tabulated.

For every seed and every patriarch `tsd_eta` (0 = strict, plain CE; > 0 = tolerant), one
`python -m kd_jax.main --config=CONFIG` generations run; per generation g the LAST-EPOCH test
accuracy of generation g and of the ensemble of generations 1..g (mean softmax), and the
secondary-information metrics, as mean +- std over seeds. Finished runs are skipped on rerun.

  python experiments/generations.py --config=configs/synthetic_generations.py \
      --seeds=0,1,2 --etas=0.0,0.6 --out=experiments/results/synthetic_generations
"""

import json
import os

import numpy as np
from cli_runs import mean_std, parse_experiment_args, run_cli, runner_command

METRICS = ("accuracy", "secondary_in_superclass", "mean_entropy", "top_gap", "ece")


def run_chain(config, workdir, overrides, log_path):
  command, seconds = run_cli(config, workdir, overrides, log_path)
  with open(os.path.join(workdir, "summary.json")) as f:
    return command, json.load(f), seconds


def tabulate(summaries):
  """{entry name: {metric: (mean, std)}} over seeds, for generation_<g> and ensemble_<g>."""
  names = sorted({k for s in summaries for k in s if k.startswith(("generation_", "ensemble_"))},
                 key=lambda k: (k.startswith("ensemble_"), int(k.split("_")[1])))
  return {name: {metric: mean_std([s[name]["test_metrics"].get(metric) for s in summaries
                                   if name in s]) for metric in METRICS} for name in names}


def plot(table, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for eta, rows in table.items():
    for prefix, style in (("generation_", "-o"), ("ensemble_", "--s")):
      keys = [k for k in rows if k.startswith(prefix)]
      gens = [int(k[len(prefix):]) for k in keys]
      means = np.array([rows[k]["accuracy"][0] for k in keys])
      stds = np.array([rows[k]["accuracy"][1] for k in keys])
      label = f"eta={eta} {'single' if prefix == 'generation_' else 'ensemble 1..g'}"
      ax.errorbar(gens, means, yerr=stds, fmt=style, capsize=3, label=label)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("generation g")
  ax.set_ylabel("test accuracy (last epoch)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  experiment = parse_experiment_args(__doc__.splitlines()[0], "configs/synthetic_generations.py",
                                     etas=("0.0,0.6", "patriarch tsd_eta values"))
  args, seeds, extra = experiment.args, experiment.seeds, experiment.extra
  workdir, log_path = experiment.workdir, experiment.log_path
  etas = [float(e) for e in args.etas.split(",")]

  commands, summaries = [], {eta: [] for eta in etas}
  for seed in seeds:
    for eta in etas:
      overrides = {**extra, "seed": str(seed), "teacher.method.tsd_eta": str(eta)}
      command, summary, seconds = run_chain(
          args.config, os.path.join(workdir, f"eta{eta}", f"seed{seed}"), overrides, log_path)
      commands.append(command)
      summaries[eta].append(summary)
      accuracies = [summary[k]["test_accuracy"] for k in summary if k.startswith("generation_")]
      print(f"seed {seed} eta {eta}: generations {accuracies} ({seconds:.0f} s)", flush=True)

  table = {eta: tabulate(runs) for eta, runs in summaries.items()}
  runner = runner_command("experiments/generations.py")
  per_seed = {eta: {k: [s[k]["test_accuracy"] for s in runs] for k in table[eta]}
              for eta, runs in summaries.items()}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(dict(config=args.config, seeds=seeds, etas=etas, extra=extra, runner=runner,
                   commands=commands, table={str(e): t for e, t in table.items()},
                   per_seed_test_accuracy={str(e): p for e, p in per_seed.items()}), f, indent=1)
  plot(table, os.path.join(args.out, "generations.png"))

  def cell(value, digits=4):
    return "n/a" if value is None else f"{value[0]:.{digits}f} +- {value[1]:.{digits}f}"

  lines = [f"Config `{args.config}`, seeds {seeds}, extra overrides {extra or 'none'}.",
           f"Reproduce: `{runner}`", "",
           ("Last-epoch test accuracy (mean +- std over seeds) of generation g and of the "
            "ensemble (mean softmax) of generations 1..g; secondary_in_superclass: share of "
            "the top-K non-true classes inside the true superclass; top_gap: p_(1) - p_(2)."),
           "",
           ("| patriarch eta | entry | test accuracy | secondary_in_superclass | mean_entropy "
            "| top_gap | ECE | per seed |"),
           "|---|---|---|---|---|---|---|---|"]
  for eta, rows in table.items():
    for name, row in rows.items():
      seeds_text = ", ".join(f"{v:.4f}" for v in per_seed[eta][name])
      lines.append(f"| {eta} | {name} | {cell(row['accuracy'])} | "
                   f"{cell(row['secondary_in_superclass'], 3)} | {cell(row['mean_entropy'], 3)} "
                   f"| {cell(row['top_gap'], 3)} | {cell(row['ece'], 3)} | {seeds_text} |")
  lines += ["", "![accuracy per generation](generations.png)", "", "Commands:", "",
            *[f"    {c}" for c in commands]]
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines[:-len(commands) - 4]))


if __name__ == "__main__":
  main()
