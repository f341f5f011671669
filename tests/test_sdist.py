"""The source distribution that ``--setup_file ./setup.py`` ships to workers.

The sdist is built by Beam's own staging code (``Stager.create_job_resources``,
what every runner calls at submission with ``--setup_file``): it runs
``python -m build --sdist`` and falls back to ``python setup.py sdist`` when the
``build`` package is absent (as in this virtualenv), and stages the tarball as
``workflow.tar.gz``, which workers ``pip install``. The project is copied to a
temporary folder first, so the build writes nothing (egg-info) into the
working tree.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('pipelines', 'transforms')
IGNORE = shutil.ignore_patterns(
    '.venv', '.git', '__pycache__', '*.pyc', '*.egg-info', 'build', 'dist', 'out',
    '.pytest_cache', '.hypothesis', '.cache', 'sample_data', 'results')

STAGE_SCRIPT = """
import json, sys
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.stager import Stager
from pipelines import common
setup_file, temp_dir = sys.argv[1:]
# Parsed the way every job parses its Beam options.
options = common.pipeline_options(
    ['--setup_file', setup_file, '--sdk_location', 'container'], 'test_sdist')
staged = {}
for resource in Stager.create_job_resources(
    options, temp_dir, log_submission_env_dependencies=False):
  name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
      resource.role_payload).staged_name
  staged[name] = beam_runner_api_pb2.ArtifactFilePayload.FromString(
      resource.type_payload).path
print(json.dumps(staged))
"""


def _modules(root: pathlib.Path) -> list[str]:
  """Every ``.py`` file of the two packages under ``root``, relative paths."""
  return sorted(
      str(p.relative_to(root)) for package in PACKAGES
      for p in (root / package).rglob('*.py') if '__pycache__' not in p.parts)


def _run(args, cwd, env=None, timeout=180) -> subprocess.CompletedProcess:
  result = subprocess.run(
      [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
      timeout=timeout)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  return result


@pytest.fixture(scope='module')
def project(tmp_path_factory) -> pathlib.Path:
  """A copy of the project tree as a user would have it (no venv, no caches)."""
  copy = tmp_path_factory.mktemp('sdist_src') / 'beam-rerank'
  shutil.copytree(REPO_ROOT, copy, ignore=IGNORE)
  return copy


@pytest.fixture(scope='module')
def staged(project, tmp_path_factory) -> dict:
  """``--setup_file PROJECT/setup.py`` through Beam's stager: staged name -> file."""
  temp_dir = tmp_path_factory.mktemp('sdist_out')
  env = dict(os.environ, PYTHONPATH=str(project))
  result = _run([sys.executable, '-c', STAGE_SCRIPT, project / 'setup.py', temp_dir],
                cwd=temp_dir, env=env)
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def sdist(staged) -> pathlib.Path:
  assert 'workflow.tar.gz' in staged, staged
  path = pathlib.Path(staged['workflow.tar.gz'])
  assert path.name == 'beam_rerank-0.1.0.tar.gz'
  return path


@pytest.fixture(scope='module')
def members(sdist) -> dict[str, bytes | None]:
  """Files in the sdist by path below its top folder (contents of small text files)."""
  with tarfile.open(sdist) as tar:
    names = [m for m in tar.getmembers() if m.isfile()]
    top = {m.name.split('/', 1)[0] for m in names}
    assert top == {'beam_rerank-0.1.0'}
    return {m.name.split('/', 1)[1]: tar.extractfile(m).read() for m in names}


def test_every_module_of_both_packages_is_in_the_sdist(members, project):
  modules = _modules(REPO_ROOT)
  assert 'pipelines/encode.py' in modules and 'transforms/io/parquet_sink.py' in modules
  assert _modules(project) == modules
  missing = [m for m in modules if m not in members]
  assert not missing, f'not in the sdist: {missing}'
  for module in modules:  # The files themselves, not stale copies.
    assert members[module] == (project / module).read_bytes(), module


def test_setup_py_and_readme_are_in_the_sdist(members, project):
  assert members['setup.py'] == (project / 'setup.py').read_bytes()
  assert members['README.md'] == (project / 'README.md').read_bytes()


def test_the_sdist_declares_both_packages_and_the_dependencies(members):
  top_level = members['beam_rerank.egg-info/top_level.txt'].decode().split()
  assert sorted(top_level) == sorted(PACKAGES)
  sources = members['beam_rerank.egg-info/SOURCES.txt'].decode().split()
  assert 'setup.py' in sources and 'pipelines/encode.py' in sources
  requires = members['beam_rerank.egg-info/requires.txt'].decode()
  for requirement in ('apache-beam', 'sentence-transformers', 'pyarrow', 'torch'):
    assert requirement in requires
  entry_points = members['beam_rerank.egg-info/entry_points.txt'].decode()
  assert 'beam-rerank = pipelines.cli:main' in entry_points


def test_workers_can_install_it_and_import_every_module(sdist, tmp_path):
  """What a worker does with workflow.tar.gz: pip install it (here offline,
  without dependencies, into a target folder), then import the code from it."""
  target = tmp_path / 'site'
  _run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-index',
        '--no-build-isolation', '--target', target, sdist], cwd=tmp_path)
  modules = [m[:-3].replace('/', '.').removesuffix('.__init__')
             for m in _modules(REPO_ROOT)]
  check = (
      'import importlib, json, sys\n'
      f'modules = {modules!r}\n'
      'files = {m: importlib.import_module(m).__file__ for m in modules}\n'
      'print(json.dumps(files))\n')
  # Run outside the repository, with only the installed copy on the path.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE='1')
  result = _run([sys.executable, '-c', check], cwd=tmp_path, env=env)
  files = json.loads(result.stdout.strip().splitlines()[-1])
  assert sorted(files) == sorted(modules)
  for module, path in files.items():
    assert pathlib.Path(path).is_relative_to(target), (module, path)
  result = _run([target / 'bin' / 'beam-rerank', '--help'], cwd=tmp_path, env=env)
  assert 'encode' in result.stdout and 'rerank' in result.stdout
