"""Benchmark: images/s of the full KD train step, kd_jax (jit) against PyTorch (eager, compile).

  PYTHONPATH=. python experiments/bench/step.py [--pairs resnet32x4:resnet8x4,wrn_40_2:wrn_16_2]
      [--batch-sizes 64,256] [--steps 10] [--rounds 3] [--dtype float32|bfloat16]
      [--device auto|cpu|gpu] [--threads N] [--torch-compile on|off]
      [--torch-compile-timeout S] [--teacher-outputs live,cache,trainer] [--cache-examples N]
      [--host-devices N] [--quick]

The defaults are sized for a GPU; on a CPU use few steps, e.g. `--batch-sizes 64 --steps 1
--rounds 3 --torch-compile off` (one resnet32x4 step at batch 64 is several seconds on a core,
and inductor needs minutes to compile these networks).

One step: teacher forward in eval mode (no gradient), student forward and backward in train
mode (BatchNorm batch statistics, running averages updated), the CIFAR KD objective
`0.1 CE + 0.9 T^2 KL(p(z_t,T) || p(z_s,T))` at T = 4, and an SGD update (lr 0.05, momentum
0.9, coupled weight decay 5e-4 on every parameter, as torch.optim.SGD). CIFAR-shaped random
inputs (32x32x3, 100 classes); the same batch every step.

  kd_jax         flax models from `kd_jax.models.create`, the objective from
                 `kd_jax.methods.per_example_losses` (method "kd", the trainer's table),
                 optax `add_decayed_weights + sgd`; one `jax.jit` with the student state
                 donated; the teacher variables and the batch are ARGUMENTS (closed over as
                 constants, XLA would fold the teacher forward away).
  kd_jax cached  the same step with the teacher's logits read instead of computed: the rows
                 of the batch's examples (float16 [B, C]) come with the batch, as the
                 trainer's teacher-output cache streams them from disk (what a sweep's later
                 runs do; the live step is the first run's cost).
  kd_jax trainer cached  (`--teacher-outputs ...,trainer`) the trainer's own step,
                 `kd_jax.train.step.train_step` with its teacher slot unpacking those rows
                 (`kd_jax.train.teacher_cache.teacher_fn`, format float16), jitted as
                 `kd_jax.train.loop` jits it (state replicated on the device mesh, batch
                 sharded, state donated): the per-method diagnostics and metrics included,
                 i.e. what a sweep's later runs execute per step.
  torch          the same networks (`tests/torch_reference.py`, RepDistiller's layer names),
                 RepDistiller's DistillKL, `torch.optim.SGD`, eager.
  torch.compile  `torch.compile` of the forward + objective (backward through AOTAutograd,
                 optimizer step eager); a failure, or a first step (compilation) longer
                 than --torch-compile-timeout, is reported as "failed: reason".

Both start from the same weights (the torch models' weights imported with
`kd_jax.models.convert_state_dict`; the teacher randomised with non-trivial BN statistics),
and the first two steps' losses are compared before timing (relative error <= 1e-3 in
float32 on CPU, 3e-2 in bfloat16 or on a GPU, where convolutions may use TF32).
The cached step's losses are compared to torch's too (the batch's rows hold the live
teacher's logits, rounded to float16: tolerance 2e-3 more).
`--dtype bfloat16`: kd_jax modules compute in bfloat16 with float32 parameters (flax
`dtype`), torch runs under `torch.autocast(bfloat16)`; the objective is float32 in both.

The implementations alternate in rounds of `--steps` steps (rotating order); reported per
implementation: the median images/s over rounds and kd_jax's ratio to each torch variant.
Also: kd_jax's trace+lower and compile time (ahead of time, then the first call reuses the
executable) and the first call's time, the jit cache size after every step (1 = no
recompilation), XLA's FLOP count of the step (`cost_analysis()["flops"]`) and the achieved
FLOP/s of each implementation (same count: the same computation). Both frameworks get the
same number of CPU threads; XLA runs with the trainer's CPU flags
(`kd_jax.cpu_flags.CPU_XLA_FLAGS`, unless XLA_FLAGS sets them); `--host-devices N` (CPU) splits the CPU into N XLA devices and
shards kd_jax's batch over them as the trainer does (`kd_jax.train.parallel`; BatchNorm
statistics stay those of the whole batch), because one XLA:CPU device uses several cores
poorly for these networks; `--device gpu` (or `auto` on a GPU machine) runs JAX on its
default GPU backend and torch on CUDA with synchronisation before every clock read.
Output: one JSON line per case, then a markdown table.
"""

import argparse
import functools
import os
import time
import warnings

import common
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch.nn import functional as F

from kd_jax import methods, models
from kd_jax.train import parallel, teacher_cache
from kd_jax.train import state as state_lib
from kd_jax.train import step as step_lib
from tests import torch_reference

NUM_CLASSES = 100
IMAGE_SHAPE = (32, 32, 3)
TEMPERATURE, CE_WEIGHT, KD_WEIGHT = 4.0, 0.1, 0.9
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
STEPS_PER_EPOCH = 782  # CIFAR at batch 64; only the warm-up ramps read it (kd has none)


def kd_method_config():
  config = methods.default_config()
  config.name = "kd"
  config.temperature, config.ce_weight, config.kd_weight = TEMPERATURE, CE_WEIGHT, KD_WEIGHT
  methods.validate(config, NUM_CLASSES)
  return config


# ---------------------------------------------------------------------------- kd_jax side


def live_teacher(teacher, teacher_variables, images, index):
  del index
  return teacher.apply(teacher_variables, images, train=False).astype(jnp.float32)


def cached_teacher(rows, images, index):
  """The cached teacher: the batch's float16 rows `[B, C]`, streamed with the batch."""
  del images, index
  return rows.astype(jnp.float32)


def make_jax_step(teacher_fn, student, tx, method_config):
  """`train_step(state, teacher_variables, images, labels, index) -> (state, loss)`, unjitted;
  `teacher_fn(teacher_variables, images, index) -> float32 logits` (live or a lookup)."""
  def train_step(state, teacher_variables, images, labels, index):
    teacher_logits = jax.lax.stop_gradient(teacher_fn(teacher_variables, images, index))

    def loss_fn(params):
      logits, updates = student.apply({"params": params, "batch_stats": state["batch_stats"]},
                                      images, train=True, mutable=["batch_stats"])
      terms = methods.per_example_losses(method_config, logits.astype(jnp.float32), labels,
                                         teacher_logits)
      return jnp.mean(terms["loss"]), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return dict(params=params, batch_stats=batch_stats, opt_state=opt_state), loss

  return train_step


def trainer_cached_step(student, tx, student_vars, rows, images, labels, index):
  """`(step, state, batch)`: the trainer's train step on a cached-teacher state, built and
  jitted as `kd_jax.train.loop` builds it, starting from `student_vars`; the batch brings
  its float16 teacher rows."""
  mesh = parallel.make_mesh()
  state = state_lib.create_train_state(
      student, tx, jax.random.PRNGKey(0), IMAGE_SHAPE,
      teacher_fn=teacher_cache.teacher_fn("float16", NUM_CLASSES, None))
  # Host copies: the other steps donate (delete) the arrays they were given.
  student_vars = jax.tree.map(np.array, student_vars)
  state = state.replace(params=student_vars["params"], batch_stats=student_vars["batch_stats"],
                        opt_state=tx.init(student_vars["params"]))
  batch = dict(image=images, label=labels, index=index, mask=np.ones(len(labels), bool),
               **{teacher_cache.FIELD_PREFIX + "logits": rows})
  replicated = parallel.replicated(mesh)
  step = jax.jit(functools.partial(step_lib.train_step, method=kd_method_config(),
                                   steps_per_epoch=STEPS_PER_EPOCH),
                 donate_argnums=0, out_shardings=(replicated, replicated))
  return step, parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh)


def sgd():
  """torch.optim.SGD(lr, momentum, weight_decay): g + wd * w, then heavy-ball momentum."""
  return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))


# ----------------------------------------------------------------------------- torch side


class TorchStep:
  """The same step in PyTorch; `compiled=True` wraps forward + objective in torch.compile."""

  def __init__(self, teacher, student, device, dtype, compiled=False):
    self.teacher, self.student, self.device = teacher.eval(), student.train(), device
    self.autocast = dict(device_type="cuda" if device == "cuda" else "cpu",
                         dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    self.optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM,
                                     weight_decay=WEIGHT_DECAY)
    self.objective = torch.compile(self._objective) if compiled else self._objective

  def _objective(self, images, labels):
    with torch.autocast(**self.autocast):
      with torch.no_grad():
        teacher_logits = self.teacher(images)
      logits = self.student(images)
    logits, teacher_logits = logits.float(), teacher_logits.float()
    # RepDistiller's DistillKL: kl_div(log p_s, p_t, sum) * T^2 / B.
    kl = (F.kl_div(F.log_softmax(logits / TEMPERATURE, dim=1),
                   F.softmax(teacher_logits / TEMPERATURE, dim=1), reduction="sum")
          * TEMPERATURE**2 / logits.shape[0])
    return CE_WEIGHT * F.cross_entropy(logits, labels) + KD_WEIGHT * kl

  def __call__(self, images, labels):
    loss = self.objective(images, labels)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss


def torch_models(teacher_name, student_name, device, seed=0):
  torch.manual_seed(seed)
  teacher = torch_reference.randomize(torch_reference.build(teacher_name, NUM_CLASSES), seed)
  student = torch_reference.build(student_name, NUM_CLASSES)
  return teacher.to(device), student.to(device)


def to_flax(module, name):
  state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
  return models.convert_state_dict(state, name, NUM_CLASSES)


# ---------------------------------------------------------------------------------- cases


def _failure(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"failed: {type(error).__name__}: {lines[0][:200] if lines else ''}"


def run_case(teacher_name, student_name, batch, args, torch_device) -> dict:
  rng = np.random.default_rng([batch, len(teacher_name), len(student_name)])
  images = rng.normal(size=(batch, *IMAGE_SHAPE)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  jax_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

  # Same initial weights in both frameworks.
  teacher_t, student_t = torch_models(teacher_name, student_name, torch_device)
  teacher_vars, student_vars = to_flax(teacher_t, teacher_name), to_flax(student_t, student_name)

  teacher = models.create(teacher_name, NUM_CLASSES, dtype=jax_dtype)
  student = models.create(student_name, NUM_CLASSES, dtype=jax_dtype)
  tx = sgd()
  step = jax.jit(make_jax_step(functools.partial(live_teacher, teacher), student, tx,
                               kd_method_config()), donate_argnums=0)
  state = dict(params=student_vars["params"], batch_stats=student_vars["batch_stats"],
               opt_state=tx.init(student_vars["params"]))
  # The batch's example indices, and its rows of the cache: the live teacher's logits,
  # rounded to float16 as the cache stores them.
  index = rng.choice(args.cache_examples, batch, replace=False).astype(np.int32)
  cached = "cache" in args.teacher_outputs.split(",")
  trainer = "trainer" in args.teacher_outputs.split(",")
  if cached or trainer:
    rows = np.asarray(jax.jit(teacher.apply)(teacher_vars, images)).astype(np.float16)
  if trainer:
    trainer_step, trainer_state, trainer_batch = trainer_cached_step(
        student, tx, student_vars, rows, images, labels, index)
  if cached:
    cached_step = jax.jit(make_jax_step(cached_teacher, student, tx, kd_method_config()),
                          donate_argnums=0)
    # Its own copy of the initial state: each step donates (deletes) the state it is given.
    cached_state, cached_rows = jax.tree.map(jnp.copy, jax.device_put(state)), jax.device_put(rows)
  state, teacher_vars, x, y, idx = jax.device_put((state, teacher_vars, images, labels, index))
  if jax.device_count() > 1:  # --host-devices: the trainer's layout, batch split over devices
    mesh = parallel.make_mesh()
    state, teacher_vars = parallel.replicate((state, teacher_vars), mesh)
    x, y, idx = jax.device_put((x, y, idx), parallel.data_sharded(mesh))
    if cached:
      cached_state = parallel.replicate(cached_state, mesh)
      cached_rows = jax.device_put(cached_rows, parallel.data_sharded(mesh))

  start = time.perf_counter()
  lowered = step.lower(state, teacher_vars, x, y, idx)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # A sharded executable is the per-device program: count every device's share.
  flops = float(cost.get("flops", float("nan"))) * jax.device_count()

  x_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(torch_device)
  y_t = torch.from_numpy(labels.astype(np.int64)).to(torch_device)
  eager = TorchStep(teacher_t, student_t, torch_device, args.dtype)

  # Agreement: the first two steps' losses (the second checks the update too).
  jax_losses, torch_losses = [], []
  start = time.perf_counter()
  cached_losses, trainer_losses = [], []
  for i in range(2):
    state, loss = step(state, teacher_vars, x, y, idx)
    jax_losses.append(float(loss))
    if i == 0:
      first_call_s = time.perf_counter() - start
    if cached:
      cached_state, loss = cached_step(cached_state, cached_rows, x, y, idx)
      cached_losses.append(float(loss))
    if trainer:
      trainer_state, metrics = trainer_step(trainer_state, trainer_batch)
      trainer_losses.append(float(metrics["loss"]))
    torch_losses.append(float(eager(x_t, y_t).detach()))
  tolerance = 1e-3 if args.dtype == "float32" and torch_device == "cpu" else 3e-2

  def relative_errors(losses):
    return [abs(j - t) / abs(t) for j, t in zip(losses, torch_losses)]

  errors = relative_errors(jax_losses)
  cached_errors, trainer_errors = relative_errors(cached_losses), relative_errors(trainer_losses)
  agree = bool(all(e <= tolerance for e in errors) and np.all(np.isfinite(jax_losses)))
  # The looked-up steps read float16 logits: 2e-3 more.
  for looked_up, looked_up_errors in ((cached_losses, cached_errors),
                                      (trainer_losses, trainer_errors)):
    agree = agree and bool(all(e <= tolerance + 2e-3 for e in looked_up_errors)
                           and np.all(np.isfinite(looked_up)))

  implementations = {"kd_jax": None, "torch": eager}
  compile_status = "off"
  if args.torch_compile == "on":
    torch._dynamo.reset()  # fresh guards and recompile budget per case
    compiled_step = TorchStep(teacher_t, student_t, torch_device, args.dtype, compiled=True)
    try:
      start = time.perf_counter()
      with common.deadline(args.torch_compile_timeout, "torch.compile's first step"):
        compiled_loss = float(compiled_step(x_t, y_t).detach())
        common.torch_sync(torch_device)
      compile_status = f"ok ({time.perf_counter() - start:.1f} s first step)"
      if not np.isfinite(compiled_loss):
        raise FloatingPointError(f"torch.compile loss {compiled_loss}")
      implementations["torch.compile"] = compiled_step
    except Exception as error:  # any compile/runtime failure is a result, not a crash
      compile_status = _failure(error)

  carried = {}  # the latest state of each timed jax step (donated: always pass the newest)

  def jax_timer(name, initial, run):
    """Times `run(state) -> (state, out)`, carrying the newest (donated) state."""
    carried[name] = initial

    def timed():
      start = time.perf_counter()
      for _ in range(args.steps):
        carried[name], out = run(carried[name])
      jax.block_until_ready((carried[name], out))
      return args.steps * batch / (time.perf_counter() - start)
    return timed

  def torch_block(run):
    def timed():
      common.torch_sync(torch_device)
      start = time.perf_counter()
      for _ in range(args.steps):
        run(x_t, y_t)
      common.torch_sync(torch_device)
      return args.steps * batch / (time.perf_counter() - start)
    return timed

  # Already warm: the agreement steps ran kd_jax and torch eager twice, torch.compile once.
  blocks = {"kd_jax": jax_timer("kd_jax", state, lambda s: step(s, teacher_vars, x, y, idx))}
  if cached:
    blocks["kd_jax cached"] = jax_timer("kd_jax cached", cached_state,
                                        lambda s: cached_step(s, cached_rows, x, y, idx))
  if trainer:
    blocks["kd_jax trainer cached"] = jax_timer("kd_jax trainer cached", trainer_state,
                                                lambda s: trainer_step(s, trainer_batch))
  blocks.update({name: torch_block(run) for name, run in implementations.items() if run})
  rounds = common.alternate(blocks, args.rounds)
  rate = {name: common.median(values) for name, values in rounds.items()}

  record = dict(kind="step", pair=f"{teacher_name}->{student_name}", teacher=teacher_name,
                student=student_name, batch=batch, dtype=args.dtype,
                jax_backend=jax.default_backend(), jax_devices=jax.device_count(),
                torch_device=torch_device,
                steps_per_round=args.steps, rounds=args.rounds,
                jax_images_per_s=round(rate["kd_jax"], 1),
                torch_images_per_s=round(rate["torch"], 1),
                jax_over_torch=round(rate["kd_jax"] / rate["torch"], 2),
                jax_cached_images_per_s=(round(rate["kd_jax cached"], 1) if cached else None),
                jax_cached_over_torch=(round(rate["kd_jax cached"] / rate["torch"], 2)
                                       if cached else None),
                jax_cached_over_live=(round(rate["kd_jax cached"] / rate["kd_jax"], 2)
                                      if cached else None),
                jax_cached_cache_size=cached_step._cache_size() if cached else None,
                cached_losses=cached_losses,
                cached_loss_rel_err=[float(f"{e:.2e}") for e in cached_errors],
                jax_trainer_cached_images_per_s=(round(rate["kd_jax trainer cached"], 1)
                                                 if trainer else None),
                jax_trainer_cached_over_torch=(
                    round(rate["kd_jax trainer cached"] / rate["torch"], 2) if trainer else None),
                jax_trainer_cached_cache_size=trainer_step._cache_size() if trainer else None,
                trainer_losses=trainer_losses,
                trainer_loss_rel_err=[float(f"{e:.2e}") for e in trainer_errors],
                torch_compile=compile_status,
                torch_compile_images_per_s=(round(rate["torch.compile"], 1)
                                            if "torch.compile" in rate else None),
                jax_over_torch_compile=(round(rate["kd_jax"] / rate["torch.compile"], 2)
                                        if "torch.compile" in rate else None),
                jax_trace_lower_s=round(lower_s, 2), jax_compile_s=round(compile_s, 2),
                jax_first_call_s=round(first_call_s, 3),
                jax_cache_size=step._cache_size(),
                flops_per_step=flops,
                jax_gflop_per_s=round(flops * rate["kd_jax"] / batch / 1e9, 1),
                torch_gflop_per_s=round(flops * rate["torch"] / batch / 1e9, 1),
                agree=agree, loss_rel_err=[float(f"{e:.2e}") for e in errors],
                jax_losses=jax_losses, torch_losses=torch_losses,
                rounds_images_per_s={k: [round(v, 1) for v in vs] for k, vs in rounds.items()})
  if "torch.compile" in rate:
    record["torch_compile_gflop_per_s"] = round(flops * rate["torch.compile"] / batch / 1e9, 1)
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", default="resnet32x4:resnet8x4,wrn_40_2:wrn_16_2",
                      help="comma-separated teacher:student model names")
  parser.add_argument("--batch-sizes", default="64,256")
  parser.add_argument("--steps", type=int, default=10, help="steps per timing round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  common.add_machine_args(parser)
  parser.add_argument("--torch-compile", choices=("on", "off"), default=None,
                      help="also time torch.compile (default: on, off with --quick)")
  parser.add_argument("--torch-compile-timeout", type=float, default=900,
                      help="seconds allowed for torch.compile's first step, else 'failed'")
  parser.add_argument("--teacher-outputs", default="live,cache",
                      help="'live' (the forward pass; always timed), plus 'cache' (the step "
                      "with the teacher's logits read from the batch, as the cache streams "
                      "them) and/or 'trainer' (the trainer's own step on those rows)")
  parser.add_argument("--cache-examples", type=int, default=50_000,
                      help="the training set the batch's example indices are drawn from")
  parser.add_argument("--host-devices", type=int, default=1,
                      help="CPU only: split the CPU into this many XLA devices and shard kd_jax's "
                      "batch over them (XLA_FLAGS --xla_force_host_platform_device_count)")
  common.add_quick_arg(parser)
  args = parser.parse_args(argv)
  if args.host_devices > 1:
    if args.device == "gpu":
      raise SystemExit("--host-devices applies to the CPU; it cannot be used with --device gpu")
    # Read when JAX starts its CPU backend, which has not happened yet.
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS"),
        f"--xla_force_host_platform_device_count={args.host_devices}"]))
    args.device = "cpu"
    uneven = [b for b in args.batch_sizes.split(",") if int(b) % args.host_devices]
    if uneven:
      raise SystemExit(f"--batch-sizes {','.join(uneven)}: not divisible by --host-devices "
                       f"{args.host_devices}")
  if args.quick:
    args.pairs, args.batch_sizes, args.steps, args.rounds = "resnet8:resnet8", "4", 2, 2
    args.cache_examples, args.teacher_outputs = 64, "live,cache,trainer"
  if args.torch_compile is None:
    args.torch_compile = "off" if args.quick else "on"
  # CPU XLA cannot always reuse donated buffers; the warning says nothing about speed here.
  warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

  backend, torch_device, threads = common.start(args)
  if torch_device == "cuda":
    torch.backends.cudnn.benchmark = True
  records = []
  for pair in args.pairs.split(","):
    teacher_name, student_name = pair.split(":")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
      record = run_case(teacher_name, student_name, batch, args, torch_device)
      common.emit(record)
      records.append(record)

  def ratio(value):
    return "-" if value is None else f"{value:.2f}x"

  rows = [[r["pair"], r["batch"], r["dtype"], r["jax_images_per_s"], r["torch_images_per_s"],
           ratio(r["jax_over_torch"]), r["jax_cached_images_per_s"] or "-",
           ratio(r["jax_cached_over_torch"]), r["jax_trainer_cached_images_per_s"] or "-",
           ratio(r["jax_trainer_cached_over_torch"]),
           r["torch_compile_images_per_s"] or r["torch_compile"],
           ratio(r["jax_over_torch_compile"]),
           f"{r['jax_trace_lower_s']:.1f} + {r['jax_compile_s']:.1f}", r["jax_cache_size"],
           f"{r['flops_per_step'] / 1e9:.1f}", r["jax_gflop_per_s"], r["torch_gflop_per_s"],
           "ok" if r["agree"] else f"FAIL {r['loss_rel_err']}"] for r in records]
  print()
  devices = (f" (kd_jax batch sharded over {jax.device_count()} devices)"
             if jax.device_count() > 1 else "")
  print(f"KD train step, {backend} JAX vs torch {torch_device}, {threads} threads each{devices}; median "
        f"images/s of {args.rounds} alternating rounds of {args.steps} steps")
  print(common.markdown_table(
      ["teacher->student", "B", "dtype", "kd_jax img/s", "torch img/s", "kd_jax/torch",
       "kd_jax cached-teacher img/s", "cached/torch", "trainer step, cached img/s",
       "trainer cached/torch",
       "torch.compile img/s", "kd_jax/compile", "jax trace+compile s", "jit cache",
       "GFLOP/step (XLA)", "kd_jax GFLOP/s", "torch GFLOP/s", "agree"], rows))
  failed = [r["pair"] + f"@{r['batch']}" for r in records if not r["agree"]]
  return common.exit_status(failed, "DISAGREE (first two steps' losses)",
                            f"all {len(records)} cases agree (first two steps' losses)")


if __name__ == "__main__":
  raise SystemExit(main())
