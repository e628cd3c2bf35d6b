"""A synthetic many-class dataset with superclasses and a class-correlation knob.

Class c belongs to superclass g(c) = floor(c·G / C) (contiguous blocks of C/G classes).
With independent standard normal vectors μ_g (one per superclass) and ν_c (one per class)
in R^D, the class means are

  m_c = separation · (√ρ · μ_g(c) + √(1 − ρ) · ν_c),

so every coordinate of m_c has variance separation² and two classes of the same superclass
have correlation ρ (`correlation`), classes of different superclasses correlation 0. An
example of class c is x = m_c + noise · ε with ε ~ N(0, I_D). Larger ρ puts the classes of a
superclass closer together (E‖m_c − m_c'‖² = 2·D·separation²·(1 − ρ)), which makes their
confusions, and a teacher's secondary probabilities, concentrate inside the superclass: the
"class relationships" that KD is said to transfer.
"""

import numpy as np

from kd_jax.data.source import ArraySource, DatasetInfo

# Streams of the generator: class means, training examples and test examples never share one.
_MEANS_STREAM, _TRAIN_STREAM, _TEST_STREAM = 0, 1, 2


def superclass_of(num_classes: int, num_superclasses: int) -> np.ndarray:
  """int32 [C]: the superclass of each class, floor(c·G / C)."""
  return (np.arange(num_classes) * num_superclasses // num_classes).astype(np.int32)


def class_means(*, num_classes: int, num_superclasses: int, correlation: float, dim: int,
                separation: float, seed: int) -> np.ndarray:
  """float64 [C, D]: the class means m_c of the module docstring for this seed."""
  rng = np.random.default_rng([seed, _MEANS_STREAM])
  super_means = rng.standard_normal((num_superclasses, dim))
  own_means = rng.standard_normal((num_classes, dim))
  shared = super_means[superclass_of(num_classes, num_superclasses)]
  return separation * (np.sqrt(correlation) * shared + np.sqrt(1 - correlation) * own_means)


def _check(num_classes, num_superclasses, correlation, dim, noise, separation, num_train,
           num_test):
  for name, value in (("num_classes", num_classes), ("num_superclasses", num_superclasses),
                      ("dim", dim), ("num_train", num_train), ("num_test", num_test)):
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive integer")
  if num_superclasses > num_classes:
    raise ValueError(f"num_superclasses={num_superclasses} must be at most "
                     f"num_classes={num_classes}")
  if not 0 <= correlation < 1:
    raise ValueError(f"correlation={correlation!r} must lie in [0, 1)")
  if noise < 0 or separation <= 0:
    raise ValueError(f"noise={noise!r} must be >= 0 and separation={separation!r} > 0")


def load_synthetic(split: str, *, seed: int = 0, num_classes: int = 100,
                   num_superclasses: int = 20, correlation: float = 0.5, dim: int = 64,
                   noise: float = 2.0, separation: float = 1.0, num_train: int = 10_000,
                   num_test: int = 5_000) -> ArraySource:
  """The synthetic dataset's `split` ("train" or "test"): x float32 [N, dim].

  Deterministic in `seed` (train and test share the class means of that seed); classes are
  balanced to within one example and shuffled. Each example carries its superclass.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split={split!r} is not supported; use 'train' or 'test'")
  _check(num_classes, num_superclasses, correlation, dim, noise, separation, num_train,
         num_test)
  means = class_means(num_classes=num_classes, num_superclasses=num_superclasses,
                      correlation=correlation, dim=dim, separation=separation, seed=seed)
  size, stream = (num_train, _TRAIN_STREAM) if split == "train" else (num_test, _TEST_STREAM)
  rng = np.random.default_rng([seed, stream])
  labels = rng.permutation(np.arange(size) % num_classes).astype(np.int32)
  x = means[labels] + noise * rng.standard_normal((size, dim))
  info = DatasetInfo("synthetic", num_classes=num_classes, input_shape=(dim,),
                     num_superclasses=num_superclasses, augmentation=None)
  return ArraySource(info, x.astype(np.float32), labels,
                     superclass_of(num_classes, num_superclasses)[labels])
