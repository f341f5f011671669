"""Settings declared once: a field carries its default, flag, help and choices.

A settings group is a frozen dataclass whose fields are made with ``setting``.
The command line is generated from the fields (``add_arguments``) and read
back into the group (``from_arguments``), so a setting's name, default and
help live in one place, as transformers' ``HfArgumentParser`` does for its
dataclasses. Job configs nest the groups they need.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Optional, Sequence, TypeVar

SettingsT = TypeVar('SettingsT')
_CLI = 'cli'


def setting(default: Any, help: str, *, flag: Optional[str] = None,  # noqa: A002
            type: Optional[Callable[[str], Any]] = None,  # noqa: A002
            choices: Optional[Sequence[Any]] = None, metavar: Optional[str] = None) -> Any:
  """A settings field with its command-line option.

  Args:
    default: the field's default (and the option's).
    help: the option's help; ``%(default)s`` is filled in by argparse.
    flag: the option (default: ``--`` + the field name with dashes).
    type: the argparse type (a function of the text).
    choices: the values the option takes.
    metavar: how the help names the value.
  """
  return dataclasses.field(default=default, metadata={_CLI: {
      'help': help, 'flag': flag, 'type': type, 'choices': choices, 'metavar': metavar}})


def _option(field: dataclasses.Field) -> Optional[dict]:
  return field.metadata.get(_CLI)


def flag_of(field: dataclasses.Field) -> str:
  """The option of a settings field."""
  option = _option(field) or {}
  return option.get('flag') or '--' + field.name.replace('_', '-')


def dest_of(field: dataclasses.Field) -> str:
  """Where argparse puts a settings field's value (its flag's ``dest``)."""
  return flag_of(field).lstrip('-').replace('-', '_')


def declares_options(settings_type: type) -> bool:
  """Whether ``settings_type`` is a settings group made with ``setting``."""
  return any(_option(field) is not None for field in dataclasses.fields(settings_type))


def add_arguments(group: Any, settings_type: type) -> None:
  """Adds one option per field of ``settings_type`` to an argparse group."""
  for field in dataclasses.fields(settings_type):
    option = _option(field)
    if option is None:
      continue
    kwargs: dict[str, Any] = {'dest': dest_of(field), 'help': option['help']}
    if field.default is False:
      kwargs['action'] = 'store_true'
    else:
      kwargs['default'] = field.default
      for key in ('type', 'choices', 'metavar'):
        if option[key] is not None:
          kwargs[key] = option[key]
    group.add_argument(flag_of(field), **kwargs)


def from_arguments(settings_type: type[SettingsT], args: argparse.Namespace) -> SettingsT:
  """The settings group from parsed options (a field without an option keeps
  its default)."""
  return settings_type(**{
      field.name: getattr(args, dest_of(field)) for field in dataclasses.fields(settings_type)
      if _option(field) is not None})
