"""The documented commands for Russian with the seed models parse: every flag
they use exists and takes the value shown (docs/deployment.md)."""
from __future__ import annotations

import importlib
import pathlib
import re
import shlex

import pytest

DEPLOYMENT = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'deployment.md'


def _commands() -> list[list[str]]:
  text = DEPLOYMENT.read_text(encoding='utf-8')
  section = text.split('## Russian with the seed models', 1)[1].split('\n## ', 1)[0]
  blocks = re.findall(r'```bash\n(.*?)```', section, re.S)
  commands = []
  for block in blocks:
    joined = block.replace('\\\n', ' ')
    for line in joined.splitlines():
      if line.startswith('beam-rerank '):
        commands.append(shlex.split(line.replace('$BEAM', '')))
  return commands


def test_the_section_has_the_commands():
  assert [c[1] for c in _commands()] == ['encode', 'encode', 'rerank', 'loop']


@pytest.mark.parametrize('command', _commands(), ids=lambda c: c[1])
def test_a_documented_command_parses(command):
  job = importlib.import_module(f'pipelines.{command[1]}')
  config = job.parse_config(command[2:])
  assert config.pipeline_args == ()  # no flag left over for Beam
  if command[1] in ('rerank', 'loop'):
    assert config.language.language == 'russian'
  if command[1] != 'rerank':
    assert 'sbert_large_nlu_ru' in str(config)
