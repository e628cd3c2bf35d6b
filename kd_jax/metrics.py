"""Evaluation metrics, computed on the host with NumPy from gathered logits.

Everything here takes full evaluation arrays (`logits [N, C]`, `labels [N]`), with padding
already removed, and returns Python floats, so the numbers written to summary.json do not
depend on batch size or device count.
"""

import numpy as np


def _softmax(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def top_k_accuracy(logits, labels, k):
  """Share of examples whose label is among the k largest logits (k clipped to C)."""
  k = min(k, logits.shape[-1])
  top = np.argsort(-np.asarray(logits), axis=-1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=-1)))


def expected_calibration_error(probs, labels, num_bins=15):
  """ECE (Guo et al. 2017): `sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|`.

  Bins are `num_bins` equal-width confidence intervals over (0, 1]; confidence is the max
  probability.
  """
  probs = np.asarray(probs)
  confidence = probs.max(axis=-1)
  correct = probs.argmax(axis=-1) == np.asarray(labels)
  bins = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
  ece = 0.0
  for b in range(num_bins):
    in_bin = bins == b
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return float(ece)


def secondary_in_superclass(probs, labels, class_to_superclass, num_secondary=5):
  """Share of the top-K secondary classes (ranks 2..K+1) in the true class's superclass.

  The secondary-information quality measure of Yang et al.: a teacher whose runner-up
  classes are semantically close to the truth carries more useful "dark knowledge".
  """
  probs = np.asarray(probs)
  order = np.argsort(-probs, axis=-1, kind="stable")
  # Rank the true class out so "secondary" means the K best classes other than the truth.
  secondary = np.array([row[row != y][:num_secondary] for row, y in zip(order, labels)])
  mapping = np.asarray(class_to_superclass)
  return float(np.mean(mapping[secondary] == mapping[np.asarray(labels)][:, None]))


def class_to_superclass(labels, superclasses, num_classes):
  """`[C]` superclass of each class, read off a labelled dataset (first occurrence)."""
  mapping = np.full(num_classes, -1, np.int64)
  mapping[np.asarray(labels)[::-1]] = np.asarray(superclasses)[::-1]
  return mapping


def evaluate_logits(logits, labels, superclasses=None, num_secondary=5):
  """Top-1, top-5, mean CE, ECE and secondary-information statistics.

  Args:
    logits: `[N, C]`.
    labels: `[N]` integers.
    superclasses: optional `[N]` superclass of each example (CIFAR-100 coarse labels, the
      synthetic data's groups); adds `secondary_in_superclass`.

  Returns:
    dict of floats: accuracy, top5, loss (mean CE, nats), ece, mean_entropy (nats),
    top_gap (mean of p_(1) - p_(2)), and secondary_in_superclass when superclasses are given.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  probs = _softmax(logits)
  log_probs = np.log(np.maximum(probs, 1e-300))
  sorted_probs = -np.sort(-probs, axis=-1)
  out = {
      "accuracy": float(np.mean(probs.argmax(-1) == labels)),
      "top5": top_k_accuracy(logits, labels, 5),
      "loss": float(-np.mean(log_probs[np.arange(len(labels)), labels])),
      "ece": expected_calibration_error(probs, labels),
      "mean_entropy": float(-np.mean(np.sum(probs * log_probs, axis=-1))),
      "top_gap": float(np.mean(sorted_probs[:, 0] - sorted_probs[:, 1])),
  }
  if superclasses is not None:
    mapping = class_to_superclass(labels, superclasses, logits.shape[-1])
    k = min(num_secondary, logits.shape[-1] - 1)
    out["secondary_in_superclass"] = secondary_in_superclass(probs, labels, mapping, k)
  return out


def ensemble_logits(list_of_logits):
  """Log of the mean of softmax outputs: the logits of an ensemble of models, `[N, C]`."""
  mean_probs = np.mean([_softmax(z) for z in list_of_logits], axis=0)
  return np.log(np.maximum(mean_probs, 1e-300))
