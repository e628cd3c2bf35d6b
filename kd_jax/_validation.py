"""Argument checks shared by `kd_jax.losses`, `targets`, `selection` and `methods` (private).

One rule for every public function of those modules:
- Shapes are checked when the function is traced (free under jit): logits `[..., C]`, a second
  array of logits or probabilities the same shape, labels and `where` the batch shape
  `[...]`. Nothing is broadcast.
- Concrete arguments (Python numbers, NumPy arrays, jax arrays outside a trace, constants
  closed over by a jitted function) are checked eagerly and a bad one raises a ValueError
  naming it. Traced ones cannot raise: a bad label or a probability row that is not a
  distribution makes that example's value NaN, a bad traced scalar (temperature, eta,
  epsilon) makes the whole output NaN; the other examples' values and gradients are unchanged.
- `where` (bool, the batch shape) excludes examples: their inputs are replaced by harmless
  values before anything is computed (so a NaN padding row never reaches a gradient), they are
  not checked, and their value is 0.
"""

from typing import NoReturn

import jax
import jax.numpy as jnp
import numpy as np

# |sum_c q_c - 1| allowed for a probability row (float32; 16-bit floats get their epsilon).
DISTRIBUTION_TOLERANCE = 1e-3


def fail(field: str, value, allowed: str) -> NoReturn:
  """Raises `ValueError("{field}={value!r} is not allowed: {allowed}")`."""
  raise ValueError(f"{field}={value!r} is not allowed: {allowed}")


def is_concrete(x) -> bool:
  """True for a value readable on this host now: not a tracer, not a multi-host array."""
  if isinstance(x, jax.core.Tracer):
    return False
  return not isinstance(x, jax.Array) or x.is_fully_addressable


def concrete(value) -> float | None:
  """`float(value)`, or None when `value` is traced (checked by the caller)."""
  if not is_concrete(value):
    return None
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def nan_unless(ok, value: jax.Array) -> jax.Array:
  """`value` where `ok`, else NaN (`ok` None: `value`). `ok` indexes the leading axes of
  `value`. The NaN is a constant of the unselected branch: it never reaches a gradient."""
  if ok is None:
    return value
  ok = jnp.asarray(ok)
  ok = ok.reshape(ok.shape + (1,) * (jnp.ndim(value) - ok.ndim))
  return jnp.where(ok, value, jnp.nan)


def both(a, b):
  """`a & b` for optional bool masks (None: all True)."""
  if a is None or b is None:
    return b if a is None else a
  return a & b


def check_temperature(temperature, name: str = "temperature"):
  """A temperature `0 < T < inf`: ValueError when concrete; traced and invalid -> NaN."""
  t = concrete(temperature)
  if t is None:
    return nan_unless((temperature > 0) & jnp.isfinite(temperature), temperature)
  if not 0 < t < float("inf"):
    fail(name, temperature, "must be > 0 and finite")
  return temperature


def check_unit_interval(name: str, value, *, open_interval: bool = False):
  """`value` in `[0, 1]` (or `(0, 1)`): ValueError when concrete; traced and outside -> NaN."""
  v = concrete(value)
  if v is None:
    ok = (0 < value) & (value < 1) if open_interval else (0 <= value) & (value <= 1)
    return nan_unless(ok, value)
  if not (0 < v < 1 if open_interval else 0 <= v <= 1):
    fail(name, value, f"must be in {'(0, 1)' if open_interval else '[0, 1]'}")
  return value


def check_int_range(name: str, value, low: int, high: int) -> None:
  """An integer in `[low, high]` (a static argument: k, num_secondary)."""
  if int(value) != value or not low <= value <= high:
    fail(name, value, f"must be an integer in [{low}, {high}]")


def check_choice(name: str, value, choices: tuple) -> None:
  if value not in choices:
    fail(name, value, f"must be one of {', '.join(map(repr, choices))}")


def check_num_classes(num_classes: int, what: str, name: str = "logits") -> None:
  """C >= 2, for a function whose math needs a class besides the label (or the top one)."""
  if num_classes < 2:
    fail(f"{name}.shape[-1]", num_classes, f"{what} needs at least 2 classes")


def classes_last(x, axis: int = -1, name: str = "logits") -> jax.Array:
  """`x` as float32 with the class axis `axis` moved last."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    fail(f"{name}.shape", (), "need [..., C] (at least 1-D: a single example is [C])")
  return jnp.moveaxis(x, axis, -1).astype(jnp.float32)


def check_shapes(name: str, shape, other_name: str | None = None, other_shape=None,
                 labels=None, where=None) -> None:
  """Trace-time checks: `shape` is `[..., C]`; `other_shape` the same; `labels` and `where`
  the batch shape `shape[:-1]`."""
  shape = tuple(shape)
  if not shape:
    fail(f"{name}.shape", shape, "need [..., C] (at least 1-D: a single example is [C])")
  if other_shape is not None and tuple(other_shape) != shape:
    raise ValueError(f"{name}.shape={shape} and {other_name}.shape={tuple(other_shape)} "
                     "differ: both must be the same [..., C] shape (nothing is broadcast)")
  for arg, value in (("labels", labels), ("where", where)):
    if value is not None and np.shape(value) != shape[:-1]:
      fail(f"{arg}.shape", np.shape(value), f"need {shape[:-1]}, the batch shape of "
           f"{name}.shape={shape}")


def mask_rows(where, x: jax.Array, fill) -> jax.Array:
  """`x [..., C]` with the rows excluded by `where [...]` replaced by `fill`."""
  if where is None:
    return x
  return jnp.where(where[..., None], x, fill)


def finish(value: jax.Array, where, *ok) -> jax.Array:
  """The value returned: NaN where any `ok` mask is False, 0 where `where` is False."""
  for mask in ok:
    value = nan_unless(mask, value)
  if where is None:
    return value
  where = where.reshape(where.shape + (1,) * (value.ndim - where.ndim))
  return jnp.where(where, value, 0.0)


def checked_where(where, batch_shape) -> jax.Array | None:
  """`where` as a bool array of the batch shape (None stays None)."""
  if where is None:
    return None
  if np.shape(where) != tuple(batch_shape):
    fail("where.shape", np.shape(where), f"need {tuple(batch_shape)}, the batch shape")
  return jnp.asarray(where).astype(bool)


def _host_rows(where):
  """The rows to check on the host: a NumPy bool mask, or None for all; False when `where` is
  traced (then nothing can be checked eagerly)."""
  if where is None:
    return None
  return np.asarray(where, bool) if is_concrete(where) else False


def checked_labels(labels, num_classes: int, name: str = "labels", where=None):
  """`(labels, valid)`: integer class labels for use, and the traced validity mask.

  Concrete labels (and `where`) are checked on the host (ValueError naming the first bad
  label, its index and the range; rows excluded by `where` are not checked) and `valid` is
  None. Traced labels cannot raise: bad ones are replaced by 0 so every value stays finite,
  and `valid = 0 <= y < C` lets `finish` make their examples NaN.
  """
  if not isinstance(labels, (jax.Array, np.ndarray)):
    labels = np.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name}.dtype={labels.dtype} is not allowed: need integer class indices "
                     f"in [0, {num_classes})")
  rows = _host_rows(where)
  if is_concrete(labels) and rows is not False:
    host = np.asarray(labels)
    bad = (host < 0) | (host >= num_classes)
    if rows is not None:
      bad &= rows
    if bad.any():
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      at = f"[{', '.join(map(str, index))}]" if index else ""
      raise ValueError(
          f"{name}{at}={host[index]} is not allowed: class labels must be in "
          f"[0, {num_classes}) ({int(bad.sum())} of the {bad.size} labels are outside; "
          "-1 is not an 'ignore' label: leave an example out with where=False)")
    valid = None
  else:
    valid = (labels >= 0) & (labels < num_classes)
  labels = jnp.asarray(labels)
  if valid is not None or where is not None:
    labels = jnp.where(both(valid, where), labels, 0)
  return labels, valid


def checked_distribution(name: str, probs, where=None):
  """`(probs, ok)` for an argument that must hold probability rows `[..., C]` (float32).

  A row must be non-negative and sum to 1 within `DISTRIBUTION_TOLERANCE` (the dtype's
  epsilon for 16-bit floats). Concrete: ValueError naming the argument and saying whether it
  looks like logits; `ok` None. Traced: `ok` marks the rows that pass, for `finish`. Rows
  excluded by `where` are replaced by the uniform distribution and not checked.
  """
  dtype = jnp.asarray(probs).dtype
  tolerance = DISTRIBUTION_TOLERANCE
  if jnp.issubdtype(dtype, jnp.floating):
    tolerance = max(tolerance, float(jnp.finfo(dtype).eps))
  rows = _host_rows(where)
  q = jnp.asarray(probs).astype(jnp.float32)
  if is_concrete(probs) and rows is not False:
    _raise_unless_distribution(name, np.asarray(probs, np.float64), rows, tolerance)
    ok = None
  else:
    ok = (jnp.min(q, axis=-1) >= 0) & (jnp.abs(jnp.sum(q, axis=-1) - 1) <= tolerance)
  return mask_rows(where, q, 1.0 / q.shape[-1]), ok


def _raise_unless_distribution(name: str, host: np.ndarray, rows, tolerance: float) -> None:
  checked = np.ones(host.shape[:-1], bool) if rows is None else rows
  values = host[checked]
  if values.size == 0:
    return
  if not np.all(np.isfinite(values)):
    fail(name, f"<array with {int(np.sum(~np.isfinite(values)))} non-finite entries>",
         "need probability rows (entries >= 0 summing to 1)")
  low, high = values.min(), values.max()
  if low < 0 or high > 1 + tolerance:
    raise ValueError(
        f"{name} has entries in [{low:.4g}, {high:.4g}], outside [0, 1]: it looks like "
        "logits, not probabilities; pass jax.nn.softmax(logits / T), or use the function "
        "that takes logits")
  sums = host.sum(axis=-1)
  bad = (np.abs(sums - 1) > tolerance) & checked
  if bad.any():
    index = tuple(int(i) for i in np.argwhere(np.atleast_1d(bad))[0])
    at = f"[{', '.join(map(str, index))}]" if np.ndim(sums) else ""
    raise ValueError(
        f"{name}{at} sums to {np.atleast_1d(sums)[index]:.6g}, not 1 (tolerance "
        f"{tolerance:g}): need probability rows (its entries are in [0, 1], so it does not "
        "look like logits)")
