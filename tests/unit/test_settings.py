"""transforms.core.settings: a setting declared once gives its option, default and help."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

import pytest

from transforms.core import settings
from transforms.core.settings import REQUIRED, group, positive_int, setting


@dataclasses.dataclass(frozen=True)
class _Inner:
  size: int = setting(8, 'Size (default: %(default)s).', type=positive_int, group='inner')
  seed: int = setting(1, 'Seed.', type=int)
  switch: bool = setting(False, 'A switch.')


@dataclasses.dataclass(frozen=True)
class _Other:
  seed: int = setting(1, flag='--seed', type=int)  # the same option as _Inner.seed
  name: Optional[str] = setting(None, 'Name.', flag='--other-name', metavar='N')


@dataclasses.dataclass(frozen=True)
class _Job:
  path: str = setting(REQUIRED, 'Where.', metavar='DIR', group='io')
  mode: str = setting('a', 'Mode.', choices=('a', 'b'), group='io')
  inner: _Inner = group(_Inner(size=16))
  other: _Other = group(_Other(), 'other options')
  on: bool = setting(True, 'On.', action=argparse.BooleanOptionalAction)
  extra: tuple[str, ...] = ()


def _parse(argv):
  parser = settings.build_parser(_Job, 'job', 'A job.', descriptions={'io': 'Files.'})
  return settings.from_arguments(_Job, parser.parse_args(argv), extra=('x',)), parser


def test_defaults_come_from_the_fields_and_the_nested_group_instance():
  job, parser = _parse(['--path', 'p'])
  assert job == _Job(path='p', inner=_Inner(size=16), extra=('x',))
  assert parser.get_default('size') == 16  # the group's instance, not the class default
  assert '(default: 16)' in parser.format_help()


def test_every_option_reaches_its_field():
  job, _ = _parse(['--path', 'p', '--mode', 'b', '--size', '3', '--seed', '9', '--switch',
                   '--other-name', 'n', '--no-on'])
  assert job == _Job(path='p', mode='b', inner=_Inner(size=3, seed=9, switch=True),
                     other=_Other(seed=9, name='n'), on=False, extra=('x',))


def test_sections_types_choices_and_required(capsys):
  _, parser = _parse(['--path', 'p'])
  titles = [g.title for g in parser._action_groups]  # pylint: disable=protected-access
  assert titles[2:] == ['io', 'inner', 'other options']
  assert 'Files.' in parser.format_help()
  for argv in ([], ['--path', 'p', '--mode', 'c'], ['--path', 'p', '--size', '0']):
    with pytest.raises(SystemExit):
      parser.parse_args(argv)
  assert "'0' must be at least 1" in capsys.readouterr().err


def test_a_shared_flag_is_one_option():
  _, parser = _parse(['--path', 'p'])
  assert sum('--seed' in action.option_strings for action in parser._actions) == 1  # pylint: disable=protected-access
