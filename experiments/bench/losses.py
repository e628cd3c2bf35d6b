"""Benchmark: every method's objective and its gradient, kd_jax (jit) against PyTorch eager.

  PYTHONPATH=. python experiments/bench/losses.py [--classes 100,1000] [--batch 1024]
      [--methods kd,dkd,...] [--rounds 7] [--block-s 0.1] [--device auto|cpu|gpu]
      [--threads N] [--quick]
  PYTHONPATH=. python experiments/bench/losses.py --token [--token-shape 8,512,32000]
      [--rounds 3] [--threads N] [--quick]

For each method of `kd_jax.methods.NAMES` (the `*_ds` names are skipped: per example they
are their base method) and each class count C, times one evaluation of the batch-mean
objective and its gradient with respect to the student logits `[B, C]`:

  kd_jax  `jax.jit(jax.value_and_grad(mean(methods.per_example_losses(config, ...)["loss"])))`
          with `config = methods.default_config()` renamed to the method, i.e. what the
          trainer runs; logits, labels, teacher logits, class similarity and epoch are
          arguments (nothing is closed over as a constant), `block_until_ready` per call.
  torch   the same equations written the straightforward PyTorch way (softmax/log_softmax,
          `F.kl_div` with T^2 as RepDistiller's DistillKL, DKD verbatim from mdistiller's
          `dkd_loss`, label revision, top-k, pt, sim, `F.cross_entropy` with label smoothing,
          TSD with `topk` on detached probabilities), eager, `.backward()` per call.

Before timing, each case checks that the two agree (loss and gradient: relative error
<= 1e-4, gradients elementwise within rtol 1e-4 + 1e-4 * max|grad|). `epoch` is past every
warm-up so the DKD and TSD terms are on. Both frameworks use the same number of CPU threads
(printed); the two implementations alternate in rounds; reported: the median per-call time,
the speedup as the median of the per-round ratios (adjacent blocks share the machine's load),
and the best round of each (min/min), since a shared machine makes single rounds noisy. A
third block, timed in the same rounds, is kd_jax's floor: a jitted call that returns a fresh
`[B, C]` array and a scalar, the fixed cost every kd_jax call pays (dispatch, allocation).
Output: one JSON line per case, then a markdown table and which cases meet the target
(median speedup >= 2x at C = 100 and C = 1000; tsd and kd_topk, whose top-k selection is
`jax.lax.top_k`, are reported as measured). The exit status is 1 when any case disagrees.

`--token`: token-level distillation instead, the losses on `[B, T, V]` logits (default
`[8, 512, 32000]`) with a padding mask (`where`; about 1/8 of the tokens padded) for kd, lr
and dkd (`tokens.py`): time per value-and-grad call, kd_jax's compiled temporary
memory (`memory_analysis()`), and each side's peak memory above its inputs (RSS, measured in
a child process per case), against the straightforward PyTorch version.
"""

import argparse
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.nn import functional as F

from kd_jax import methods, targets

TARGETS = {100: 2.0, 1000: 2.0}   # minimum kd_jax/torch speedup per class count
MEASURED_ONLY = ("tsd", "kd_topk")  # lax.top_k's selection: reported, not judged
EPOCH = 1000.0                    # past every warm-up ramp (dkd: 20 epochs, tsd: 5)
RTOL = 1e-4


def method_names(requested: str | None) -> list[str]:
  names = [n for n in methods.NAMES if not methods.uses_selection(n)]
  if requested:
    wanted = requested.split(",")
    unknown = sorted(set(wanted) - set(names))
    if unknown:
      raise SystemExit(f"unknown or skipped methods {unknown}; choose from {names}")
    names = [n for n in names if n in wanted]
  return names


def make_inputs(batch: int, num_classes: int, seed: int = 0) -> dict:
  """Student/teacher logits, labels (teacher right on about 3/4) and a class similarity."""
  rng = np.random.default_rng([seed, batch, num_classes])
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  student = (2.0 * rng.normal(size=(batch, num_classes))).astype(np.float32)
  teacher = 2.0 * rng.normal(size=(batch, num_classes))
  teacher[np.arange(batch), labels] += np.where(rng.random(batch) < 0.75, 6.0, 0.0)
  kernel = rng.normal(size=(64, num_classes)).astype(np.float32)
  similarity = np.asarray(targets.class_similarity(kernel, 1.0))
  return dict(student=student, labels=labels, teacher=teacher.astype(np.float32),
              similarity=similarity, epoch=np.float32(EPOCH))


# ---------------------------------------------------------------------------- kd_jax side


def jax_value_and_grad(config):
  """Jitted (mean objective, d/d student logits) of `config.name`, everything an argument."""
  def mean_objective(student, labels, teacher, similarity, epoch):
    terms = methods.per_example_losses(config, student, labels, teacher, epoch=epoch,
                                       class_similarity=similarity)
    return jnp.mean(terms["loss"])
  return jax.jit(jax.value_and_grad(mean_objective))


def jax_arguments(config, data: dict) -> tuple:
  name = config.name
  teacher = data["teacher"] if methods.needs_teacher(name) else None
  similarity = data["similarity"] if methods.needs_class_similarity(name) else None
  args = (data["student"], data["labels"], teacher, similarity, data["epoch"])
  return jax.device_put(args)


# ----------------------------------------------------------------------------- torch side


def _cat_mask(t, mask1, mask2):
  """mdistiller's `cat_mask`: [target mass, non-target mass] per example."""
  t1 = (t * mask1).sum(dim=1, keepdims=True)
  t2 = (t * mask2).sum(1, keepdims=True)
  return torch.cat([t1, t2], dim=1)


def mdistiller_dkd(logits_student, target, alpha, beta, temperature, logits_teacher=None,
                   pred_teacher=None):
  """mdistiller's `dkd_loss` (mdistiller/distillers/DKD.py), `size_average=False` spelled
  `reduction="sum"`. `pred_teacher` replaces `softmax(logits_teacher / T)` for the revised
  teacher (dkd_lr); its non-target part is then renormalised explicitly."""
  gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
  other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()
  pred_student = F.softmax(logits_student / temperature, dim=1)
  if pred_teacher is None:
    teacher_full = F.softmax(logits_teacher / temperature, dim=1)
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
  else:
    teacher_full = pred_teacher
    rest = pred_teacher * other_mask
    pred_teacher_part2 = rest / rest.sum(1, keepdim=True)
  pred_student = _cat_mask(pred_student, gt_mask, other_mask)
  pred_teacher = _cat_mask(teacher_full, gt_mask, other_mask)
  log_pred_student = torch.log(pred_student)
  tckd_loss = (F.kl_div(log_pred_student, pred_teacher, reduction="sum")
               * (temperature**2) / target.shape[0])
  log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
  nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
               * (temperature**2) / target.shape[0])
  return alpha * tckd_loss + beta * nckd_loss


def torch_objective(config, student, labels, teacher, similarity, epoch):
  """The batch-mean objective of `config.name`, written as a PyTorch user would."""
  name, temperature = config.name, config.temperature
  batch, num_classes = student.shape
  ce = F.cross_entropy(student, labels)
  if name == "ce":
    return ce
  if name == "ls":  # torch's label_smoothing spreads eps over all C classes ("all")
    return F.cross_entropy(student, labels, label_smoothing=config.label_smoothing)
  if name == "cp":  # confidence penalty: CE - beta * H(p)
    log_p = F.log_softmax(student, dim=1)
    return ce + config.cp_beta * (log_p.exp() * log_p).sum(1).mean()
  if name == "tsd":
    probs = F.softmax(student, dim=1)
    _, order = probs.detach().topk(config.tsd_num_secondary + 1, dim=1)
    ranked = probs.gather(1, order)
    tsd = ranked[:, 0] - ranked[:, 1:].mean(1)
    return ce + config.tsd_eta * min(1.0, epoch / config.tsd_warmup_epochs) * tsd.mean()

  if name in ("kd_pt", "kd_sim", "kd_pt_sim", "kd_topk"):  # Tang's targets: their own T
    temperature = config.target_temperature
  q = F.softmax(teacher / temperature, dim=1)
  one_hot = F.one_hot(labels, num_classes).to(student.dtype)
  if name in ("lr", "dkd_lr"):  # label revision
    q_y = q.gather(1, labels[:, None])
    beta = config.eta / (q.max(dim=1, keepdim=True).values - q_y + 1.0)
    q = beta * q + (1.0 - beta) * one_hot
  if name in ("dkd", "dkd_lr"):
    ramp = min(1.0, epoch / config.dkd_warmup_epochs)
    dkd = mdistiller_dkd(student, labels, config.dkd_alpha, config.dkd_beta, temperature,
                         logits_teacher=teacher if name == "dkd" else None,
                         pred_teacher=q if name == "dkd_lr" else None)
    return config.dkd_ce_weight * ce + ramp * dkd
  if name in ("kd", "lr"):
    target = q
  elif name == "kd_pt":
    q_y = q.gather(1, labels[:, None])
    target = one_hot * q_y + (1.0 - one_hot) * (1.0 - q_y) / (num_classes - 1)
  elif name == "kd_sim":
    target = (1.0 - config.sim_epsilon) * one_hot + config.sim_epsilon * similarity[labels]
  elif name == "kd_pt_sim":
    q_y = q.gather(1, labels[:, None])
    target = one_hot * q_y + (1.0 - q_y) * similarity[labels]
  elif name == "kd_topk":
    values, index = q.topk(config.topk, dim=1)
    kept = torch.zeros_like(q, dtype=torch.bool).scatter_(1, index, True)
    rest = ((1.0 - values.sum(1, keepdim=True)) / (num_classes - config.topk)).clamp_min(0.0)
    target = torch.where(kept, q, rest)
  else:
    raise ValueError(f"no torch version of method {name!r}")
  if name not in ("kd", "lr") and temperature == 1.0:  # Tang's H(target, p_s) at T = 1
    term = -(target * F.log_softmax(student, dim=1)).sum(1).mean()
  else:  # RepDistiller's DistillKL: kl_div(log p_s, target, sum) * T^2 / B.
    term = (F.kl_div(F.log_softmax(student / temperature, dim=1), target, reduction="sum")
            * temperature**2 / batch)
  return config.ce_weight * ce + config.kd_weight * term


def torch_arguments(data: dict, device: str) -> tuple:
  student = torch.tensor(data["student"], device=device, requires_grad=True)
  labels = torch.tensor(data["labels"].astype(np.int64), device=device)
  teacher = torch.tensor(data["teacher"], device=device)
  similarity = torch.tensor(data["similarity"], device=device)
  return student, labels, teacher, similarity, float(data["epoch"])


def torch_value_and_grad(config, args):
  student = args[0]
  student.grad = None
  loss = torch_objective(config, *args)
  loss.backward()
  return loss, student.grad


# ---------------------------------------------------------------------------------- cases


def agreement(jax_out, torch_out) -> dict:
  """Relative errors of kd_jax's loss and gradient against torch's, and whether they pass."""
  jax_loss, jax_grad = (np.asarray(x, np.float64) for x in jax_out)
  torch_loss = float(torch_out[0].detach().cpu())
  torch_grad = torch_out[1].detach().cpu().double().numpy()
  loss_err = abs(float(jax_loss) - torch_loss) / max(abs(torch_loss), 1e-30)
  grad_scale = np.abs(torch_grad).max()
  grad_err = np.linalg.norm(jax_grad - torch_grad) / max(np.linalg.norm(torch_grad), 1e-30)
  elementwise = bool(np.all(np.abs(jax_grad - torch_grad)
                            <= RTOL * np.abs(torch_grad) + RTOL * grad_scale))
  ok = loss_err <= RTOL and grad_err <= RTOL and elementwise and np.isfinite(jax_loss)
  return dict(agree=bool(ok), loss_rel_err=float(loss_err), grad_rel_err=float(grad_err),
              loss=torch_loss)


def run_case(name: str, num_classes: int, batch: int, args, torch_device: str) -> dict:
  config = methods.default_config()
  config.name = name
  methods.validate(config, num_classes)
  data = make_inputs(batch, num_classes)
  jax_fn = jax_value_and_grad(config)
  jax_args = jax_arguments(config, data)
  torch_args = torch_arguments(data, torch_device)

  # The fixed cost of any such call (dispatch, a fresh [B, C] output), timed alongside.
  floor_fn = jax.jit(lambda z: (z[0, 0], z * 2))
  start = time.perf_counter()
  jax_out = jax.block_until_ready(jax_fn(*jax_args))
  compile_s = time.perf_counter() - start
  torch_out = torch_value_and_grad(config, torch_args)
  check = agreement(jax_out, torch_out)
  cost = jax_fn.lower(*jax_args).compile().cost_analysis()  # the executable just compiled
  cost = cost[0] if isinstance(cost, list) else cost
  xla_cost = {f"xla_{k.replace(' ', '_')}": float(cost[k])
              for k in ("flops", "transcendentals", "bytes accessed") if k in cost}

  def jax_call():
    jax.block_until_ready(jax_fn(*jax_args))

  def torch_call():
    torch_value_and_grad(config, torch_args)
    common.torch_sync(torch_device)

  def floor_call():
    jax.block_until_ready(floor_fn(jax_args[0]))

  calls = {}
  for label, call in (("jax", jax_call), ("torch", torch_call), ("floor", floor_call)):
    call()  # warm (allocator, caches)
    calls[label] = common.per_call_us(call, args.block_s)

  rounds = common.alternate({label: block for label, (block, _) in calls.items()}, args.rounds)
  jax_us, torch_us = common.median(rounds["jax"]), common.median(rounds["torch"])
  floor_us = common.median(rounds["floor"])
  speedup = common.median([t / j for j, t in zip(rounds["jax"], rounds["torch"])])
  best_speedup = min(rounds["torch"]) / min(rounds["jax"])
  target = None if name in MEASURED_ONLY else TARGETS.get(num_classes)
  return dict(kind="loss", method=name, C=num_classes, B=batch, jax_us=round(jax_us, 1),
              torch_us=round(torch_us, 1), jax_floor_us=round(floor_us, 1),
              speedup=round(speedup, 2),
              target=target, meets_target=None if target is None else bool(speedup >= target),
              jax_us_min=round(min(rounds["jax"]), 1),
              torch_us_min=round(min(rounds["torch"]), 1),
              best_round_speedup=round(best_speedup, 2),
              **check, jax_compile_s=round(compile_s, 3),
              jax_rounds_us=[round(t, 1) for t in rounds["jax"]],
              torch_rounds_us=[round(t, 1) for t in rounds["torch"]],
              reps_per_round={label: reps for label, (_, reps) in calls.items()},
              cache_size=jax_fn._cache_size(), **xla_cost)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--classes", default="100,1000", help="comma-separated class counts")
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--methods", default=None, help="comma-separated subset of methods")
  common.add_timing_args(parser, rounds=7, block_s=0.1)
  parser.add_argument("--token", action="store_true",
                      help="token-level [B, T, V] kd, lr, dkd with a padding mask instead")
  parser.add_argument("--token-shape", default="8,512,32000", help="B,T,V for --token")
  parser.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)  # child process
  args = parser.parse_args(argv)
  if args.quick:
    args.classes, args.batch, args.rounds, args.block_s = "10", 32, 2, 0.002
    args.token_shape = "2,8,50"
  if args.token or args.peak_of:
    import tokens
    return tokens.main(args)

  backend, torch_device, threads = common.start(args)
  records = []
  for num_classes in (int(c) for c in args.classes.split(",")):
    for name in method_names(args.methods):
      record = run_case(name, num_classes, args.batch, args, torch_device)
      common.emit(record)
      records.append(record)

  rows = [[r["method"], r["C"], r["B"], r["jax_us"], r["torch_us"], r["jax_floor_us"],
           f"{r['speedup']:.2f}x",
           r["jax_us_min"], r["torch_us_min"], f"{r['best_round_speedup']:.2f}x",
           "-" if r["target"] is None else f">= {r['target']}x",
           "-" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO"),
           "ok" if r["agree"] else f"FAIL ({r['loss_rel_err']:.1e}, {r['grad_rel_err']:.1e})"]
          for r in records]
  print()
  print(f"value_and_grad of the batch-mean objective w.r.t. student logits; {backend} JAX vs "
        f"torch {torch_device}, {threads} threads each; {args.rounds} alternating rounds: "
        "median time per call, speedup = median of the per-round torch/kd_jax ratios "
        "(judged against the target), and the best round of each (min/min); floor = a jitted "
        "call returning a fresh [B, C] array and a scalar, timed in the same rounds")
  print(common.markdown_table(["method", "C", "B", "kd_jax us", "torch us",
                               "kd_jax floor us", "speedup",
                               "kd_jax us (best)", "torch us (best)", "speedup (best)",
                               "target", "met", "agree"], rows))
  for num_classes, target in TARGETS.items():
    cases = [r for r in records if r["C"] == num_classes and r["target"] is not None]
    if cases:
      met = [r["method"] for r in cases if r["meets_target"]]
      missed = [r["method"] for r in cases if not r["meets_target"]]
      print(f"C={num_classes}: {len(met)}/{len(cases)} meet >= {target}x"
            + (f"; below: {', '.join(missed)}" if missed else "")
            + f" ({', '.join(MEASURED_ONLY)}: as measured)")
  disagree = [f"{r['method']}@C={r['C']}" for r in records if not r["agree"]]
  return common.exit_status(disagree, f"DISAGREE (kd_jax vs torch beyond rtol {RTOL})",
                            f"all {len(records)} cases agree (rtol {RTOL})")


if __name__ == "__main__":
  raise SystemExit(main())
