"""Shared fixtures."""

import io

import hypothesis
import numpy as np
import pytest

# Property tests draw the same examples on every run: CI results do not depend on luck, and
# a failure found once is found again.
hypothesis.settings.register_profile("kd_jax", derandomize=True, deadline=None)
hypothesis.settings.load_profile("kd_jax")


@pytest.fixture
def mock_tfds(monkeypatch, tmp_path):
  """tfds.testing.mock_data for `tfds.data_source`, without TensorFlow.

  Two patches make the mock work without TensorFlow: the mocked `__getitems__` is set on a
  MagicMock as a plain attribute, so it is called without `self` (a TFDS bug), and images
  of skipped decoding are encoded by TensorFlow, replaced here by a PIL PNG encoder.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  from PIL import Image
  from tensorflow_datasets.testing import mocking

  def encode_png(self, image):
    del self
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()

  monkeypatch.setattr(tfds.features.Image, "encode_example", encode_png)
  monkeypatch.setattr(mocking, "_getitems", lambda keys, generator, serialized=False:
                      [generator[k] for k in keys])
  for name in ("cifar10", "cifar100", "imagenet2012"):  # where a TFDS build would be
    (tmp_path / name).mkdir()
  with tfds.testing.mock_data(num_examples=40):
    yield str(tmp_path)
