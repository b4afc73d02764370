"""The import rules README "Layout" states: the folder list follows the data, and nothing imports in a
circle. Read from the source (every import, module-level or inside a function), not from a run."""

import ast
import os

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "tfcmir")


def _module_name(path):
  relative = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return relative[:-len(".__init__")] if relative.endswith(".__init__") else relative


def _imports():
  """{module: {tfcmir modules it imports}} for every module of the package."""
  modules = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        modules[_module_name(path)] = ast.parse(open(path, encoding="utf-8").read(), path)
  graph = {}
  for module, tree in modules.items():
    found = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        found |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from tfcmir.train import loop` imports tfcmir.train.loop; `from tfcmir import x` likewise.
        found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                  for a in node.names}
    # A submodule's import of its own package (beam/options.py takes beam's INSTALL_HINT) is not a
    # step: Python has loaded the package before any of its submodules.
    graph[module] = {m for m in found if m in modules and m != module and not module.startswith(m + ".")}
  return graph


GRAPH = _imports()


def _under(module, *prefixes):
  return any(module == p or module.startswith(p + ".") for p in prefixes)


def _reach(start):
  seen, todo = set(), [start]
  while todo:
    for nxt in GRAPH[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def test_the_graph_was_read():
  assert GRAPH["tfcmir.train.loop"] >= {"tfcmir.shards", "tfcmir.model.contrastive"}
  assert "tfcmir.export_format" in GRAPH["tfcmir.inference"]


def test_nothing_imports_in_a_circle():
  assert not [m for m in GRAPH if m in _reach(m)]


def test_each_step_imports_only_what_comes_before_it():
  for module, imported in GRAPH.items():
    if _under(module, "tfcmir.data"):
      assert not {m for m in imported if _under(m, "tfcmir.prepare", "tfcmir.train", "tfcmir.model",
                                                "tfcmir.export", "tfcmir.inference", "tfcmir.search",
                                                "tfcmir.evaluate")}, module
    if _under(module, "tfcmir.model"):
      assert not {m for m in imported if _under(m, "tfcmir.data", "tfcmir.prepare", "tfcmir.train")}, \
          module
    if _under(module, "tfcmir.export", "tfcmir.export_essentia", "tfcmir.inference",
              "tfcmir.export_format"):
      assert not {m for m in imported if _under(m, "tfcmir.train", "tfcmir.prepare", "tfcmir.data")}, \
          module


def test_the_ground_floor_imports_no_step():
  steps = ("tfcmir.data", "tfcmir.prepare", "tfcmir.model", "tfcmir.train", "tfcmir.export",
           "tfcmir.inference", "tfcmir.embed", "tfcmir.evaluate", "tfcmir.search", "tfcmir.beam",
           "tfcmir.demo")
  for module in ("tfcmir.errors", "tfcmir.safeio", "tfcmir.runtime", "tfcmir.audio", "tfcmir.levels",
                 "tfcmir.flags"):
    assert not {m for m in GRAPH[module] if _under(m, *steps)}, module


def test_writers_and_readers_share_one_format_module():
  """An export's file names, a prepared folder's schema: written and read through the same module."""
  assert "tfcmir.export_format" in GRAPH["tfcmir.export"]
  assert "tfcmir.inference" not in GRAPH["tfcmir.export"]
  assert "tfcmir.shards" in GRAPH["tfcmir.prepare.sharding"] and "tfcmir.shards" in GRAPH[
      "tfcmir.train.pipeline"]
