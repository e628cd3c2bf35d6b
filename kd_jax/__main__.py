"""`kd-jax` (the console script) and `python -m kd_jax`: the command line of `kd_jax.main`.

Its import is guarded here, so that without the `train` extra the command says which extra
to install in one line (exit 2) instead of a traceback.
"""

import sys

from kd_jax._extras import MissingExtraError


def run():
  try:
    from kd_jax import main  # pylint: disable=g-import-not-at-top
  except MissingExtraError as error:
    print(f"kd_jax: {error}", file=sys.stderr, flush=True)
    sys.exit(2)
  main.run()


if __name__ == "__main__":
  run()
