"""What a run writes while it trains: one metrics writer and one progress clock.

`MetricsWriter.write_scalars(step, scalars, split=...)` sends each record to
`metrics.jsonl` (`{"step", "split", ...scalars}`), TensorBoard (`<split>/<name>`) and one
readable line on stdout, flushed, so a run under nohup or a batch scheduler shows progress.
On resume from the checkpoint at step s, records after s (written by the interrupted run
after its last checkpoint) are dropped from metrics.jsonl and TensorBoard purges them, so a
resumed run's records equal an uninterrupted run's. Only the primary process writes.

`TimestampedLines` wraps a text stream so that every line starts with the local time
(`2026-12-07 14:03:12 student step 1200 ...`); the command line wraps stdout with it, so the
writer's lines and every `kd_jax:` progress line say when they were printed.

`MetricSums` keeps the host-side running sums of the steps' metrics behind those records.
`Progress` measures steps/s, images/s and the ETA over the time spent training (CLU's
`ReportProgress` idea without its TensorFlow writers); `with progress.paused():` excludes
evaluation, selection rounds and checkpoint writes.
"""

import contextlib
import json
import math
import os
import time

import jax
import numpy as np

from kd_jax import _files
from kd_jax.train import parallel


def _clean(value):
  """Floats as JSON allows them (NaN/inf become strings)."""
  value = float(value)
  return value if math.isfinite(value) else str(value)


class MetricsWriter:
  """metrics.jsonl + TensorBoard + stdout, for one run directory."""

  def __init__(self, directory: str, name: str, resume_step: int | None):
    self.name = name
    self.path = os.path.join(directory, "metrics.jsonl")
    self.tensorboard = None
    if not parallel.is_primary():
      return
    _keep_records_until(self.path, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    purge = None if resume_step is None else resume_step + 1
    self.tensorboard = SummaryWriter(os.path.join(directory, "tensorboard"), purge_step=purge)

  def write_scalars(self, step: int, scalars: dict, split: str = "train",
                    progress: str = "") -> None:
    """One record: `scalars` (floats; `epoch` among them) of `split` at `step`."""
    if self.tensorboard is None:
      return
    record = {"step": int(step), "split": split}
    record.update({key: _clean(value) for key, value in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in scalars.items():
      if key != "epoch" and math.isfinite(float(value)):
        self.tensorboard.add_scalar(f"{split}/{key}", float(value), int(step))
    print(self._line(step, split, scalars, progress), flush=True)

  def _line(self, step, split, scalars, progress) -> str:
    shown = [f"{key} {scalars[key]:.4f}" for key in ("loss", "accuracy", "learning_rate")
             if key in scalars]
    line = f"{self.name} step {step} epoch {scalars.get('epoch', 0):.2f} {split}: "
    return line + ", ".join(shown) + (f" | {progress}" if progress else "")

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()


class TimestampedLines:
  """A text stream that starts every line it writes with `YYYY-MM-DD HH:MM:SS ` (local time,
  taken when the line's first character is written); everything else goes to `stream`."""

  def __init__(self, stream):
    self._stream = stream
    self._at_line_start = True

  def write(self, text: str) -> int:
    out = []
    for piece in text.splitlines(keepends=True):
      if self._at_line_start:
        out.append(time.strftime("%Y-%m-%d %H:%M:%S "))
      out.append(piece)
      self._at_line_start = piece.endswith(("\n", "\r"))
    self._stream.write("".join(out))
    return len(text)

  def __getattr__(self, name):  # flush, fileno, isatty, encoding, ...
    return getattr(self._stream, name)


def _keep_records_until(path: str, resume_step: int | None) -> None:
  """Rewrites metrics.jsonl with the records of steps <= resume_step (none when None)."""
  if not os.path.exists(path):
    return
  keep = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut by a kill.
      if resume_step is not None and record["step"] <= resume_step:
        keep.append(line if line.endswith("\n") else line + "\n")
  _files.write_text(path, "".join(keep))


class MetricSums:
  """Host-side running sums of step metrics, weighted by each step's example count.

  The loop appends each step's (device) metrics; `window_means()` and `epoch_means()` fetch
  what is pending (one device-to-host transfer per log, not per step) and average. The sums
  are plain floats, so a checkpoint stores them (`state_dict`) and a resumed run logs the
  same epoch means as an uninterrupted one.
  """

  def __init__(self, state: dict | None = None):
    state = state or {}
    self.window, self.epoch = dict(state.get("window", {})), dict(state.get("epoch", {}))
    self.pending = []

  def append(self, metrics: dict) -> None:
    self.pending.append(metrics)

  def flush(self) -> None:
    for metrics in jax.device_get(self.pending):
      count = float(metrics["count"])
      for sums in (self.window, self.epoch):
        sums["count"] = sums.get("count", 0.0) + count
        for key, value in metrics.items():
          if key != "count":
            sums[key] = sums.get(key, 0.0) + float(value) * count
    self.pending = []

  @staticmethod
  def _means(sums: dict) -> dict:
    count = max(sums.get("count", 0.0), 1.0)
    return {key: value / count for key, value in sums.items() if key != "count"}

  def window_means(self) -> dict:
    """Means since the last call (then reset)."""
    self.flush()
    means, self.window = self._means(self.window), {}
    return means

  def epoch_means(self) -> dict:
    """Means since the epoch began (then reset)."""
    self.flush()
    means, self.epoch = self._means(self.epoch), {}
    return means

  def finite(self) -> bool:
    self.flush()
    return all(np.isfinite(v) for sums in (self.window, self.epoch) for v in sums.values())

  def state_dict(self) -> dict:
    self.flush()
    return dict(window=dict(self.window), epoch=dict(self.epoch))


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """Steps/s, images/s and ETA over training time; compilation excluded (first step)."""

  def __init__(self, total_steps: int, batch_size: int):
    self.total_steps, self.batch_size = total_steps, batch_size
    self.measured_from = None  # (time, step) after the first (compiling) step
    self.paused_seconds = 0.0

  def step_done(self, step: int) -> None:
    """Call after each step; the first call (after compilation) starts the clock."""
    if self.measured_from is None:
      self.measured_from = (time.time(), step)
      self.paused_seconds = 0.0

  @contextlib.contextmanager
  def paused(self):
    tick = time.time()
    try:
      yield
    finally:
      self.paused_seconds += time.time() - tick

  def _rate(self, since, step) -> float | None:
    if since is None or step <= since[1]:
      return None
    seconds = time.time() - since[0] - self.paused_seconds
    return (step - since[1]) / max(seconds, 1e-9)

  def images_per_second(self, step: int) -> float | None:
    """Over the whole run so far (this process's session)."""
    rate = self._rate(self.measured_from, step)
    return None if rate is None else rate * self.batch_size

  def report(self, step: int) -> str:
    """`'123.4 img/s, ETA 0:01:02'` since the clock started ('' before)."""
    rate = self._rate(self.measured_from, step)
    if rate is None:
      return ""
    eta = int((self.total_steps - step) / rate)
    return (f"{rate * self.batch_size:.0f} img/s, {rate:.1f} steps/s, "
            f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")
