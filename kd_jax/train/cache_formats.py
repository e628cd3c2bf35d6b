"""How the teacher-output cache stores one teacher row, and the teacher logits a method reads.

A format turns the teacher's float32 logits `z [B, C]` into a few small arrays per example
(`pack`, run on the device right after the teacher's forward pass, so only the packed rows
travel to the host and the disk), and turns those arrays back into the `[B, C]` teacher
logits every method reads (`unpack`, inside the train step, so the device holds the batch's
packed rows only).

  float32  `logits [C]`: the forward's output; `unpack` is exact.
  float16  `logits [C]` rounded to float16 (relative error <= 2^-11 per logit).
  topk     at the temperature `T_s` the method reads its teacher at (`methods.
           teacher_temperature`): the k largest tempered log-probabilities `values [k] =
           z_c / T_s - lse` (float16) with `classes [k]` their classes (the smallest unsigned
           integer type that holds C), the label's `label_value` (float32) and `lse =
           logsumexp(z / T_s)` (float32, so the logits themselves come back: `z_c = T_s
           (value + lse)`). So at `T_s` the probabilities of the k classes and of the label
           are exact (a log-probability near 0 keeps float16's 2^-11 relative precision, a
           large logit would not) and so is the mass of all other classes, `1 - sum of those`.
  sampled  `classes [k]`: k classes drawn with replacement from the teacher's distribution
           at the method's temperature, `q = p(z, T_s)` (sorted; the same integer type). The
           counts give the unbiased estimate `q_hat_c = count_c / k` of `q`
           (Anshumann et al., "Sparse Logit Sampling", ACL 2025: sampling with importance
           weights 1/k from the teacher itself). Draws are a function of (data-order seed,
           epoch, example index): every epoch draws anew (the noise of k draws averages
           over the epochs) and a rerun reads the same ones.

The teacher logits `unpack` gives, and so the target each method trains toward:
  topk     the k classes and the label keep their logits; each of the `m` other classes gets
           the logit `r` with `m exp(r / T_s - lse) = 1 - (their exact mass at T_s)`: the
           remaining mass spread evenly over them at the temperature the method reads, as
           KD-topk spreads it. Every method then reads the teacher's exact probabilities (at
           `T_s`) of the top k and of the label and the exact remaining mass: `kd`, `lr` (beta
           needs max_c q_c and q_y, both exact), `kd_pt` (q_y), `dkd` (the target/non-target
           split q_y vs 1 - q_y is exact; the non-target distribution keeps its top k and
           spreads the rest) and `kd_topk` with the cache's k >= the method's k (the same
           target as the full logits). Read at another temperature (label revision's
           `revision_temperature`), the rest's mass is no longer exact. The rows depend on
           `T_s`: it is part of the cache's key. (Spreading the rest at T = 1 and tempering
           afterwards would give the rest 0.59 of the mass at T = 4 where the full row has
           0.36: k = 5, experiments/results/papers/cache_formats.)
  sampled  `T_s log q_hat` (-inf where a class was never drawn), so `p(., T_s) = q_hat`: a
           method that reads the teacher at `T_s` trains toward the estimate. Its gradient is
           unbiased where the target is linear in q: `kd` (`T (p_s - q_hat)`), `kd_pt`,
           `kd_pt_sim`; for `lr` (beta depends on max q and q_y), `dkd` (renormalised
           non-target distribution) and `kd_topk` the plug-in target is biased.
  At k = C, `topk` gives the full row's logits up to float16 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np

FORMATS = ("float32", "float16", "topk", "sampled")
DENSE_FORMATS = ("float32", "float16")
SPARSE_FORMATS = ("topk", "sampled")


def class_dtype(num_classes: int) -> np.dtype:
  """The smallest unsigned integer type that holds every class index of `num_classes`."""
  for dtype in (np.uint8, np.uint16, np.uint32):
    if num_classes - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  raise ValueError(f"num_classes={num_classes} is too large")


def row_spec(fmt: str, num_classes: int, k: int) -> dict:
  """Field name -> (shape per example, dtype) of a format's stored row."""
  if fmt in DENSE_FORMATS:
    return {"logits": ((num_classes,), np.dtype(fmt))}
  classes = ((k,), class_dtype(num_classes))
  if fmt == "sampled":
    return {"classes": classes}
  if fmt == "topk":
    return {"values": ((k,), np.dtype(np.float16)), "classes": classes,
            "label_value": ((), np.dtype(np.float32)), "lse": ((), np.dtype(np.float32))}
  raise ValueError(f"teacher_cache.format={fmt!r} is not allowed: must be one of {FORMATS}")


def bytes_per_example(fmt: str, num_classes: int, k: int) -> int:
  """Stored bytes of one example's row (before the store's per-chunk overhead)."""
  return sum(int(np.prod(shape)) * dtype.itemsize
             for shape, dtype in row_spec(fmt, num_classes, k).values())


def pack(fmt: str, logits: jax.Array, labels: jax.Array, *, k: int = 0,
         temperature: float = 1.0, keys: jax.Array | None = None) -> dict:
  """The rows of `fmt` for float32 teacher logits `[B, C]` and labels `[B]` (jittable).

  `k`: the kept classes (topk) or draws (sampled). `temperature`: `T_s`, the one the method
  reads its teacher at (the sparse formats). `keys` (one PRNG key per example, `[B]`): the
  draws of `sampled`.
  """
  spec = row_spec(fmt, logits.shape[-1], k)
  logits = logits.astype(jnp.float32)
  if fmt in DENSE_FORMATS:
    return {"logits": logits.astype(spec["logits"][1])}
  if fmt == "sampled":
    draw = lambda key, z: jax.random.categorical(key, z / temperature, shape=(k,))
    classes = jnp.sort(jax.vmap(draw)(keys, logits), axis=-1)
    return {"classes": classes.astype(spec["classes"][1])}
  lse = jax.nn.logsumexp(logits / temperature, axis=-1)
  log_probs = logits / temperature - lse[:, None]
  values, classes = jax.lax.top_k(log_probs, k)
  return {"values": values.astype(jnp.float16), "classes": classes.astype(spec["classes"][1]),
          "label_value": jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0],
          "lse": lse}


def unpack(fmt: str, rows: dict, labels: jax.Array, num_classes: int, *,
           temperature: float = 1.0) -> jax.Array:
  """float32 teacher logits `[B, C]` from the rows of `fmt` (see the module docstring).

  `temperature` is `T_s`, the one the sparse rows were written at (`pack`).
  """
  if fmt in DENSE_FORMATS:
    return rows["logits"].astype(jnp.float32)
  classes = rows["classes"].astype(jnp.int32)
  batch = jnp.arange(classes.shape[0])[:, None]
  if fmt == "sampled":
    k = classes.shape[-1]
    counts = jnp.zeros((classes.shape[0], num_classes), jnp.float32).at[batch, classes].add(1.0)
    return jnp.where(counts > 0, temperature * jnp.log(counts / k), -jnp.inf)
  values = rows["values"].astype(jnp.float32)
  kept = jnp.zeros((classes.shape[0], num_classes), bool).at[batch, classes].set(True)
  label_kept = jnp.take_along_axis(kept, labels[:, None], axis=-1)[:, 0]
  is_label = jax.nn.one_hot(labels, num_classes, dtype=bool)
  label_value = rows["label_value"].astype(jnp.float32)
  # The exact mass of the k classes and of the label (when it is not among them).
  kept_mass = (jnp.sum(jnp.exp(values), axis=-1)
               + jnp.where(label_kept, 0.0, jnp.exp(label_value)))
  num_rest = num_classes - jnp.sum(kept | is_label, axis=-1)
  # float16 rounding can push the kept mass a hair above 1: then no mass is left.
  rest_mass = jnp.maximum(1.0 - kept_mass, 0.0)
  rest_value = jnp.where((rest_mass > 0) & (num_rest > 0),
                         jnp.log(rest_mass) - jnp.log(jnp.maximum(num_rest, 1)), -jnp.inf)
  dense = jnp.broadcast_to(rest_value[:, None], (classes.shape[0], num_classes))
  dense = jnp.where(is_label, label_value[:, None], dense).at[batch, classes].set(values)
  return temperature * (dense + rows["lse"].astype(jnp.float32)[:, None])
