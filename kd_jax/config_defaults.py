"""Shared defaults of every config: the one place each run field is declared and documented.

A config file (the shipped ones are the repository's configs/*.py, installed with the
package as kd_jax/configs) calls `get_config()` and changes what its protocol needs:

  from kd_jax import config_defaults as defaults

  def get_config(arg=None):
    c = defaults.get_config()
    c.dataset.name = "cifar10"
    return defaults.apply_variant(c, arg)

It imports nothing but the package, so a copy of it works from any directory. Every field
exists here, so any of them can be set on the command line (`--config.student.method.name=dkd`);
None-valued fields are typed placeholders. The method block's fields and defaults live
beside the method table (`kd_jax.methods.default_config`), which library users import on
its own; reading a config imports no trainer module.

A config describes a pipeline (`kd_jax.pipeline`): the stages it names (a teacher trained
here or loaded from `teacher.checkpoint`, then a student; or `generations.num` generations),
each trained by `kd_jax.train.train` on a stage config that `kd_jax.train.stage.stage_config`
derives from this one: the shared fields plus the stage's `stage`, `model`, `method` and
`num_epochs`, with `optim.learning_rate` and `optim.num_epochs` resolved.
"""

import ml_collections
from ml_collections import config_dict

from kd_jax import methods


def method(name: str, **overrides) -> ml_collections.ConfigDict:
  """A method block (see kd_jax.methods.default_config) with `name` and overrides."""
  config = methods.default_config()
  config.name = name
  config.update(overrides)
  return config


def student(model: str, method_name: str = "kd", **method_overrides):
  """A student block: model, method, and optional overrides of the shared epochs and lr."""
  return ml_collections.ConfigDict(dict(
      model=model,                                   # kd_jax.models name
      method=method(method_name, **method_overrides),
      num_epochs=config_dict.placeholder(int),       # None: the shared num_epochs
      learning_rate=config_dict.placeholder(float),  # None: optim.learning_rate
  ))


def teacher(model: str, method_name: str = "ce", checkpoint: str = "", **method_overrides):
  """A teacher block: trained here with a teacher method (ce, ls, tsd) unless `checkpoint`
  names a kd_jax run/role/checkpoints directory or a PyTorch .pth (loaded instead)."""
  block = student(model, method_name, **method_overrides)
  block.checkpoint = checkpoint
  return block


class ConfigError(ValueError):
  """A config argument, field or file that cannot be used; the message is one line."""


# The keys of a config argument (`--config=cifar100:method=lr_ds,criterion=random`,
# big_vision's `get_config(arg)` style): the field each one sets and the type of its value.
VARIANT_KEYS = {
    "method": ("student.method.name", str), "teacher": ("teacher.model", str),
    "student": ("student.model", str), "criterion": ("selection.criterion", str),
    "ratio": ("selection.ratio", float), "warmup": ("selection.warmup_epochs", int),
    "refresh": ("selection.refresh_epochs", int), "holdout": ("dataset.holdout", int),
    "seed": ("seed", int), "epochs": ("num_epochs", int), "stages": ("stages", str),
    "correlation": ("dataset.options.correlation", float),
}


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def variant_keys_help() -> str:
  """`key (type: field)` for every config argument key, comma-separated."""
  return ", ".join(f"{key} ({kind.__name__}: {field})"
                   for key, (field, kind) in VARIANT_KEYS.items())


def set_fields(config: ml_collections.ConfigDict, fields: dict):
  """`config` with `fields` ("a.b.c" -> value) set, as `--config.a.b.c=value` would."""
  for key, value in fields.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _variant_field(config, item: str) -> tuple[str, object]:
  """`(field, value)` that one `key=value` item of a config argument sets."""
  key, sep, text = item.partition("=")
  key = key.strip()
  if not sep:
    hint = (f" (did you mean method={item}?)" if item in methods.NAMES else "")
    raise ConfigError(f"config argument {item!r} is not key=value{hint}; keys: "
                      f"{variant_keys_help()}")
  if key not in VARIANT_KEYS:
    raise ConfigError(f"config argument key {key!r} is unknown; keys: {variant_keys_help()}")
  field, kind = VARIANT_KEYS[key]
  try:
    value = kind(text.strip())
  except ValueError:
    raise ConfigError(f"config argument {key}={text!r} is not allowed: {key} ({field}) takes "
                      f"{_KIND_NAMES[kind]}") from None
  *parents, leaf = field.split(".")
  node = config
  for parent in parents:
    node = node.get(parent) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise ConfigError(f"config argument {key}={text!r} is not allowed: this config has no "
                      f"field {field} (config {config.get('name', '?')!r})")
  return field, value


def apply_variant(config: ml_collections.ConfigDict, arg: str | None):
  """`config` with a config argument applied: `key=value[,key=value...]`, keys of
  VARIANT_KEYS, each value converted to its key's type; raises ConfigError (one line,
  naming the key and what is allowed). `--config.<field>=...` flags still override any
  field afterwards."""
  items = [item for item in (arg or "").split(",") if item.strip()]
  return set_fields(config, dict(_variant_field(config, item) for item in items))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "defaults"      # reported in summary.json
  c.seed = 0               # init, shuffling, dropout (folded with the role name)

  c.dataset = ml_collections.ConfigDict(dict(
      name="cifar100",                        # kd_jax.data.names()
      # CIFAR / ImageNet: where `python -m kd_jax.prepare` wrote them, or a TFDS data_dir
      # (None: $TFDS_DATA_DIR or ~/tensorflow_datasets, the default of both)
      data_dir=config_dict.placeholder(str),
      seed=0,                                 # dataset generation/split seed (offline data)
      holdout=0,              # examples of the train split held out for validation (best ckpt)
      holdout_seed=0,         # fixed across run seeds: every seed trains on the same examples
      options=ml_collections.ConfigDict(),    # extra kwargs of kd_jax.data.load
  ))

  c.batch_size = 64        # GLOBAL batch size, a multiple of the device count
  c.eval_batch_size = 256
  c.num_epochs = 240
  c.optim = ml_collections.ConfigDict(dict(
      name="sgd",             # 'sgd' (torch.optim.SGD semantics) or 'adamw'
      learning_rate=0.05,
      momentum=0.9,
      nesterov=False,
      weight_decay=5e-4,      # coupled L2 on every parameter, as PyTorch's SGD
      schedule="step",        # 'step' (x lr_decay_factor at lr_decay_epochs) or 'cosine'
      lr_decay_epochs=(150, 180, 210),
      lr_decay_factor=0.1,
      warmup_epochs=0.0,      # linear warm-up from 0
  ))

  # The teacher is trained here (method ce, ls, tsd or cp) or loaded from `checkpoint`.
  c.teacher = teacher("resnet32x4", "ce")
  c.student = student("resnet8x4", "kd")
  # Which stages run: "teacher,student" (the teacher stage is skipped when the student's
  # method needs no teacher or teacher.checkpoint names one), "teacher" (teacher only) or
  # "student" (a teacher-free method, or a teacher from teacher.checkpoint); "precompute"
  # or "teacher,precompute": no student, the teacher's outputs for the student's runs are
  # written to the teacher-output cache (teacher_cache.dir) for a sweep to read.
  c.stages = "teacher,student"

  # Data Selection: read when the student's method selects (*_ds or method.select=True);
  # the rounds are described in kd_jax/train/selection_rounds.py.
  c.selection = ml_collections.ConfigDict(dict(
      criterion="influence",       # influence | teacher_correct | teacher_margin | random
      ratio=0.5,                   # share r of training examples the teacher supervises
      hessian="exact",             # influence: "exact" (CG solve), "diagonal" or "identity"
      influence_target="teacher",  # or "teacher_minus_label": the effect of the switch
      l2=config_dict.placeholder(float),  # influence: None = the optimizer's weight decay
      damping=1e-3,                # added to the Hessian's diagonal (exact, diagonal)
      model="student",             # whose features and classifier are scored: student|teacher
      # W: CE only (no teacher) for W epochs, then round 0. Default 0 (round 0 scores the
      # untrained student): in experiments/results/papers/lan (lr_ds, influence, r = 0.5,
      # 3 teacher error levels x 3 seeds) a warmed (W = 2) or refreshed student scored no
      # better than the untrained one and none beat the random control (its NOTES.md).
      warmup_epochs=0,
      refresh_epochs=0,            # R: 0 = one round; R > 0: a round every R epochs after W
      margin_space="prob",         # teacher_margin in "prob" or "logit" space
      seed=0,                      # folded into the random control's seed
      histogram_bins=20,           # of the round statistics' score histogram
  ))

  # Training in generations (kd_jax/generations.py): num = 0 is a teacher/student run.
  c.generations = ml_collections.ConfigDict(dict(
      num=0,             # G generations (patriarch included); 0 disables generations
      ce_weights=(),     # lambda_g for g = 1..G-1 (G-1 values in [0, 1]); () -> student block's
      ensemble_first=1,  # ensemble_<g> averages generations ensemble_first..g
      num_secondary=5,   # K of the secondary_in_superclass metric
  ))

  # Mixed precision: the models' compute dtype (activations, conv/matmul inputs) of teacher
  # and student, "float32" or "bfloat16". Parameters, optimizer state, BatchNorm statistics
  # and every loss stay float32. bfloat16 pays on GPUs/TPUs; on CPUs it is usually slower.
  c.compute_dtype = "float32"
  # Precision of the float32 convolutions and matmuls of the models (`precision=` of their
  # Flax layers): None, the backend's default, is what PyTorch's reference protocols get on
  # a GPU (cuDNN convolutions in TF32 on A100/H100) and what TPUs run (one bfloat16 pass),
  # at full speed; "high" (bf16_3x on TPU, TF32 on GPU) and "highest" (full float32: several
  # times slower on accelerators) are for exact float32 comparisons. No effect on a CPU or
  # on bfloat16 inputs. A non-default value enters the run's fingerprint.
  c.precision = config_dict.placeholder(str)
  # Teacher-output cache (kd_jax/train/teacher_cache.py): the teacher's logits per (epoch,
  # example) of the data order, computed by the first run that needs them and read by every
  # run with the same teacher, data, augmentation, order seed, batch size and compute dtype,
  # so a sweep of methods runs its teacher once per seed. Data selection rounds still run
  # the live teacher.
  c.teacher_cache = ml_collections.ConfigDict(dict(
      dir="",            # cache directory shared by the runs of a sweep; '' = no cache
      format="float16",  # "float32" (the exact logits: bit-identical to the live teacher),
                         # "float16" (half of it), "topk" (the k largest probabilities, the
                         # label's and the rest's mass) or "sampled" (k classes drawn from
                         # the teacher at the method's temperature: an unbiased target);
                         # every format but float32 enters the fingerprint
      k=10,              # topk: classes kept; sampled: draws per example
  ))

  # Input pipeline (no effect on results: batches are a function of (seed, epoch, step)).
  c.input = ml_collections.ConfigDict(dict(
      workers=0,          # processes that build training batches (grain); 0 = this process.
                          # For ImageNet's JPEG decoding; CIFAR and offline data: keep 0
      prefetch=2,         # host batches prepared ahead (a background thread)
      device_prefetch=2,  # batches transferred to the devices ahead of the running step
  ))

  c.log_every_steps = 100           # train metrics to metrics.jsonl, TensorBoard and stdout
  c.eval_every_epochs = 1           # validation (held-out slice) accuracy -> best checkpoint
  c.eval_test_every_epochs = 1      # test metrics for the curves (0: only at the end)
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000,   # also at every epoch end; 0: epoch ends only
      keep=2,             # last checkpoints kept (plus the best by validation accuracy)
      # Write the files in a background thread while training goes on (orbax's async save):
      # the step waits only for the copy off the device and the checksums. On an accelerator
      # a CIFAR epoch is seconds and a synchronous save a good part of one.
      async_save=True,
  ))
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="",   # host:port of process 0, for multi-host runs
      num_processes=1,
      process_id=0,
      cpu_collectives="gloo",   # CPU cross-process collectives (tests, CPU clusters)
  ))
  return c
