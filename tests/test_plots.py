"""curves.png: the training objective, the cross entropy and the accuracy on their own
panels, each line labelled (kd_jax/train/plots.py)."""

import json

from kd_jax.train import plots


def _records():
  rows = []
  for epoch in (1.0, 2.0):
    rows.append(dict(step=int(epoch), split="train", epoch=epoch - 0.5, loss=9.0, ce=9.5))
    rows.append(dict(step=int(epoch), split="train_epoch", epoch=epoch, loss=3.0 / epoch,
                     ce=1.5 / epoch, accuracy=0.5 * epoch))
    rows.append(dict(step=int(epoch), split="val", epoch=epoch, loss=1.2, accuracy=0.4))
    rows.append(dict(step=int(epoch), split="test", epoch=epoch, loss=1.1, accuracy="nan"))
  return rows


def test_objective_and_cross_entropy_are_apart_and_labelled():
  panels = plots.curves(_records())
  assert list(panels) == ["training objective", "cross entropy", "accuracy"]
  assert panels["training objective"] == {"train (the method's loss)": [(1.0, 3.0), (2.0, 1.5)]}
  assert panels["cross entropy"] == {"train (on training batches)": [(1.0, 1.5), (2.0, 0.75)],
                                     "val": [(1.0, 1.2), (2.0, 1.2)],
                                     "test": [(1.0, 1.1), (2.0, 1.1)]}
  assert panels["accuracy"] == {"train": [(1.0, 0.5), (2.0, 1.0)], "val": [(1.0, 0.4),
                                                                           (2.0, 0.4)]}


def test_plot_curves_writes_a_png(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in _records()))
  path = plots.plot_curves(str(tmp_path), "a run")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
