"""Up-front checks on Parquet inputs: files exist, columns exist, types fit.

Run in the launcher before the pipeline is built, so a wrong glob or a missing
column is one clear line naming the file and column, and no work is done.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Literal, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.core.errors import UserInputError

ColumnKind = Literal['string', 'id', 'int', 'float', 'embedding']

_KIND_HELP = {
    'string': 'a string column',
    'id': 'a string (or integer) id column',
    'int': 'an integer column',
    'float': 'a numeric column',
    'embedding': 'a list of floats',
}


def _fits(kind: ColumnKind, dtype: pa.DataType) -> bool:
  is_string = (
      pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or
      pa.types.is_string_view(dtype))
  if kind == 'string':
    return is_string
  if kind == 'id':
    return is_string or pa.types.is_integer(dtype)
  if kind == 'int':
    return pa.types.is_integer(dtype)
  if kind == 'float':
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
  if kind == 'embedding':
    return ((pa.types.is_fixed_size_list(dtype) or pa.types.is_list(dtype) or
             pa.types.is_large_list(dtype)) and
            pa.types.is_floating(dtype.value_type))
  raise ValueError(kind)


def expand_pattern(pattern: str) -> str:
  """A directory means the Parquet files in it; anything else is a glob."""
  if pattern.endswith('/') or os.path.isdir(pattern):
    return pattern.rstrip('/') + '/*.parquet'
  return pattern


def match_files(pattern: str, option: str) -> list[str]:
  """Returns the files a glob matches, sorted; raises if it matches none."""
  try:
    match = FileSystems.match([pattern])[0]
  except Exception as error:  # Beam raises BeamIOError with per-glob causes.
    raise UserInputError(f'{option} {pattern!r}: cannot list files ({error})') from error
  paths = sorted(m.path for m in match.metadata_list)
  if not paths:
    raise UserInputError(f'{option} {pattern!r} matches no files')
  return paths


@dataclasses.dataclass(frozen=True)
class CheckedInput:
  """What the checks learnt about one Parquet input."""
  pattern: str
  files: tuple[str, ...]
  num_rows: int


def check_parquet_input(
    pattern: str,
    option: str,
    columns: Mapping[str, ColumnKind],
) -> CheckedInput:
  """Checks that every file of ``pattern`` is Parquet with ``columns``.

  Args:
    pattern: a path or glob, local or any Beam filesystem (``gs://...``).
    option: the command-line option that named it, for the error message.
    columns: column name -> the kind of values it must hold.

  Raises:
    UserInputError: no file matches, a file is unreadable, or a column is
      missing or of the wrong type; the message names the file and column.
  """
  pattern = expand_pattern(pattern)
  return check_parquet_files(match_files(pattern, option), option, columns, pattern)


def check_parquet_files(
    files: Sequence[str], option: str, columns: Mapping[str, ColumnKind],
    pattern: str = '') -> CheckedInput:
  """``check_parquet_input`` on a list of files (e.g. a manifest's)."""
  num_rows = 0
  for path in files:
    try:
      with FileSystems.open(
          path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        metadata = pq.read_metadata(handle)
      schema = metadata.schema.to_arrow_schema()
    except Exception as error:
      raise UserInputError(
          f'{option}: {path} is not a readable Parquet file ({error})') from error
    num_rows += metadata.num_rows
    for column, kind in columns.items():
      if column not in schema.names:
        raise UserInputError(
            f'{option}: {path} has no column {column!r} '
            f'(columns: {", ".join(schema.names)})')
      dtype = schema.field(column).type
      if not _fits(kind, dtype):
        raise UserInputError(
            f'{option}: column {column!r} in {path} is {dtype}, '
            f'expected {_KIND_HELP[kind]}')
  return CheckedInput(pattern=pattern, files=tuple(files), num_rows=num_rows)


def file_columns(path: str) -> list[str]:
  """The column names of one Parquet file (its footer only)."""
  with FileSystems.open(
      path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    return pq.read_schema(handle).names
