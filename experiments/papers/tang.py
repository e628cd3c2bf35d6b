r"""Tang et al. 2020 (arXiv 2002.03532) on synthetic data: KD = LS + class relationships + rescaling.

One command, offline, in one process (the real trainer, `kd_jax.pipeline.run`, per run):

  python experiments/papers/tang.py --out=experiments/results/papers/tang

For every class correlation rho (the synthetic data's knob, `--correlations`) and every seed,
one mlp_large teacher is trained with CE (`stages="teacher"`), then every student method
(mlp_small, `stages="student"`, the teacher through `teacher.checkpoint`) is distilled from
it with that seed. All runs of a correlation train on the same examples (`dataset.seed`,
`dataset.holdout`, `dataset.holdout_seed` fixed); the seed changes init and data order.

Students (every temperature field set explicitly; `T` = `temperature`, KD's;
`Tt` = `target_temperature`, the one ls/kd_pt/kd_sim/kd_pt_sim/kd_topk read):
  ce         CE(z_s, y)
  ls         H((1 - eps) e_y + eps / C, p_s)                       Tt = 1
  kd_T1      KL(p_t || p_s)                 (ce_weight 0)           T = 1
  kd_T4      0.1 CE + 0.9 * 16 KL(p(z_t,4) || p(z_s,4))             T = 4 (RepDistiller protocol)
  kd_pt      H([q_y; (1 - q_y)/(C - 1)], p_s)                       Tt = 1
  kd_sim     H((1 - eps) e_y + eps rho(y), p_s)                     Tt = 1
  kd_pt_sim  H([q_y; (1 - q_y) rho(y)], p_s)                        Tt = 1
  kd_topk<k> H(top-k of q, rest uniform, p_s)                       Tt = 1
  ls_eps0.1, kd_sim_eps0.1   controls: ls and kd_sim at a fixed eps (`--fixed_eps`)
The teacher variants (ls, kd_T1, kd_pt, kd_sim, kd_pt_sim, kd_topk) use ce_weight 0 and
kd_weight 1, so each is exactly H(target, p_s) and the four partial targets are pieces of
kd_T1's target p_t. `eps` (LS and KD-sim) is the teacher's mean off-target mass on the
training examples, mean(1 - q_y), so ls, kd_pt, kd_sim and kd_pt_sim put the same average
mass off the true class and differ only in where and per which example. `rho` is
`targets.class_similarity` of the teacher's classifier kernel at temperature tau_s, chosen
per teacher from a grid as the tau whose rho(y) is closest (mean KL over classes) to the
teacher's own off-target distribution q_{-y} / (1 - q_y) averaged over the examples of class y.

Also: a top-k sweep over k; the failure case (an LS-trained teacher distils worse than the CE
teacher, at `--ls_teacher_correlation`); and the instance-level rescaling: per training
example, the gradient of KD w.r.t. the student logits (`kd_jax.losses` under `jax.grad`) on
the true class against the teacher's q_y, for the student at initialisation and the trained
CE student. Writes OUT/results.json, OUT/results.md, OUT/*.png; the runs go to OUT/runs
(git-ignored). Finished runs are skipped on rerun, so an interrupted command continues.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import report
from in_process import (
  add_synthetic_args,
  logits_on,
  pyplot,
  run_args,
  start,
  synthetic_config,
)
from in_process import softmax as _softmax
from report import fmt, mean_std
from scipy import stats as scipy_stats

from kd_jax import config_defaults, losses, models, pipeline, targets
from kd_jax.data.synthetic import superclass_of
from kd_jax.train import loop
from kd_jax.train import state as state_lib
from kd_jax.train import teacher as teacher_lib

TEACHER_MODEL, STUDENT_MODEL = "mlp_large", "mlp_small"
SIM_TAUS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
MAIN = ("ce", "ls", "kd_T1", "kd_T4", "kd_pt", "kd_sim", "kd_pt_sim")
PLOTTED = ("ce", "kd_T1", "kd_T4", "kd_pt", "kd_sim", "kd_pt_sim")


def parse_args(argv=None):
  p = run_args(__doc__)
  p.add_argument("--correlations", default="0.0,0.25,0.5,0.75,0.9")
  add_synthetic_args(p)
  p.add_argument("--teacher_epochs", type=int, default=4)
  p.add_argument("--fixed_eps", type=float, default=0.1,
                 help="eps of the ls_eps/kd_sim_eps controls (0: none)")
  p.add_argument("--topk", type=int, default=0, help="main k (0: classes per superclass)")
  p.add_argument("--topk_sweep", default="1,2,10,25", help="extra k values")
  p.add_argument("--topk_sweep_correlations", default="0.0,0.9")
  p.add_argument("--ls_teacher_correlation", type=float, default=0.75)
  p.add_argument("--ls_teacher_epsilon", type=float, default=0.1)
  p.add_argument("--grad_correlation", type=float, default=0.5)
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- configs

def base_config(args, correlation, seed):
  return synthetic_config(args, "tang", seed, correlation)


def teacher_config(args, correlation, seed, method):
  c = base_config(args, correlation, seed)
  c.stages = "teacher"
  c.teacher = config_defaults.teacher(TEACHER_MODEL, **method)
  c.teacher.num_epochs = args.teacher_epochs
  return c


def teacher_method(kind, args):
  if kind == "ce":
    return dict(method_name="ce", temperature=1.0, target_temperature=1.0)
  return dict(method_name="ls", label_smoothing=args.ls_teacher_epsilon,
              smoothing_spread="all", temperature=1.0, target_temperature=1.0)


def student_methods(eps, tau, ks, fixed_eps=0.0):
  """label -> method block overrides (every temperature explicit)."""
  tang = dict(temperature=1.0, target_temperature=1.0, ce_weight=0.0, kd_weight=1.0)
  out = {
      "ce": dict(name="ce", temperature=1.0, target_temperature=1.0),
      "ls": dict(name="ls", label_smoothing=eps, smoothing_spread="all", temperature=1.0,
                 target_temperature=1.0),
      "kd_T1": dict(name="kd", **tang),
      "kd_T4": dict(name="kd", temperature=4.0, target_temperature=1.0, ce_weight=0.1,
                    kd_weight=0.9),
      "kd_pt": dict(name="kd_pt", **tang),
      "kd_sim": dict(name="kd_sim", sim_epsilon=eps, sim_temperature=tau, **tang),
      "kd_pt_sim": dict(name="kd_pt_sim", sim_temperature=tau, **tang),
  }
  for k in ks:
    out[f"kd_topk{k}"] = dict(name="kd_topk", topk=int(k), **tang)
  if fixed_eps:  # controls: LS and KD-sim at one fixed eps instead of the teacher's mass
    out[f"ls_eps{fixed_eps:g}"] = dict(out["ls"], label_smoothing=fixed_eps)
    out[f"kd_sim_eps{fixed_eps:g}"] = dict(out["kd_sim"], sim_epsilon=fixed_eps)
  return out


def student_config(args, correlation, seed, teacher_dir, method):
  c = base_config(args, correlation, seed)
  c.stages = "student"
  c.teacher = config_defaults.teacher(TEACHER_MODEL, "ce", checkpoint=teacher_dir)
  overrides = dict(method)
  c.student = config_defaults.student(STUDENT_MODEL, overrides.pop("name"), **overrides)
  return c


def describe(method):
  """The table's method column: name, T, Tt, weights and the method's own knobs."""
  name = method["name"]
  parts = [name, f"T={method['temperature']:g}", f"Tt={method['target_temperature']:g}"]
  if name not in ("ce", "ls"):
    parts.append(f"ce_w={method['ce_weight']:g}, kd_w={method['kd_weight']:g}")
  for key, label in (("label_smoothing", "eps"), ("sim_epsilon", "eps"),
                     ("sim_temperature", "tau_s"), ("topk", "k")):
    if key in method:
      parts.append(f"{label}={method[key]:g}")
  return ", ".join(parts)


# ----------------------------------------------------------------------------- running

def teacher_stats(run_dir, data, mesh, num_superclasses):
  """The teacher on the student's training examples: eps = mean(1 - q_y), tau_s fitted to
  its class relationships, and superclass shares (what KD-sim can transfer)."""
  info = data.info
  teacher = teacher_lib.from_run(run_dir, TEACHER_MODEL, info, mesh)
  logits, labels = logits_on(TEACHER_MODEL, teacher.variables, data.train, mesh)
  q = _softmax(logits)
  num_classes = q.shape[1]
  rows = np.arange(len(labels))
  q_y = q[rows, labels]
  off = q.copy()
  off[rows, labels] = 0.0
  off /= np.maximum(off.sum(1, keepdims=True), 1e-12)
  mean_off = np.stack([off[labels == c].mean(0) for c in range(num_classes)])
  supers = superclass_of(num_classes, num_superclasses)
  same = (supers[:, None] == supers[None, :]) & ~np.eye(num_classes, dtype=bool)
  kernel = jax.device_get(teacher.variables["params"]["classifier"]["kernel"])
  fits = {}
  for tau in SIM_TAUS:
    rho = np.asarray(targets.class_similarity(kernel, tau), np.float64)
    kl = np.where(mean_off > 0, mean_off * (np.log(np.maximum(mean_off, 1e-300))
                                            - np.log(np.maximum(rho, 1e-300))), 0.0)
    fits[tau] = dict(kl=float(kl.sum(1).mean()), rho_in_superclass=float((rho * same).sum(1).mean()))
  tau = min(fits, key=lambda t: fits[t]["kl"])
  return dict(
      train_accuracy=float(np.mean(q.argmax(1) == labels)),
      mean_q_y=float(q_y.mean()), std_q_y=float(q_y.std()),
      eps=round(float(1.0 - q_y.mean()), 3), sim_temperature=tau,
      teacher_off_target_in_superclass=float((off * same[labels]).sum(1).mean()),
      uniform_in_superclass=float(same.sum(1).mean() / (num_classes - 1)),
      rho_fits={str(t): v for t, v in fits.items()},
      rho_in_superclass=fits[tau]["rho_in_superclass"])


# ----------------------------------------------------------------------------- gradients

def gradient_analysis(args, runner, teacher_run, ce_student_run, data, seed, eps):
  """Per training example: d loss / d z_s of KD (T = 1, 4), LS and CE, on the true class and
  its norm, with the teacher's q_y; for the student at init and the trained CE student."""
  mesh, info = runner.mesh, data.info
  teacher = teacher_lib.from_run(teacher_run, TEACHER_MODEL, info, mesh)
  z_t, labels = logits_on(TEACHER_MODEL, teacher.variables, data.train, mesh)
  init_key = jax.random.split(jax.random.PRNGKey(loop.stage_seed(seed, "student")))[0]
  init_vars = state_lib.init_variables(models.create(STUDENT_MODEL, info.num_classes),
                                       init_key, info.input_shape)
  trained = teacher_lib.from_run(ce_student_run, STUDENT_MODEL, info, mesh)
  students = {"init": init_vars, "ce_trained": trained.variables}
  z_t, y = jnp.asarray(z_t), jnp.asarray(labels)
  num_classes = info.num_classes
  smooth = targets.smooth(y, num_classes, eps)
  objectives = {
      "kd_T1": lambda z: losses.kd(z, z_t, 1.0),
      "kd_T4": lambda z: losses.kd(z, z_t, 4.0),
      "ls": lambda z: losses.soft_cross_entropy(z, smooth),
      "ce": lambda z: losses.cross_entropy(z, y),
  }
  q_y = np.asarray(jax.nn.softmax(z_t)[jnp.arange(len(y)), y])
  result = dict(q_y=q_y, students={})
  for name, variables in students.items():
    z_s, _ = logits_on(STUDENT_MODEL, variables, data.train, mesh)
    z_s = jnp.asarray(z_s)
    entry = dict(p_y=np.asarray(jax.nn.softmax(z_s)[jnp.arange(len(y)), y]))
    for loss_name, fn in objectives.items():
      # Each example's loss depends on its own row only: grad of the sum = per-example grads.
      grad = jax.grad(lambda z, fn=fn: jnp.sum(fn(z)))(z_s)
      entry[f"{loss_name}_true"] = np.abs(np.asarray(grad[jnp.arange(len(y)), y]))
      entry[f"{loss_name}_norm"] = np.asarray(jnp.linalg.norm(grad, axis=1))
    result["students"][name] = entry
  return result


def summarize_gradients(grads, bins=10):
  q_y = grads["q_y"]
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(q_y, edges) - 1, 0, bins - 1)
  out = dict(bin_edges=edges.tolist(), bin_count=np.bincount(which, minlength=bins).tolist(),
             students={})
  for name, entry in grads["students"].items():
    ratio = entry["kd_T1_true"] / np.maximum(entry["ce_true"], 1e-12)
    row = dict(spearman_q_y_vs_kd_T1_true=float(scipy_stats.spearmanr(q_y, entry["kd_T1_true"])[0]),
               spearman_q_y_vs_kd_T1_over_ce=float(scipy_stats.spearmanr(q_y, ratio)[0]),
               spearman_q_y_vs_kd_T1_norm=float(scipy_stats.spearmanr(q_y, entry["kd_T1_norm"])[0]),
               share_student_above_teacher=float(np.mean(entry["p_y"] > q_y)),
               binned={})
    series = {**{k: v for k, v in entry.items() if k != "p_y"}, "kd_T1_over_ce_true": ratio,
              "p_y": entry["p_y"]}
    for key, values in series.items():
      row["binned"][key] = [float(values[which == b].mean()) if np.any(which == b) else None
                            for b in range(bins)]
    out["students"][name] = row
  return out


# ----------------------------------------------------------------------------- tables

def tabulate(runs, baseline="ls"):
  """runs[label] = list of summaries (seed order) -> per-label stats; gains paired by seed."""
  base = [r["test_accuracy"] for r in runs[baseline]]
  table = {}
  for label, rows in runs.items():
    last = [r["test_accuracy"] for r in rows]
    best = [r.get("best_val_checkpoint_test_accuracy") for r in rows]
    gains = [a - b for a, b in zip(last, base)]
    table[label] = dict(last_epoch_test_accuracy=mean_std(last),
                        best_val_checkpoint_test_accuracy=mean_std(best),
                        gain_over_ls=mean_std(gains), per_seed_last_epoch=last,
                        per_seed_gain_over_ls=gains,
                        ece=mean_std([r.get("ece") for r in rows]),
                        train_seconds=float(sum(r.get("train_seconds", 0.0) for r in rows)))
  return table


# ----------------------------------------------------------------------------- plots

def plot_gains(tables, correlations, main_k, fixed_eps, path):
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  labels = [*PLOTTED, f"kd_topk{main_k}"]
  if fixed_eps:
    labels += [f"ls_eps{fixed_eps:g}", f"kd_sim_eps{fixed_eps:g}"]
  for i, label in enumerate(labels):
    means = np.array([tables[c][label]["gain_over_ls"][0] for c in correlations])
    stds = np.array([tables[c][label]["gain_over_ls"][1] for c in correlations])
    offset = (i - len(labels) / 2) * 0.004
    ax.errorbar(np.array(correlations) + offset, means, yerr=stds,
                fmt="--s" if "_eps" in label else "-o", capsize=3, ms=4, label=label)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xlabel("class correlation rho (within a superclass)")
  ax.set_ylabel("test accuracy gain over ls (last epoch)")
  ax.set_title("Gain over label smoothing, mean +- std over seeds (paired)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_topk(tables, sweep_correlations, ks, path):
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for c in sweep_correlations:
    means = [tables[c][f"kd_topk{k}"]["gain_over_ls"][0] for k in ks]
    stds = [tables[c][f"kd_topk{k}"]["gain_over_ls"][1] for k in ks]
    line = ax.errorbar(ks, means, yerr=stds, fmt="-o", capsize=3, label=f"kd_topk, rho={c}")
    for label, style in (("kd_T1", "--"), ("kd_pt", ":")):
      ax.axhline(tables[c][label]["gain_over_ls"][0], ls=style, lw=1,
                 color=line[0].get_color(), alpha=0.7)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xscale("log")
  ax.set_xticks(ks)
  ax.set_xticklabels([str(k) for k in ks])
  ax.set_xlabel("k (teacher probabilities kept)")
  ax.set_ylabel("test accuracy gain over ls")
  ax.set_title("KD-topk vs k (dashed: kd_T1, dotted: kd_pt)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_gradients(grads, summary, path, max_points=3000):
  plt = pyplot()
  q_y = grads["q_y"]
  centers = (np.array(summary["bin_edges"][:-1]) + np.array(summary["bin_edges"][1:])) / 2
  rng = np.random.default_rng(0)
  shown = rng.choice(len(q_y), min(max_points, len(q_y)), replace=False)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, color in (("init", "tab:blue"), ("ce_trained", "tab:orange")):
    entry, binned = grads["students"][name], summary["students"][name]["binned"]
    axes[0].scatter(q_y[shown], entry["kd_T1_true"][shown], s=3, alpha=0.15, color=color)
    axes[0].plot(centers, binned["kd_T1_true"], "-o", color=color,
                 label=f"KD T=1, student {name}")
    axes[0].plot(centers, binned["kd_T4_true"], "--s", color=color, ms=4,
                 label=f"KD T=4 (T^2 KL), student {name}")
    axes[0].plot(centers, binned["ls_true"], ":", color=color, label=f"LS, student {name}")
    axes[1].plot(centers, binned["kd_T1_over_ce_true"], "-o", color=color,
                 label=f"student {name}")
  axes[0].set_xlabel("teacher confidence on the true class q_y")
  axes[0].set_ylabel("|d loss / d z_s,y| per training example")
  axes[0].set_title("true-class logit gradient (points: KD T=1)")
  axes[0].legend(fontsize=7)
  axes[1].plot([0, 1], [0, 1], color="gray", lw=0.8, label="y = q_y")
  axes[1].set_xlabel("teacher confidence on the true class q_y")
  axes[1].set_ylabel("|dKD_T1/dz_y| / |dCE/dz_y| (bin mean)")
  axes[1].set_title("KD's per-example rescaling of the CE gradient")
  axes[1].legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------- claims

def _sig(ms):
  """'+0.0123 +- 0.0040' and whether mean > std (the sign holds beyond one std)."""
  return fmt(ms, signed=True)


def claims(tables, correlations, main_k, failure):
  """Each claim's numbers and a mechanical verdict (criteria stated in results.md)."""
  g = {c: {label: row["gain_over_ls"] for label, row in tables[c].items() if "gain_over_ls" in row}
       for c in correlations}
  lo, hi = correlations[0], correlations[-1]
  out = []

  def beats(ms):
    return ms[0] > 0 and ms[0] > ms[1]

  kd_wins = [c for c in correlations if beats(g[c]["kd_T1"])]
  kd4_wins = [c for c in correlations if beats(g[c]["kd_T4"])]
  verdict = ("reproduced" if len(kd_wins) == len(correlations) else
             "not reproduced" if not kd_wins and not kd4_wins else "mixed")
  out.append(("KD beats LS", verdict,
              "kd_T1 - ls: " + "; ".join(f"rho={c}: {_sig(g[c]['kd_T1'])}" for c in correlations)
              + ". kd_T4 - ls: " + "; ".join(f"rho={c}: {_sig(g[c]['kd_T4'])}"
                                              for c in correlations)))

  share = {c: g[c]["kd_pt"][0] / g[c]["kd_T1"][0] if g[c]["kd_T1"][0] > 0 else float("nan")
           for c in correlations}
  verdict = ("reproduced" if beats(g[lo]["kd_pt"]) and share[lo] >= 0.5 else
             "not reproduced" if g[lo]["kd_pt"][0] <= 0 else "mixed")
  out.append((f"Uncorrelated classes (rho={lo}): KD-pt carries most of KD's gain", verdict,
              (f"kd_pt - ls {_sig(g[lo]['kd_pt'])} vs kd_T1 - ls {_sig(g[lo]['kd_T1'])} "
              f"(share {share[lo]:.2f}); kd_sim - ls {_sig(g[lo]['kd_sim'])}")))

  sim_trend = [g[c]["kd_sim"][0] for c in correlations]
  rho_sim = float(scipy_stats.spearmanr(correlations, sim_trend)[0])
  verdict = ("reproduced" if rho_sim > 0.5 and beats(g[hi]["kd_sim"]) and g[hi]["kd_sim"][0] > g[lo]["kd_sim"][0]
             else "not reproduced" if rho_sim <= 0 and not beats(g[hi]["kd_sim"]) else "mixed")
  out.append(("KD-sim adds value as correlation grows", verdict,
              "kd_sim - ls: " + "; ".join(f"rho={c}: {_sig(g[c]['kd_sim'])}" for c in correlations)
              + f" (Spearman over rho {rho_sim:+.2f}); kd_pt_sim - kd_pt: "
              + "; ".join(f"rho={c}: {g[c]['kd_pt_sim'][0] - g[c]['kd_pt'][0]:+.4f}"
                          for c in correlations)))

  ok = [c for c in correlations
        if g[c]["kd_pt_sim"][0] >= max(g[c]["kd_pt"][0], g[c]["kd_sim"][0]) - g[c]["kd_pt_sim"][1]
        and g[c]["kd_T1"][0] - g[c]["kd_pt_sim"][0] <= max(0.25 * abs(g[c]["kd_T1"][0]),
                                                             g[c]["kd_pt_sim"][1])]
  verdict = ("reproduced" if len(ok) == len(correlations) else
             "not reproduced" if not ok else "mixed")
  out.append(("KD-pt+sim combines pt and sim and approaches KD", verdict,
              "; ".join(f"rho={c}: pt {g[c]['kd_pt'][0]:+.4f}, sim {g[c]['kd_sim'][0]:+.4f}, "
                        f"pt+sim {g[c]['kd_pt_sim'][0]:+.4f}, KD {g[c]['kd_T1'][0]:+.4f}"
                        for c in correlations)
              + f" (criterion met at rho in {ok})"))

  topk = f"kd_topk{main_k}"
  wins = [c for c in correlations if beats(g[c][topk])]
  close = [c for c in correlations if g[c][topk][0] >= g[c]["kd_T1"][0] - g[c][topk][1]]
  verdict = ("reproduced" if len(wins) == len(correlations) and len(close) >= len(correlations) - 1
             else "not reproduced" if not wins else "mixed")
  out.append((f"KD-topk (k={main_k}) helps (beats LS, keeps KD's gain)", verdict,
              "; ".join(f"rho={c}: topk {_sig(g[c][topk])} vs KD {g[c]['kd_T1'][0]:+.4f}"
                        for c in correlations)))

  if failure:
    rows = failure["table"]
    diffs = {s: rows[f"lsT_{s}"]["last_epoch_test_accuracy"][0]
             - rows[f"ceT_{s}"]["last_epoch_test_accuracy"][0] for s in ("kd_T1", "kd_T4")}
    paired = {s: failure["paired_diff"][s] for s in diffs}
    verdict = ("reproduced" if all(paired[s][0] < 0 and -paired[s][0] > paired[s][1] for s in paired)
               else "not reproduced" if all(paired[s][0] >= 0 for s in paired) else "mixed")
    out.append(((f"An LS-trained teacher (eps={failure['epsilon']}) distils worse than a CE "
                f"teacher (rho={failure['correlation']})"), verdict,
                "student(LS teacher) - student(CE teacher): "
                + "; ".join(f"{s}: {_sig(paired[s])}" for s in paired)
                + f"; teachers' test accuracy: CE {fmt(rows['teacher_ce']['last_epoch_test_accuracy'])}"
                + f", LS {fmt(rows['teacher_ls']['last_epoch_test_accuracy'])}"))
  return out


# ----------------------------------------------------------------------------- main

def main():
  args = parse_args()
  if args.report_only:
    report.write(args.out, markdown)
    return
  seeds = args.seeds
  correlations = [float(c) for c in args.correlations.split(",")]
  sweep_correlations = [float(c) for c in args.topk_sweep_correlations.split(",") if c]
  sweep_correlations = [c for c in sweep_correlations if c in correlations]
  main_k = args.topk or args.classes // args.superclasses
  sweep_ks = sorted({main_k, *[int(k) for k in args.topk_sweep.split(",") if k]})
  workdir, runner, command = start("tang", args)

  def corr_dir(c, seed):
    return os.path.join(workdir, f"rho{c}", f"seed{seed}")

  runs, teachers, methods_used, diag, run_seconds = {}, {}, {}, {}, {}
  for c in correlations:
    runs[c], teachers[c], diag[c] = {}, [], []
    for seed in seeds:
      t_dir = os.path.join(corr_dir(c, seed), "teacher_ce")
      summary, sec, data = runner.run(teacher_config(args, c, seed, teacher_method("ce", args)),
                                      t_dir)
      teachers[c].append(summary["teacher"])
      stats = teacher_stats(os.path.join(t_dir, "teacher"), data, runner.mesh, args.superclasses)
      stats["test_accuracy"] = summary["teacher"]["test_accuracy"]
      stats["secondary_in_superclass_test"] = summary["teacher"]["test_metrics"].get(
          "secondary_in_superclass")
      diag[c].append(stats)
      print(f"rho={c} seed={seed} teacher: test {summary['teacher']['test_accuracy']:.4f}, "
            f"train {stats['train_accuracy']:.4f}, eps={stats['eps']}, "
            f"tau_s={stats['sim_temperature']} ({sec:.0f} s)", flush=True)
      ks = sweep_ks if c in sweep_correlations else [main_k]
      methods = student_methods(stats["eps"], stats["sim_temperature"], ks, args.fixed_eps)
      for label, method in methods.items():
        config = student_config(args, c, seed, os.path.join(t_dir, "teacher"), method)
        summary, sec, _ = runner.run(config, os.path.join(corr_dir(c, seed), label))
        runs[c].setdefault(label, []).append(summary["student"])
        methods_used.setdefault(c, {}).setdefault(label, []).append(describe(method))
        run_seconds[(c, seed, label)] = sec
        print(f"rho={c} seed={seed} {label}: test {summary['student']['test_accuracy']:.4f} "
              f"({sec:.0f} s)", flush=True)

  # The failure case: an LS teacher, distilled with the same students as the CE teacher.
  failure = None
  fc = args.ls_teacher_correlation
  if fc in correlations:
    frows = {"teacher_ce": teachers[fc], "teacher_ls": []}
    ls_diag = []
    for seed in seeds:
      t_dir = os.path.join(corr_dir(fc, seed), "teacher_ls")
      summary, _, data = runner.run(teacher_config(args, fc, seed, teacher_method("ls", args)),
                                    t_dir)
      frows["teacher_ls"].append(summary["teacher"])
      stats = teacher_stats(os.path.join(t_dir, "teacher"), data, runner.mesh, args.superclasses)
      stats["secondary_in_superclass_test"] = summary["teacher"]["test_metrics"].get(
          "secondary_in_superclass")
      ls_diag.append(stats)
      ce_stats = diag[fc][seeds.index(seed)]
      for label in ("kd_T1", "kd_T4"):
        method = student_methods(ce_stats["eps"], ce_stats["sim_temperature"], [])[label]
        config = student_config(args, fc, seed, os.path.join(t_dir, "teacher"), method)
        summary, sec, _ = runner.run(config, os.path.join(corr_dir(fc, seed), f"lsT_{label}"))
        frows.setdefault(f"lsT_{label}", []).append(summary["student"])
        print(f"rho={fc} seed={seed} LS teacher -> {label}: test "
              f"{summary['student']['test_accuracy']:.4f} ({sec:.0f} s)", flush=True)
    for label in ("kd_T1", "kd_T4"):
      frows[f"ceT_{label}"] = runs[fc][label]
    ftable = {k: dict(last_epoch_test_accuracy=mean_std([r["test_accuracy"] for r in v]),
                      best_val_checkpoint_test_accuracy=mean_std(
                          [r.get("best_val_checkpoint_test_accuracy") for r in v]),
                      per_seed_last_epoch=[r["test_accuracy"] for r in v])
              for k, v in frows.items()}
    paired = {s: mean_std([a["test_accuracy"] - b["test_accuracy"]
                           for a, b in zip(frows[f"lsT_{s}"], frows[f"ceT_{s}"])])
              for s in ("kd_T1", "kd_T4")}
    failure = dict(correlation=fc, epsilon=args.ls_teacher_epsilon, table=ftable,
                   paired_diff=paired, ls_teacher_diagnostics=ls_diag,
                   ce_teacher_diagnostics=diag[fc])

  # The instance-level rescaling.
  gc = args.grad_correlation if args.grad_correlation in correlations else correlations[0]
  gseed = seeds[0]
  grad_data = pipeline.prepare(teacher_config(args, gc, gseed, teacher_method("ce", args)))
  grads = gradient_analysis(args, runner, os.path.join(corr_dir(gc, gseed), "teacher_ce", "teacher"),
                            os.path.join(corr_dir(gc, gseed), "ce", "student"), grad_data, gseed,
                            diag[gc][0]["eps"])
  grad_summary = dict(correlation=gc, seed=gseed, **summarize_gradients(grads))
  plot_gradients(grads, grad_summary, os.path.join(args.out, "gradient_rescaling.png"))

  tables = {c: tabulate(runs[c]) for c in correlations}
  for c in correlations:
    tables[c]["teacher"] = dict(last_epoch_test_accuracy=mean_std(
        [t["test_accuracy"] for t in teachers[c]]), best_val_checkpoint_test_accuracy=mean_std(
        [t.get("best_val_checkpoint_test_accuracy") for t in teachers[c]]),
        per_seed_last_epoch=[t["test_accuracy"] for t in teachers[c]])
  plot_gains(tables, correlations, main_k, args.fixed_eps, os.path.join(args.out, "gain_over_ls.png"))
  if sweep_correlations:
    plot_topk(tables, sweep_correlations, sweep_ks, os.path.join(args.out, "topk_sweep.png"))
  claim_rows = claims(tables, correlations, main_k, failure)

  # Timing: every invocation appends one line; the run time is the invocation that trained.
  timing = runner.record_time(args.out)

  scale = dict(classes=args.classes, superclasses=args.superclasses, dim=args.dim,
               noise=args.noise, separation=1.0, train_examples=args.train - args.holdout,
               validation_examples=args.holdout, test_examples=args.test,
               teacher_epochs=args.teacher_epochs, student_epochs=args.epochs,
               batch_size=args.batch, learning_rate=args.lr, schedule="cosine",
               teacher=TEACHER_MODEL, student=STUDENT_MODEL, seeds=seeds,
               correlations=correlations, topk_main=main_k, topk_sweep=sweep_ks,
               topk_sweep_correlations=sweep_correlations)
  results = dict(command=command, scale=scale, timing=timing,
                 tables={str(c): t for c, t in tables.items()},
                 methods={str(c): {k: v[0] for k, v in m.items()} for c, m in methods_used.items()},
                 teacher_diagnostics={str(c): d for c, d in diag.items()},
                 failure_case=failure, gradient_rescaling=grad_summary,
                 claims=[dict(claim=a, verdict=b, numbers=n) for a, b, n in claim_rows])
  report.save(args.out, results, markdown)
  print(f"tang: done in {timing[-1]['wall_seconds']:.0f} s ({runner.trained} runs trained, {runner.skipped} skipped)"
        f"; {os.path.join(args.out, 'results.md')}", flush=True)


def method_descriptions(results, fixed_eps):
  """rho -> label -> the `describe` of each seed's method (eps and tau_s are per teacher)."""
  s = results["scale"]
  out = {}
  for c in s["correlations"]:
    ks = s["topk_sweep"] if c in s["topk_sweep_correlations"] else [s["topk_main"]]
    for d in results["teacher_diagnostics"][str(c)]:
      for label, method in student_methods(d["eps"], d["sim_temperature"], ks, fixed_eps).items():
        out.setdefault(c, {}).setdefault(label, []).append(describe(method))
  return out


def markdown(results, out):
  """results.md's lines from results.json (see report.py)."""
  args = report.recorded_args(parse_args, results["command"])
  s = results["scale"]
  correlations, main_k = s["correlations"], s["topk_main"]
  sweep_ks, sweep_correlations = s["topk_sweep"], s["topk_sweep_correlations"]
  tables = {c: results["tables"][str(c)] for c in correlations}
  diag = {c: results["teacher_diagnostics"][str(c)] for c in correlations}
  failure, g = results["failure_case"], results["gradient_rescaling"]
  claim_rows = [(x["claim"], x["verdict"], x["numbers"]) for x in results["claims"]]
  lines = [
      "# Tang et al. 2020 (arXiv 2002.03532) on synthetic data", "",
      report.reproduce(results["command"]), "",
      (f"Scale: {s['classes']} classes in {s['superclasses']} superclasses, dim {s['dim']}, "
       f"noise {s['noise']}; {s['train_examples']} training examples (+{s['validation_examples']}"
       f" held out for validation), {s['test_examples']} test; teacher {s['teacher']} "
       f"{s['teacher_epochs']} epochs, student {s['student']} {s['student_epochs']} epochs, "
       f"batch {s['batch_size']}, SGD lr {s['learning_rate']} cosine; seeds {s['seeds']}; "
       f"correlations {s['correlations']}."), "",
      report.run_times("Run time (wall clock of each invocation of the command, runs trained / "
                       "skipped)", results["timing"]), "",
      (report.ACCURACY + " (validation slice held out of the training split), labelled "
       "separately. `gain over ls`: last-epoch accuracy minus the ls student's of the same "
       "seed, mean +- std over seeds."), ""]
  notes = report.notes(out)
  if notes:
    lines += [notes, ""]
  lines += ["## Mechanical checks (criteria below the table)", "",
            *report.claims(claim_rows, "numbers (gain over ls unless stated)"),
            "", ("Mechanical criteria: 'beats' = mean gain > 0 and > its std over seeds; KD beats "
                 "LS: kd_T1 beats ls at every rho (mixed if only some, or only kd_T4); pt carries "
                 "most: kd_pt beats ls at the lowest rho with >= 50% of kd_T1's gain; sim grows: "
                 "Spearman(rho, kd_sim gain) > 0.5, and at the highest rho kd_sim beats ls and "
                 "exceeds its lowest-rho gain; pt+sim: at least max(pt, sim) - std and within "
                 "max(25% of KD's gain, std) of KD at every rho; top-k: beats ls at every rho and "
                 "is within one std of KD at all but at most one; LS teacher: both students' "
                 "paired difference < 0 beyond one std."), "",
            "![gain over ls](gain_over_ls.png)", "",
            "## Gains over ls per correlation (last epoch)", ""]
  extra = [f"ls_eps{args.fixed_eps:g}", f"kd_sim_eps{args.fixed_eps:g}"] if args.fixed_eps else []
  lines += report.table(
      ["method", *[f"rho={c}" for c in correlations]],
      [[label, *[fmt(tables[c][label]["gain_over_ls"], signed=True) for c in correlations]]
       for label in [*MAIN[:1], *MAIN[2:], f"kd_topk{main_k}", *extra]])
  lines += ["", "## Teachers", "",
            ("eps = mean(1 - q_y) of the teacher on the training examples (LS's and KD-sim's "
             "epsilon); tau_s fitted per teacher (see the module docstring); `off-target in "
             "superclass`: mean share of the teacher's off-target mass on the true class's "
             "superclass (uniform would give the `uniform` column); `rho(y) in superclass`: the "
             "same share for KD-sim's rho at tau_s."), ""]

  def teacher_row(c):
    d = diag[c]
    avg = lambda key: fmt(mean_std([x[key] for x in d]), 3)
    return [str(c), *report.accuracy(tables[c]["teacher"]), avg("train_accuracy"),
            avg("mean_q_y"), ", ".join(str(x["eps"]) for x in d),
            ", ".join(str(x["sim_temperature"]) for x in d),
            avg("teacher_off_target_in_superclass"), avg("rho_in_superclass"),
            f"{d[0]['uniform_in_superclass']:.3f}", avg("secondary_in_superclass_test")]

  lines += report.table(
      ["rho", "teacher test acc (last)", "best-val ckpt", "train acc", "mean q_y", "eps", "tau_s",
       "off-target in superclass", "rho(y) in superclass", "uniform",
       "secondary_in_superclass (test)"], [teacher_row(c) for c in correlations])
  described = method_descriptions(results, args.fixed_eps)
  for c in correlations:
    t = tables[c]
    lines += ["", f"## rho = {c}", ""]
    lines += report.table(
        ["model", "method (T: KD temperature, Tt: target temperature)", "last epoch",
         "best-val ckpt", "gain over ls", "per seed (last epoch)"],
        [["teacher", f"{TEACHER_MODEL}, ce, T=1, Tt=1", *report.accuracy(t["teacher"]), "",
          report.per_seed(t["teacher"]["per_seed_last_epoch"])]]
        + [[label, " / ".join(sorted(set(described[c][label]))), *report.accuracy(t[label]),
            fmt(t[label]["gain_over_ls"], signed=True) if label != "ls" else "",
            report.per_seed(t[label]["per_seed_last_epoch"])] for label in described[c]])
  if sweep_correlations:
    lines += ["", "## Top-k sweep (gain over ls)", "", "![top-k sweep](topk_sweep.png)", ""]
    lines += report.table(
        ["rho", *[f"k={k}" for k in sweep_ks], "kd_T1", "kd_pt"],
        [[str(c), *[fmt(tables[c][label]["gain_over_ls"], signed=True)
                    for label in [*[f"kd_topk{k}" for k in sweep_ks], "kd_T1", "kd_pt"]]]
         for c in sweep_correlations])
  if failure:
    lines += ["", (f"## Failure case: LS-trained teacher (eps={failure['epsilon']}, rho="
              f"{failure['correlation']})"), ""]
    lines += report.table(["run", "last epoch", "best-val ckpt", "per seed"],
                          [[key, *report.accuracy(e), report.per_seed(e["per_seed_last_epoch"])]
                           for key, e in failure["table"].items()])
    lines += ["", "Paired (same seed) student(LS teacher) - student(CE teacher): "
              + "; ".join(f"{k}: {fmt(v, signed=True)}"
                          for k, v in failure["paired_diff"].items()), ""]

    def diagnostics_row(name, d):
      avg = lambda key: fmt(mean_std([x[key] for x in d]), 3)
      return [name, avg("mean_q_y"), avg("std_q_y"), avg("teacher_off_target_in_superclass"),
              avg("secondary_in_superclass_test"), avg("train_accuracy")]

    lines += report.table(
        ["teacher", "mean q_y (train)", "std q_y", "off-target in superclass",
         "secondary_in_superclass (test)", "train acc"],
        [diagnostics_row("CE", failure["ce_teacher_diagnostics"]),
         diagnostics_row("LS", failure["ls_teacher_diagnostics"])])
  lines += ["", (f"## Instance-level rescaling (rho={g['correlation']}, seed {g['seed']}, "
            "training examples)"), "", "![gradient rescaling](gradient_rescaling.png)", "",
            ("Per training example, `jax.grad` of `kd_jax.losses.kd` (T = 1 and 4), of LS "
             "(`soft_cross_entropy` to the smoothed label, eps of this teacher) and of CE "
             "w.r.t. the student logits; |component on the true class| binned by the teacher's "
             "q_y (bin means). Students: `init` (the student's initial variables) and "
             "`ce_trained` (the final CE student of this seed)."), ""]
  edges, keys = g["bin_edges"], ("kd_T1_true", "kd_T4_true", "ls_true", "ce_true",
                                 "kd_T1_over_ce_true")
  lines += report.table(
      ["q_y bin", "examples", *[f"{n}: {column}" for n in g["students"]
                                for column in ("KD T=1", "KD T=4", "LS", "CE", "KD/CE")]],
      [[f"[{edges[b]:.1f}, {edges[b + 1]:.1f})", str(g["bin_count"][b]),
        *["" if row["binned"][key][b] is None else f"{row['binned'][key][b]:.3f}"
          for row in g["students"].values() for key in keys]] for b in range(len(edges) - 1)])
  lines += [""] + [f"Student `{n}`: Spearman(q_y, |dKD_T1/dz_y|) = "
                   f"{row['spearman_q_y_vs_kd_T1_true']:+.3f}, Spearman(q_y, KD/CE ratio) = "
                   f"{row['spearman_q_y_vs_kd_T1_over_ce']:+.3f}, Spearman(q_y, ||dKD_T1/dz||) = "
                   f"{row['spearman_q_y_vs_kd_T1_norm']:+.3f}; share of examples with p_y > q_y "
                   f"(gradient pushes the true logit down): {row['share_student_above_teacher']:.3f}."
                   for n, row in g["students"].items()]
  return lines

if __name__ == "__main__":
  main()
