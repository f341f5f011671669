"""The ``beam-rerank`` command: job list, per-job help, exit codes."""
from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from pipelines import cli, encode
from transforms.models.batching import DEFAULT_MAX_TOKENS_PER_BATCH
from transforms.models.inference_settings import InferenceSettings

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = pathlib.Path(sys.executable).parent / 'beam-rerank'

# The encode options users script against (DESIGN.md); more are fine.
ENCODE_CONTRACT = [
    '--input', '--output', '--model', '--id-column', '--text-column',
    '--title-column', '--prompt', '--max-seq-length', '--precision', '--previous',
]


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, HF_HUB_OFFLINE='1', COLUMNS='100')
  return subprocess.run(
      [str(a) for a in args], capture_output=True, text=True, env=env,
      cwd=REPO_ROOT, timeout=120)


def _encode_option_strings() -> list[str]:
  parser = encode.build_parser()
  actions = parser._actions  # pylint: disable=protected-access
  return [s for action in actions for s in action.option_strings]


def test_console_script_is_installed():
  assert CONSOLE_SCRIPT.exists(), 'pip install -e . installs the beam-rerank command'


def test_top_level_help_lists_every_job():
  result = _run(CONSOLE_SCRIPT, '--help')
  assert result.returncode == 0
  assert result.stdout.startswith('usage: beam-rerank {')
  assert 'encode' in cli.JOBS
  for name, (_, summary) in cli.JOBS.items():
    assert f'  {name}' in result.stdout
    assert summary in result.stdout
  assert result.stderr == ''


def test_no_arguments_prints_usage_and_exits_2(capsys):
  assert cli.main([]) == 2
  assert capsys.readouterr().out.startswith('usage: beam-rerank {')


def test_help_in_process(capsys):
  assert cli.main(['-h']) == 0
  assert 'encode' in capsys.readouterr().out


def test_unknown_job_exits_2(capsys):
  assert cli.main(['encoder', '--input', 'x']) == 2
  captured = capsys.readouterr()
  assert captured.out == ''
  assert captured.err.splitlines() == [
      f"beam-rerank: error: unknown job 'encoder'; choose from {', '.join(cli.JOBS)}"]


def test_unknown_job_exits_2_from_the_command():
  result = _run(CONSOLE_SCRIPT, 'no-such-job')
  assert result.returncode == 2
  assert "beam-rerank: error: unknown job 'no-such-job'" in result.stderr


@pytest.mark.parametrize('job', sorted(cli.JOBS))
def test_every_listed_job_has_a_main(job):
  module_name = cli.JOBS[job][0]
  if importlib.util.find_spec(module_name) is None:
    pytest.skip(f'{module_name} is not written yet')
  assert callable(importlib.import_module(module_name).main)


def test_encode_options_cover_the_contract():
  options = _encode_option_strings()
  for option in ENCODE_CONTRACT:
    assert option in options


def test_encode_help_mentions_every_option():
  result = _run(CONSOLE_SCRIPT, 'encode', '--help')
  assert result.returncode == 0
  assert result.stdout.startswith('usage: beam-rerank encode')
  for option in _encode_option_strings() + ENCODE_CONTRACT:
    assert option in result.stdout, option
  assert '--no-normalize' in result.stdout
  assert 'float32,float16' in result.stdout
  assert '--direct_running_mode' in result.stdout  # Beam options pass through.


def test_python_m_pipelines_encode_help():
  result = _run(sys.executable, '-m', 'pipelines.encode', '--help')
  assert result.returncode == 0
  assert result.stdout.startswith('usage: beam-rerank encode')
  for option in ENCODE_CONTRACT:
    assert option in result.stdout, option


def test_encode_unknown_option_exits_2_from_the_command(tmp_path):
  result = _run(CONSOLE_SCRIPT, 'encode', '--input', tmp_path / 'c.parquet',
                '--output', tmp_path / 'out', '--bogus-option')
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('beam-rerank encode: error:')]
  assert errors == [
      'beam-rerank encode: error: unrecognized arguments: --bogus-option '
      '(see beam-rerank encode --help)']
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'out').exists()


def test_encode_missing_required_options_exits_2_from_the_command():
  result = _run(CONSOLE_SCRIPT, 'encode')
  assert result.returncode == 2
  assert 'the following arguments are required: --input, --output' in result.stderr


def test_cli_dispatches_to_the_job(tmp_path, capsys):
  # A user error inside the job comes back through the dispatcher as exit 2.
  pattern = str(tmp_path / 'nothing-*.parquet')
  assert cli.main(['encode', '--input', pattern, '--output', str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err.splitlines()
  assert err == [f'beam-rerank encode: error: --input {pattern!r} matches no files']


@pytest.mark.parametrize('job', ['encode', 'rerank'])
def test_token_budget_default_is_the_cpu_sized_one(job):
  # One default for both jobs and their transforms (measured on CPU: 4,096
  # padded tokens per batch beat 8,192 by 14%); a job must not drift.
  parser = importlib.import_module(f'pipelines.{job}').build_parser()
  assert DEFAULT_MAX_TOKENS_PER_BATCH == 4096
  assert parser.get_default('max_tokens_per_batch') == DEFAULT_MAX_TOKENS_PER_BATCH
  assert InferenceSettings().max_tokens_per_batch == DEFAULT_MAX_TOKENS_PER_BATCH


_MINIMAL_ARGV = {
    'encode': (['--input', 'i', '--output', 'o'], dict(input='i', output='o')),
    'rerank': (['--queries', 'q', '--corpus', 'c', '--output', 'o'],
               dict(queries='q', corpus='c', output='o')),
    'mine': (['--queries', 'q', '--corpus', 'c', '--output', 'o'],
             dict(queries='q', corpus='c', output='o')),
    'evaluate': (['--ranked', 'r', '--qrels', 'q'], dict(ranked='r', qrels='q')),
    'train': (['--pairs', 'p', '--kind', 'bi-encoder', '--output', 'o'],
              dict(pairs='p', kind='bi-encoder', output='o')),
    'loop': (['--queries', 'q', '--corpus', 'c', '--qrels', 'r', '--output', 'o'],
             dict(queries='q', corpus='c', qrels='r', output='o')),
}



@pytest.mark.parametrize('job', ['encode', 'rerank', 'loop'])
def test_inference_options_become_one_settings_object(job):
  module = importlib.import_module(f'pipelines.{job}')
  argv = _MINIMAL_ARGV[job][0] + [
      '--device', 'cpu', '--max-tokens-per-batch', '100', '--max-batch-size', '7',
      '--sort-window', '50', '--export-cache', '/x', '--trust-remote-code',
      '--share-model-across-processes', '--model-copies', '2', '--runner', 'DirectRunner']
  config = module.parse_config(argv)
  assert config.inference == InferenceSettings(
      device='cpu', max_tokens_per_batch=100, max_batch_size=7, sort_window=50,
      export_root='/x', trust_remote_code=True, share_model_across_processes=True,
      model_copies=2)
  assert config.pipeline_args == ('--runner', 'DirectRunner')
