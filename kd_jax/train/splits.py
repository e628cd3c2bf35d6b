"""The three splits a run uses: train (minus the held-out slice), validation, test."""

import dataclasses

from kd_jax import data as data_lib


@dataclasses.dataclass(frozen=True)
class Data:
  """Train (minus the held-out slice), validation (None without holdout) and test sources.

  The validation slice is carved from the train split with `dataset.holdout_seed`, the same
  for every run seed and every method of a comparison; the test split selects nothing.
  """
  train: data_lib.Source
  val: data_lib.Source | None
  test: data_lib.Source

  @property
  def info(self) -> data_lib.DatasetInfo:
    return self.test.info


def load_data(config) -> Data:
  """Loads train/test of `config.dataset` and carves `dataset.holdout` validation examples.

  Raises ValueError (one line) for an unknown dataset or option, data that is not prepared,
  or a holdout outside [0, number of training examples).
  """
  d = config.dataset
  options = dict(d.options) if d.get("options") else {}
  try:
    train = data_lib.load(d.name, "train", data_dir=d.data_dir, seed=d.seed, **options)
    test = data_lib.load(d.name, "test", data_dir=d.data_dir, seed=d.seed, **options)
  except (ValueError, TypeError, FileNotFoundError) as error:
    message = " ".join(str(error).split())
    raise ValueError(f"dataset.name={d.name!r} (options {options}): {message}") from None
  if not isinstance(d.holdout, int) or not 0 <= d.holdout < len(train):
    raise ValueError(f"dataset.holdout={d.holdout!r} is not allowed: must be an integer in "
                     f"[0, {len(train)}) (the training examples)")
  train, val = data_lib.split_holdout(train, int(d.holdout), int(d.holdout_seed))
  return Data(train, val, test)
