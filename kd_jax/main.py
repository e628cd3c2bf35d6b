r"""Command line: train what a config asks (a teacher and/or a distilled student, or
generations when `config.generations.num > 0`, see kd_jax.generations).

  python -m kd_jax.main --config=configs/cifar100.py --workdir=/tmp/kd \
      [--config.student.method.name=dkd --config.seed=1 ...]

Multi-host: start one process per host with --config.distributed.num_processes=N
--config.distributed.process_id=i --config.distributed.coordinator_address=HOST:PORT.
Exit codes: 0 done, 2 invalid config (one line on stderr naming the field), 3 the loss became
NaN/inf (the last good checkpoint is kept).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from kd_jax import generations
from kd_jax.train import loop, parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config "
                                          "file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = _CONFIG.value
  dist = config.distributed
  parallel.initialize(dist.coordinator_address, dist.num_processes, dist.process_id,
                      dist.cpu_collectives)
  try:
    mesh, data = loop.prepare(config)
    if generations.enabled(config):
      generations.check_config(config, data.info.num_classes)
  except ValueError as error:
    print(f"kd_jax: invalid config: {error}", file=sys.stderr, flush=True)
    sys.exit(2)
  try:
    run = generations.run if generations.enabled(config) else loop.run
    run(config, _WORKDIR.value, mesh=mesh, data=data)
  except loop.TrainingDiverged as error:
    print(f"kd_jax: {error}", file=sys.stderr, flush=True)
    sys.exit(3)


if __name__ == "__main__":
  app.run(main)
