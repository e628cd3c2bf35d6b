"""Profile: where a student's training step spends its time, convolution by convolution.

  PYTHONPATH=. python experiments/bench/convs.py [--models wrn_16_2,resnet8x4] [--batch 64]
      [--rounds 5] [--block-s 0.2] [--device auto|cpu|gpu] [--threads N] [--quick]

Where kd_jax's raw KD step is slower than PyTorch's on a CPU, this profile shows where the time
goes. A step is convolutions (forward; in the backward pass the input
gradient `dx` and the weight gradient `dw`) plus elementwise work (BatchNorm, ReLU, the loss,
the update). For each model this script reads every convolution of its training forward pass
from the jaxpr (input and kernel shapes, strides, padding, groups), times each distinct one
three ways in both frameworks, alternating in rounds:

  fwd  `lax.conv_general_dilated` / `torch.nn.functional.conv2d` (no gradient)
  dx   its input gradient for a given output gradient (`jax.vjp` w.r.t. the input /
       `torch.nn.grad.conv2d_input`, i.e. aten's convolution_backward for the input only)
  dw   its weight gradient (`jax.vjp` w.r.t. the kernel / `torch.nn.grad.conv2d_weight`)

and, as the reference they add up to, the model's whole forward + backward in train mode
(BatchNorm batch statistics; the loss is mean(logits^2), so the step is the network alone).
Per model it prints the times multiplied by how often each convolution occurs: milliseconds
per step by part, each part's share of kd_jax's forward + backward, and kd_jax / torch.
XLA runs with the trainer's CPU flags (`kd_jax.cpu_flags.CPU_XLA_FLAGS`: convolutions by
XLA itself, not YNNPACK); to profile jaxlib's default instead, run with
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`.
Output: one JSON line per distinct convolution and per model, then a markdown table per model.
"""

import argparse
import collections
import functools
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax
from torch.nn import functional as F

from kd_jax import models
from tests import torch_reference

NUM_CLASSES = 100
IMAGE_SHAPE = (32, 32, 3)
NHWC, HWIO = (0, 3, 1, 2), (3, 2, 0, 1)  # flax's layouts as lax ConvDimensionNumbers specs


def _conv_equations(jaxpr):
  """Every conv_general_dilated equation of `jaxpr`, sub-jaxprs (jit, custom rules) included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _conv_equations(inner)


def model_convolutions(model, variables, images) -> collections.Counter:
  """Counter of the training forward pass's convolutions, keyed by (lhs shape, rhs shape,
  strides, padding, groups, dimension numbers)."""
  def forward(variables, images):
    return model.apply(variables, images, train=True, mutable=["batch_stats"])
  jaxpr = jax.make_jaxpr(forward)(variables, images).jaxpr
  found = collections.Counter()
  for eqn in _conv_equations(jaxpr):
    p = eqn.params
    if p["lhs_dilation"] != (1, 1) or p["rhs_dilation"] != (1, 1):
      raise NotImplementedError(f"dilated convolution {p}")
    found[(tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
           tuple(p["window_strides"]), tuple(map(tuple, p["padding"])),
           p["feature_group_count"], p["dimension_numbers"])] += 1
  return found


def jax_conv_parts(key):
  """Jitted (fwd, dx, dw) of one convolution and their random inputs."""
  lhs_shape, rhs_shape, strides, padding, groups, numbers = key
  conv = functools.partial(lax.conv_general_dilated, window_strides=strides, padding=padding,
                           dimension_numbers=numbers, feature_group_count=groups)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=lhs_shape), jnp.float32)
  w = jnp.asarray(0.1 * rng.normal(size=rhs_shape), jnp.float32)
  g = jnp.asarray(rng.normal(size=jax.eval_shape(conv, x, w).shape), jnp.float32)
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  return dict(fwd=lambda: fwd(x, w), dx=lambda: dx(x, w, g), dw=lambda: dw(x, w, g))


def torch_conv_parts(key, device):
  """(fwd, dx, dw) of the same convolution in torch (NCHW), or None if torch cannot say it."""
  lhs_shape, rhs_shape, strides, padding, groups, numbers = key
  symmetric = all(lo == hi for lo, hi in padding)
  if (numbers.lhs_spec, numbers.rhs_spec) != (NHWC, HWIO) or not symmetric:
    return None
  b, h, w_, c = lhs_shape
  kh, kw, cin_per_group, cout = rhs_shape
  pad = tuple(lo for lo, _ in padding)
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.normal(size=(b, c, h, w_)).astype(np.float32)).to(device)
  weight = torch.from_numpy((0.1 * rng.normal(size=(cout, cin_per_group, kh, kw)))
                            .astype(np.float32)).to(device)
  conv = functools.partial(F.conv2d, stride=strides, padding=pad, groups=groups)
  with torch.no_grad():
    g = torch.randn_like(conv(x, weight))

  def fwd():
    with torch.no_grad():
      return conv(x, weight)
  return dict(
      fwd=fwd,
      dx=lambda: torch.nn.grad.conv2d_input(x.shape, weight, g, strides, pad, groups=groups),
      dw=lambda: torch.nn.grad.conv2d_weight(x, weight.shape, g, strides, pad, groups=groups))


def jax_network(model, variables, images):
  def loss(params, batch_stats, images):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.square(logits)), updates
  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  return lambda: step(variables["params"], variables["batch_stats"], images)


def torch_network(name, images, device):
  module = torch_reference.build(name, NUM_CLASSES).to(device).train()
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)

  def run():
    module.zero_grad(set_to_none=True)
    loss = module(x).square().mean()
    loss.backward()
    return loss
  return run


def timer(fn, sync, min_block_s):
  """A block for `common.alternate`: seconds per call, over a calibrated number of calls."""
  def wait(result):
    jax.block_until_ready(result)
    sync()
  wait(fn())  # compile / warm up
  reps = common.calibrate(lambda: wait(fn()), min_block_s)

  def timed():
    start = time.perf_counter()
    for _ in range(reps):
      result = fn()
    wait(result)
    return (time.perf_counter() - start) / reps
  return timed


def profile_model(name, args, torch_device):
  images = np.random.default_rng(0).normal(size=(args.batch, *IMAGE_SHAPE)).astype(np.float32)
  model = models.create(name, NUM_CLASSES)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(images), train=False)
  convolutions = model_convolutions(model, variables, jnp.asarray(images))
  sync = functools.partial(common.torch_sync, torch_device)
  blocks = {("network", "kd_jax"): timer(jax_network(model, variables, jnp.asarray(images)),
                                         sync, args.block_s),
            ("network", "torch"): timer(torch_network(name, images, torch_device), sync,
                                        args.block_s)}
  for i, key in enumerate(convolutions):
    torch_parts = torch_conv_parts(key, torch_device) or {}
    for part, fn in jax_conv_parts(key).items():
      blocks[(i, part, "kd_jax")] = timer(fn, sync, args.block_s)
      if part in torch_parts:
        blocks[(i, part, "torch")] = timer(torch_parts[part], sync, args.block_s)
  seconds = {k: common.median(v) for k, v in common.alternate(blocks, args.rounds).items()}

  totals = collections.defaultdict(float)
  for i, (key, count) in enumerate(convolutions.items()):
    lhs_shape, rhs_shape, strides, padding, groups, _ = key
    record = dict(kind="convolution", model=name, input=lhs_shape, kernel=rhs_shape,
                  strides=strides, padding=padding, groups=groups, count=count)
    for part in ("fwd", "dx", "dw"):
      for impl in ("kd_jax", "torch"):
        value = seconds.get((i, part, impl))
        record[f"{impl}_{part}_ms"] = None if value is None else round(1e3 * value, 3)
        if value is not None:
          totals[(part, impl)] += count * value
    common.emit(record)
  summary = dict(kind="model", model=name, batch=args.batch,
                 convolutions=sum(convolutions.values()),
                 distinct_convolutions=len(convolutions))
  for impl in ("kd_jax", "torch"):
    summary[f"{impl}_network_ms"] = round(1e3 * seconds[("network", impl)], 1)
    for part in ("fwd", "dx", "dw"):
      summary[f"{impl}_{part}_ms"] = round(1e3 * totals[(part, impl)], 1)
  common.emit(summary)
  return summary


def print_table(summary):
  network = summary["kd_jax_network_ms"]
  rows = []
  for part, label in (("fwd", "convolutions, forward"), ("dx", "convolutions, input gradient"),
                      ("dw", "convolutions, weight gradient")):
    jax_ms, torch_ms = summary[f"kd_jax_{part}_ms"], summary[f"torch_{part}_ms"]
    rows.append([label, jax_ms, torch_ms, f"{jax_ms / torch_ms:.2f}x",
                 f"{100 * jax_ms / network:.0f}%"])
  conv_jax = sum(summary[f"kd_jax_{p}_ms"] for p in ("fwd", "dx", "dw"))
  conv_torch = sum(summary[f"torch_{p}_ms"] for p in ("fwd", "dx", "dw"))
  rest_jax = network - conv_jax
  rest_torch = summary["torch_network_ms"] - conv_torch
  rows.append(["everything else (BatchNorm, ReLU, pooling, loss)", round(rest_jax, 1),
               round(rest_torch, 1), f"{rest_jax / rest_torch:.2f}x",
               f"{100 * rest_jax / network:.0f}%"])
  rows.append(["forward + backward, measured", network, summary["torch_network_ms"],
               f"{network / summary['torch_network_ms']:.2f}x", "100%"])
  print(f"\n{summary['model']}, batch {summary['batch']}, {summary['convolutions']} "
        f"convolutions ({summary['distinct_convolutions']} distinct); ms per step")
  print(common.markdown_table(["part", "kd_jax ms", "torch ms", "kd_jax / torch time",
                               "share of kd_jax's step"], rows))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="wrn_16_2,resnet8x4")
  parser.add_argument("--batch", type=int, default=64)
  common.add_timing_args(parser, rounds=5, block_s=0.2)
  args = parser.parse_args(argv)
  if args.quick:
    args.models, args.batch, args.rounds, args.block_s = "resnet8", 2, 1, 0.0
  _, torch_device, _ = common.start(args)
  for name in args.models.split(","):
    print_table(profile_model(name, args, torch_device))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
