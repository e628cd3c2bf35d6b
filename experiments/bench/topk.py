"""Benchmark: the three ways kd_jax selects a row's top k (TSD, KD-topk), side by side.

  PYTHONPATH=. python experiments/bench/topk.py [--cases 100:6,300:6,1000:6,...]
      [--batch 1024] [--rounds 5] [--block-s 0.1] [--device auto|cpu|gpu] [--threads N]
      [--quick]

For each (C, k), on teacher-like probabilities `softmax(2 N(0, 1) + 6 e_y)` of shape
`[B, C]`, times jitted functions that return the k largest values and whether the fast
path's check passed:

  top_k    `jax.lax.top_k` (XLA's TopK; on CPU a custom call, about 1 us per row)
  rounds   k rounds of "largest value below the last" over the whole row, then the count
           (`_loss_kernels._top_values_by_rounds`)
  columns  the two-level selection (`_loss_kernels._top_values_by_columns`: column maxima,
           rounds on them, one gather of the k winning columns, rounds on those)

and reports which one `top_k_sets` picks for that size (`_selection_path`). Every path's values must equal
lax.top_k's and each fast check must pass on these rows (exit status 1 otherwise). Rounds
alternate between the paths; reported: the median time per call and the median of the
per-round ratios top_k / path.
"""

import argparse

import common
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import _loss_kernels as kernels

DEFAULT_CASES = "100:6,200:6,300:6,500:6,1000:2,1000:6,1000:10,2000:6"


def paths(num_classes: int, k: int) -> dict:
  """Jitted `x -> (values [B, k], check passed)` of each selection path."""
  def top_k(x):
    return jax.lax.top_k(x, k)[0], jnp.bool_(True)

  def rounds(x):
    values, clean = kernels._top_values_by_rounds(x, k)
    return jnp.stack(values, -1), clean

  found = {"top_k": top_k, "rounds": rounds}
  height = kernels._column_height(num_classes, k)
  if height is not None:
    def columns(x):
      values, clean = kernels._top_values_by_columns(x, k, height)
      return jnp.stack(values, -1), clean
    found["columns"] = columns
  return {name: jax.jit(fn) for name, fn in found.items()}


def teacher_probs(batch: int, num_classes: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng([seed, batch, num_classes])
  logits = 2.0 * rng.normal(size=(batch, num_classes))
  logits[np.arange(batch), rng.integers(0, num_classes, batch)] += 6.0
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)))


def run_case(num_classes: int, k: int, args) -> dict:
  x = jax.device_put(teacher_probs(args.batch, num_classes))
  fns = paths(num_classes, k)
  reference = np.asarray(jax.lax.top_k(x, k)[0])
  agree, clean = {}, {}
  for name, fn in fns.items():
    values, passed = jax.block_until_ready(fn(x))
    agree[name] = bool(np.array_equal(np.asarray(values), reference))
    clean[name] = bool(passed)

  blocks = {name: common.per_call_us(lambda fn=fn: jax.block_until_ready(fn(x)), args.block_s)[0]
            for name, fn in fns.items()}
  rounds = common.alternate(blocks, args.rounds)
  record = dict(kind="topk", C=num_classes, k=k, B=args.batch,
                chosen=kernels._selection_path(args.batch, num_classes, k), agree=agree,
                check_passed=clean)
  for name, times in rounds.items():
    record[f"{name}_us"] = round(common.median(times), 1)
    record[f"speedup_{name}"] = round(
        common.median([t / s for t, s in zip(rounds["top_k"], times)]), 2)
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated C:k pairs")
  parser.add_argument("--batch", type=int, default=1024)
  common.add_timing_args(parser, rounds=5, block_s=0.1)
  args = parser.parse_args(argv)
  if args.quick:
    args.cases, args.batch, args.rounds, args.block_s = "60:4,500:6", 16, 2, 0.002

  backend, _, threads = common.start(args)
  records = []
  for case in args.cases.split(","):
    num_classes, k = (int(v) for v in case.split(":"))
    record = run_case(num_classes, k, args)
    common.emit(record)
    records.append(record)

  def cell(r, name):
    if f"{name}_us" not in r:
      return "-"
    return f"{r[f'{name}_us']} ({r[f'speedup_{name}']:.2f}x)"

  print()
  print(f"top-k selection at B = {args.batch} on {backend}, {threads} threads; median us per "
        f"call over {args.rounds} alternating rounds (speedup over lax.top_k)")
  print(common.markdown_table(
      ["C", "k", "lax.top_k us", "rounds us", "columns us", "top_k_sets takes"],
      [[r["C"], r["k"], r["top_k_us"], cell(r, "rounds"), cell(r, "columns"), r["chosen"]]
       for r in records]))
  failed = [f"C={r['C']} k={r['k']} {name}" for r in records for name in r["agree"]
            if not (r["agree"][name] and r["check_passed"][name])]
  return common.exit_status(
      failed, "FAILED (values differ from lax.top_k or the check refused)",
      f"all {len(records)} cases: every path equals lax.top_k and its check passed")


if __name__ == "__main__":
  raise SystemExit(main())
