"""Helpers shared by the kd_jax-vs-PyTorch benchmarks (losses.py, step.py, ...).

Fair comparisons on a shared machine: both frameworks get the same number of CPU threads
(the XLA CPU client sizes its intra-op pool to the CPUs this process may run on, so torch is
set to that count; `--threads N` pins the process to N CPUs first, for both), and the compared implementations are timed in alternating rounds within
one process, so a load spike from other work hits them all rather than one of them.
"""

import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable

import jax
import torch

# The repository root, so `kd_jax` and `tests.torch_reference` import from this checkout
# when the script is run as `python experiments/bench/<name>.py` without PYTHONPATH.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from kd_jax import cpu_flags


def xla_cpu_threads() -> int:
  """Threads of the XLA CPU client's intra-op pool: the CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def select_jax_platform(device: str) -> None:
  """`device` "cpu" pins JAX to the CPU; "gpu" and "auto" keep JAX's default backend.

  Must run before JAX initialises a backend (before the first array is created).
  """
  if device == "cpu":
    jax.config.update("jax_platforms", "cpu")


def restrict_cpus(threads: int) -> None:
  """Pins this process to `threads` of its CPUs, so XLA's pool (sized by affinity) and
  torch's `threads` threads run on the same cores. Must run before JAX's backend starts."""
  allowed = sorted(os.sched_getaffinity(0))
  if not 1 <= threads <= len(allowed):
    raise SystemExit(f"--threads {threads}: this process may use {len(allowed)} CPUs")
  os.sched_setaffinity(0, allowed[:threads])


def add_machine_args(parser) -> None:
  """`--device` and `--threads`, which every benchmark passes to `setup`."""
  parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
  parser.add_argument("--threads", type=int, default=None,
                      help="pin to this many CPUs (XLA and torch alike); default: all allowed")


def add_timing_args(parser, rounds: int, block_s: float) -> None:
  """`--rounds`, `--block-s`, the machine arguments and `--quick`, which the benchmarks that
  time calibrated blocks (`per_call_us`, `alternate`) all take."""
  parser.add_argument("--rounds", type=int, default=rounds, help="alternating rounds")
  parser.add_argument("--block-s", type=float, default=block_s,
                      help="seconds per timing block (calls per block are calibrated)")
  add_machine_args(parser)
  add_quick_arg(parser)


def add_quick_arg(parser) -> None:
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")


def add_jsonl_args(parser) -> None:
  """`--out` (a file the JSON lines are also appended to, `append_jsonl`) and `--quick`."""
  parser.add_argument("--out", default="", help="also append the JSON lines to this file")
  add_quick_arg(parser)


def setup(device: str, threads: int | None = None):
  """Resolves `device` ("auto", "cpu", "gpu") for both frameworks; sets torch's threads.

  Adds kd_jax's XLA:CPU flags (`kd_jax.cpu_flags.use_cpu_xla_flags`, as `kd_jax.main` does).
  `threads` (optional) first pins the process to that many CPUs (`restrict_cpus`); by
  default every CPU the process may use. Torch gets the XLA CPU client's thread count.
  Returns (jax_backend, torch_device, threads). Raises SystemExit when "gpu" is asked for
  but JAX or torch has no GPU.
  """
  # kd_jax's XLA:CPU flags, as the trainer runs with them (before JAX starts a backend).
  cpu_flags.use_cpu_xla_flags()
  if threads is not None:
    restrict_cpus(threads)
  select_jax_platform(device)
  backend = jax.default_backend()
  cuda = torch.cuda.is_available()
  if device == "gpu" and (backend != "gpu" or not cuda):
    raise SystemExit(f"--device gpu: JAX backend is {backend!r}, torch.cuda.is_available()="
                     f"{cuda}; both need a GPU")
  if device == "auto":
    torch_device = "cuda" if backend == "gpu" and cuda else "cpu"
  else:
    torch_device = "cuda" if device == "gpu" else "cpu"
  threads = xla_cpu_threads()
  torch.set_num_threads(threads)
  return backend, torch_device, threads


def start(args):
  """`setup(args.device, args.threads)`, then the environment's JSON line (`environment`);
  returns setup's (jax_backend, torch_device, threads)."""
  backend, torch_device, threads = setup(args.device, args.threads)
  emit(environment(backend, torch_device, threads))
  return backend, torch_device, threads


def torch_sync(torch_device: str) -> None:
  if torch_device == "cuda":
    torch.cuda.synchronize()


def environment(backend: str, torch_device: str, threads: int) -> dict:
  """What the numbers were measured on, printed as the first JSON line of each benchmark."""
  info = dict(kind="environment", jax=jax.__version__, torch=torch.__version__,
              jax_backend=backend, jax_device=str(jax.devices()[0].device_kind),
              torch_device=torch_device, threads=threads, torch_threads=torch.get_num_threads(),
              cpu_count=os.cpu_count(), machine=platform.machine(),
              xla_flags=os.environ.get("XLA_FLAGS", ""),
              python=platform.python_version())
  if torch_device == "cuda":
    info["torch_gpu"] = torch.cuda.get_device_name()
  if hasattr(os, "getloadavg"):
    info["load_average_1min"] = round(os.getloadavg()[0], 2)
  return info


def emit(record: dict) -> None:
  """One JSON line on stdout (flushed, so a killed run keeps what it measured)."""
  print(json.dumps(record), flush=True)


def append_jsonl(path: str, records: list[dict]) -> None:
  """Appends `records` to the JSONL file `path` (`--out`; nothing when it is '')."""
  if path:
    with open(path, "a") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)


def calibrate(fn: Callable[[], object], min_block_s: float, max_reps: int = 10_000) -> int:
  """Calls per timing block so one block lasts about `min_block_s` (fn already warm)."""
  start = time.perf_counter()
  fn()
  once = max(time.perf_counter() - start, 1e-7)
  return int(min(max_reps, max(1, round(min_block_s / once))))


def per_call_us(call: Callable[[], object], min_block_s: float):
  """`(block, reps)`: a block for `alternate` timing `reps` calls of `call` (which must wait
  for its own result) and returning microseconds per call; `reps` fills `min_block_s`."""
  reps = calibrate(call, min_block_s)

  def block():
    start_time = time.perf_counter()
    for _ in range(reps):
      call()
    return (time.perf_counter() - start_time) / reps * 1e6
  return block, reps


def alternate(blocks: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
  """Runs every block once per round, in rotating order; returns each block's results.

  Each block times itself (it knows what must be synchronised) and returns a number; the
  order rotates between rounds so no implementation always runs right after another.
  """
  names = list(blocks)
  results: dict[str, list[float]] = {name: [] for name in names}
  for r in range(rounds):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      results[name].append(blocks[name]())
  return results


@contextlib.contextmanager
def deadline(seconds: float, what: str):
  """Raises TimeoutError in the main thread when the block runs longer than `seconds`
  (SIGALRM; a no-op where there is none)."""
  if not hasattr(signal, "SIGALRM") or seconds <= 0:
    yield
    return

  def expire(signum, frame):
    raise TimeoutError(f"{what} took more than {seconds:g} s")

  previous = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def median(values: list[float]) -> float:
  return statistics.median(values)


def exit_status(failed: list[str], failure: str, success: str) -> int:
  """The benchmark's last line and exit status: `failure: <the failed cases>` and 1 when any
  case failed its check, else `success` and 0."""
  if failed:
    print(f"{failure}: {', '.join(failed)}")
    return 1
  print(success)
  return 0


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)
