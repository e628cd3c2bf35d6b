"""Plots of finished runs, drawn from what they wrote (metrics.jsonl), off the training path."""

import os

from kd_jax.train.writer import read_metrics


def plot_curves(directory: str, title: str) -> str | None:
  """curves.png next to metrics.jsonl: loss and accuracy per epoch for every split."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  records = read_metrics(os.path.join(directory, "metrics.jsonl"))
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for split in ("train_epoch", "val", "test"):
    rows = [r for r in records if r["split"] == split]
    label = "train" if split == "train_epoch" else split
    for ax, key in zip(axes, ("loss", "accuracy")):
      points = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), float)]
      if points:
        ax.plot(*zip(*points), marker=".", label=label)
  for ax, key in zip(axes, ("loss", "accuracy")):
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  path = os.path.join(directory, "curves.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
