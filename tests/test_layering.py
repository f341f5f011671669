"""The layering: jobs (pipelines/) use transforms/, never the other way round."""
from __future__ import annotations

import ast
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imported_modules(path: pathlib.Path) -> set[str]:
  """Every module a file imports, at any depth (function-level imports too)."""
  names: set[str] = set()
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def test_no_transform_imports_a_job():
  offenders = {
      str(path.relative_to(REPO_ROOT)): sorted(
          name for name in _imported_modules(path)
          if name == 'pipelines' or name.startswith('pipelines.'))
      for path in sorted((REPO_ROOT / 'transforms').glob('*.py'))}
  assert {path: names for path, names in offenders.items() if names} == {}


def test_the_walk_sees_function_level_imports(tmp_path):
  source = tmp_path / 'module.py'
  source.write_text('def f():\n  from pipelines import rerank\n  import pipelines.encode\n')
  assert {'pipelines', 'pipelines.rerank', 'pipelines.encode'} <= _imported_modules(source)
