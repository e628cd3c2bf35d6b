"""Plots of finished runs, drawn from what they wrote (metrics.jsonl), off the training path.

curves.png has three panels, because the quantities do not share a scale or a meaning: the
method's training objective (`loss` of the train records: CE plus the teacher's terms, for
KD at T = 4 several times the cross entropy), the cross entropy on the training batches
(`ce`) beside the validation and test cross entropy (their `loss`), and the accuracy of
every split.
"""

import os

from kd_jax.train.writer import read_metrics

_SPLITS = (("train_epoch", "train"), ("val", "val"), ("test", "test"))


def curves(records: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
  """Panel title -> line label -> [(epoch, value)], from metrics.jsonl's records."""

  def points(split, key):
    return [(r["epoch"], r[key]) for r in records
            if r["split"] == split and isinstance(r.get(key), float)]

  panels = {"training objective": {"train (the method's loss)": points("train_epoch", "loss")},
            "cross entropy": {"train (on training batches)": points("train_epoch", "ce")},
            "accuracy": {}}
  for split, label in _SPLITS[1:]:
    panels["cross entropy"][label] = points(split, "loss")
  for split, label in _SPLITS:
    panels["accuracy"][label] = points(split, "accuracy")
  return {title: {label: line for label, line in lines.items() if line}
          for title, lines in panels.items()}


def plot_curves(directory: str, title: str) -> str | None:
  """curves.png next to metrics.jsonl (see the module docstring)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = curves(read_metrics(os.path.join(directory, "metrics.jsonl")))
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
  for ax, (panel, lines) in zip(axes, panels.items()):
    for label, line in lines.items():
      ax.plot(*zip(*line), marker=".", label=label)
    ax.set_title(panel)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy" if panel == "accuracy" else "nats per example")
    ax.grid(alpha=0.3)
    if lines:
      ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(directory, "curves.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
