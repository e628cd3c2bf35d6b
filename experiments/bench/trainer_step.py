r"""The trainer's own jitted KD step, this tree against another checkout, side by side.

Each round runs one subprocess per tree (alternating, first one tree then the other first,
so both see the same machine load and neither always runs second);
each builds its trainer's train step exactly as its loop does (replicated state on a mesh,
sharded batch, donation), compiles it, and times `--steps` steps. Prints one JSON line per
(tree, round) and the median images/s and ratio:

  git worktree add /tmp/kd_jax_before <commit>
  python experiments/bench/trainer_step.py --baseline=/tmp/kd_jax_before [--pair=resnet20:resnet8]

A tree is recognised by its API: `kd_jax.train.step.make_train_step` (earlier trainers: a
seven-argument step with accumulators) or `kd_jax.train.step.train_step`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(teacher_name: str, student_name: str, batch_size: int, steps: int) -> dict:
  """images/s of this process's kd_jax trainer step (KD, T = 4, SGD), CIFAR-shaped data."""
  import functools  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from kd_jax import methods, models  # pylint: disable=g-import-not-at-top
  from kd_jax.train import parallel  # pylint: disable=g-import-not-at-top
  from kd_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from kd_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  shape, classes = (32, 32, 3), 100
  mesh = parallel.make_mesh()
  student, teacher = models.create(student_name, classes), models.create(teacher_name, classes)
  optim = __import__("ml_collections").ConfigDict(dict(
      name="sgd", learning_rate=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
      schedule="cosine", lr_decay_epochs=(), lr_decay_factor=0.1, warmup_epochs=0.0,
      num_epochs=10))
  tx, _ = state_lib.make_optimizer(optim, steps_per_epoch=100)
  method = methods.default_config()
  teacher_vars = state_lib.init_variables(teacher, jax.random.PRNGKey(1), shape)
  rng = np.random.default_rng(0)
  batch = dict(image=rng.normal(size=(batch_size, *shape)).astype(np.float32),
               label=rng.integers(0, classes, batch_size).astype(np.int32),
               index=np.arange(batch_size, dtype=np.int32), mask=np.ones(batch_size, bool))
  replicated = parallel.replicated(mesh)
  if hasattr(step_lib, "make_train_step"):  # an earlier trainer's API (see the docstring)
    state = state_lib.create_train_state(student, tx, jax.random.PRNGKey(0), shape)
    accum = step_lib.init_accumulators(step_lib.metric_keys(method, classes))
    state, accum, teacher_vars, key = parallel.replicate(
        (state, accum, teacher_vars, jax.random.PRNGKey(2)), mesh)
    jitted = jax.jit(step_lib.make_train_step(student, method, 100,
                                              step_lib.teacher_forward(teacher)),
                     donate_argnums=(0, 1), out_shardings=(replicated, replicated))

    def run(carry, sharded):
      return jitted(*carry, sharded, teacher_vars, None, None, key)
    carry = (state, accum)
  else:
    state = state_lib.create_train_state(
        student, tx, jax.random.PRNGKey(0), shape,
        teacher_fn=state_lib.teacher_forward(teacher), teacher_variables=teacher_vars)
    state = parallel.replicate(state, mesh)
    jitted = jax.jit(functools.partial(step_lib.train_step, method=method, steps_per_epoch=100),
                     donate_argnums=0, out_shardings=(replicated, replicated))

    def run(carry, sharded):
      return jitted(carry[0], sharded)
    carry = (state,)
  sharded = parallel.shard_batch(batch, mesh)
  tick = time.time()
  carry = run(carry, sharded)
  jax.block_until_ready(carry)
  compile_seconds = time.time() - tick
  tick = time.time()
  for _ in range(steps):
    out = run(carry, sharded)
    carry = out if not hasattr(step_lib, "train_step") else (out[0],)
  jax.block_until_ready(carry)
  seconds = time.time() - tick
  return dict(images_per_second=steps * batch_size / seconds, first_step_seconds=compile_seconds,
              compilations=jitted._cache_size())  # pylint: disable=protected-access


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--baseline", required=True, help="checkout of the other kd_jax tree")
  parser.add_argument("--pair", default="resnet20:resnet8", help="teacher:student")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  teacher, student = args.pair.split(":")
  if args.child:
    print(json.dumps(measure(teacher, student, args.batch, args.steps)))
    return
  trees = {"baseline": os.path.abspath(args.baseline), "this": REPO}
  rates = {name: [] for name in trees}
  for round_index in range(args.rounds):
    order = list(trees.items())
    for name, tree in order if round_index % 2 == 0 else order[::-1]:  # no order bias
      env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS",
                                                                             "cpu"))
      out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child=1",
                            f"--baseline={args.baseline}", f"--pair={args.pair}",
                            f"--batch={args.batch}", f"--steps={args.steps}"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True)
      result = json.loads(out.stdout.strip().splitlines()[-1])
      rates[name].append(result["images_per_second"])
      print(json.dumps(dict(tree=name, path=tree, round=round_index, pair=args.pair,
                            batch=args.batch, **result)), flush=True)
  medians = {name: statistics.median(values) for name, values in rates.items()}
  per_round = statistics.median(t / b for t, b in zip(rates["this"], rates["baseline"]))
  print(f"median images/s: baseline {medians['baseline']:.1f}, this {medians['this']:.1f}, "
        f"ratio of medians {medians['this'] / medians['baseline']:.3f}, median of per-round "
        f"ratios {per_round:.3f} ({args.rounds} alternating rounds of {args.steps} steps, "
        f"{args.pair}, batch {args.batch})")


if __name__ == "__main__":
  main()
