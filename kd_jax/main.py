r"""Command line: run the stages a config asks for (kd_jax.pipeline).

  python -m kd_jax.main --config=configs/cifar100.py --workdir=/tmp/kd \
      [--config.student.method.name=dkd --config.seed=1 ...]
  python -m kd_jax.main --config=configs/mnist1d.py:lr_ds --workdir=...   # a config variant

Multi-host: start one process per host with --config.distributed.num_processes=N
--config.distributed.process_id=i --config.distributed.coordinator_address=HOST:PORT.

Exit codes:
  0  done (or already finished: nothing retrained)
  1  an unexpected error (a bug: please report the traceback)
  2  bad input, reported in one line before any training: an unknown or misspelled config
     field, a config file that is missing or does not load, a bad value, a model that does
     not fit the data, a teacher checkpoint that is unfinished, of other data or not finite,
     a workdir of another configuration, of another kind of pipeline or in use by another
     process; and a write that fails (read-only, disk full, file too large: the path and the
     cause), or a teacher whose logits are not finite, at any time
  3  the loss or the weights became NaN/inf; the last good checkpoint is kept
"""

import contextlib
import sys

from kd_jax._extras import requires

with requires("train", "python -m kd_jax.main"):
  from absl import app, flags, logging
  from ml_collections import config_flags

  from kd_jax import cpu_flags, pipeline
  from kd_jax.train import loop, parallel, workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file (configs/*.py), optionally "
    "followed by ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary.")
flags.mark_flags_as_required(["config", "workdir"])
EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3


def fail(message: str, code: int = EXIT_BAD_INPUT):
  print(f"kd_jax: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet = not flags.FLAGS["verbosity"].present
  if quiet:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    config = _CONFIG.value
    dist = config.distributed
  except Exception as error:  # ml_collections defers a config file's load errors to here
    fail(f"invalid --config: {' '.join(str(error).split())[:500]}")
  cpu_flags.use_cpu_xla_flags()  # before JAX starts a backend
  parallel.initialize(dist.coordinator_address, dist.num_processes, dist.process_id,
                      dist.cpu_collectives)
  try:
    data = pipeline.prepare(config)
    # The libraries' logs and thread tracebacks go to workdir/kd_jax.log, not the terminal.
    with workdir.logs_to(_WORKDIR.value) if quiet else contextlib.nullcontext():
      pipeline.run(config, _WORKDIR.value, data=data)
  except workdir.WriteFailed as error:  # disk full, permission denied, file too large
    fail(str(error))
  except ValueError as error:  # bad input: the checks and the workdir guards
    fail(f"invalid input: {error}")
  except loop.TrainingDiverged as error:
    fail(str(error), EXIT_DIVERGED)
  except OSError as error:  # a write the run's own code did not name (metrics, plots)
    fail(str(workdir.write_failed(error.filename or f"a file in {_WORKDIR.value}", error)))


def parse_flags(argv):
  """absl's flag parsing, with a bad config file or field as one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    fail(f"invalid flags: {' '.join(str(error).split())}")
  except Exception as error:  # a config file that raises while loading (syntax, imports)
    fail(f"invalid --config: {type(error).__name__}: {' '.join(str(error).split())[:500]}")
  return None


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
