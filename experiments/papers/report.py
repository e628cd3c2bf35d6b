"""results.md of the paper scripts (tang, lan, yang, compare_methods): the one markdown writer.

Each script saves its results.json, then writes results.md from that file alone: its own
`markdown(results, out)` lists the tables it reports and builds them from the pieces here
(the reproduce line, run times, mean +- std cells, per-seed values, the labelled
best-validation column, claim tables, NOTES.md). So `--report_only` rewrites results.md from
a committed results.json without training anything.
"""

import json
import os
import shlex

import numpy as np

# The opening of every accuracy note: which accuracy is the reported one, which is labelled.
ACCURACY = ("Accuracy: test accuracy of the LAST-EPOCH model, mean +- std over seeds; `best-val "
            "ckpt`: the test accuracy of the checkpoint with the best validation accuracy")


def mean_std(values):
  """[mean, sample std] of the non-None values (std 0 for one value); None for none."""
  values = np.asarray([v for v in values if v is not None], float)
  if not values.size:
    return None
  return [float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0]


def fmt(ms, digits=4, signed=False):
  """'mean +- std' of a mean_std pair; 'n/a' for None."""
  if ms is None:
    return "n/a"
  sign = "+" if signed else ""
  return f"{ms[0]:{sign}.{digits}f} +- {ms[1]:.{digits}f}"


def per_seed(values):
  """One value per seed, in seed order."""
  return ", ".join(f"{v:.4f}" for v in values)


def accuracy(entry):
  """The two accuracy cells of a row: last epoch (reported), best-val checkpoint (labelled)."""
  return [fmt(entry["last_epoch_test_accuracy"]), fmt(entry["best_val_checkpoint_test_accuracy"])]


def row(*cells):
  return "| " + " | ".join(cells) + " |"


def table(header, rows):
  """A markdown table: the header's cells, then one row per list of cells."""
  return [row(*header), "|" + "---|" * len(header), *[row(*cells) for cells in rows]]


def claims(rows, numbers="numbers"):
  """(claim, verdict, numbers) rows as a table, the verdict in bold."""
  return table(("claim", "verdict", numbers), [(a, f"**{b}**", n) for a, b, n in rows])


def reproduce(command, where=" (from the repository root)"):
  return f"Reproduce{where}: `{command}`"


def run_times(lead, timing, detail=lambda t: ""):
  """'lead: started: seconds (trained / skipped<detail>); ...' over the invocations that
  trained (all of them if none did)."""
  trained = [t for t in timing if t["runs_trained"]]
  return (f"{lead}: " + "; ".join(f"{t['started']}: {t['wall_seconds']:.0f} s "
                                  f"({t['runs_trained']} / {t['runs_skipped']}{detail(t)})"
                                  for t in (trained or timing)) + ".")


def notes(out):
  """The hand-written verdicts of OUT/NOTES.md (kept across reruns); None without one."""
  path = os.path.join(out, "NOTES.md")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return f.read().rstrip()


def recorded_args(parse_args, command):
  """The flags of the command that made a results.json, parsed by its script's parser."""
  return parse_args(shlex.split(command)[2:])


def save(out, results, markdown):
  """Writes OUT/results.json, then OUT/results.md from it; returns results.md's lines."""
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  return write(out, markdown)


def write(out, markdown):
  """Writes OUT/results.md, `markdown(results, out)`'s lines from OUT/results.json (read back
  after a run too, so a rerun with `--report_only` writes the same file); returns the lines."""
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  lines = markdown(results, out)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return lines
