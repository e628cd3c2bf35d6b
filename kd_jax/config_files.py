"""Config files: what a `--config` argument names, and loading one with one-line errors.

  --config=NAME[:ARG]           a shipped config: the repository's configs/NAME.py, which
                                the package installs as kd_jax/configs/NAME.py
  --config=PATH/TO/FILE.py[:ARG]  any config file, e.g. a copy of a shipped one

A spec with a '/' or ending in '.py' is a path; anything else is a shipped config's name.
A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`, called with ARG
(the text after the first ':', e.g. `method=lr_ds,seed=1`) when there is one. The result
must hold every field of `kd_jax.config_defaults.get_config()` and no other (the free-form
`dataset.options` aside): a typo in a config file is an error, not a silently unused field.
Every failure raises `config_defaults.ConfigError` with a one-line message.
"""

import ast
import difflib
import functools
import importlib.util
import os

import ml_collections

from kd_jax import config_defaults

_NOT_CONFIGS = ("__init__", "common")  # files of configs/ that are not configs
_FREE_FORM = ("dataset.options",)  # fields whose contents vary by dataset


def shipped_dir() -> str:
  """The directory of the shipped configs: kd_jax/configs in an installed package, the
  repository's configs/ in a checkout (run from it, or installed with `pip install -e`)."""
  package = os.path.dirname(os.path.abspath(__file__))
  installed = os.path.join(package, "configs")
  if os.path.isdir(installed):
    return installed
  return os.path.join(os.path.dirname(package), "configs")


def shipped_names() -> list[str]:
  """The names `--config=NAME` accepts."""
  directory = shipped_dir()
  if not os.path.isdir(directory):
    return []
  return sorted(name[:-3] for name in os.listdir(directory)
                if name.endswith(".py") and name[:-3] not in _NOT_CONFIGS)


def summary(path: str) -> str:
  """The first line of a config file's docstring (read, not executed), or ''."""
  try:
    with open(path) as f:
      docstring = ast.get_docstring(ast.parse(f.read())) or ""
  except (OSError, SyntaxError, ValueError):
    return ""
  return docstring.strip().splitlines()[0] if docstring.strip() else ""


def resolve(spec: str) -> tuple[str, str | None]:
  """`(path, arg)` of a `--config` spec (arg None when there is no ':')."""
  target, sep, arg = spec.partition(":")
  if not target:
    raise config_defaults.ConfigError(
        f"--config={spec!r} names no config: use --config=NAME (shipped: "
        f"{', '.join(shipped_names())}) or --config=path/to/config.py")
  if "/" in target or target.endswith(".py") or os.sep in target:
    path = os.path.expanduser(target)
    if not os.path.isfile(path):
      stem = os.path.basename(path)[:-3] if path.endswith(".py") else ""
      hint = (f"; the shipped config of that name is --config={stem}"
              if stem in shipped_names() else "")
      raise config_defaults.ConfigError(
          f"--config={spec!r}: no such config file {path!r} (from {os.getcwd()}){hint}")
    return path, (arg if sep else None)
  path = os.path.join(shipped_dir(), target + ".py")
  if target in _NOT_CONFIGS or not os.path.isfile(path):
    close = difflib.get_close_matches(target, shipped_names(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise config_defaults.ConfigError(
        f"--config={spec!r}: {target!r} is not a shipped config{hint}; shipped: "
        f"{', '.join(shipped_names())}; or give a path to a config file (.py)")
  return path, (arg if sep else None)


def _module(path: str):
  """The config file at `path`, executed as a fresh module."""
  name = "kd_jax_config_" + os.path.basename(path)[:-3].replace("-", "_").replace(".", "_")
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise config_defaults.ConfigError(f"config file {path!r} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as error:
    raise config_defaults.ConfigError(
        f"config file {path!r} does not load: SyntaxError: {error.msg} (line {error.lineno})"
        ) from None
  except Exception as error:  # whatever its top level raises, reported in one line
    hint = ""
    if isinstance(error, ModuleNotFoundError) and error.name in ("configs", "configs.common"):
      hint = (" (config files take their defaults from the package: "
              "`from kd_jax import config_defaults`)")
    raise config_defaults.ConfigError(
        f"config file {path!r} does not load: {_one_line(error)}{hint}") from None
  if not callable(getattr(module, "get_config", None)):
    raise config_defaults.ConfigError(f"config file {path!r} defines no get_config()")
  return module


def _one_line(error: BaseException) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _fields(config, prefix: str = "") -> set[str]:
  """Flattened field names of a ConfigDict ('a.b.c'); free-form blocks count as one field."""
  names = set()
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, ml_collections.ConfigDict) and name not in _FREE_FORM:
      names |= _fields(value, name + ".")
    else:
      names.add(name)
  return names


@functools.lru_cache(maxsize=1)
def _default_fields() -> frozenset:
  return frozenset(_fields(config_defaults.get_config()))


def check_fields(config, source: str) -> None:
  """Raises ConfigError unless `config` has exactly the fields of the defaults."""
  fields, expected = _fields(config), _default_fields()
  unknown = sorted(fields - expected)
  if unknown:
    close = difflib.get_close_matches(unknown[0], sorted(expected), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise config_defaults.ConfigError(
        f"{source} has unknown field(s) {', '.join(unknown[:5])}{hint}; every field is "
        "declared in kd_jax.config_defaults.get_config()")
  missing = sorted(expected - fields)
  if missing:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise config_defaults.ConfigError(
        f"{source} lacks the field(s) {', '.join(missing[:5])}{more}: start from "
        "kd_jax.config_defaults.get_config(), which declares them all")


def load(spec: str, *, lock: bool = True) -> ml_collections.ConfigDict:
  """The config a `--config` spec names (see the module docstring), checked and locked."""
  path, arg = resolve(spec)
  module = _module(path)
  source = f"--config={spec}"
  try:
    config = module.get_config() if arg is None else module.get_config(arg)
  except config_defaults.ConfigError as error:
    raise config_defaults.ConfigError(f"{source}: {error}") from None
  except Exception as error:  # a bug of the config file, or a config argument it refuses
    raise config_defaults.ConfigError(
        f"{source}: get_config({'' if arg is None else repr(arg)}) raised {_one_line(error)}"
        ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise config_defaults.ConfigError(
        f"{source}: get_config() returned {type(config).__name__}, not an "
        "ml_collections.ConfigDict (start from kd_jax.config_defaults.get_config())")
  check_fields(config, source)
  if lock:
    config.lock()
  return config


def shipped(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The shipped config `name` with config argument `arg`, unlocked: for a config file that
  builds on another (`config_files.shipped("mnist1d")`), from any directory."""
  path = os.path.join(shipped_dir(), name + ".py")
  if not os.path.isfile(path):
    raise config_defaults.ConfigError(f"{name!r} is not a shipped config; shipped: "
                                      f"{', '.join(shipped_names())}")
  module = _module(path)
  return module.get_config() if arg is None else module.get_config(arg)

