"""The layering: imports only point down, and no module imports itself back.

From the bottom: ``transforms.core`` < ``io`` < ``reuse`` < ``models`` <
``retrieval`` < ``ranking`` < ``training`` < ``graphs`` < ``pipelines.common``
< ``pipelines.steps`` < ``pipelines.jobs`` < the command line
(``pipelines/<job>.py``, ``pipelines.cli``). A module may import its own layer
and the layers below it. Every import counts: inside functions and under
``TYPE_CHECKING`` too (docs/architecture.md).
"""
from __future__ import annotations

import ast
import pathlib
import textwrap

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('pipelines', 'transforms')
LAYERS = (
    'transforms.core', 'transforms.io', 'transforms.reuse', 'transforms.models',
    'transforms.retrieval', 'transforms.ranking', 'transforms.training', 'transforms.graphs',
    'pipelines.common', 'pipelines.steps', 'pipelines.jobs', 'pipelines')


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """``{dotted module name: file}`` of the packages under ``root``."""
  found = {}
  for package in PACKAGES:
    for path in sorted((root / package).rglob('*.py')):
      name = '.'.join(path.relative_to(root).with_suffix('').parts)
      found[name.removesuffix('.__init__')] = path
  return found


def imports(path: pathlib.Path, known: set[str]) -> dict[str, int]:
  """``{module of ours: line}`` that a file imports, at any depth (functions,
  ``if TYPE_CHECKING:`` blocks); ``from a import b`` counts ``a.b`` when that
  is a module, else ``a``."""
  found: dict[str, int] = {}
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in known
               else node.module for alias in node.names]
    for name in names:
      while name and name not in known:
        name = name.rpartition('.')[0]
      if name:
        found.setdefault(name, node.lineno)
  return found


def graph(root: pathlib.Path) -> dict[str, dict[str, int]]:
  known = modules(root)
  return {name: {target: line for target, line in imports(path, set(known)).items()
                 if target != name and not name.startswith(target + '.')}
          for name, path in known.items()}


def layer_of(module: str) -> int:
  """The index in ``LAYERS`` of the most specific layer holding ``module``."""
  best = -1
  for index, layer in enumerate(LAYERS):
    if module == layer or module.startswith(layer + '.'):
      if best < 0 or len(layer) > len(LAYERS[best]):
        best = index
  return best


def upward_imports(edges: dict[str, dict[str, int]]) -> list[str]:
  """``'a -> b (line n)'`` for every import of a higher layer (package
  ``__init__`` modules are the packages' own doors and carry no layer)."""
  found = []
  for source, targets in sorted(edges.items()):
    for target, line in sorted(targets.items()):
      if target in ('transforms', 'pipelines') or layer_of(target) < 0:
        continue
      if layer_of(target) > layer_of(source):
        found.append(f'{source} -> {target} (line {line})')
  return found


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
  """The import cycles: strongly connected groups of two or more modules."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found: list[list[str]] = []

  def visit(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for target in edges.get(node, {}):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      group = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.append(member)
        if member == node:
          break
      if len(group) > 1:
        found.append(sorted(group))

  for node in sorted(edges):
    if node not in index:
      visit(node)
  return found


def test_every_module_has_a_layer():
  assert [name for name in modules(REPO_ROOT)
          if name not in PACKAGES and layer_of(name) < 0] == []


def test_imports_only_point_down():
  assert upward_imports(graph(REPO_ROOT)) == []


def test_no_import_cycle():
  assert cycles(graph(REPO_ROOT)) == []


def _tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  for name, source in {'transforms/__init__.py': '', 'pipelines/__init__.py': '',
                       **files}.items():
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
  return tmp_path


def test_a_planted_upward_import_is_found_in_a_function_and_under_type_checking(tmp_path):
  root = _tree(tmp_path, {
      'transforms/core/__init__.py': '',
      'transforms/core/texts.py': '''
          from typing import TYPE_CHECKING
          if TYPE_CHECKING:
            from transforms.ranking.fusion import FusionSpec
          def f():
            from pipelines.jobs import rerank
          ''',
      'transforms/ranking/__init__.py': '',
      'transforms/ranking/fusion.py': 'from transforms.core import texts\n',
      'pipelines/jobs/__init__.py': '',
      'pipelines/jobs/rerank.py': 'import transforms.ranking.fusion\n',
  })
  assert upward_imports(graph(root)) == [
      'transforms.core.texts -> pipelines.jobs.rerank (line 6)',
      'transforms.core.texts -> transforms.ranking.fusion (line 4)']


def test_a_planted_cycle_is_found(tmp_path):
  root = _tree(tmp_path, {
      'pipelines/jobs/__init__.py': '',
      'pipelines/jobs/rerank.py': 'from pipelines.jobs import loop\n',
      'pipelines/jobs/loop.py': 'def f():\n  from pipelines.jobs.rerank import execute\n',
      'pipelines/jobs/mine.py': 'from pipelines.jobs import loop\n',
  })
  assert cycles(graph(root)) == [['pipelines.jobs.loop', 'pipelines.jobs.rerank']]
  assert upward_imports(graph(root)) == []
