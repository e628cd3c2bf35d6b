r"""Accuracy (and CPU speed) of bfloat16 compute and of the teacher-output cache's formats.

  PYTHONPATH=. python experiments/bench/precision_cache.py [--config=configs/mnist1d.py]
      [--seeds=0,1,2] [--epochs=20] [--workdir=/tmp/exp/perf]
      [--out=experiments/results/bench/precision_cache]

Per seed, alternating the compared cases so machine load hits them alike:
  1. `compute_dtype` float32 and bfloat16: the config's teacher -> student pipeline each
     (teacher and student both in that dtype). Reported: test accuracy of teacher and
     student (mean +- std over seeds) and the training images/s of each (compilation and
     evaluation excluded: the trainer's own `images_per_second`).
  2. The float32 pipeline's student again, its teacher read from `teacher_cache` in
     format float32 and float16 (`--config.teacher.checkpoint` = the float32 teacher).
     Reported: whether the float32-cache student equals the live one bit for bit (summary
     without timings), the float16-cache student's test accuracy and loss against the live
     one, and the teacher's rounding itself: max |logit error| and the max total-variation
     distance of p(z_t, T) at the student's temperature between the float16 and float32
     tables.
  3. Speed of the trainer's own step (`kd_jax.train.step.train_step`, placed as the loop
     places it) per compute dtype on the config's shapes, in alternating rounds of
     --speed-steps steps: the teacher stage's step (its model, CE) and the student stage's
     (KD, teacher forward included). The runs' own images/s (1.) share the machine with
     everything else running, so this is the ratio to read.
Writes results.json and results.md under --out; `--speed-only` runs 3. alone.
"""

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from kd_jax import config_defaults, methods, models, pipeline
from kd_jax.train import parallel, row_store
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib

TIMING = ("train_seconds", "images_per_second", "seconds")


def comparable(summary):
  out = {}
  for key, value in summary.items():
    if key in ("fingerprint", "teacher_cache") or key in TIMING or key == "teacher":
      continue
    out[key] = comparable(value) if isinstance(value, dict) else value
  return out


def load_config(path, seed, epochs, **fields):
  module = os.path.splitext(os.path.relpath(path))[0].replace(os.sep, ".")
  config = importlib.import_module(module).get_config()
  config.seed, config.num_epochs = seed, epochs
  return config_defaults.set_fields(
      config, {k.replace("__", "."): v for k, v in fields.items()})


def mean_std(values):
  return f"{np.mean(values):.4f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"


def table_stats(cache_dir, temperature):
  """Max |logit error| and max TV distance of p(z/T) between the float16 and float32 tables
  of one teacher (the newest key of each format in `cache_dir`)."""
  tables = {}
  for key in os.listdir(cache_dir):
    with open(os.path.join(cache_dir, key, "key.json")) as f:
      fields = json.load(f)
    table = row_store.Table.open(os.path.join(cache_dir, key, "views"), {},
                                 fields["num_examples"])
    rows = table.rows(np.sort(table.index()))["logits"]
    tables[fields["format"]] = rows.astype(np.float64)
  exact, rounded = tables["float32"], tables["float16"]

  def probs(z):
    z = z / temperature
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  tv = 0.5 * np.abs(probs(exact) - probs(rounded)).sum(1)
  return dict(max_abs_logit_error=float(np.abs(exact - rounded).max()),
              max_abs_logit=float(np.abs(exact).max()), max_tv_distance=float(tv.max()),
              mean_tv_distance=float(tv.mean()))


def step_speed(config, input_shape, num_classes, steps, rounds):
  """Median images/s of the trainer's step per (stage, compute dtype), alternating rounds."""
  mesh = parallel.make_mesh()
  replicated = parallel.replicated(mesh)
  rng = np.random.default_rng(0)
  batch = config.batch_size
  batch = parallel.shard_batch(dict(
      image=rng.normal(size=(batch, *input_shape)).astype(np.float32),
      label=rng.integers(0, num_classes, batch).astype(np.int32),
      index=np.arange(batch, dtype=np.int32), mask=np.ones(batch, bool)), mesh)
  optim = config.optim.copy_and_resolve_references()
  optim.num_epochs = 10
  tx, _ = state_lib.make_optimizer(optim, steps_per_epoch=100)
  cases = {}
  for stage in ("teacher", "student"):
    block = config[stage]
    for dtype in ("float32", "bfloat16"):
      model = models.create(block.model, num_classes, dtype=state_lib.COMPUTE_DTYPES[dtype])
      teacher_fn = teacher_vars = None
      if methods.needs_teacher(block.method.name):
        teacher = models.create(config.teacher.model, num_classes,
                                dtype=state_lib.COMPUTE_DTYPES[dtype])
        teacher_fn = state_lib.teacher_forward(teacher)
        teacher_vars = state_lib.init_variables(teacher, jax.random.PRNGKey(1), input_shape)
      state = parallel.replicate(state_lib.create_train_state(
          model, tx, jax.random.PRNGKey(0), input_shape, teacher_fn=teacher_fn,
          teacher_variables=teacher_vars), mesh)
      jitted = jax.jit(functools.partial(step_lib.train_step, method=block.method,
                                         steps_per_epoch=100),
                       donate_argnums=0, out_shardings=(replicated, replicated))
      state, _ = jitted(state, batch)  # compile
      jax.block_until_ready(state)
      cases[(stage, dtype)] = [jitted, state, []]
  for _ in range(rounds):
    for case in cases.values():
      jitted, state, rates = case
      tick = time.perf_counter()
      for _ in range(steps):
        state, metrics = jitted(state, batch)
      jax.block_until_ready((state, metrics))
      rates.append(steps * config.batch_size / (time.perf_counter() - tick))
      case[1] = state
  return {f"{stage} {dtype}": dict(median=statistics.median(rates), rounds=rates)
          for (stage, dtype), (_, _, rates) in cases.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mnist1d.py")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--workdir", default="/tmp/exp/perf")
  parser.add_argument("--out", default="experiments/results/bench/precision_cache")
  parser.add_argument("--speed-steps", type=int, default=50)
  parser.add_argument("--speed-rounds", type=int, default=5)
  parser.add_argument("--speed-only", action="store_true")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.out, exist_ok=True)
  base = load_config(args.config, 0, 1)
  info = pipeline.prepare(base).info
  speed = step_speed(base, tuple(info.input_shape), info.num_classes, args.speed_steps,
                     args.speed_rounds)
  speed_lines = [(f"\nTrainer step images/s (batch {base.batch_size}, {jax.device_count()} "
                  f"{jax.default_backend()} device(s), median of {args.speed_rounds} "
                  f"alternating rounds of {args.speed_steps} steps):"), "",
                 "| stage | float32 | bfloat16 | bfloat16 / float32 |", "|---|---|---|---|"]
  for stage in ("teacher", "student"):
    f32, b16 = speed[f"{stage} float32"]["median"], speed[f"{stage} bfloat16"]["median"]
    speed_lines.append(f"| {stage} ({base[stage].model}, {base[stage].method.name}) | "
                       f"{f32:.0f} | {b16:.0f} | {b16 / f32:.2f} |")
  print("\n".join(speed_lines))
  if args.speed_only:
    return
  runs = {}
  for seed in seeds:
    for dtype in ("float32", "bfloat16"):  # alternating: same load on both
      config = load_config(args.config, seed, args.epochs, compute_dtype=dtype)
      runs[(dtype, seed)] = pipeline.run(config, os.path.join(args.workdir, f"{dtype}_s{seed}"))
    teacher_dir = os.path.join(args.workdir, f"float32_s{seed}", "teacher")
    for fmt in ("float32", "float16"):
      config = load_config(args.config, seed, args.epochs, stages="student",
                           teacher__checkpoint=teacher_dir,
                           teacher_cache__dir=os.path.join(args.workdir, f"cache_s{seed}"),
                           teacher_cache__format=fmt)
      runs[(f"cache_{fmt}", seed)] = pipeline.run(
          config, os.path.join(args.workdir, f"cache_{fmt}_s{seed}"))

  temperature = load_config(args.config, 0, 1).student.method.temperature
  result = dict(config=args.config, seeds=seeds, epochs=args.epochs, rows={}, cache={},
                step_speed=speed)
  for case in ("float32", "bfloat16"):
    for role in ("teacher", "student"):
      acc = [runs[(case, s)][role]["test_accuracy"] for s in seeds]
      ips = [runs[(case, s)][role]["images_per_second"] for s in seeds]
      result["rows"][f"{case} {role}"] = dict(test_accuracy=acc, images_per_second=ips)
  for role in ("teacher", "student"):
    result["rows"][f"bf16/fp32 speed {role}"] = [
        runs[("bfloat16", s)][role]["images_per_second"]
        / runs[("float32", s)][role]["images_per_second"] for s in seeds]
  for seed in seeds:
    live = runs[("float32", seed)]["student"]
    c32, c16 = runs[("cache_float32", seed)]["student"], runs[("cache_float16", seed)]["student"]
    result["cache"][seed] = dict(
        float32_bit_identical=comparable(c32) == comparable(live),
        float32_same_fingerprint=c32["fingerprint"] == live["fingerprint"],
        live=dict(test_accuracy=live["test_accuracy"], test_loss=live["test_loss"]),
        float16=dict(test_accuracy=c16["test_accuracy"], test_loss=c16["test_loss"]),
        **table_stats(os.path.join(args.workdir, f"cache_s{seed}"), temperature))
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)

  lines = [f"`{args.config}`, {args.epochs} epochs (the config has 60), seeds {seeds}, CPU.",
           "", ("The runs' own images/s share a loaded machine with other work: read the "
                "step table at the end for speed."), "",
           "| case | test accuracy (mean +- std) | per seed | train images/s per seed |",
           "|---|---|---|---|"]
  for name, row in result["rows"].items():
    if isinstance(row, dict):
      lines.append(f"| {name} | {mean_std(row['test_accuracy'])} | "
                   f"{', '.join(f'{a:.4f}' for a in row['test_accuracy'])} | "
                   f"{', '.join(f'{v:.0f}' for v in row['images_per_second'])} |")
  for role in ("teacher", "student"):
    ratios = result["rows"][f"bf16/fp32 speed {role}"]
    lines.append(f"\nbfloat16 / float32 images/s, {role}: "
                 f"{', '.join(f'{r:.2f}' for r in ratios)} (median {np.median(ratios):.2f})")
  lines += ["", "Teacher cache (student of the float32 pipeline, teacher from the cache):", "",
            ("| seed | float32 cache == live | live acc / loss | float16 cache acc / loss | "
             "max abs logit err (max abs logit) | max / mean TV of p(z_t/T) |"),
            "|---|---|---|---|---|---|"]
  for seed, c in result["cache"].items():
    lines.append(
        f"| {seed} | {c['float32_bit_identical']} (fingerprint "
        f"{'same' if c['float32_same_fingerprint'] else 'differs'}) | "
        f"{c['live']['test_accuracy']:.4f} / {c['live']['test_loss']:.4f} | "
        f"{c['float16']['test_accuracy']:.4f} / {c['float16']['test_loss']:.4f} | "
        f"{c['max_abs_logit_error']:.2e} ({c['max_abs_logit']:.1f}) | "
        f"{c['max_tv_distance']:.1e} / {c['mean_tv_distance']:.1e} |")
  live_acc = [c["live"]["test_accuracy"] for c in result["cache"].values()]
  half_acc = [c["float16"]["test_accuracy"] for c in result["cache"].values()]
  diff = np.subtract(half_acc, live_acc)
  lines += ["", (f"Student test accuracy, live teacher {mean_std(live_acc)}, float16 cache "
                 f"{mean_std(half_acc)}; paired difference {mean_std(diff)}.")]
  text = "\n".join(lines + speed_lines) + "\n"
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
