"""Settings declared once: a field carries its default, flag, help and choices.

A job config, and each settings group it nests (text columns, BM25, inference,
training, negative mining, ...), is a frozen dataclass whose fields are made
with ``setting`` (an option) or ``group`` (a nested settings group). The
command line is generated from the fields (``build_parser``) and read back
into the config (``from_arguments``), as transformers' ``HfArgumentParser``
does for its dataclasses: a setting's name, default and help live in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

SettingsT = TypeVar('SettingsT')
_CLI = 'cli'
_GROUP = 'settings_group'
REQUIRED = dataclasses.MISSING


def setting(default: Any = REQUIRED, help: str = '', *,  # noqa: A002
            flag: Optional[str] = None, aliases: Sequence[str] = (),
            type: Optional[Callable[[str], Any]] = None,  # noqa: A002
            choices: Optional[Sequence[Any]] = None, metavar: Optional[str] = None,
            action: Any = None, group: Optional[str] = None) -> Any:
  """A settings field with its command-line option.

  Args:
    default: the field's default and the option's (none: a required option).
    help: the option's help; argparse fills in ``%(default)s``.
    flag: the option (default: ``--`` + the field name with dashes); its
      ``dest`` is where the value is parsed to, so two fields with one flag
      (e.g. a seed shared by two groups) take one value.
    aliases: other spellings of the option.
    type: the argparse type (a function of the text).
    choices: the values the option takes.
    metavar: how the help names the value.
    action: an argparse action (a bool field defaulting to False is a switch).
    group: the title of the help section the option is listed in.
  """
  return dataclasses.field(default=default, metadata={_CLI: {
      'help': help, 'flag': flag, 'aliases': tuple(aliases), 'type': type,
      'choices': choices, 'metavar': metavar, 'action': action, 'group': group}})


def group(default: Any, title: Optional[str] = None) -> Any:
  """A field that nests a settings group; ``default`` (an instance) gives the
  options' defaults, and ``title`` (if given) the help section of all of them."""
  return dataclasses.field(default=default, metadata={_GROUP: {'title': title}})


def _option(field: dataclasses.Field) -> Optional[dict]:
  return field.metadata.get(_CLI)


def flag_of(field: dataclasses.Field) -> str:
  """The option of a settings field."""
  option = _option(field) or {}
  return option.get('flag') or '--' + field.name.replace('_', '-')


def dest_of(field: dataclasses.Field) -> str:
  """Where argparse puts a settings field's value (its flag's ``dest``)."""
  return flag_of(field).lstrip('-').replace('-', '_')


def _nested_type(config_type: type, field: dataclasses.Field) -> Optional[type]:
  if _GROUP not in field.metadata:
    return None
  return typing.get_type_hints(config_type)[field.name]


def add_arguments(parser: argparse.ArgumentParser, config_type: type,
                  defaults: Any = None, title: Optional[str] = None,
                  descriptions: Mapping[str, str] = (),
                  _sections: Optional[dict] = None, _seen: Optional[set] = None) -> None:
  """Adds the options of ``config_type``'s fields (and of its nested groups)
  to ``parser``, each in its help section (``descriptions``: a text under a
  section's title). ``defaults``: an instance whose values are the defaults."""
  sections = {} if _sections is None else _sections
  seen = set() if _seen is None else _seen
  if _sections is None:  # the sections named in ``descriptions`` come first, in order
    for section_title, description in dict(descriptions).items():
      sections[section_title] = parser.add_argument_group(section_title, description)
  for field in dataclasses.fields(config_type):
    nested = _nested_type(config_type, field)
    value = getattr(defaults, field.name) if defaults is not None else field.default
    if nested is not None:
      add_arguments(parser, nested, value, field.metadata[_GROUP]['title'] or title,
                    descriptions, sections, seen)
      continue
    option = _option(field)
    if option is None or dest_of(field) in seen:
      continue
    seen.add(dest_of(field))
    section_title = title or option['group']
    target = parser
    if section_title:
      if section_title not in sections:
        sections[section_title] = parser.add_argument_group(
            section_title, dict(descriptions).get(section_title))
      target = sections[section_title]
    kwargs: dict[str, Any] = {'dest': dest_of(field), 'help': option['help'] or None}
    if value is REQUIRED:
      kwargs['required'] = True
    else:
      kwargs['default'] = value
    action = option['action'] or ('store_true' if value is False else None)
    if action is not None:
      kwargs['action'] = action
    for key in ('type', 'choices', 'metavar'):
      if option[key] is not None:
        kwargs[key] = list(option[key]) if key == 'choices' else option[key]
    target.add_argument(flag_of(field), *option['aliases'], **kwargs)


def build_parser(config_type: type, prog: str, description: str,
                 epilog: Optional[str] = None,
                 descriptions: Mapping[str, str] = ()) -> argparse.ArgumentParser:
  """The command line of a job config: one option per setting, in field order."""
  parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
  add_arguments(parser, config_type, descriptions=descriptions)
  return parser


def from_arguments(config_type: type[SettingsT], args: argparse.Namespace,
                   **values: Any) -> SettingsT:
  """The config from parsed options (nested groups too); ``values`` set fields
  that have no option (e.g. the arguments left for Beam)."""
  for field in dataclasses.fields(config_type):
    if field.name in values:
      continue
    nested = _nested_type(config_type, field)
    if nested is not None:
      values[field.name] = from_arguments(nested, args)
    elif _option(field) is not None:
      values[field.name] = getattr(args, dest_of(field))
  return config_type(**values)


# argparse types of the settings.

def _whole_number(value: str, least: int) -> int:
  try:
    number = int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{value!r} is not a whole number') from None
  if number < least:
    raise argparse.ArgumentTypeError(f'{value!r} must be at least {least}')
  return number


def positive_int(value: str) -> int:
  """argparse type: an integer >= 1."""
  return _whole_number(value, 1)


def non_negative_int(value: str) -> int:
  """argparse type: an integer >= 0."""
  return _whole_number(value, 0)


def non_negative_float(value: str) -> float:
  """argparse type: a finite number >= 0."""
  try:
    number = float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{value!r} is not a number') from None
  if not math.isfinite(number) or number < 0:
    raise argparse.ArgumentTypeError(f'{value!r} must be a finite number >= 0')
  return number


def fraction(value: str) -> float:
  """argparse type: a number in [0, 1]."""
  try:
    number = float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{value!r} is not a number') from None
  if not 0 <= number <= 1:
    raise argparse.ArgumentTypeError(f'{value!r} must be between 0 and 1')
  return number
