"""Data Selection in the trainer: which training examples the teacher supervises.

A student whose method selects (`kd_ds`, `lr_ds`, `dkd_lr_ds`, or any teacher-based method
with `method.select=True`) gets, at every selection round, a boolean `selected [N]` over the
training split (dataset indices, the held-out validation slice excluded): selected examples
are trained with the method's teacher (revised) term, the others with cross entropy only
(`methods.per_example_losses(teacher_mask=...)`).

(`kd_jax/selection.py` is the maths: scores and subset selection; this module runs them on
the trainer's models and data.)

Rounds. With `selection.warmup_epochs = W` (default 0) the student first trains W epochs
with plain CE (no example selected), then round 0 scores it at the start of epoch W; with
`selection.refresh_epochs = R > 0`, another round starts every R epochs after that. The
default W = 0 is measured, not assumed: in experiments/results/papers/lan (Lan et al. on
synthetic data, lr_ds with influence at ratio 0.5, teachers wrong on 5-30% of the training
examples, 3 seeds) neither a warmed (W > 0) nor a refreshed (R > 0) student selected better
than the untrained one, and none of the three beat the random control. Only the teacher as
the scored model did, by less than one std of its difference from the untrained student
(see the results' NOTES.md). The mask
is part of the train state and of the checkpoint (the round's statistics are in its
metadata), so a resumed run trains on exactly the selection it was killed with, and a round
is recomputed only when the run reaches the next round's epoch.

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
                   Scored model (`selection.model`): "student" (the current student: its
                   initialisation in round 0 unless `warmup_epochs` > 0, whereas the
                   influence approximation holds at a minimiser) or "teacher" (fixed:
                   refreshing is a no-op; with the teacher's own unrevised T = 1 output as
                   the target every per-example gradient is zero).
  teacher_correct  1 where the teacher's argmax is the label.
  teacher_margin   p_y - max_{c != y} p_c of the teacher.
  random           uniform scores, seeded by (seed, selection.seed, round epoch): the control.
Then `selection.select` keeps the `round(ratio * N)` best (ties by index).

Each round's statistics go to the stage's summary (`summary["selection"]`): selected count and
ratio, the scores' histogram, and the share of teacher-wrong examples inside and outside the
selection.
"""

import time

import jax
import numpy as np

from kd_jax import methods, selection, targets
from kd_jax.train import evaluate as eval_lib
from kd_jax.train import state as state_lib


def is_round(selection_config, epoch: int) -> bool:
  """Whether a selection round starts at `epoch`: W, then every R epochs after W."""
  warmup, refresh = int(selection_config.warmup_epochs), int(selection_config.refresh_epochs)
  return epoch == warmup or (refresh > 0 and epoch > warmup and (epoch - warmup) % refresh == 0)


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


class Selector:
  """Runs the selection rounds of one student: `selector(student_variables, epoch) ->
  (selected bool [N], statistics dict)` at the epochs `is_round` names.

  `config` is the student's stage config (its `method`, `optim` and `selection` blocks).
  The teacher's training-set predictions are computed at the first round and reused by every
  later one; the scored features are recomputed each round from the scored model's
  eval-mode forward pass, whose compiled functions are built once here.
  """

  def __init__(self, config, teacher, data, mesh, student_model, seed: int):
    self.config, self.teacher, self.data, self.mesh, self.seed = (config, teacher, data, mesh,
                                                                  seed)
    s = config.selection
    self.teacher_features = s.criterion == "influence" and s.model == "teacher"
    teacher_model = state_lib.with_compute_dtype(teacher.model, "float32",
                                                 config.get("precision"))
    self.teacher_fn = eval_lib.make_eval_fn(teacher_model, with_features=self.teacher_features)
    self.student_fn = eval_lib.make_eval_fn(student_model, with_features=True)
    self.teacher_train = self.teacher_val = None  # the teacher's predictions, at round 0

  def is_round(self, epoch: int) -> bool:
    return is_round(self.config.selection, epoch)

  def _predict(self, eval_fn, variables, source) -> dict:
    loader = eval_lib.eval_loader(source, int(self.config.eval_batch_size))
    return eval_lib.predict(eval_fn, variables, loader, self.mesh)

  def _teacher_outputs(self) -> dict:
    if self.teacher_train is None:
      self.teacher_train = self._predict(self.teacher_fn, self.teacher.variables,
                                         self.data.train)
      if self.teacher_features:
        self.teacher_val = self._predict(self.teacher_fn, self.teacher.variables,
                                         self.data.val)
    return self.teacher_train

  def _influence(self, student_variables, out) -> np.ndarray:
    s, method = self.config.selection, self.config.method
    probs = np.asarray(jax.nn.softmax(out["logits"].astype(np.float32), axis=-1))
    if methods.revises(method):
      probs = np.asarray(targets.revise(probs, out["label"], float(method.eta)))
    if s.model == "teacher":
      model_variables, train_out, val_out = self.teacher.variables, out, self.teacher_val
    else:
      model_variables = student_variables
      train_out = self._predict(self.student_fn, student_variables, self.data.train)
      val_out = self._predict(self.student_fn, student_variables, self.data.val)
    classifier = jax.device_get(model_variables["params"]["classifier"])
    l2 = float(self.config.optim.weight_decay if s.l2 is None else s.l2)
    return influence_scores(train_out["features"], probs, out["label"], classifier["kernel"],
                            classifier["bias"], val_out["features"], val_out["label"], l2=l2,
                            hessian=s.hessian, damping=float(s.damping),
                            target=s.influence_target)

  def __call__(self, student_variables, epoch: int) -> tuple[np.ndarray, dict]:
    s = self.config.selection
    tick = time.time()
    out = self._teacher_outputs()
    labels = out["label"]
    if s.criterion == "influence":
      scores = self._influence(student_variables, out)
    elif s.criterion == "random":
      scores = selection.random_scores(len(labels), [self.seed, int(s.seed), epoch])
    elif s.criterion == "teacher_margin":
      scores = selection.teacher_margin_scores(out["logits"], labels, space=s.margin_space)
    else:
      scores = selection.teacher_correct_scores(out["logits"], labels)
    mask = selection.select(scores, float(s.ratio))
    teacher_wrong = np.argmax(out["logits"], axis=-1) != labels
    stats = dict(epoch=int(epoch), criterion=s.criterion, model=s.model, hessian=s.hessian,
                 influence_target=s.influence_target,
                 **round_statistics(scores, mask, teacher_wrong, int(s.histogram_bins)),
                 seconds=time.time() - tick)
    return mask, stats
