"""Shared by the experiment scripts that train many small runs in one process (tang, lan, yang).

Each run is the real trainer (`kd_jax.pipeline.prepare` + `kd_jax.pipeline.run`) in its own
workdir, so a finished run is skipped and a killed one resumes, exactly as with the CLI.
"""

import argparse
import contextlib
import json
import os
import shlex
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # this checkout's kd_jax and configs, not an installed copy

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import synthetic  # pylint: disable=g-import-not-at-top
from kd_jax import cpu_flags, models, pipeline  # pylint: disable=g-import-not-at-top
from kd_jax.train import evaluate, parallel  # pylint: disable=g-import-not-at-top

# The trainer's XLA:CPU flags, as `python -m kd_jax.main` sets them (read when JAX starts its
# backend, which no import above does).
cpu_flags.use_cpu_xla_flags()


def speed_up_in_process_runs(cache_dir):
  """Two costs that dominate ~100s of small runs in one process and change no result:
  XLA compilation (every run jits its train and eval steps anew; the persistent compilation
  cache serves identical programs, i.e. the same method and shapes, from disk), and the
  per-run curves.png that `pipeline.run` draws with matplotlib (~1 s a run here; the metrics
  it would plot stay in each run's metrics.jsonl)."""
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  pipeline.plots.plot_curves = lambda directory, title: None


def run_args(doc):
  """A parser with the flags every in-process paper script takes (--out, --workdir, --seeds,
  --report_only); the script adds its own."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--out", required=True, help="results folder")
  p.add_argument("--workdir", default="", help="runs folder (default OUT/runs)")
  p.add_argument("--seeds", default="0,1,2", type=lambda text: [int(s) for s in text.split(",")],
                 help="comma-separated run seeds")
  p.add_argument("--report_only", action="store_true",
                 help="rewrite OUT/results.md from OUT/results.json, train nothing")
  return p


def start(name, args):
  """Sets up experiments/papers/NAME.py's invocation: OUT and the runs' folder (OUT/runs unless
  --workdir), the compilation cache, a Runner logging there; -> (workdir, runner, the command
  line that reproduces this invocation)."""
  os.makedirs(args.out, exist_ok=True)
  workdir = args.workdir or os.path.join(args.out, "runs")
  os.makedirs(workdir, exist_ok=True)
  speed_up_in_process_runs(os.path.join(workdir, "jax_cache"))
  runner = Runner(os.path.join(workdir, "train.log"))
  command = shlex.join(["python", f"experiments/papers/{name}.py", *sys.argv[1:]])
  print(f"{name}: {command}; runs in {workdir}, trainer output in {runner.log_path}", flush=True)
  return workdir, runner, command


def append_timing(out, entry):
  """Appends this invocation's entry to OUT/timing.json; -> every invocation's entry (a rerun
  that skips finished runs keeps the run time of the invocation that trained them)."""
  path = os.path.join(out, "timing.json")
  timing = []
  if os.path.exists(path):
    with open(path) as f:
      timing = json.load(f)
  timing.append(entry)
  with open(path, "w") as f:
    json.dump(timing, f, indent=1)
  return timing


class Runner:
  """Runs configs in-process with pipeline.prepare + pipeline.run; logs, times, counts."""

  def __init__(self, log_path):
    self.log_path = log_path
    self.trained = self.skipped = 0
    self.mesh = parallel.make_mesh()
    self.started = time.time()

  def record_time(self, out, **extra):
    """Appends this invocation's wall time and run counts (and `extra`) to OUT/timing.json;
    -> every invocation's entry (see `append_timing`)."""
    return append_timing(out, dict(
        started=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started)) + " UTC",
        wall_seconds=round(time.time() - self.started, 1), runs_trained=self.trained,
        runs_skipped=self.skipped, **extra))

  def run(self, config, workdir):
    """-> (summary dict, seconds, the prepared data)."""
    done = os.path.exists(os.path.join(workdir, "summary.json"))
    start = time.time()
    with open(self.log_path, "a") as log, contextlib.redirect_stdout(log):
      print(f"=== {workdir}", flush=True)
      data = pipeline.prepare(config)
      summary = pipeline.run(config, workdir, data=data)
    self.skipped += done
    self.trained += not done
    return summary, time.time() - start, data


def softmax(z):
  """Row softmax in float64 (NumPy), for statistics of saved logits."""
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def logits_on(model_name, variables, source, mesh):
  """(logits [N, C], labels [N]) of a model on every example of a data source, in order."""
  model = models.create(model_name, source.info.num_classes)
  out = evaluate.predict(evaluate.make_eval_fn(model), variables,
                         evaluate.eval_loader(source, 1024), mesh)
  return out["logits"], out["label"]


def add_synthetic_args(parser, **defaults):
  """The synthetic data's and the training run's flags that tang/lan share; `defaults`
  overrides per script (e.g. noise=2.2, train=11_000)."""
  values = dict(classes=50, superclasses=10, dim=64, noise=2.5, train=21_000, test=20_000,
                holdout=1_000, batch=128, lr=0.05, epochs=12) | defaults
  helps = dict(train="train split (holdout included)", epochs="student epochs")
  for name, value in values.items():
    parser.add_argument(f"--{name}", type=type(value), default=value, help=helps.get(name))


def synthetic_config(args, name, seed, correlation):
  """configs/synthetic.py at the flags of `add_synthetic_args`: the data fixed across seeds
  (`dataset.seed`, holdout and its seed), `seed` for init and data order, cosine schedule,
  test once at the end (validation every epoch picks the best checkpoint), one checkpoint."""
  c = synthetic.get_config()
  c.name = name
  c.seed = seed
  c.dataset.seed = 0
  c.dataset.holdout = args.holdout
  c.dataset.holdout_seed = 0
  c.dataset.options = dict(num_classes=args.classes, num_superclasses=args.superclasses,
                           correlation=float(correlation), dim=args.dim, noise=args.noise,
                           separation=1.0, num_train=args.train, num_test=args.test)
  c.batch_size = args.batch
  c.num_epochs = args.epochs
  c.optim.learning_rate = args.lr
  c.optim.schedule = "cosine"
  c.eval_test_every_epochs = 0
  c.log_every_steps = 10_000
  c.checkpoint.every_steps = 0
  c.checkpoint.keep = 1
  return c


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
