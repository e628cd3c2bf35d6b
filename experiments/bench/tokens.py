"""Token-level distillation, `losses.py --token`: kd, lr and dkd on `[B, T, V]` logits.

kd_jax: the losses on the whole `[B, T, V]` arrays with `where=` the padding mask, the
objective the masked mean over real tokens, `jax.jit(jax.value_and_grad(...))`. PyTorch: the
straightforward version, the real tokens selected (`x[mask]`) and `bench_losses`'
objective on them (RepDistiller's KD, label revision, mdistiller's DKD), eager `.backward()`.
Both: `0.1 CE + 0.9 T^2 KL` (kd, lr at T = 4) and `CE + DKD` (alpha 1, beta 8, T = 4).

Reported per method: median time per call over alternating rounds and the speedup (median of
per-round ratios); kd_jax's compiled temporary memory (`memory_analysis()`, the gradient
output not included); and for each side the peak resident memory above its inputs during its
first call (kd_jax compiled ahead of time; `VmHWM` after resetting it through
/proc/self/clear_refs), in a child process per case so the sides share no high-water mark
and no allocator cache.
"""

import functools
import json
import os
import subprocess
import sys
import time

import common
import jax
import jax.numpy as jnp
import losses as bench_losses
import numpy as np
import torch

from kd_jax import losses, methods, targets

METHODS = ("kd", "lr", "dkd")


def make_inputs(shape, seed: int = 0) -> dict:
  """Student/teacher logits `[B, T, V]` (teacher right on about 3/4 of the tokens), labels
  and a padding mask (each sequence loses up to a quarter of its tokens)."""
  b, t, v = shape
  rng = np.random.default_rng([seed, *shape])
  labels = rng.integers(0, v, (b, t)).astype(np.int32)
  student = rng.standard_normal((b, t, v), dtype=np.float32) * 2.0
  teacher = rng.standard_normal((b, t, v), dtype=np.float32) * 2.0
  right = rng.random((b, t)) < 0.75
  np.put_along_axis(teacher, labels[..., None], np.take_along_axis(
      teacher, labels[..., None], -1) + np.where(right, 6.0, 0.0)[..., None], -1)
  lengths = t - rng.integers(0, t // 4 + 1, b)
  mask = np.arange(t)[None, :] < lengths[:, None]
  return dict(student=student, teacher=teacher, labels=labels, mask=mask)


@functools.cache
def jax_objective(name: str):
  """The jitted value and gradient of the masked-mean objective of `name` with kd_jax's losses on `[B, T, V]`."""
  config = methods.default_config()
  temperature = config.temperature

  def objective(student, teacher, labels, mask):
    ce = losses.cross_entropy(student, labels, where=mask)
    if name == "kd":
      per_token = 0.1 * ce + 0.9 * losses.kd(student, teacher, temperature, where=mask)
    elif name == "lr":
      q = losses.softmax(teacher, temperature, where=mask)
      revised = targets.revise(q, labels, config.eta, where=mask)
      per_token = 0.1 * ce + 0.9 * losses.kl_to_targets(student, revised, temperature,
                                                       where=mask)
    else:
      per_token = ce + losses.dkd(student, teacher, labels, config.dkd_alpha, config.dkd_beta,
                                  temperature, where=mask)
    return jnp.sum(per_token) / jnp.sum(mask)
  return jax.jit(jax.value_and_grad(objective))


def torch_value_and_grad(name: str, student, teacher, labels, mask):
  """bench_losses' PyTorch objective on the real tokens; the gradient w.r.t. all logits."""
  config = methods.default_config()
  config.name = name
  student.grad = None
  loss = bench_losses.torch_objective(config, student[mask], labels[mask], teacher[mask],
                                      None, bench_losses.EPOCH)
  loss.backward()
  return loss, student.grad


def _arguments(data: dict, framework: str):
  if framework == "jax":
    return jax.device_put((data["student"], data["teacher"], data["labels"], data["mask"]))
  return (torch.tensor(data["student"], requires_grad=True), torch.tensor(data["teacher"]),
          torch.tensor(data["labels"].astype(np.int64)), torch.tensor(data["mask"]))


def _call(name: str, framework: str, args):
  if framework == "jax":
    return jax.block_until_ready(jax_objective(name)(*args))
  return torch_value_and_grad(name, *args)


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as status:
    return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_above_inputs_mib(name: str, framework: str, shape) -> float:
  """In this process: the peak resident memory of one value-and-grad call above what was
  resident before it (inputs included), kd_jax's compiled ahead of time."""
  args = _arguments(make_inputs(shape), framework)
  if framework == "jax":
    compiled = jax_objective(name).lower(*args).compile()
    call = lambda: jax.block_until_ready(compiled(*args))
  else:
    call = lambda: torch_value_and_grad(name, *args)
  before = _status_kib("VmRSS")
  with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")                  # resets VmHWM to the current RSS
  out = call()
  peak = _status_kib("VmHWM")
  del out
  return (peak - before) / 1024


def _peak_in_child(name: str, framework: str, args) -> float | None:
  command = [sys.executable, os.path.abspath(bench_losses.__file__), "--peak-of",
             f"{framework}:{name}", "--token-shape", args.token_shape, "--device", "cpu"]
  if args.threads:
    command += ["--threads", str(args.threads)]
  result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
  lines = [line for line in result.stdout.splitlines() if line.startswith('{"peak_mib"')]
  return json.loads(lines[-1])["peak_mib"] if lines else None


def run_case(name: str, shape, args, data: dict) -> dict:
  jax_args, torch_args = _arguments(data, "jax"), _arguments(data, "torch")
  fn = jax_objective(name)
  start = time.perf_counter()
  jax_out = jax.block_until_ready(fn(*jax_args))
  compile_s = time.perf_counter() - start
  check = bench_losses.agreement(jax_out, torch_value_and_grad(name, *torch_args))
  temp = fn.lower(*jax_args).compile().memory_analysis().temp_size_in_bytes
  blocks = {"jax": common.per_call_us(lambda: _call(name, "jax", jax_args), args.block_s)[0],
            "torch": common.per_call_us(lambda: _call(name, "torch", torch_args),
                                        args.block_s)[0]}
  rounds = common.alternate(blocks, args.rounds)
  jax_ms, torch_ms = (common.median(rounds[k]) / 1e3 for k in ("jax", "torch"))
  return dict(kind="token", method=name, shape=list(shape),
              real_tokens=int(data["mask"].sum()), jax_ms=round(jax_ms, 1),
              torch_ms=round(torch_ms, 1),
              speedup=round(common.median([t / j for j, t in zip(rounds["jax"],
                                                                 rounds["torch"])]), 2),
              jax_temp_mib=round(temp / 2**20, 1),
              jax_peak_mib=_peak_in_child(name, "jax", args),
              torch_peak_mib=_peak_in_child(name, "torch", args),
              jax_rounds_ms=[round(t / 1e3, 1) for t in rounds["jax"]],
              torch_rounds_ms=[round(t / 1e3, 1) for t in rounds["torch"]],
              jax_compile_s=round(compile_s, 2), **check)


def main(args) -> int:
  shape = tuple(int(n) for n in args.token_shape.split(","))
  if args.peak_of:   # the child process of `_peak_in_child`
    common.setup(args.device, args.threads)
    framework, name = args.peak_of.split(":")
    print(json.dumps({"peak_mib": round(peak_above_inputs_mib(name, framework, shape), 1)}))
    return 0
  if not args.quick and args.rounds == 7:
    args.rounds = 3   # seconds per call at the default shape
  backend, torch_device, threads = common.start(args)
  data = make_inputs(shape)
  records = []
  for name in METHODS:
    record = run_case(name, shape, args, data)
    common.emit(record)
    records.append(record)
  print()
  print(f"token-level value_and_grad of the masked-mean objective, [B, T, V] = {shape}, "
        f"{records[0]['real_tokens']} real tokens; {backend} JAX vs torch {torch_device}, "
        f"{threads} threads each; {args.rounds} alternating rounds (median); memory: kd_jax's "
        "compiled temporaries, and each side's peak RSS above its inputs during its first "
        "call (gradient included), in a child process")
  rows = [[r["method"], r["jax_ms"], r["torch_ms"], f"{r['speedup']:.2f}x", r["jax_temp_mib"],
           r["jax_peak_mib"], r["torch_peak_mib"], "ok" if r["agree"] else "FAIL"]
          for r in records]
  print(common.markdown_table(["method", "kd_jax ms", "torch ms", "speedup",
                               "kd_jax temp MiB", "kd_jax peak MiB", "torch peak MiB",
                               "agree"], rows))
  disagree = [r["method"] for r in records if not r["agree"]]
  return common.exit_status(disagree, "DISAGREE (kd_jax vs torch)",
                            f"all {len(records)} token cases agree")
