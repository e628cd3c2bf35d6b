"""What a run prints: every stdout line starts with the local time (kd_jax/train/writer.py)."""

import io
import re
import time

from kd_jax.train import writer

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


def test_every_line_starts_with_the_time_however_it_is_written():
  out = io.StringIO()
  stream = writer.TimestampedLines(out)
  print("kd_jax: one", file=stream, flush=True)
  stream.write("two, in ")
  stream.write("pieces\nthree\n")
  print(file=stream)  # an empty line is a line too
  lines = out.getvalue().split("\n")
  assert lines[-1] == ""
  assert [re.sub(f"^{STAMP}", "", line) for line in lines[:-1]] == [
      "kd_jax: one", "two, in pieces", "three", ""]
  assert all(re.match(STAMP, line) for line in lines[:-1])
  assert lines[0].startswith(time.strftime("%Y-%m-%d"))
  assert stream.getvalue() == out.getvalue()  # everything else is the wrapped stream's
