"""Benchmark: the KD train step on the CPU under XLA_FLAGS settings, each against the default.

  PYTHONPATH=. python experiments/bench/xla_flags.py [--flags "A;B C;..."] [--repeats 2]
      [--step-args "--pairs wrn_40_2:wrn_16_2 --batch-sizes 64 --steps 1 --rounds 3 ..."]

XLA flags are read once per process, so every setting runs `experiments/bench/step.py` in its
own process: the default (empty XLA_FLAGS, to which bench_step adds kd_jax's own CPU flags,
`kd_jax.cpu_flags.CPU_XLA_FLAGS`, as the trainer does; a setting that names one of those
flags replaces it) and each setting in `--flags` (settings separated
by ";", flags within a setting by spaces), `--repeats` times, the order rotating each repeat
so a load change on a shared machine hits every setting. Each bench_step process alternates
kd_jax's step with PyTorch's eager step; XLA flags do not touch PyTorch, so its images/s is
the control for the machine's load and the compared quantity is kd_jax / torch of the same
process. Reported per setting: median kd_jax and torch images/s, the median kd_jax / torch
ratio, and that ratio over the default's ("effect": > 1 means the flag made the kd_jax step
faster). bench_step checks each step's loss against PyTorch's (an error otherwise), so a flag
that changes the numerics beyond its tolerance shows up as a failed run.
Output: one JSON line per process, then a markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = (
    "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",  # jaxlib's default
    "--xla_cpu_experimental_ynn_fusion_type=",        # no YNNPACK fusions
    "--xla_cpu_experimental_xnn_fusion_type=",        # no XNNPACK fusions
    "--xla_cpu_use_onednn=true",                       # oneDNN
    "--xla_cpu_prefer_vector_width=256",              # jaxlib's default (kd_jax: 512)
    "--xla_cpu_enable_fast_math=true",                 # fast math (changes numerics)
)
DEFAULT_STEP_ARGS = ("--pairs wrn_40_2:wrn_16_2 --batch-sizes 64 --steps 1 --rounds 3 "
                     "--threads 1 --device cpu --torch-compile off --teacher-outputs live")
HERE = os.path.dirname(os.path.abspath(__file__))


def run_setting(flags: str, step_args: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=flags)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(HERE)),
                                                    env.get("PYTHONPATH")]))
  start = time.time()
  proc = subprocess.run([sys.executable, os.path.join(HERE, "step.py"), *step_args.split()],
                        env=env, capture_output=True, text=True, check=False)
  record = dict(flags=flags or "(default)", returncode=proc.returncode,
                wall_s=round(time.time() - start, 1))
  steps = [json.loads(line) for line in proc.stdout.splitlines()
           if line.startswith("{") and '"kind": "step"' in line]
  if proc.returncode or not steps:
    record["error"] = (proc.stderr or proc.stdout)[-500:]
    return record
  step = steps[0]
  record.update({k: step.get(k) for k in ("jax_images_per_s", "torch_images_per_s",
                                          "jax_over_torch", "jax_compile_s", "agree")})
  record["load_average_1min"] = os.getloadavg()[0]
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flags", default=";".join(SETTINGS),
                      help='settings separated by ";", flags within one by spaces')
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--step-args", default=DEFAULT_STEP_ARGS)
  args = parser.parse_args(argv)
  settings = [""] + [s.strip() for s in args.flags.split(";") if s.strip()]
  records = {s: [] for s in settings}
  for repeat in range(args.repeats):
    shift = repeat % len(settings)
    for flags in settings[shift:] + settings[:shift]:
      record = run_setting(flags, args.step_args)
      print(json.dumps(record), flush=True)
      records[flags].append(record)

  def median(flags, key):
    values = [r[key] for r in records[flags] if r.get(key) is not None]
    return statistics.median(values) if values else None

  base = median("", "jax_over_torch")
  print()
  print(f"bench_step {args.step_args}; {args.repeats} process(es) per setting, order rotating")
  print("| XLA_FLAGS | kd_jax img/s | torch img/s (control) | kd_jax / torch | effect vs default |")
  print("|---|---|---|---|---|")
  for flags in settings:
    ratio = median(flags, "jax_over_torch")
    failed = [r for r in records[flags] if "error" in r]
    effect = "-" if ratio is None or base is None else f"{ratio / base:.2f}x"
    cells = [median(flags, key) for key in ("jax_images_per_s", "torch_images_per_s")]
    cells = ["-" if c is None else f"{c:.1f}" for c in cells] + [
        "-" if ratio is None else f"{ratio:.3f}"]
    print(f"| `{flags or '(default)'}` | {' | '.join(cells)} | {effect}"
          + (f" ({len(failed)} failed)" if failed else "") + " |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
