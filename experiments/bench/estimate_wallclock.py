r"""Paper-scale wall-clock ESTIMATES from XLA's FLOP count of the real KD step (no accelerator).

  python experiments/bench/estimate_wallclock.py --out=experiments/results/bench/wallclock_estimate

For every teacher -> student pair of experiments/PAPER_SCALE.md, the KD train step of
experiments/bench/step.py (teacher forward, student forward + backward, SGD update) is traced
and lowered at the protocol's input size and global batch, without running it, and XLA's cost
analysis counts its FLOPs. Then, per device,

    estimate = total steps x FLOPs per step / (utilisation x the device's dense bf16 peak)

with utilisation 0.4 (the project's target for a large batch on a GPU; `--utilisation`). This is
an estimate of a compute-bound step, NOT a measurement: no GPU or TPU step has been timed for
these models (`python experiments/bench/step.py --device gpu` does that where one exists).
At CIFAR's batch 64 the step does well under a TFLOP, so per-step overheads (kernel launches,
host round trips, input pipeline) that nobody has measured here are likely to dominate: read
the CIFAR figures as lower bounds. DS adds one scoring pass over the training split (a
forward pass and a last-layer solve; not counted). Writes OUT/results.md and OUT/results.json.
"""

import argparse
import functools
import json
import os
import shlex
import sys

import jax
import jax.numpy as jnp
import step as bench_step

from kd_jax import methods, models

# Dense bf16 peak FLOP/s from the vendors' data sheets (no sparsity).
DEVICES = {
    "1x A100 (312 TFLOP/s)": 312e12,
    "1x H200 (989 TFLOP/s)": 989e12,
    "TPU v4-8 (4 chips x 275 TFLOP/s)": 4 * 275e12,
}
# (teacher, student, input shape, classes, global batch, KD temperature, steps per run):
# steps = epochs x floor(training images / batch), as PAPER_SCALE.md's protocols.
CIFAR, IMAGENET = ((32, 32, 3), 100, 64, 4.0), ((224, 224, 3), 1000, 512, 1.0)
PAIRS = (
    ("resnet32x4", "resnet8x4", *CIFAR, 240 * (50_000 // 64)),
    ("wrn_40_2", "wrn_16_2", *CIFAR, 240 * (50_000 // 64)),
    ("resnet56", "resnet20", *CIFAR, 240 * (50_000 // 64)),
    ("vgg13", "vgg8", *CIFAR, 240 * (50_000 // 64)),
    ("resnet32x4", "ShuffleV2", *CIFAR, 240 * (50_000 // 64)),
    ("ResNet34", "ResNet18", *IMAGENET, 100 * (1_271_167 // 512)),
    ("ResNet50", "MobileNetV1", *IMAGENET, 100 * (1_271_167 // 512)),
)


def step_flops(teacher_name, student_name, input_shape, num_classes, batch, temperature):
  """XLA's FLOP count of one KD train step (lowered on abstract shapes, never run)."""
  teacher = models.create(teacher_name, num_classes)
  student = models.create(student_name, num_classes)
  example = jnp.zeros((1, *input_shape))
  init = lambda model: jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), example, train=False))
  teacher_vars, student_vars = init(teacher), init(student)
  config = methods.default_config()
  config.name, config.temperature = "kd", temperature
  methods.validate(config, num_classes)
  tx = bench_step.sgd()
  state = dict(params=student_vars["params"], batch_stats=student_vars["batch_stats"],
               opt_state=jax.eval_shape(tx.init, student_vars["params"]))
  step = jax.jit(bench_step.make_jax_step(
      functools.partial(bench_step.live_teacher, teacher), student, tx, config))
  vector = jax.ShapeDtypeStruct((batch,), jnp.int32)
  lowered = step.lower(state, teacher_vars, jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32),
                       vector, vector)
  return float(lowered.cost_analysis()["flops"])


def hours(seconds):
  if seconds >= 3600:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--utilisation", type=float, default=0.4)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for teacher, student, shape, classes, batch, temperature, steps in PAIRS:
    flops = step_flops(teacher, student, shape, classes, batch, temperature)
    seconds = {name: steps * flops / (args.utilisation * peak) for name, peak in DEVICES.items()}
    rows.append(dict(pair=f"{teacher} -> {student}", batch=batch, steps=steps,
                     flops_per_step=flops, estimate_seconds=seconds))
    print(f"{teacher} -> {student}: {flops / 1e9:.1f} GFLOP/step", flush=True)
  command = shlex.join(["python", "experiments/bench/estimate_wallclock.py", *sys.argv[1:]])
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(dict(command=command, utilisation=args.utilisation, devices=DEVICES, rows=rows),
              f, indent=1)
  lines = [f"Reproduce: `{command}` (jax {jax.__version__}; lowers each step, runs nothing).", "",
           (f"ESTIMATES, not measurements: total steps x XLA FLOPs per KD step / "
            f"({args.utilisation:g} x dense bf16 peak). CIFAR rows are lower bounds (batch 64 "
            "steps are unlikely to be compute-bound)."), "",
           "| pair | global batch | steps | GFLOP/step (XLA) | "
           + " | ".join(DEVICES) + " |", "|---|---|---|---|" + "---|" * len(DEVICES)]
  for row in rows:
    lines.append(f"| {row['pair']} | {row['batch']} | {row['steps']:,} | "
                 f"{row['flops_per_step'] / 1e9:,.1f} | "
                 + " | ".join(hours(s) for s in row["estimate_seconds"].values()) + " |")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
