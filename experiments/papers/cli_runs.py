"""What compare_methods.py needs around the real CLI: run it, parse overrides and flags."""

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time


def parse_overrides(text: str) -> dict:
  """'key=value;key=value' (keys without the `--config.` prefix) -> dict."""
  return dict(item.split("=", 1) for item in text.split(";") if item)


def run_cli(config: str, workdir: str, overrides: dict, log_path: str) -> tuple[str, float]:
  """Runs `python -m kd_jax.main` (output appended to log_path); returns (command, seconds).

  A finished run is skipped by the CLI itself (it reads its summaries), a killed one resumes.
  """
  command = [sys.executable, "-m", "kd_jax.main", f"--config={config}", f"--workdir={workdir}"]
  command += [f"--config.{key}={value}" for key, value in overrides.items()]
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  with open(log_path, "a") as log:
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
  return shlex.join(["python", *command[1:]]), time.time() - start


def runner_command(script: str) -> str:
  """The command line that reproduces this script's run."""
  return shlex.join(["python", script, *sys.argv[1:]])


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The options every experiment script shares, parsed."""
  args: argparse.Namespace
  seeds: list
  extra: dict
  workdir: str
  log_path: str


def parse_experiment_args(description: str, default_config: str | None = None,
                          **extra_flags) -> Experiment:
  """--config, --seeds, --out, --workdir, --extra, --report_only, plus `extra_flags` (name ->
  (default, help)); creates the results folder OUT."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--config", default=default_config)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out", required=True, help="results folder (results.json/.md)")
  parser.add_argument("--workdir", default="", help="runs' folder (default: OUT/runs)")
  parser.add_argument("--extra", default="", help="overrides for every run, key=value;...")
  for name, (default, help_text) in extra_flags.items():
    if isinstance(default, list):
      parser.add_argument(f"--{name}", action="append", default=default, help=help_text)
    else:
      parser.add_argument(f"--{name}", default=default, help=help_text)
  parser.add_argument("--report_only", action="store_true",
                      help="rewrite OUT/results.md from OUT/results.json, run nothing")
  args = parser.parse_args()
  if not args.config and not args.report_only:
    parser.error("--config is required")
  os.makedirs(args.out, exist_ok=True)
  return Experiment(args, [int(s) for s in args.seeds.split(",")], parse_overrides(args.extra),
                    args.workdir or os.path.join(args.out, "runs"),
                    os.path.join(args.out, "runs.log"))
