"""Bad input fails fast with one line naming the field, its value and what is allowed (exit
2); the workdir guards (fingerprint, lock) and teacher acceptance; progress on stdout."""

import ast
import errno
import fcntl
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import jax
import jax.numpy as jnp
import optax
import pytest
import trainer_util

from kd_jax import models, pipeline
from kd_jax.train import checkpoint as ckpt_lib
from kd_jax.train import loop, writer
from kd_jax.train import state as state_lib
from kd_jax.train import workdir as workdir_lib

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


@pytest.mark.parametrize("overrides, expected", [
    (dict(student__method__name="nope"), "student.method.name='nope'"),
    (dict(teacher__model="resnet9000"), "teacher.model='resnet9000'"),
    (dict(dataset__name="imagenet9000"), "unknown dataset 'imagenet9000'"),
    (dict(student__method__temperature=0.0), "student.method.temperature=0.0"),
    (dict(student__method__temperature=float("inf")), "student.method.temperature=inf"),
    (dict(student__method__name="lr", student__method__eta=1.0), "student.method.eta=1.0"),
    (dict(student__method__name="kd_topk", student__method__topk=10),
     "student.method.topk=10"),
    (dict(teacher__method__name="kd"), "teacher.method.name='kd'"),
    (dict(teacher__checkpoint="/no/such/dir"), "teacher.checkpoint='/no/such/dir'"),
    (dict(dataset__holdout=100000), "dataset.holdout=100000"),
    (dict(dataset__options__num_classes=1), "num_classes=1"),
    (dict(eval_every_epochs=0), "eval_every_epochs=0"),
    (dict(optim__weight_decay=-1e-4), "optim.weight_decay=-0.0001"),
    (dict(optim__momentum=-0.5), "optim.momentum=-0.5"),
    (dict(optim__learning_rate=float("nan")), "learning_rate=nan"),
    (dict(teacher__num_epochs=0), "num_epochs=0"),          # 0 is not "the shared value"
    (dict(student__learning_rate=0.0), "learning_rate=0.0"),
    (dict(stages="teacher,students"), "stages='teacher,students'"),
    (dict(stages="student"), "needs a teacher"),
])
def test_prepare_rejects_bad_config(overrides, expected):
  with pytest.raises(ValueError) as error:
    pipeline.prepare(trainer_util.tiny_config(**overrides))
  assert expected in str(error.value)


def test_unprepared_data_says_how_to_prepare_it(tmp_path):
  config = trainer_util.tiny_config(dataset__name="cifar100", dataset__data_dir=str(tmp_path))
  config.dataset.options = {}
  with pytest.raises(ValueError) as error:
    pipeline.prepare(config)
  message = str(error.value)
  assert "\n" not in message and "is not prepared" in message
  assert f"python -m kd_jax.prepare cifar100 --data_dir={tmp_path} " in message


def test_cli_cifar100_with_an_empty_data_dir_is_one_line(tmp_path):
  (tmp_path / "data").mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", "--config=cifar100", f"--workdir={tmp_path / 'w'}",
       f"--config.dataset.data_dir={tmp_path / 'data'}"], cwd=tmp_path, env=trainer_util.env(),
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
  assert "python -m kd_jax.prepare cifar100" in _one_error_line(result)


def _teacher_run(tmp_path, **overrides):
  config = trainer_util.tiny_config(num_epochs=1, stages="teacher", **overrides)
  pipeline.run(config, str(tmp_path))
  return tmp_path / "teacher"


def test_teacher_checkpoint_must_be_finished_and_of_the_same_data(tmp_path):
  teacher_dir = _teacher_run(tmp_path)  # a finished 10-class teacher
  other = trainer_util.tiny_config(dataset__options__num_classes=12,
                                   teacher__checkpoint=str(tmp_path))
  with pytest.raises(ValueError, match="num_classes=10; this run's is 12"):
    pipeline.prepare(other)
  # ... and the same checkpoint with the right class count is used as the teacher.
  same = trainer_util.tiny_config(num_epochs=1, teacher__checkpoint=str(tmp_path))
  summary = pipeline.run(same, str(tmp_path / "distill"))
  assert summary["teacher"]["trained"] is False
  assert summary["teacher"]["test_accuracy"] == trainer_util.read_summary(tmp_path)[
      "teacher"]["test_accuracy"]
  assert not (tmp_path / "distill" / "teacher").exists()  # referenced, not copied
  assert summary["student"]["teacher"] == str(teacher_dir)
  # An unfinished teacher (killed, or stopped on NaN: no summary.json) is refused.
  unfinished = tmp_path / "unfinished"
  shutil.copytree(teacher_dir, unfinished)
  os.remove(unfinished / "summary.json")
  with pytest.raises(ValueError, match="is not a finished run"):
    pipeline.prepare(trainer_util.tiny_config(teacher__checkpoint=str(unfinished)))


def test_unreadable_final_teacher_checkpoint_is_an_error_not_an_older_step(tmp_path):
  teacher_dir = _teacher_run(tmp_path, checkpoint__every_steps=4)
  steps = sorted(int(s) for s in os.listdir(teacher_dir / "checkpoints"))
  assert len(steps) == 2  # an earlier step exists that a fallback could have used
  shutil.rmtree(teacher_dir / "checkpoints" / str(steps[-1]) / "variables")
  config = trainer_util.tiny_config(num_epochs=1, teacher__checkpoint=str(teacher_dir))
  with pytest.raises(ValueError, match="never an earlier step"):
    pipeline.run(config, str(tmp_path / "student_run"))


def _one_error_line(result) -> str:
  lines = [line for line in result.stderr.splitlines() if line.startswith("kd_jax:")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return lines[0]


def test_cli_exit_code_and_single_line(tmp_path):
  result = trainer_util.run_cli(tmp_path, student__method__name="nope")
  assert result.returncode == 2
  line = _one_error_line(result)
  assert "student.method.name='nope'" in line and "kd, lr" in line
  assert not (tmp_path / "teacher").exists()  # nothing was trained


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/no_such_config.py"], "no_such_config.py"),
    (["--config=configs/synthetic.py", "--config.student.methd.name=kd"], "methd"),
    (["--config=configs/synthetic.py", "--config.optim.weight_decay=-1.0"],
     "optim.weight_decay=-1.0"),
])
def test_cli_bad_config_is_one_line(tmp_path, args, expected):
  result = subprocess.run([sys.executable, "-m", "kd_jax.main", f"--workdir={tmp_path}", *args],
                          cwd=trainer_util.REPO, env=trainer_util.env(), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  assert expected in _one_error_line(result)


def test_cli_config_with_a_syntax_error_and_garbage_pth(tmp_path):
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", f"--config={broken}", f"--workdir={tmp_path}"],
      cwd=trainer_util.REPO, env=trainer_util.env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "SyntaxError" in _one_error_line(result)
  garbage = tmp_path / "teacher.pth"
  garbage.write_bytes(b"not a torch file" * 100)
  result = trainer_util.run_cli(tmp_path / "run", teacher__checkpoint=garbage)
  assert result.returncode == 2
  line = _one_error_line(result)
  assert f"teacher.checkpoint='{garbage}' is not allowed: cannot be read" in line


def test_cli_help_exits_0_with_configs_keys_fields_and_exit_codes():
  result = subprocess.run([sys.executable, "-m", "kd_jax.main", "--help"], cwd=trainer_util.REPO,
                          env=trainer_util.env(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  for code in ("0  done", "2  bad input", "3  the loss"):
    assert code in result.stdout
  assert "  cifar100               CIFAR-100, the RepDistiller" in result.stdout  # shipped
  assert "  seed         int    sets seed" in result.stdout  # config argument keys and types
  assert "  --config.student.method.temperature=4.0  (float)" in result.stdout  # defaults
  assert "  --config.precision=None  (str)" in result.stdout  # typed placeholder


def _parse(argv):
  """`main.parse_command` in this process on fresh flags: (config, exit code, stdout, stderr)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top

  from absl import flags  # pylint: disable=g-import-not-at-top

  from kd_jax import main  # pylint: disable=g-import-not-at-top
  out, err, config, code = io.StringIO(), io.StringIO(), None, None
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      config, _ = main.parse_command(["kd_jax.main", *argv], flags.FlagValues())
    except SystemExit as exit_:
      code = exit_.code
  return config, code, out.getvalue(), err.getvalue()


def test_help_of_a_config_shows_its_values_and_helpfull_the_absl_flags():
  config, code, out, _ = _parse(["--config=mnist1d:method=lr_ds", "--help"])
  assert code == 0 and config is None
  assert "Config fields of --config=mnist1d:method=lr_ds" in out
  assert "--config.student.method.name='lr_ds'  (str)" in out
  assert "--config.dataset.name='mnist1d'  (str)" in out
  _, code, out, _ = _parse(["--helpfull"])
  assert code == 0 and "--verbosity:" in out and "--config.seed=0  (int)" in out


@pytest.mark.parametrize("argv, expected", [
    ([], "--config is required: --config=NAME (shipped: cifar10, cifar100"),
    (["--config"], "--config needs a value"),
    (["--config=cifar1000"], "'cifar1000' is not a shipped config (did you mean cifar100?)"),
    (["--config=mnist1d:lr_ds"], "'lr_ds' is not key=value (did you mean method=lr_ds?)"),
    (["--config=mnist1d:seed=abc"], "seed='abc' is not allowed: seed (seed) takes an integer"),
    (["--config=mnist1d:foo=1"], "key 'foo' is unknown; keys: method (str: student.method.name)"),
    (["--config=mnist1d", "--config.seed=abc"], "--config.seed=abc"),
    (["--config=mnist1d", "--config.studnt.model=x"],
     "the config has no field 'studnt' (did you mean student?)"),
    (["--config=mnist1d", "--config.dataset.options.foo=1"], "dataset.options has no field"),
    (["--config=synthetic", "--config.dataset.options.dims=1"],
     "(did you mean dataset.options.dim?); its fields: correlation, dim,"),
    (["--config=mnist1d", "--config.student.model.x=1"], "it is a value, not a block"),
    (["--config=mnist1d", "--config.student=3"], "--config.student=3"),
    (["--config=mnist1d", "--no_such_flag=1"], "no_such_flag"),
])
def test_bad_config_arguments_and_fields_are_one_line(argv, expected):
  config, code, _, err = _parse(["--workdir=/tmp/unused", *argv])
  assert code == 2 and config is None
  assert err.count("\n") == 1 and err.startswith("kd_jax: ") and "Traceback" not in err, err
  assert expected in err, err


def _example_commands() -> list[tuple[str, str]]:
  """(where, command) of every `python -m kd_jax.main` / `kd-jax` / `python -m
  kd_jax.prepare` example in README.md, the configs' docstrings and --help (kd_jax.main's
  and kd_jax.prepare's docstrings), continuation lines joined, comments dropped, optional
  `[...]` parts kept (without the brackets)."""
  from kd_jax import main, prepare  # pylint: disable=g-import-not-at-top
  sources = {"kd_jax/main.py --help": main.__doc__, "kd_jax/prepare.py --help": prepare.__doc__}
  with open(os.path.join(trainer_util.REPO, "README.md")) as f:
    sources["README.md"] = f.read()
  for path in sorted(glob.glob(os.path.join(trainer_util.REPO, "configs", "*.py"))):
    with open(path) as f:
      sources[os.path.relpath(path, trainer_util.REPO)] = ast.get_docstring(
          ast.parse(f.read())) or ""
  found = []
  for where, text in sources.items():
    for line in text.replace("\\\n", " ").splitlines():
      match = re.search(r"(python -m kd_jax\.(main|prepare)|kd-jax)\s[^`]*", line)
      if match:
        command = re.split(r"\s(?:&&|;|\||#)\s?", match.group(0))[0]
        found.append((where, command.replace("[", "").replace("]", "").strip()))
  return found


EXAMPLES = _example_commands()


def test_examples_are_found():
  where = {w for w, _ in EXAMPLES}
  assert {"README.md", "kd_jax/main.py --help", "kd_jax/prepare.py --help",
          "configs/cifar100.py", "configs/quickstart.py"} <= where
  assert any("kd-jax " in command for _, command in EXAMPLES)


@pytest.mark.parametrize("where, command", EXAMPLES, ids=[f"{w}: {c}" for w, c in EXAMPLES])
def test_every_example_command_parses(where, command, monkeypatch):
  """Each example's flags parse (config, config argument, --config.FIELD overrides) from
  the repository root, as the README's commands run; `--help` examples exit 0."""
  monkeypatch.chdir(trainer_util.REPO)
  words = shlex.split(command)
  helps = "--help" in words
  if "kd_jax.prepare" in command:
    from kd_jax import prepare  # pylint: disable=g-import-not-at-top
    try:
      prepare.parse_args(words[3:])  # argparse exits 2 on a bad example
    except SystemExit as exit_:
      assert helps and exit_.code == 0, f"{where}: {command}"
    return
  args = words[1:] if words[0] == "kd-jax" else words[3:]
  config, code, out, err = _parse(args)
  if helps:
    assert code == 0 and "Exit codes:" in out, f"{where}: {command}\n{err}"
    return
  assert code is None and config is not None, f"{where}: {command}\n{err}"
  assert any(arg.startswith("--workdir") for arg in args), f"{where}: {command} has no --workdir"


def test_quickstart_runs_as_a_copy_in_another_directory(tmp_path):
  """A copy of the quick start's config file in an empty directory, run from there (one
  epoch: the full run is among the slow tests; test_configs checks that the copy is the
  shipped config)."""
  shutil.copy(os.path.join(trainer_util.REPO, "configs", "quickstart.py"), tmp_path)
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", "--config=quickstart.py", "--workdir=run",
       "--config.num_epochs=1"], cwd=tmp_path, env=trainer_util.env(), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "kd_jax: student cnn1d_small: test accuracy" in result.stdout
  assert trainer_util.read_summary(tmp_path / "run")["student"]["num_epochs"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("where, command", EXAMPLES, ids=[f"{w}: {c}" for w, c in EXAMPLES])
def test_small_example_commands_run(where, command, tmp_path):
  """Every example on offline data runs to the end as written (its workdir replaced)."""
  words = shlex.split(command)
  if "kd_jax.prepare" in command:
    pytest.skip("prepare examples need the original archives")
  config, _, _, _ = _parse(words[1:] if words[0] == "kd-jax" else words[3:])
  if config.dataset.name not in ("mnist1d", "digits", "synthetic"):
    pytest.skip(f"{config.dataset.name} is not offline data")
  words = [w for w in words if not w.startswith("--workdir")]
  args = words[1:] if words[0] == "kd-jax" else words[3:]
  result = subprocess.run([sys.executable, "-m", "kd_jax.main", *args,
                           f"--workdir={tmp_path}"], cwd=trainer_util.REPO,
                          env=trainer_util.env(), capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, f"{where}: {command}\n{result.stderr[-3000:]}"


def test_console_script_entry_point_runs_the_cli():
  """`kd-jax` is `kd_jax.__main__:run` (pyproject.toml), the same command line."""
  with open(os.path.join(trainer_util.REPO, "pyproject.toml"), "rb") as f:
    scripts = tomllib.load(f)["project"]["scripts"]
  assert scripts == {"kd-jax": "kd_jax.__main__:run"}
  result = subprocess.run([sys.executable, "-m", "kd_jax", "--config=quickstart", "--help"],
                          cwd=trainer_util.REPO, env=trainer_util.env(), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and "Config fields of --config=quickstart" in result.stdout


def test_missing_torch_extra_for_a_pth_teacher_is_one_line(tmp_path):
  """A .pth teacher without torch installed: one line naming the extra, exit 2, nothing
  trained (torch is hidden from the subprocess)."""
  pth = tmp_path / "teacher.pth"
  pth.write_bytes(b"\0" * 64)
  args = trainer_util.cli_args(tmp_path / "run", teacher__checkpoint=pth)[3:]
  script = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = ['kd_jax.main', *{args!r}]; "
            "runpy.run_module('kd_jax.main', run_name='__main__', alter_sys=True)")
  result = subprocess.run([sys.executable, "-c", script], cwd=trainer_util.REPO,
                          env=trainer_util.env(), capture_output=True, text=True, timeout=180)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "pip install 'kd_jax[torch]'" in _one_error_line(result)
  assert not (tmp_path / "run" / "student").exists()


def test_cli_workdir_that_cannot_be_written(tmp_path):
  (tmp_path / "a_file").write_text("")  # root ignores permissions: a file in the path instead
  result = trainer_util.run_cli(tmp_path / "a_file" / "run")
  assert result.returncode == 2 and "cannot be written" in _one_error_line(result)


def test_full_disk_is_named(tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr("builtins.open", full)
  with pytest.raises(workdir_lib.WorkdirError, match="summary.json: the disk is full"):
    workdir_lib.write_json(str(tmp_path / "summary.json"), {})


def test_cli_batch_not_divisible_by_devices(tmp_path):
  result = trainer_util.run_cli(tmp_path, num_devices=4, batch_size=30)
  assert result.returncode == 2
  assert "batch_size=30" in _one_error_line(result)
  assert "device count (4)" in result.stderr


def test_cli_nan_loss_stops_with_message(tmp_path):
  result = trainer_util.run_cli(tmp_path, teacher__learning_rate="1e30")
  assert result.returncode == 3
  assert "non-finite" in _one_error_line(result)
  assert not (tmp_path / "teacher" / "summary.json").exists()


def test_workdir_of_another_configuration_is_refused_and_left_intact(tmp_path):
  """Finished: another seed is refused (no skip, config.json kept). Interrupted: resuming
  with fewer epochs is refused and no checkpoint is moved aside."""
  assert trainer_util.run_cli(tmp_path, stages="teacher").returncode == 0
  config_json = (tmp_path / "config.json").read_text()
  result = trainer_util.run_cli(tmp_path, stages="teacher", seed=1)
  assert result.returncode == 2
  line = _one_error_line(result)
  assert "another configuration" in line and "seed: 0 there, 1 now" in line
  assert (tmp_path / "config.json").read_text() == config_json
  # Interrupted (no summary): resumed with fewer epochs.
  os.remove(tmp_path / "teacher" / "summary.json")
  steps = sorted(os.listdir(tmp_path / "teacher" / "checkpoints"))
  result = trainer_util.run_cli(tmp_path, stages="teacher", num_epochs=1)
  assert result.returncode == 2 and "num_epochs: 2 there, 1 now" in _one_error_line(result)
  assert sorted(os.listdir(tmp_path / "teacher" / "checkpoints")) == steps
  assert not (tmp_path / "teacher" / "corrupt_checkpoints").exists()


def test_second_process_on_a_workdir_stops_at_once(tmp_path):
  with open(tmp_path / ".lock", "a+") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write("4242")
    held.flush()
    result = trainer_util.run_cli(tmp_path)
  assert result.returncode == 2
  assert "is in use by process 4242" in _one_error_line(result)
  assert not (tmp_path / "teacher").exists()


def _garbage_files(step_dir):
  for root, _, names in os.walk(step_dir):
    for name in names:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")


def _one_flipped_bit(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir / "variables")
           for f in names]
  largest = max(files, key=os.path.getsize)  # the weights' raw bytes
  with open(largest, "r+b") as f:
    f.seek(os.path.getsize(largest) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x40]))  # one exponent bit of one weight: reads back, wrongly


@pytest.mark.parametrize("damage, message", [
    (_garbage_files, " is unreadable"),
    (_one_flipped_bit, ": item 'variables' does not match its stored checksum"),
])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_used(tmp_path, capsys,
                                                                         damage, message):
  config = trainer_util.tiny_config(stages="teacher")
  reference = pipeline.run(config, str(tmp_path))["teacher"]
  os.remove(tmp_path / "teacher" / "summary.json")  # as if interrupted after the last save
  steps = sorted(int(s) for s in os.listdir(tmp_path / "teacher" / "checkpoints"))
  damage(tmp_path / "teacher" / "checkpoints" / str(steps[-1]))
  capsys.readouterr()
  resumed = pipeline.run(config, str(tmp_path))["teacher"]
  out = capsys.readouterr().out
  assert f"checkpoints/{steps[-1]}{message}" in out
  assert f"resumes at step {steps[-2]}" in out
  assert os.listdir(tmp_path / "teacher" / "corrupt_checkpoints") == [str(steps[-1])]
  assert trainer_util.comparable(resumed) == trainer_util.comparable(reference)


def test_nonfinite_weights_are_never_saved(tmp_path):
  """An update that overflows exactly at a save step is not saved as 'the last good'."""
  state = state_lib.create_train_state(models.create("mlp_small", 10), optax.sgd(0.1),
                                       jax.random.PRNGKey(0), (16,))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  meta = dict(stage="student", step=7)
  loop._save(checkpointer, state, meta, writer.MetricSums())  # pylint: disable=protected-access
  broken = state.replace(params=jax.tree.map(lambda x: x.at[0].set(jnp.inf), state.params))
  with pytest.raises(loop.TrainingDiverged, match="last good checkpoint is kept: step 7"):
    loop._save(checkpointer, broken, dict(meta, step=8), writer.MetricSums())  # pylint: disable=protected-access
  assert checkpointer.manager.all_steps() == [7]


def test_progress_lines_when_stdout_is_a_file(tmp_path):
  """Under nohup or a scheduler (stdout redirected to a file), every log_every_steps and
  every epoch end prints a line, teacher and student alike, each starting with the time."""
  log = tmp_path / "log.txt"
  with open(log, "w") as out:
    result = subprocess.run(trainer_util.cli_args(tmp_path / "run"), cwd=trainer_util.REPO,
                            env=trainer_util.env(), stdout=out, stderr=subprocess.PIPE,
                            timeout=300)
  assert result.returncode == 0
  stamped = [TIMESTAMP.match(line) for line in log.read_text().splitlines()]
  assert all(stamped), [line for line, m in zip(log.read_text().splitlines(), stamped) if not m]
  lines = [line[match.end():] for line, match in zip(log.read_text().splitlines(), stamped)]
  assert any(line.startswith("kd_jax: student") for line in lines)
  for stage in ("teacher", "student"):
    train_steps = [int(line.split()[2]) for line in lines
                   if line.startswith(f"{stage} step") and " train:" in line]
    assert train_steps == [5, 10, 15, 16, 20, 25, 30, 32]  # log_every_steps 5, 16 per epoch
    assert sum(line.startswith(f"{stage} step") and "train_epoch:" in line
               for line in lines) == 2
    assert any("img/s" in line and "ETA" in line for line in lines if line.startswith(stage))
