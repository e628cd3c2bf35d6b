"""Files written atomically, and the temporary files of writers that were killed.

`atomic_write(path, write)` writes to a temporary file beside `path` and renames it, so a
reader sees the old file or the new one, never a part. The temporary's name says which
process of which host wrote it, so `remove_orphans` can tell a killed writer's leftover from
a live writer's file. Standard library only: the data preparation and the trainer share it.
"""

import os
import re
import shutil
import socket

# The host in a temporary file's name: a writer's pid means something on its own host only.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
# `atomic_write`'s temporary names: <root>.tmp<pid>[-<host>][<extension>].
_TEMPORARY = re.compile(r"\.tmp(\d+)(?:-([A-Za-z0-9-]+))?(?:\.\w+)?$")


def temporary_path(path: str) -> str:
  """Where `atomic_write` writes before the rename. It keeps `path`'s extension (`np.save`
  / `np.savez` append theirs otherwise) and names the writer (pid and host), so a later run
  can tell a killed writer's leftover from a live writer's file (`remove_orphans`)."""
  root, extension = os.path.splitext(path)
  return f"{root}.tmp{os.getpid()}-{HOST}{extension}"


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def remove_orphans(directory: str) -> list[str]:
  """Removes the temporary files that killed writers (SIGKILL mid-write) left in `directory`.

  A temporary file is an orphan when its writer, named in it, was a process of this host
  that no longer runs. A live writer's file is kept, and so is another host's (its pid says
  nothing here: that host's next run removes it). A pid reused by an unrelated process only
  keeps a file longer. Returns the removed paths; a directory that cannot be written is left
  as it is (a read-only shared cache).
  """
  removed = []
  try:
    names = os.listdir(directory)
  except OSError:
    return removed
  for name in names:
    match = _TEMPORARY.search(name)
    if not match or match.group(2) not in (None, HOST) or _running(int(match.group(1))):
      continue
    path = os.path.join(directory, name)
    try:
      if os.path.isdir(path):  # a table directory (kd_jax.train.row_store)
        shutil.rmtree(path)
      else:
        os.remove(path)
      removed.append(path)
    except OSError:
      pass
  return removed


def atomic_write(path: str, write) -> None:
  """`write(tmp)` to a temporary file beside `path` (`temporary_path`), then renamed over
  `path`, so a reader sees the old file or the new one, never a part of one. The temporary
  is removed when anything fails."""
  tmp = temporary_path(path)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  atomic_write(path, write)


