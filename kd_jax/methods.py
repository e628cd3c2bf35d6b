"""The method table: method name -> per-example objective. The one place the trainer reads.

A method maps (student logits, labels, teacher logits, ...) to a dict of per-example `[B]`
arrays; key `"loss"` is the objective, the others are diagnostics (`"ce"`, `"teacher_term"`,
`"beta"`, `"teacher_correct"`, `"rescale_weight"`). The trainer takes the masked mean over
real (non-padding) examples; nothing here reduces over the batch.

Adding a method is one entry in `_METHODS`: a function
`(config, student_logits, labels, teacher_probs, teacher_logits, class_similarity, epoch,
revised) -> teacher_term [B]`, where `teacher_probs` is the teacher at temperature T, already
label-revised when `revised` is True. The student
objective of every teacher-based method is

    loss = ce_weight * CE(z_s, y) + kd_weight * teacher_term          (selected examples)
    loss = CE(z_s, y)                                                  (teacher_mask False)

except `dkd`, which follows mdistiller (`dkd_ce_weight * CE + warm-up * DKD`), and the `mse`
form of label revision (see `_lr_mse`). Teacher-free methods: `ce`, `ls` (label smoothing)
and `tsd` (the tolerant teacher's CE + u(epoch) * TSD).

Target-based variants (`kd_pt`, `kd_sim`, `kd_pt_sim`, `kd_topk`) are trained with
`T^2 * KL(target || p(z_s, T))` where teacher probabilities are taken at temperature T; at
T = 1 this has the gradient of Tang et al.'s `H(target, z_s)`. With `revise=True` (always for
`lr` and `dkd_lr`), the teacher's distribution at temperature T is first passed through Label
Revision (`targets.revise`, parameter `eta`).
"""

import jax
import jax.numpy as jnp
import ml_collections

from kd_jax import losses, targets


def default_config() -> ml_collections.ConfigDict:
  """Every method hyper-parameter, with the defaults documented in SPEC.md."""
  return ml_collections.ConfigDict(dict(
      name="kd",
      temperature=4.0,        # KD temperature T (RepDistiller/mdistiller CIFAR protocol)
      ce_weight=0.1,          # weight of CE(z_s, y) for teacher-based methods
      kd_weight=0.9,          # weight of the teacher term
      label_smoothing=0.1,    # epsilon of `ls`
      smoothing_spread="all",  # "all" (eps/C everywhere) or "others" (eps/(C-1) off-target)
      revise=False,           # apply Label Revision to the teacher (forced on by lr, dkd_lr)
      select=False,           # apply Data Selection (forced on by kd_ds, lr_ds, dkd_lr_ds);
                              # how examples are selected: the run config's `selection` block
      eta=0.8,                # Label Revision eta in (0, 1)
      lr_form="kl",           # "kl": T^2 KL(q'||p_s); "mse": the published reimplementation
      mse_logit_weight=4.0,   # lambda_1 of the mse form (teacher-correct examples)
      mse_prob_weight=1.0,    # lambda_2 of the mse form (teacher-wrong examples)
      topk=5,                 # k of kd_topk
      sim_temperature=1.0,    # tau_s of class_similarity
      sim_epsilon=0.1,        # epsilon of kd_sim
      dkd_alpha=1.0,          # mdistiller CIFAR defaults
      dkd_beta=8.0,
      dkd_ce_weight=1.0,
      dkd_warmup_epochs=20.0,
      tsd_eta=0.6,            # u(eta): TSD weight reached after the warm-up
      tsd_num_secondary=5,    # K secondary classes
      tsd_warmup_epochs=5.0,  # linear ramp of u from 0 to eta
  ))


def _kd(config, z_s, labels, q, z_t, similarity, epoch, revised):
  if revised:
    return losses.kl_to_targets(z_s, q, config.temperature)
  return losses.kd(z_s, z_t, config.temperature)


def _to_target(build):
  def method(config, z_s, labels, q, z_t, similarity, epoch, revised):
    return losses.kl_to_targets(z_s, build(config, labels, q, similarity), config.temperature)
  return method


def _dkd(config, z_s, labels, q, z_t, similarity, epoch, revised):
  if revised:
    term = losses.dkd_to_targets(z_s, q, labels, config.dkd_alpha, config.dkd_beta,
                                 config.temperature)
  else:
    term = losses.dkd(z_s, z_t, labels, config.dkd_alpha, config.dkd_beta, config.temperature)
  return _ramp(epoch, config.dkd_warmup_epochs) * term


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
_TEACHER_FREE = ("ce", "ls", "tsd")
# Data Selection variants: the base method on the selected examples, CE on the others. The
# selection itself (scores, ratio, refresh) is the trainer's job; see kd_jax.selection.
_WITH_SELECTION = {"kd_ds": "kd", "lr_ds": "lr", "dkd_lr_ds": "dkd_lr"}
NAMES = _TEACHER_FREE + tuple(_TEACHER_METHODS) + tuple(_WITH_SELECTION)


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


def _ramp(epoch, warmup_epochs):
  """Linear warm-up factor `min(1, epoch / warmup_epochs)`; 1 when warmup_epochs == 0."""
  if not warmup_epochs:
    return 1.0
  return jnp.minimum(1.0, jnp.asarray(epoch, jnp.float32) / warmup_epochs)


def _fail(field, value, allowed):
  raise ValueError(f"method.{field}={value!r} is not allowed: {allowed}")


def validate(config, num_classes: int) -> None:
  """Raises ValueError naming the first bad field, its value and what is allowed."""
  name = config.name
  if name not in NAMES:
    _fail("name", name, f"must be one of {', '.join(NAMES)}")
  if not config.temperature > 0:
    _fail("temperature", config.temperature, "must be > 0")
  for field in ("ce_weight", "kd_weight", "dkd_ce_weight", "tsd_eta"):
    if config[field] < 0:
      _fail(field, config[field], "must be >= 0")
  for field in ("label_smoothing", "sim_epsilon"):
    if not 0 <= config[field] <= 1:
      _fail(field, config[field], "must be in [0, 1]")
  if config.smoothing_spread not in ("all", "others"):
    _fail("smoothing_spread", config.smoothing_spread, "must be 'all' or 'others'")
  if config.get("select", False) and not needs_teacher(name):
    _fail("select", True, f"needs a teacher-based method, not {name!r}")
  if revises(config) and not 0 < config.eta < 1:
    _fail("eta", config.eta, "must be in (0, 1)")
  if config.lr_form not in ("kl", "mse"):
    _fail("lr_form", config.lr_form, "must be 'kl' or 'mse'")
  if name == "kd_topk" and not (int(config.topk) == config.topk and 1 <= config.topk < num_classes):
    _fail("topk", config.topk, f"must be an integer in [1, {num_classes - 1}] (C={num_classes})")
  if name == "tsd" and not 1 <= config.tsd_num_secondary <= num_classes - 1:
    _fail("tsd_num_secondary", config.tsd_num_secondary, f"must be in [1, {num_classes - 1}]")
  if needs_class_similarity(name) and not config.sim_temperature > 0:
    _fail("sim_temperature", config.sim_temperature, "must be > 0")


def _lr_mse(config, z_s, z_t, labels, q, correct):
  """Label revision, published reimplementation (`lr_form="mse"`, used at T = 1).

  Teacher-correct examples: `ce_weight * CE + mse_logit_weight * mean_c (z_s - z_t)^2`;
  teacher-wrong examples: `mse_prob_weight * mean_c (p(z_s,1) - q')^2` with `q'` the revised
  teacher distribution, and no CE. Squared errors are averaged over classes (as PyTorch's
  `F.mse_loss` with its default mean reduction does per element).
  """
  ce = losses.cross_entropy(z_s, labels)
  logit_mse = jnp.mean((z_s.astype(jnp.float32) - jax.lax.stop_gradient(z_t)) ** 2, axis=-1)
  revised = targets.revise(q, labels, config.eta)
  prob_mse = jnp.mean((jax.nn.softmax(z_s.astype(jnp.float32)) - revised) ** 2, axis=-1)
  return jnp.where(correct, config.ce_weight * ce + config.mse_logit_weight * logit_mse,
                   config.mse_prob_weight * prob_mse)


def per_example_losses(config, student_logits, labels, teacher_logits=None, *, epoch=0.0,
                       class_similarity=None, teacher_mask=None):
  """Per-example objective of method `config.name` and its diagnostics.

  Args:
    config: a `default_config()`-shaped ConfigDict (validate it first with `validate`).
    student_logits: `[B, C]` float32 or bfloat16.
    labels: `[B]` integers.
    teacher_logits: `[B, C]`, required by teacher-based methods; under stop_gradient.
    epoch: float (may be traced), fractional epoch for warm-up ramps (tsd, dkd).
    class_similarity: `[C, C]` from `targets.class_similarity`, for kd_sim and kd_pt_sim.
    teacher_mask: optional `[B]` bool (data selection): False -> the example gets plain
      `CE(z_s, y)` instead of the teacher-based objective.

  Returns:
    dict of `[B]` float32 arrays; `"loss"` is the objective to average.
  """
  name = base_name(config.name)
  ce = losses.cross_entropy(student_logits, labels)
  out = {"ce": ce}
  if name == "ce":
    out["loss"] = ce
  elif name == "ls":
    smoothed = targets.smooth(labels, student_logits.shape[-1], config.label_smoothing,
                              config.smoothing_spread)
    out["loss"] = losses.soft_cross_entropy(student_logits, smoothed)
  elif name == "tsd":
    out["tsd"] = losses.tsd(student_logits, config.tsd_num_secondary)
    out["loss"] = ce + config.tsd_eta * _ramp(epoch, config.tsd_warmup_epochs) * out["tsd"]
  else:
    if teacher_logits is None:
      raise ValueError(f"method {name!r} needs teacher_logits")
    if needs_class_similarity(name) and class_similarity is None:
      raise ValueError(f"method {name!r} needs class_similarity")
    revised = revises(config)
    teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    q = jax.nn.softmax(teacher_logits / config.temperature, axis=-1)
    q_y = jnp.take_along_axis(jax.nn.softmax(teacher_logits), labels[:, None], axis=-1)[:, 0]
    correct = jnp.argmax(teacher_logits, axis=-1) == labels
    out["teacher_correct"] = correct.astype(jnp.float32)
    out["rescale_weight"] = 1.0 - q_y  # Tang et al.'s per-example gradient rescaling
    if revised:
      out["beta"] = targets.revision_beta(q, labels, config.eta)
    if revised and config.lr_form == "mse" and name in ("kd", "lr"):
      loss = _lr_mse(config, student_logits, teacher_logits, labels, q, correct)
    else:
      q_target = targets.revise(q, labels, config.eta) if revised else q
      term = _TEACHER_METHODS[name](config, student_logits, labels, q_target, teacher_logits,
                                    class_similarity, epoch, revised)
      out["teacher_term"] = term
      ce_weight = config.dkd_ce_weight if name in ("dkd", "dkd_lr") else config.ce_weight
      kd_weight = 1.0 if name in ("dkd", "dkd_lr") else config.kd_weight
      loss = ce_weight * ce + kd_weight * term
    out["loss"] = loss if teacher_mask is None else jnp.where(teacher_mask, loss, ce)
  return out
