"""Data Selection in the trainer: which training examples the teacher supervises.

A student whose method selects (`kd_ds`, `lr_ds`, `dkd_lr_ds`, or any teacher-based method
with `method.select=True`) gets, at every selection round, a boolean `selected [N]` over the
training split (dataset indices, the held-out validation slice excluded): selected examples
are trained with the method's teacher (revised) term, the others with cross entropy only
(`methods.per_example_losses(teacher_mask=...)`).

Rounds. One round before training (epoch 0); with `selection.refresh_epochs = R > 0`, another
at the start of every epoch that is a multiple of R. The mask is part of the checkpoint (and
the round's statistics of its metadata), so a resumed run trains on exactly the selection it
was killed with, and a round is recomputed only when the run reaches the next refresh epoch.

Criteria (`selection.criterion`, all scores higher = keep; `kd_jax.selection`):
  influence        score_i = g_ref^T (H + damping I)^{-1} g_i for the softmax classifier on
                   penultimate features (the scored model's final Dense `classifier`), where
                   g_i is the gradient of CE(classifier(x_i), t_i) with t_i the teacher's
                   distribution at T = 1, label-revised when the method revises, and g_ref
                   the gradient of the mean CE of the held-out validation slice
                   (`dataset.holdout` examples; the test split never selects anything).
                   H is the Hessian of the mean training CE to t plus `(l2/2)||kernel||^2`,
                   `l2` = `selection.l2`, default the optimizer's weight decay.
                   `selection.influence_target="teacher_minus_label"` scores instead the
                   influence of switching example i's target from its label to t_i,
                   `g_ref^T H^{-1} (g_i(t_i) - g_i(e_y))`: the DS decision itself.
                   Scored model (`selection.model`): "student" (the current student, i.e. its
                   initialisation in round 0) or "teacher" (fixed: refreshing is a no-op).
  teacher_correct  1 where the teacher's argmax is the label.
  teacher_margin   p_y - max_{c != y} p_c of the teacher.
  random           uniform scores, seeded by (seed, selection.seed, round epoch): the control.
Then `selection.select` keeps the `round(ratio * N)` best (ties by index).

Each round's statistics go to the role's summary (`summary["selection"]`): selected count and
ratio, the scores' histogram, and the share of teacher-wrong examples inside and outside the
selection.
"""

import time

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

from kd_jax import methods, selection, targets
from kd_jax.train import evaluate as eval_lib

MODELS = ("student", "teacher")
INFLUENCE_TARGETS = ("teacher", "teacher_minus_label")


def default_config() -> ml_collections.ConfigDict:
  """The run config's `selection` block (read only when the student's method selects)."""
  return ml_collections.ConfigDict(dict(
      criterion="influence",    # one of kd_jax.selection.CRITERIA
      ratio=0.5,                # share r of training examples the teacher supervises
      hessian="exact",          # "exact" (CG solve), "diagonal" or "identity"
      influence_target="teacher",  # or "teacher_minus_label" (module docstring)
      l2=config_dict.placeholder(float),  # None: the optimizer's weight decay
      damping=1e-3,             # added to H's diagonal (exact, diagonal)
      model="student",          # whose features/classifier are scored: student or teacher
      refresh_epochs=0,         # 0: one round before training; R: also every R epochs
      margin_space="prob",      # teacher_margin in "prob" or "logit" space
      seed=0,                   # folded into the random control's seed
      histogram_bins=20,
  ))


def _fail(field, value, allowed):
  raise ValueError(f"selection.{field}={value!r} is not allowed: {allowed}")


def check_config(config, has_validation: bool) -> None:
  """Raises ValueError (field, value, allowed); a no-op when the student does not select."""
  if not config.student.model or not methods.selects(config.student.method):
    return
  s = config.get("selection") or default_config()
  if s.criterion not in selection.CRITERIA:
    _fail("criterion", s.criterion, f"must be one of {selection.CRITERIA}")
  if not 0 < s.ratio <= 1:
    _fail("ratio", s.ratio, "must be in (0, 1]")
  if s.hessian not in selection.HESSIANS:
    _fail("hessian", s.hessian, f"must be one of {selection.HESSIANS}")
  if s.influence_target not in INFLUENCE_TARGETS:
    _fail("influence_target", s.influence_target, f"must be one of {INFLUENCE_TARGETS}")
  if s.model not in MODELS:
    _fail("model", s.model, f"must be one of {MODELS}")
  if not isinstance(s.refresh_epochs, int) or s.refresh_epochs < 0:
    _fail("refresh_epochs", s.refresh_epochs, "must be an integer >= 0 (0: one round)")
  if s.margin_space not in ("prob", "logit"):
    _fail("margin_space", s.margin_space, "must be 'prob' or 'logit'")
  for field in ("damping", "l2"):
    if s[field] is not None and s[field] < 0:
      _fail(field, s[field], "must be >= 0")
  if not isinstance(s.histogram_bins, int) or s.histogram_bins < 1:
    _fail("histogram_bins", s.histogram_bins, "must be an integer >= 1")
  if s.criterion == "influence" and not has_validation:
    raise ValueError("selection.criterion='influence' needs a reference set: set "
                     "dataset.holdout > 0 (the test split never selects anything)")


def is_round(settings_config, epoch: int) -> bool:
  """Whether a selection round starts at `epoch` (0, then every refresh_epochs)."""
  refresh = int(settings_config.refresh_epochs)
  return epoch == 0 or (refresh > 0 and epoch % refresh == 0)


def round_statistics(scores, mask, teacher_wrong, bins: int) -> dict:
  """Selected count/ratio, the score histogram, teacher-wrong share inside/outside."""
  counts, edges = np.histogram(scores, bins=bins)
  rest = ~mask
  return dict(
      num_examples=int(mask.size), num_selected=int(mask.sum()),
      selected_ratio=float(mask.mean()),
      score_histogram=dict(counts=counts.tolist(), edges=edges.tolist()),
      teacher_wrong_share=float(teacher_wrong.mean()),
      teacher_wrong_share_selected=float(teacher_wrong[mask].mean()) if mask.any() else None,
      teacher_wrong_share_rest=float(teacher_wrong[rest].mean()) if rest.any() else None)


def influence_scores(features, teacher_targets, labels, kernel, bias, ref_features,
                     ref_labels, *, l2, hessian, damping, target="teacher"):
  """`[N]` influence scores (higher = keep) of teacher supervision, `selection.influence_target`.

  "teacher": `score_i = g_ref^T H^{-1} g_i(t_i)` (`kd_jax.selection.influence_scores` with
  the teacher targets `t [N, C]`). "teacher_minus_label": `g_ref^T H^{-1} (g_i(t_i) -
  g_i(e_{y_i}))`, i.e. `(x_i V + v_b) . (e_y - t_i)` in closed form, the predicted effect of
  switching example i from its label to its teacher target. H is built with the teacher
  targets in both cases.
  """
  problem = (features, teacher_targets, kernel, bias)
  vector = selection.influence_vector(*problem, ref_features, ref_labels, l2=l2,
                                      hessian=hessian, damping=damping)
  scores = selection.example_scores(*problem, vector)
  if target == "teacher_minus_label":
    scores = scores - selection.example_scores(features, labels, kernel, bias, vector)
  return scores


def make_selector(config, settings, teacher, data, mesh, student_model, seed: int):
  """`selector(student_variables, epoch) -> (selected bool [N], statistics dict)`.

  The teacher's training-set predictions are computed once (first call) and reused by every
  round; scored features are recomputed each round from the scored model's eval-mode forward.
  """
  s = config.get("selection") or default_config()
  method = settings.method
  l2 = float(settings.optim.weight_decay if s.l2 is None else s.l2)
  batch_size = int(config.eval_batch_size)
  cache = {}
  teacher_features = s.criterion == "influence" and s.model == "teacher"
  # Built once: a refresh round reuses the compiled forward passes.
  teacher_fn = eval_lib.make_eval_fn(teacher.model, with_features=teacher_features)
  student_fn = eval_lib.make_eval_fn(student_model, with_features=True)

  def predict(eval_fn, variables, source):
    return eval_lib.predict(eval_fn, variables, eval_lib.eval_loader(source, batch_size), mesh)

  def teacher_outputs():
    if "teacher" not in cache:
      cache["teacher"] = predict(teacher_fn, teacher.variables, data.train)
      if teacher_features:
        cache["teacher_val"] = predict(teacher_fn, teacher.variables, data.val)
    return cache["teacher"]

  def influence(student_variables, out):
    probs = np.asarray(jax.nn.softmax(out["logits"].astype(np.float32), axis=-1))
    if methods.revises(method):
      probs = np.asarray(targets.revise(probs, out["label"], float(method.eta)))
    if s.model == "teacher":
      model_variables, train_out, val_out = teacher.variables, out, cache["teacher_val"]
    else:
      model_variables = student_variables
      train_out = predict(student_fn, student_variables, data.train)
      val_out = predict(student_fn, student_variables, data.val)
    classifier = jax.device_get(model_variables["params"]["classifier"])
    return influence_scores(train_out["features"], probs, out["label"], classifier["kernel"],
                            classifier["bias"], val_out["features"], val_out["label"], l2=l2,
                            hessian=s.hessian, damping=float(s.damping),
                            target=s.influence_target)

  def selector(student_variables, epoch: int):
    tick = time.time()
    out = teacher_outputs()
    labels = out["label"]
    if s.criterion == "influence":
      scores = influence(student_variables, out)
    elif s.criterion == "random":
      scores = selection.random_scores(len(labels), [seed, int(s.seed), epoch])
    elif s.criterion == "teacher_margin":
      scores = selection.teacher_margin_scores(out["logits"], labels, space=s.margin_space)
    else:
      scores = selection.teacher_correct_scores(out["logits"], labels)
    mask = selection.select(scores, float(s.ratio))
    teacher_wrong = np.argmax(out["logits"], axis=-1) != labels
    stats = dict(epoch=int(epoch), criterion=s.criterion, model=s.model, hessian=s.hessian,
                 influence_target=s.influence_target, **round_statistics(scores, mask, teacher_wrong, int(s.histogram_bins)),
                 seconds=time.time() - tick)
    return mask, stats

  return selector
