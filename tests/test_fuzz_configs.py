"""Fuzzing the CLI's config fields: any `--config.<field>=<value>` of a tiny config ends in
exit 0, in exit 2 with one line (bad input), or in exit 3 with one line (a valid config whose
loss diverges); never exit 1, never a traceback.

Fields are the config's own leaves; values mix valid and invalid ones (wrong types,
negatives, zero, huge, NaN and inf, empty, other fields' names). The examples are drawn
deterministically (the conftest profile) and bounded: KD_JAX_FUZZ_EXAMPLES=200 explores
more. Fields whose valid values can be arbitrarily expensive (epochs, data sizes) only get
small ones; multi-host and worker-process fields are left out (they start or wait for
other processes).
"""

import os
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import trainer_util

# Two tiny bases: synthetic vectors and 8x8 digit images; a student trained from labels, 1
# epoch of a few steps, so an exit-0 run takes seconds.
FAST = {"stages": "student", "student.method.name": "ce", "num_epochs": 1,
        "eval_test_every_epochs": 0, "checkpoint.every_steps": 0, "log_every_steps": 5}
BASES = {
    "synthetic": ("synthetic.py", {
        **FAST, "dataset.options.num_classes": 4, "dataset.options.num_superclasses": 2,
        "dataset.options.dim": 8, "dataset.options.num_train": 112,
        "dataset.options.num_test": 32, "dataset.holdout": 16, "batch_size": 16,
        "eval_batch_size": 32}),
    "digits": ("digits.py", {**FAST, "dataset.options.test_size": 1500,
                             "dataset.holdout": 97, "batch_size": 50, "eval_batch_size": 500}),
}
# Fields that shape a run the most, drawn as often as all the others together.
IMPORTANT = ["stages", "teacher.model", "student.model", "student.method.name",
             "teacher.method.name", "teacher.checkpoint", "dataset.name", "dataset.holdout",
             "batch_size", "num_epochs", "generations.num", "teacher_cache.dir",
             "compute_dtype", "optim.learning_rate"]
EXCLUDED = ("distributed.", "input.workers")
# Any valid value is a legitimate run, so only small ones: a big one is a long run, no bug.
COSTLY = ("num_epochs", "dataset.options.", "generations.num", "eval_batch_size",
          "batch_size", "selection.histogram_bins", "teacher.num_epochs", "student.num_epochs")
SMALL = ["-1", "0", "1", "2", "3"]
ANY = SMALL + [
    "0.5", "-0.5", "1e30", "1e6", "7", "nan", "inf", "-inf", "", " ", "abc", "True", "False",
    "None", "kd", "lr_ds", "tsd", "mlp_large", "resnet8", "cnn1d_small", "synthetic",
    "digits", "(1, 2)", "()", "[1]", "{}", "float16", "bfloat16", "teacher,precompute",
    "relative/dir", "\u00e9t\u00e9",
]


def _fields() -> list[str]:
  config = trainer_util.tiny_config()

  def leaves(tree, prefix=""):
    for key, value in tree.items():
      if isinstance(value, dict) and value:
        yield from leaves(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}"

  return sorted(field for field in leaves(config.to_dict())
                if not field.startswith(EXCLUDED))


FIELDS = _fields()


@st.composite
def mutations(draw):
  """One to three `field=value` changes of a base."""
  changes = {}
  for _ in range(draw(st.integers(1, 3))):
    field = draw(st.one_of(st.sampled_from(IMPORTANT), st.sampled_from(FIELDS)))
    values = SMALL if field.startswith(COSTLY) else ANY
    changes[field] = draw(st.sampled_from(values))
  return changes


@hypothesis.settings(max_examples=int(os.environ.get("KD_JAX_FUZZ_EXAMPLES", "5")),
                     deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(base=st.sampled_from(sorted(BASES)), changes=mutations())
# The cases that ended in a traceback (exit 1) or trained a wrong model before issue 23.
@hypothesis.example(base="digits", changes={"student.model": "resnet8"})
@hypothesis.example(base="synthetic", changes={"teacher.model": "cnn_digits_small",
                                               "stages": "teacher"})
def test_a_mutated_config_ends_in_exit_0_or_one_line(tmp_path_factory, base, changes):
  workdir = tmp_path_factory.mktemp("fuzz")
  config, fields = BASES[base]
  args = [sys.executable, "-m", "kd_jax.main",
          f"--config={os.path.join(trainer_util.REPO, 'configs', config)}",
          f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in {**fields, **changes}.items()]
  # cwd: relative paths a value names (a cache directory) land in the test's directory.
  result = subprocess.run(args, cwd=workdir, env=trainer_util.env(), capture_output=True,
                          text=True, timeout=300)
  shown = f"{base} {changes}: rc {result.returncode}\n{result.stderr[-3000:]}"
  assert result.returncode in (0, 2, 3), shown
  assert "Traceback" not in result.stderr, shown
  if result.returncode:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kd_jax: "), shown
