"""The method table: method name -> per-example objective. The one place the trainer reads.

A method maps (student logits, labels, teacher logits, ...) to a dict of per-example `[B]`
arrays; key `"loss"` is the objective, the others are diagnostics (`"ce"`, `"teacher_term"`,
`"beta"`, `"teacher_correct"`, `"rescale_weight"`, `"tsd"`, `"entropy"`). The trainer takes
the masked mean over the real (non-padding) examples of the global batch,
`mean = (1/N) sum_{i real} loss_i`; nothing here reduces over the batch except the `mse` form
of Label Revision, which needs subset counts (see below).

Notation: `p(z, T) = softmax(z / T)`, `CE = -log p(z_s, 1)_y`, `H(q, z) = -sum_c q_c log p(z, 1)_c`,
`KL(q || p) = sum_c q_c (log q_c - log p_c)`; the teacher is under stop_gradient.

Teacher-free methods (`TEACHER_FREE`; any of them can train a teacher from scratch):
  ce   `CE(z, y)`.
  ls   `H(smooth(y, eps), p(z, 1))` with `smooth = (1 - eps) e_y + eps / C` (or `eps/(C-1)` on
       the non-targets, `smoothing_spread="others"`), at `target_temperature` (see below).
       No CE term: `label_smoothing` is the whole smoothing mass. At target_temperature 1
       it is computed in closed form, `(1 - eps) CE + eps (logsumexp(z) - mean_c z_c)`
       (`losses.label_smoothing_cross_entropy`; equal to the target form to rounding).
       (KD-sim with the default `ce_weight=0.1, kd_weight=0.9` puts mass
       `kd_weight * sim_epsilon` on `rho(y)`; compare LS at `label_smoothing=eps` with
       KD-sim at `ce_weight=0, kd_weight=1, sim_epsilon=eps`.)
  tsd  the tolerant teacher: `CE(z, y) + u(epoch) * TSD(z)`, `TSD` = `losses.tsd` with K =
       `tsd_num_secondary` secondary classes and the primary class the argmax of `p(z, 1)`
       (`tsd_primary="argmax"`, default) or the label (`"label"`). `u` (`tsd_schedule`, `eta`
       = `tsd_eta`, `W` = `tsd_warmup_epochs`, fractional epoch `e`):
         "linear" (default)  `u = eta * min(1, e / W)` (`eta` when W = 0);
         "constant"          `u = eta`;
         "step"              `u = 0` for `e < W`, `eta` from `e >= W`.
  cp   the confidence penalty (Pereyra et al. 2017): `CE(z, y) - cp_beta * H(p(z, 1))`
       (`losses.entropy`). Default `cp_beta=0.1`; Pereyra et al. tune beta per task and their
       text was not available to us, so 0.1 is our choice, not a paper value.

Teacher-based methods. Every one except `dkd*` and the `mse` form of LR is

    loss = ce_weight * CE(z_s, y) + kd_weight * teacher_term          (supervised examples)
    loss = CE(z_s, y)                                                  (teacher_mask False)

  kd, lr     `teacher_term = T^2 KL(q || p(z_s, T))`, `T = temperature`, `q = p(z_t, T)`
             (Hinton's KD; T^2 keeps the gradient scale independent of T), `q` label-revised
             for `lr` (see "Label Revision").
  dkd, dkd_lr  mdistiller: `dkd_ce_weight * CE + min(1, e / dkd_warmup_epochs) * DKD_T`
             (`losses.dkd`, `T^2` included), the teacher revised for `dkd_lr`.
  kd_pt, kd_sim, kd_pt_sim, kd_topk  Tang et al.'s partial-knowledge targets (`targets.pt`,
             `sim`, `pt_sim`, `topk`) built from `q = p(z_t, Tt)`, `Tt = target_temperature`:
               Tt == 1 (default): `teacher_term = H(target, p(z_s, 1))`
                                  (exactly `losses.soft_cross_entropy(z_s, target)`);
               Tt != 1:           `teacher_term = Tt^2 KL(target || p(z_s, Tt))`.
             Why a field separate from `temperature`: Tang et al.'s decomposition is at T = 1,
             and matching a fixed target (KD-sim's `(1 - eps) e_y + eps rho(y)`) with
             `T^2 KL` at T = 4 drives `p(z_s, 1)` to roughly `target^4` renormalised, which
             erases the smoothing; with its own field, `--config.student.method.name=kd_pt`
             in a config whose KD temperature is 4 still trains Tang's variant at T = 1.
             At Tt = 1 the two forms differ by the constant `H(target)` (same gradient);
             `ls` follows the same rule.

Label Revision (Lan et al.; `revise=True`, always on for `lr`, `dkd_lr`, `lr_ds`,
`dkd_lr_ds`). `kl` form (`lr_form="kl"`, default): the teacher distribution the method
reads is replaced by `q' = beta q_r + (1 - beta) e_y`, `q_r = p(z_t, Tr)`,
`beta = eta / (max_c q_r,c - q_r,y + 1)` (`targets.revise`), with
  Tr = `revision_temperature`; None (default) = the temperature at which the method reads
       the teacher (`temperature`; `target_temperature` for the target variants), which is
       the behaviour before this field existed. The distillation term itself stays at its own
       temperature, e.g. `kd`: `T^2 KL(q' || p(z_s, T))`.
  `revise_wrong_only=True`: `beta = 1` (`q' = q_r`) on examples the teacher gets right
       (`argmax z_t = y`); default False revises every example (beta = eta on the right ones).
The `"beta"` diagnostic is the beta actually used.

`mse` form (`lr_form="mse"`, with `kd`/`lr`): the published reimplementation (zju-SWJ/RLD,
`mdistiller/distillers/REVISION.py`), everything at T = 1 (`temperature` and
`revision_temperature` are not used), `q' = revise(p(z_t, 1), y, eta)`. Over the supervised
examples S (real, and `teacher_mask` True when given) split into R (teacher right) and W
(teacher wrong), the published batch objective is

    L_pub = mean_{i in R} [mse_ce_weight * CE_i + mse_logit_weight * mean_c (z_s - z_t)_ic^2]
          + mean_{i in W} [mse_prob_weight * mean_c (p(z_s, 1) - q')_ic^2]        (no CE on W)

(defaults 1, 4, 1, eta = 0.8; an empty subset contributes 0). Its per-example values are the
bracketed terms times `|S| / |R|` on R and `|S| / |W|` on W, so the trainer's masked mean over
the N real examples is

    (1/N) sum_{i real, not supervised} CE_i  +  (|S| / N) * L_pub(S)

i.e. exactly `L_pub` over the batch without data selection (S = all real examples); with
data selection, the published objective on the teacher-supervised examples and plain CE on
the others, each in proportion to its share of the batch. The counts are `jnp.sum` over the
batch axis: global under `jax.jit` with a device mesh (what the trainer does), per-shard
under `shard_map`/`pmap`. Padding rows (`example_mask` False) count in no subset and get 0.
`revise_wrong_only` is implied (only W is revised).

Data Selection variants (`kd_ds`, `lr_ds`, `dkd_lr_ds`, or `select=True`): the base method on
the examples with `teacher_mask` True, `CE(z_s, y)` on the others; the selection itself is the
trainer's job (kd_jax.selection, kd_jax.train.selection_rounds).

Adding a teacher method is one entry in `_TEACHER_METHODS`: a function
`(config, student_logits, labels, q, teacher_logits, class_similarity, epoch, revised)
-> teacher_term [B]`, with `q` the teacher distribution at the method's temperature, already
label-revised when `revised` is True.
"""

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from kd_jax import losses, targets
from kd_jax._validation import fail


def default_config() -> ml_collections.ConfigDict:
  """Every method hyper-parameter and its default (each documented in this module)."""
  return ml_collections.ConfigDict(dict(
      name="kd",
      temperature=4.0,        # KD temperature T (RepDistiller/mdistiller CIFAR protocol)
      target_temperature=1.0,  # T of ls, kd_pt, kd_sim, kd_pt_sim, kd_topk: 1 -> H(target, p_s)
      ce_weight=0.1,          # weight of CE(z_s, y) for teacher-based methods
      kd_weight=0.9,          # weight of the teacher term
      label_smoothing=0.1,    # epsilon of `ls`
      smoothing_spread="all",  # "all" (eps/C everywhere) or "others" (eps/(C-1) off-target)
      revise=False,           # apply Label Revision to the teacher (forced on by lr, dkd_lr)
      select=False,           # apply Data Selection (forced on by kd_ds, lr_ds, dkd_lr_ds);
                              # how examples are selected: the run config's `selection` block
      eta=0.8,                # Label Revision eta in (0, 1)
      lr_form="kl",           # "kl": T^2 KL(q'||p_s); "mse": the published reimplementation
      # kl form: T at which the teacher is revised; None: the T the method reads it at
      revision_temperature=config_dict.placeholder(float),
      revise_wrong_only=False,  # kl form: revise only the examples the teacher gets wrong
      mse_ce_weight=1.0,      # mse form: CE weight on teacher-correct examples
      mse_logit_weight=4.0,   # lambda_1 of the mse form (teacher-correct examples)
      mse_prob_weight=1.0,    # lambda_2 of the mse form (teacher-wrong examples)
      topk=5,                 # k of kd_topk
      sim_temperature=1.0,    # tau_s of class_similarity
      sim_epsilon=0.1,        # epsilon of kd_sim
      dkd_alpha=1.0,          # mdistiller CIFAR defaults
      dkd_beta=8.0,
      dkd_ce_weight=1.0,
      dkd_warmup_epochs=20.0,
      cp_beta=0.1,            # confidence penalty weight (our choice; not a paper value)
      tsd_eta=0.6,            # u(eta): TSD weight reached after the warm-up
      tsd_num_secondary=5,    # K secondary classes
      tsd_warmup_epochs=5.0,  # W of the u schedule
      tsd_schedule="linear",  # "linear" ramp over W, "constant" eta, "step" 0 then eta at W
      tsd_primary="argmax",   # TSD's primary class: "argmax" of p(z, 1) or the "label"
  ))


def _distill_to(z_s, target, temperature):
  """`H(target, p(z_s, 1))` at T = 1, else `T^2 KL(target || p(z_s, T))`."""
  if temperature == 1:
    return losses.soft_cross_entropy(z_s, target)
  return losses.kl_to_targets(z_s, target, temperature)


def _kd(config, z_s, labels, q, z_t, similarity, epoch, revised):
  if revised:
    return losses.kl_to_targets(z_s, q, config.temperature)
  return losses.kd(z_s, z_t, config.temperature)


def _to_target(build):
  def method(config, z_s, labels, q, z_t, similarity, epoch, revised):
    return _distill_to(z_s, build(config, labels, q, similarity), config.target_temperature)
  return method


def _dkd(config, z_s, labels, q, z_t, similarity, epoch, revised):
  if revised:
    term = losses.dkd_to_targets(z_s, q, labels, config.dkd_alpha, config.dkd_beta,
                                 config.temperature)
  else:
    term = losses.dkd(z_s, z_t, labels, config.dkd_alpha, config.dkd_beta, config.temperature)
  return _ramp(epoch, config.dkd_warmup_epochs) * term


_TARGET_VARIANTS = ("kd_pt", "kd_sim", "kd_pt_sim", "kd_topk")
_TEACHER_METHODS = {
    "kd": _kd,
    "lr": _kd,
    "kd_pt": _to_target(lambda c, y, q, s: targets.pt(q, y)),
    "kd_sim": _to_target(lambda c, y, q, s: targets.sim(y, s, c.sim_epsilon)),
    "kd_pt_sim": _to_target(lambda c, y, q, s: targets.pt_sim(q, y, s)),
    "kd_topk": _to_target(lambda c, y, q, s: targets.topk(q, c.topk)),
    "dkd": _dkd,
    "dkd_lr": _dkd,
}
_ALWAYS_REVISED = ("lr", "dkd_lr")
TEACHER_FREE = ("ce", "ls", "tsd", "cp")
# Data Selection variants: the base method on the selected examples, CE on the others. The
# selection itself (scores, ratio, refresh) is the trainer's job; see kd_jax.selection.
_WITH_SELECTION = {"kd_ds": "kd", "lr_ds": "lr", "dkd_lr_ds": "dkd_lr"}
NAMES = TEACHER_FREE + tuple(_TEACHER_METHODS) + tuple(_WITH_SELECTION)
_TSD_SCHEDULES = ("linear", "constant", "step")
_TSD_PRIMARY = ("argmax", "label")


def base_name(name: str) -> str:
  """The method a Data Selection variant applies to its selected examples (else `name`)."""
  return _WITH_SELECTION.get(name, name)


def uses_selection(name: str) -> bool:
  return name in _WITH_SELECTION


def selects(config) -> bool:
  """Whether method block `config` uses Data Selection (a `*_ds` name or `select=True`)."""
  return uses_selection(config.name) or bool(config.get("select", False))


def revises(config) -> bool:
  """Whether method block `config` label-revises the teacher (`lr*` names or `revise=True`)."""
  return bool(config.get("revise", False)) or base_name(config.name) in _ALWAYS_REVISED


def needs_teacher(name: str) -> bool:
  return base_name(name) in _TEACHER_METHODS


def needs_class_similarity(name: str) -> bool:
  return base_name(name) in ("kd_sim", "kd_pt_sim")


def teacher_temperature(config) -> float:
  """The temperature at which method block `config` reads its teacher's distribution:
  `target_temperature` for Tang's target variants, `temperature` for the others."""
  if base_name(config.name) in _TARGET_VARIANTS:
    return config.target_temperature
  return config.temperature


def uses_mse_form(config) -> bool:
  return revises(config) and config.lr_form == "mse" and base_name(config.name) in ("kd", "lr")


def _ramp(epoch, warmup_epochs):
  """Linear warm-up factor `min(1, epoch / warmup_epochs)`; 1 when warmup_epochs == 0."""
  if not warmup_epochs:
    return 1.0
  return jnp.minimum(1.0, jnp.asarray(epoch, jnp.float32) / warmup_epochs)


def tsd_weight(config, epoch):
  """`u(epoch)` of the tolerant teacher (`tsd_schedule`, `tsd_eta`, `tsd_warmup_epochs`).

  "linear": `eta * min(1, epoch / W)` (`eta` when W = 0); "constant": `eta`; "step": 0 for
  `epoch < W`, `eta` from `epoch >= W`. `epoch` is fractional and may be traced.
  """
  eta, warmup = config.tsd_eta, config.tsd_warmup_epochs
  if config.tsd_schedule == "constant":
    return jnp.float32(eta)
  if config.tsd_schedule == "step":
    return jnp.where(jnp.asarray(epoch, jnp.float32) >= warmup, eta, 0.0).astype(jnp.float32)
  return eta * _ramp(epoch, warmup)


def validate(config, num_classes: int) -> None:
  """Raises ValueError naming the first bad field, its value and what is allowed."""
  name = config.name
  if name not in NAMES:
    fail("method.name", name, f"must be one of {', '.join(NAMES)}")
  for field in ("temperature", "target_temperature"):
    if not config[field] > 0:
      fail(f"method.{field}", config[field], "must be > 0")
  for field in ("ce_weight", "kd_weight", "dkd_ce_weight", "tsd_eta", "cp_beta",
                "mse_ce_weight", "mse_logit_weight", "mse_prob_weight", "tsd_warmup_epochs",
                "dkd_warmup_epochs"):
    if not config[field] >= 0:
      fail(f"method.{field}", config[field], "must be >= 0")
  for field in ("label_smoothing", "sim_epsilon"):
    if not 0 <= config[field] <= 1:
      fail(f"method.{field}", config[field], "must be in [0, 1]")
  if config.smoothing_spread not in ("all", "others"):
    fail("method.smoothing_spread", config.smoothing_spread, "must be 'all' or 'others'")
  if config.get("select", False) and not needs_teacher(name):
    fail("method.select", True, f"needs a teacher-based method, not {name!r}")
  if revises(config) and not 0 < config.eta < 1:
    fail("method.eta", config.eta, "must be in (0, 1)")
  if config.lr_form not in ("kl", "mse"):
    fail("method.lr_form", config.lr_form, "must be 'kl' or 'mse'")
  revision_t = config.revision_temperature
  if revision_t is not None and not revision_t > 0:
    fail("method.revision_temperature", revision_t,
         "must be None (the method's temperature) or > 0")
  if revision_t not in (None, 1) and uses_mse_form(config):
    fail("method.revision_temperature", revision_t,
          "the mse form revises at T = 1: leave it None (or 1), or use lr_form='kl'")
  if not isinstance(config.revise_wrong_only, bool):
    fail("method.revise_wrong_only", config.revise_wrong_only, "must be True or False")
  if name == "kd_topk" and not (int(config.topk) == config.topk and 1 <= config.topk < num_classes):
    fail("method.topk", config.topk,
         f"must be an integer in [1, {num_classes - 1}] (C={num_classes})")
  if name == "tsd" and not 1 <= config.tsd_num_secondary <= num_classes - 1:
    fail("method.tsd_num_secondary", config.tsd_num_secondary, f"must be in [1, {num_classes - 1}]")
  if config.tsd_schedule not in _TSD_SCHEDULES:
    fail("method.tsd_schedule", config.tsd_schedule, f"must be one of {', '.join(_TSD_SCHEDULES)}")
  if config.tsd_primary not in _TSD_PRIMARY:
    fail("method.tsd_primary", config.tsd_primary, f"must be one of {', '.join(_TSD_PRIMARY)}")
  if needs_class_similarity(name) and not config.sim_temperature > 0:
    fail("method.sim_temperature", config.sim_temperature, "must be > 0")


def _lr_mse(config, z_s, z_t, labels, correct, supervised):
  """Label revision's `mse` form (module docstring): per-example values whose mean over the
  real examples is `(1/N) sum_unsupervised CE + (|S|/N) L_pub(S)`.

  `supervised`: `[B]` bool, real examples the teacher supervises (S). Squared errors are
  averaged over classes (PyTorch's `F.mse_loss`, mean reduction, taken per example and then
  averaged over the subset gives the same mean). Returns `(loss [B], beta [B])`; rows outside
  S get 0 here (the caller puts CE on unsupervised real rows).
  """
  ce = losses.cross_entropy(z_s, labels)
  logit_mse = jnp.mean((z_s.astype(jnp.float32) - z_t) ** 2, axis=-1)
  q = jax.nn.softmax(z_t, axis=-1)
  beta = targets.revision_beta(q, labels, config.eta)
  revised = targets.revise(q, labels, config.eta)
  prob_mse = jnp.mean((jax.nn.softmax(z_s.astype(jnp.float32), axis=-1) - revised) ** 2, axis=-1)
  right = supervised & correct
  wrong = supervised & ~correct
  count = lambda mask: jnp.sum(mask.astype(jnp.float32))
  n_supervised = count(supervised)
  # max(., 1): an empty subset has no member to weight, so its term is 0 as in RLD.
  right_weight = n_supervised / jnp.maximum(count(right), 1.0)
  wrong_weight = n_supervised / jnp.maximum(count(wrong), 1.0)
  loss = jnp.where(
      right, right_weight * (config.mse_ce_weight * ce + config.mse_logit_weight * logit_mse),
      jnp.where(wrong, wrong_weight * config.mse_prob_weight * prob_mse, 0.0))
  return loss, beta


def per_example_losses(config, student_logits, labels, teacher_logits=None, *, epoch=0.0,
                       class_similarity=None, teacher_mask=None, example_mask=None):
  """Per-example objective of method `config.name` and its diagnostics (module docstring).

  Args:
    config: a `default_config()`-shaped ConfigDict (validate it first with `validate`).
    student_logits: `[B, C]` float32 or bfloat16.
    labels: `[B]` integers.
    teacher_logits: `[B, C]`, required by teacher-based methods; under stop_gradient.
    epoch: float (may be traced), fractional epoch for the schedules (tsd, dkd).
    class_similarity: `[C, C]` from `targets.class_similarity`, for kd_sim and kd_pt_sim.
    teacher_mask: optional `[B]` bool (data selection): False -> the example gets plain
      `CE(z_s, y)` instead of the teacher-based objective.
    example_mask: optional `[B]` bool, False on padding rows; None = every row is real. Only
      the `mse` form of Label Revision reads it (its per-example values depend on subset
      counts over the real examples of the whole batch); pass the trainer's padding mask.

  Returns:
    dict of `[B]` float32 arrays; `"loss"` is the objective to average over real examples.
  """
  name = base_name(config.name)
  ce = losses.cross_entropy(student_logits, labels)
  out = {"ce": ce}
  if name == "ce":
    out["loss"] = ce
  elif name == "ls":
    if config.target_temperature == 1:  # H(smooth, p(z, 1)) in closed form, no [B, C] target
      out["loss"] = losses.label_smoothing_cross_entropy(
          student_logits, labels, config.label_smoothing, config.smoothing_spread)
    else:
      smoothed = targets.smooth(labels, student_logits.shape[-1], config.label_smoothing,
                                config.smoothing_spread)
      out["loss"] = _distill_to(student_logits, smoothed, config.target_temperature)
  elif name == "tsd":
    primary = labels if config.tsd_primary == "label" else None
    out["tsd"] = losses.tsd(student_logits, config.tsd_num_secondary, labels=primary)
    out["loss"] = ce + tsd_weight(config, epoch) * out["tsd"]
  elif name == "cp":
    out["entropy"] = losses.entropy(student_logits)
    out["loss"] = ce - config.cp_beta * out["entropy"]
  else:
    if teacher_logits is None:
      raise ValueError(f"method {name!r} needs teacher_logits")
    if needs_class_similarity(name) and class_similarity is None:
      raise ValueError(f"method {name!r} needs class_similarity")
    revised = revises(config)
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    q_y = jnp.take_along_axis(jax.nn.softmax(teacher_logits), labels[:, None], axis=-1)[:, 0]
    correct = jnp.argmax(teacher_logits, axis=-1) == labels
    out["teacher_correct"] = correct.astype(jnp.float32)
    out["rescale_weight"] = 1.0 - q_y  # Tang et al.'s per-example gradient rescaling
    if uses_mse_form(config):
      real = jnp.ones_like(correct) if example_mask is None else example_mask.astype(bool)
      supervised = real if teacher_mask is None else real & teacher_mask.astype(bool)
      loss, out["beta"] = _lr_mse(config, student_logits, teacher_logits, labels, correct,
                                  supervised)
    else:
      read_t = teacher_temperature(config)
      q = losses.softmax(teacher_logits, read_t)
      if revised:
        revision_t = config.revision_temperature
        if revision_t is not None and revision_t != read_t:
          q = losses.softmax(teacher_logits, revision_t)
        beta = targets.revision_beta(q, labels, config.eta)
        if config.revise_wrong_only:
          beta = jnp.where(correct, 1.0, beta)
        out["beta"] = beta
        q = beta[:, None] * q + (1.0 - beta[:, None]) * targets.one_hot(labels, q.shape[-1])
      term = _TEACHER_METHODS[name](config, student_logits, labels, q, teacher_logits,
                                    class_similarity, epoch, revised)
      out["teacher_term"] = term
      ce_weight = config.dkd_ce_weight if name in ("dkd", "dkd_lr") else config.ce_weight
      kd_weight = 1.0 if name in ("dkd", "dkd_lr") else config.kd_weight
      loss = ce_weight * ce + kd_weight * term
    out["loss"] = loss if teacher_mask is None else jnp.where(teacher_mask, loss, ce)
  return out
