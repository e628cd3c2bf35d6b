"""What a run writes for people: metrics.jsonl, TensorBoard events, PNG curves, a progress bar.

Only the primary process writes. On resume from the checkpoint at step s, records of steps
after s (written by the interrupted run after its last checkpoint) are dropped from
metrics.jsonl and TensorBoard is told to purge them, so a resumed run's records equal an
uninterrupted run's.
"""

import json
import math
import os
import sys

import numpy as np

from kd_jax.train import parallel


def write_json(path: str, value) -> None:
  """Atomic JSON write (temporary file + rename): a kill never leaves half a file."""
  if not parallel.is_primary():
    return
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=_jsonable)
  os.replace(tmp, path)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _jsonable(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f"not JSON serialisable: {type(value)}")


def _clean(value):
  """Floats as JSON allows them (NaN/inf become strings)."""
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricsWriter:
  """Appends `{"step", "epoch", "split", ...}` records to metrics.jsonl and TensorBoard."""

  def __init__(self, directory: str, resume_step: int | None):
    self.directory = directory
    self.path = os.path.join(directory, "metrics.jsonl")
    self.primary = parallel.is_primary()
    self.tensorboard = None
    if not self.primary:
      return
    os.makedirs(directory, exist_ok=True)
    self._truncate(resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    purge = None if resume_step is None else resume_step + 1
    self.tensorboard = SummaryWriter(os.path.join(directory, "tensorboard"), purge_step=purge)

  def _truncate(self, resume_step):
    if not os.path.exists(self.path):
      return
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut by a kill.
        if resume_step is not None and record["step"] <= resume_step:
          keep.append(line if line.endswith("\n") else line + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, step: int, epoch: float, split: str, values: dict) -> None:
    if not self.primary:
      return
    record = {"step": int(step), "epoch": round(float(epoch), 4), "split": split}
    record.update({key: _clean(value) for key, value in values.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in values.items():
      if math.isfinite(float(value)):
        self.tensorboard.add_scalar(f"{split}/{key}", float(value), int(step))

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(directory: str, title: str) -> str | None:
  """curves.png next to metrics.jsonl: loss and accuracy per epoch for every split."""
  if not parallel.is_primary():
    return None
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


def progress_bar(total: int, initial: int, description: str):
  """A tqdm bar over steps; silent when stdout is not a terminal (logs, CI, pipes)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  enabled = parallel.is_primary() and sys.stdout.isatty()
  return tqdm(total=total, initial=initial, desc=description, unit="step",
              disable=not enabled, dynamic_ncols=True, leave=True)
