"""kd_jax's import graph: data flows one way (config -> data + models -> method table -> train
step -> checkpoints), so no module imports, directly or through others, a module that imports
it; function-level imports count too."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "kd_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
  path = PACKAGE.parent.joinpath(*name.split("."))
  return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
  """kd_jax module -> the kd_jax modules it imports anywhere in its source (`from a import b`
  counts as `a.b` when b is a module, else as `a`)."""
  graph = {}
  for path in PACKAGE.rglob("*.py"):
    name, imported = _module_name(path), set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported.update(a.name for a in node.names if a.name.startswith("kd_jax"))
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kd_jax"):
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          imported.add(full if _is_module(full) else node.module)
    graph[name] = imported - {name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as `[a, b, ..., a]`, or None."""
  state = {}

  def visit(node, path):
    state[node] = "open"
    for child in sorted(graph.get(node, ())):
      if state.get(child) == "open":
        return [*path[path.index(child):], child]
      if child not in state and (cycle := visit(child, [*path, child])):
        return cycle
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node, [node])):
      return cycle
  return None


def test_the_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_kd_jax_has_no_import_cycle():
  graph = import_graph()
  assert {"kd_jax.losses", "kd_jax.train.loop", "kd_jax.train.checks"} <= set(graph)
  assert "kd_jax.train.checks" in graph["kd_jax.train.loop"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_library_imports_no_trainer_module():
  """losses, targets, methods, metrics, selection and cpu_flags are the core install: they
  import nothing of the trainer, models or data."""
  graph = import_graph()
  core = ("kd_jax.losses", "kd_jax.targets", "kd_jax.methods", "kd_jax.metrics",
          "kd_jax.selection", "kd_jax.cpu_flags")
  for module in core:
    heavy = {m for m in graph[module] if m.startswith(("kd_jax.train", "kd_jax.models",
                                                       "kd_jax.data"))}
    assert not heavy, (module, heavy)
