r"""Command line: run the stages a config asks for (kd_jax.pipeline).

  python -m kd_jax.main --config=cifar100 --workdir=/tmp/kd \
      [--config.student.method.name=dkd --config.seed=1 ...]
  python -m kd_jax.main --config=mnist1d:method=lr_ds,seed=1 --workdir=/tmp/kd_lr_ds
  kd-jax --config=configs/mnist1d.py --workdir=/tmp/m1d   # a config file (here: the repo's)

`kd-jax` is this command (same flags). --config names a shipped config (listed below) or a
config file (a path ending in .py; a copy of a shipped one works from any directory),
optionally followed by a config argument `:key=value,...` (keys below); then
`--config.FIELD=VALUE` sets any field. `--config=NAME --help` lists that config's values.
CIFAR and ImageNet are prepared once, without TensorFlow: `python -m kd_jax.prepare --help`.

Multi-host: start one process per host with --config.distributed.num_processes=N
--config.distributed.process_id=i --config.distributed.coordinator_address=HOST:PORT.

Exit codes:
  0  done (or already finished: nothing retrained)
  1  an unexpected error (a bug: please report the traceback)
  2  bad input, reported in one line before any training: an unknown or misspelled config
     field, a config file that is missing or does not load, a bad value or config argument,
     data that is not prepared, a missing optional extra (e.g. torch for a .pth teacher), a
     model that does not fit the data, a teacher checkpoint that is unfinished, of other
     data or not finite, a workdir of another configuration, of another kind of pipeline or
     in use by another process; and a write that fails (read-only, disk full, file too large:
     the path and the cause), or a teacher whose logits are not finite, at any time
  3  the loss or the weights became NaN/inf; the last good checkpoint is kept
"""

import contextlib
import difflib
import re
import sys

from kd_jax._extras import MissingExtraError, requires

try:
  with requires("train", "python -m kd_jax.main"):
    import ml_collections
    from absl import app, flags, logging
    from ml_collections import config_flags

    from kd_jax import config_defaults, config_files, cpu_flags, pipeline
    from kd_jax.train import loop, parallel, workdir, writer
except MissingExtraError as _missing:
  if __name__ != "__main__":
    raise
  print(f"kd_jax: {_missing}", file=sys.stderr, flush=True)
  sys.exit(2)



def _define_workdir(flag_values):
  return flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary "
                             "(required; rerunning a command resumes it).",
                             flag_values=flag_values)


_WORKDIR = _define_workdir(flags.FLAGS)
EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3
_HELP = ("-h", "-help", "--help", "-helpshort", "--helpshort", "-helpfull", "--helpfull", "-?")
_CONFIG_FLAG = re.compile(r"^--?config(=|$)")
_config = None  # the loaded config, with the command line's --config.FIELD overrides


def exit_with_error(message: str, code: int = EXIT_BAD_INPUT):
  print(f"kd_jax: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def main(argv):
  if len(argv) > 1:
    exit_with_error(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet = not flags.FLAGS["verbosity"].present
  if quiet:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if not _WORKDIR.value:
    exit_with_error("--workdir is required: the directory of the run's checkpoints, metrics "
                    "and summary")
  config = _config
  dist = config.distributed
  sys.stdout = writer.TimestampedLines(sys.stdout)  # every progress line says when
  cpu_flags.use_cpu_xla_flags()  # before JAX starts a backend
  parallel.initialize(dist.coordinator_address, dist.num_processes, dist.process_id,
                      dist.cpu_collectives)
  try:
    data = pipeline.prepare(config)
    # The libraries' logs and thread tracebacks go to workdir/kd_jax.log, not the terminal.
    with workdir.logs_to(_WORKDIR.value) if quiet else contextlib.nullcontext():
      pipeline.run(config, _WORKDIR.value, data=data)
  except ImportError as error:  # a missing extra, e.g. torch for a .pth teacher
    if not isinstance(error, MissingExtraError) and "pip install" not in str(error):
      raise  # not a missing extra: a bug
    exit_with_error(_one_line(error))
  except workdir.WriteFailed as error:  # disk full, permission denied, file too large
    exit_with_error(str(error))
  except ValueError as error:  # bad input: the checks and the workdir guards
    exit_with_error(f"invalid input: {error}")
  except loop.TrainingDiverged as error:
    exit_with_error(str(error), EXIT_DIVERGED)
  except OSError as error:  # a write the run's own code did not name (metrics, plots)
    path = error.filename or f"a file in {_WORKDIR.value}"
    exit_with_error(str(workdir.write_failed(path, error)))


def _split_config(args: list[str]) -> tuple[str | None, list[str]]:
  """`(the --config spec or None, the other arguments)`; `--config SPEC` or `--config=SPEC`."""
  spec, rest, i = None, [], 0
  while i < len(args):
    match = _CONFIG_FLAG.match(args[i])
    if match and match.group(1) == "=":
      spec = args[i][match.end():]
    elif match:
      if i + 1 == len(args):
        exit_with_error("--config needs a value: --config=NAME or --config=path/to/config.py")
      spec, i = args[i + 1], i + 1
    else:
      rest.append(args[i])
    i += 1
  return spec, rest


def _check_overrides(config, args: list[str]) -> None:
  """Fails (one line) on a `--config.FIELD` argument that names no field of `config`."""
  for arg in args:
    match = re.match(r"^--?(no)?config\.([^=]+)", arg)
    if not match:
      continue
    node, path = config, []
    for part in match.group(2).split("."):
      fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      if part not in fields:
        where = ".".join(path) or "the config"
        close = difflib.get_close_matches(part, fields, n=1)
        hint = f" (did you mean {'.'.join([*path, close[0]])}?)" if close else ""
        known = (f"; its fields: {', '.join(sorted(fields))}" if fields else
                 " (it is empty)" if isinstance(node, ml_collections.ConfigDict) else
                 " (it is a value, not a block)")
        exit_with_error(f"invalid --config field: --config.{match.group(2)}: {where} has no field "
             f"{part!r}{hint}{known}")
      node, path = node[part], [*path, part]


def _field_lines(config, prefix: str = "") -> list[str]:
  """`  name = value  (type)` for every field of `config`, depth first."""
  lines = []
  for key, value in config.items(preserve_field_references=True):
    name = prefix + key
    if isinstance(value, ml_collections.FieldReference):  # e.g. a typed None placeholder
      value, kind = value.get(), value.get_type()
    else:
      kind = type(value)
    if isinstance(value, ml_collections.ConfigDict) and value:
      lines += _field_lines(value, name + ".")
    else:
      shown = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
      lines.append(f"  --config.{name}={shown!r}  ({getattr(kind, '__name__', kind)})")
  return lines


def help_text(spec: str | None, full: bool = False) -> str:
  """What --help prints: usage, shipped configs, config argument keys, the fields of the
  config `spec` names (the defaults without one), the flags."""
  shipped = [f"  {name:<22} {config_files.summary(f'{config_files.shipped_dir()}/{name}.py')}"
             for name in config_files.shipped_names()]
  keys = [f"  {key:<12} {kind.__name__:<6} sets {field}"
          for key, (field, kind) in config_defaults.VARIANT_KEYS.items()]
  if spec:
    config, source = config_files.load(spec), f"--config={spec}"
  else:
    config, source = config_defaults.get_config(), "the defaults (kd_jax/config_defaults.py)"
  parts = [__doc__.strip(), "",
           f"Shipped configs (--config=NAME; files in {config_files.shipped_dir()}):", *shipped,
           "", "Config argument keys (--config=NAME:key=value,key=value):", *keys, "",
           f"Config fields of {source}, each settable with --config.FIELD=VALUE:",
           *_field_lines(config), "",
           "Flags:",
           "  --config=NAME[:key=value,...] or --config=path/to/config.py[:...]  (required)",
           "  --workdir=DIR  (required) checkpoints, metrics.jsonl, curves.png, summary.json",
           "  --verbosity=N  absl logging to stderr (default: warnings only)",
           ("  --help: this text (with --config=NAME: that config's values); --helpfull: also "
            "every absl flag")]
  if full:
    parts += ["", flags.FLAGS.get_help()]
  return "\n".join(parts)


def parse_command(argv: list[str], flag_values) -> tuple:
  """`(config, remaining argv)` of a command line, parsed into `flag_values`: --help prints
  (exit 0); a bad config argument, field, file or flag is one line and exit 2 (`fail`)."""
  try:
    argv = flag_values.read_flags_from_files(argv, force_gnu=False)
  except flags.Error as error:
    exit_with_error(f"invalid flags: {_one_line(error)}")
  spec, rest = _split_config(argv[1:])
  try:
    if any(arg in _HELP for arg in rest):
      print(help_text(spec, full=any(arg.endswith("helpfull") for arg in rest)), flush=True)
      sys.exit(0)
    if spec is None:
      exit_with_error("--config is required: --config=NAME (shipped: "
           f"{', '.join(config_files.shipped_names())}) or --config=path/to/config.py; "
           "see --help")
    config = config_files.load(spec)
  except config_defaults.ConfigError as error:
    exit_with_error(f"invalid --config: {error}")
  _check_overrides(config, rest)
  if "workdir" not in flag_values:
    _define_workdir(flag_values)
  try:
    # The config's fields become flags only now that it is loaded: `--config.FIELD=VALUE`
    # overrides are parsed by ml_collections with the field's type.
    holder = config_flags.DEFINE_config_dict("config", config, "The loaded config.",
                                             flag_values=flag_values, lock_config=True,
                                             sys_argv=[argv[0], *rest])
    remaining = flag_values([argv[0], *rest])
  except flags.Error as error:
    exit_with_error(f"invalid flags: {_one_line(error)}")
  except (KeyError, AttributeError, TypeError, ValueError) as error:  # ml_collections' own
    exit_with_error(f"invalid --config field: {_one_line(error)}")
  return holder.value, remaining


def parse_flags(argv):
  """absl's flags parser for `app.run`: `parse_command` on the global flags."""
  global _config
  _config, remaining = parse_command(argv, flags.FLAGS)
  return remaining


def run():
  """The `kd-jax` console script: `python -m kd_jax.main`."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
