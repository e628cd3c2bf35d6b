"""Metrics on hand-worked cases."""

import numpy as np
import pytest

from kd_jax import metrics


def test_accuracy_top5_loss_hand_worked():
  # Two examples, C = 6. Example 0: label 0 is the argmax. Example 1: label 5 ranks 6th.
  logits = np.log(np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1],
                            [0.3, 0.2, 0.2, 0.1, 0.1, 0.1 - 1e-9]]))
  out = metrics.evaluate_logits(logits, np.array([0, 5]))
  assert out["accuracy"] == 0.5
  assert out["top5"] == 0.5
  np.testing.assert_allclose(out["loss"], -(np.log(0.5) + np.log(0.1 - 1e-9)) / 2, rtol=1e-6)
  np.testing.assert_allclose(out["top_gap"], ((0.5 - 0.1) + (0.3 - 0.2)) / 2, rtol=1e-6)


def test_ece_hand_worked():
  # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 15 bins: bin (0.8667, 0.9333] holds
  # two examples with accuracy 0.5 and confidence 0.9; bin (0.5333, 0.6] holds one, right.
  probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
  labels = np.array([0, 1, 1])
  expected = 2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6)
  np.testing.assert_allclose(metrics.expected_calibration_error(probs, labels), expected)


def test_perfectly_calibrated_has_zero_ece():
  probs = np.array([[1.0, 0.0]] * 4)
  assert metrics.expected_calibration_error(probs, np.zeros(4, int)) == 0.0


def test_secondary_in_superclass():
  # Classes 0-3: superclass 0 = {0, 1}, superclass 1 = {2, 3}. True class 0; ranking 0, 2, 1, 3:
  # the two best non-true classes are 2 (other superclass) and 1 (same) -> 0.5.
  probs = np.array([[0.4, 0.2, 0.3, 0.1]])
  share = metrics.secondary_in_superclass(probs, np.array([0]), np.array([0, 0, 1, 1]), 2)
  assert share == 0.5
  mapping = metrics.class_to_superclass(np.array([3, 0, 2, 1]), np.array([1, 0, 1, 0]), 4)
  np.testing.assert_array_equal(mapping, [0, 0, 1, 1])


def test_ensemble_is_mean_of_softmax():
  a = np.log(np.array([[0.8, 0.2]]))
  b = np.log(np.array([[0.2, 0.8]]))
  np.testing.assert_allclose(np.exp(metrics.ensemble_logits([a, b])), [[0.5, 0.5]])


@pytest.mark.parametrize("num_classes", [3, 10])
def test_top5_clipped_to_classes(num_classes):
  logits = np.random.default_rng(0).normal(size=(20, num_classes))
  labels = np.zeros(20, int)
  expected = 1.0 if num_classes <= 5 else np.mean(
      np.argsort(-logits, -1)[:, :5] == 0, axis=0).sum()
  np.testing.assert_allclose(metrics.top_k_accuracy(logits, labels, 5), expected)
