"""transforms.io.parquet_input: up-front checks that fail with one clear message."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest

from transforms.core.errors import UserInputError
from transforms.io.parquet_input import check_parquet_input, expand_pattern, file_columns

CORPUS = {'doc_id': 'id', 'text': 'string'}


def _corpus(parquet_writer, path, rows=2):
  return parquet_writer(path, {
      'doc_id': [f'd{i}' for i in range(rows)],
      'text': [f'text {i}' for i in range(rows)],
  })


def test_single_file(tmp_path, parquet_writer):
  path = _corpus(parquet_writer, tmp_path / 'c.parquet', rows=3)
  checked = check_parquet_input(path, '--input', CORPUS)
  assert checked.pattern == path
  assert checked.files == (path,)
  assert checked.num_rows == 3


def test_glob_over_several_files(tmp_path, parquet_writer):
  b = _corpus(parquet_writer, tmp_path / 'b.parquet', rows=2)
  a = _corpus(parquet_writer, tmp_path / 'a.parquet', rows=5)
  checked = check_parquet_input(str(tmp_path / '*.parquet'), '--input', CORPUS)
  assert checked.files == (a, b)  # Sorted.
  assert checked.num_rows == 7


@pytest.mark.parametrize('trailing_slash', [False, True])
def test_directory_input_means_its_parquet_files(tmp_path, parquet_writer, trailing_slash):
  folder = tmp_path / 'corpus'
  a = _corpus(parquet_writer, folder / 'a.parquet', rows=1)
  b = _corpus(parquet_writer, folder / 'b.parquet', rows=4)
  (folder / 'README.md').write_text('not parquet')
  given = str(folder) + ('/' if trailing_slash else '')
  checked = check_parquet_input(given, '--input', CORPUS)
  assert checked.pattern == os.path.join(str(folder), '*.parquet')
  assert checked.files == (a, b)
  assert checked.num_rows == 5


def test_expand_pattern(tmp_path):
  assert expand_pattern(str(tmp_path)) == os.path.join(str(tmp_path), '*.parquet')
  assert expand_pattern(str(tmp_path) + '/') == os.path.join(str(tmp_path), '*.parquet')
  assert expand_pattern('gs://bucket/corpus/*.parquet') == 'gs://bucket/corpus/*.parquet'
  assert expand_pattern(str(tmp_path / 'x.parquet')) == str(tmp_path / 'x.parquet')


def test_glob_matching_nothing(tmp_path):
  pattern = str(tmp_path / 'nothing-*.parquet')
  with pytest.raises(UserInputError) as error:
    check_parquet_input(pattern, '--input', CORPUS)
  assert str(error.value) == f'--input {pattern!r} matches no files'


def test_missing_file(tmp_path):
  path = str(tmp_path / 'missing.parquet')
  with pytest.raises(UserInputError, match='matches no files') as error:
    check_parquet_input(path, '--corpus', CORPUS)
  assert str(error.value).startswith(f'--corpus {path!r}')


def test_empty_directory(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserInputError, match='matches no files'):
    check_parquet_input(str(tmp_path / 'empty'), '--input', CORPUS)


def test_missing_column_names_file_and_columns(tmp_path, parquet_writer):
  path = parquet_writer(tmp_path / 'c.parquet', {'doc_id': ['a'], 'body': ['x']})
  with pytest.raises(UserInputError) as error:
    check_parquet_input(path, '--input', CORPUS)
  assert str(error.value) == f"--input: {path} has no column 'text' (columns: doc_id, body)"


def test_missing_column_in_one_of_several_files(tmp_path, parquet_writer):
  _corpus(parquet_writer, tmp_path / 'a.parquet')
  bad = parquet_writer(tmp_path / 'b.parquet', {'doc_id': ['a']})
  with pytest.raises(UserInputError) as error:
    check_parquet_input(str(tmp_path / '*.parquet'), '--input', CORPUS)
  assert str(error.value) == f"--input: {bad} has no column 'text' (columns: doc_id)"


@pytest.mark.parametrize('column, dtype, expected', [
    ('text', pa.int64(), 'int64, expected a string column'),
    ('text', pa.float64(), 'double, expected a string column'),
    ('doc_id', pa.float32(), 'float, expected a string (or integer) id column'),
    ('doc_id', pa.bool_(), 'bool, expected a string (or integer) id column'),
])
def test_wrong_column_type(tmp_path, parquet_writer, column, dtype, expected):
  values = pa.array([1, 0]).cast(dtype)
  other = 'text' if column == 'doc_id' else 'doc_id'
  path = parquet_writer(
      tmp_path / 'c.parquet', {column: values, other: ['a', 'b']},
      pa.schema([(column, dtype), (other, pa.string())]))
  with pytest.raises(UserInputError) as error:
    check_parquet_input(path, '--input', CORPUS)
  assert str(error.value) == f'--input: column {column!r} in {path} is {expected}'


@pytest.mark.parametrize('dtype', [pa.string(), pa.large_string(), pa.int64(), pa.int32()])
def test_accepted_id_types(tmp_path, parquet_writer, dtype):
  ids = pa.array(['1', '2']).cast(dtype)
  path = parquet_writer(
      tmp_path / 'c.parquet', {'doc_id': ids, 'text': ['a', 'b']},
      pa.schema([('doc_id', dtype), ('text', pa.string())]))
  assert check_parquet_input(path, '--input', CORPUS).num_rows == 2


def test_large_string_text_is_accepted(tmp_path, parquet_writer):
  path = parquet_writer(
      tmp_path / 'c.parquet', {'doc_id': ['a'], 'text': ['x']},
      pa.schema([('doc_id', pa.string()), ('text', pa.large_string())]))
  assert check_parquet_input(path, '--input', CORPUS).num_rows == 1


def test_other_kinds(tmp_path, parquet_writer):
  schema = pa.schema([
      ('relevance', pa.int8()), ('score', pa.float32()),
      ('embedding', pa.list_(pa.float16(), 2)), ('label', pa.string())])
  path = parquet_writer(
      tmp_path / 'k.parquet',
      {'relevance': [1], 'score': [0.5], 'embedding': [[0.0, 1.0]], 'label': ['x']},
      schema)
  ok = {'relevance': 'int', 'score': 'float', 'embedding': 'embedding'}
  assert check_parquet_input(path, '--x', ok).num_rows == 1
  for column, kind, message in [
      ('score', 'int', "column 'score' in {} is float, expected an integer column"),
      ('label', 'float', "column 'label' in {} is string, expected a numeric column"),
      ('score', 'embedding', "column 'score' in {} is float, expected a list of floats"),
  ]:
    with pytest.raises(UserInputError) as error:
      check_parquet_input(path, '--x', {column: kind})
    assert str(error.value) == '--x: ' + message.format(path)


def test_unreadable_file(tmp_path):
  path = tmp_path / 'broken.parquet'
  path.write_bytes(b'this is not parquet at all')
  with pytest.raises(UserInputError) as error:
    check_parquet_input(str(path), '--input', CORPUS)
  message = str(error.value)
  assert message.startswith(f'--input: {path} is not a readable Parquet file (')
  assert '\n' not in message


def test_empty_file(tmp_path):
  path = tmp_path / 'empty.parquet'
  path.write_bytes(b'')
  with pytest.raises(UserInputError, match='is not a readable Parquet file'):
    check_parquet_input(str(path), '--input', CORPUS)


def test_file_columns(tmp_path, parquet_writer):
  path = parquet_writer(tmp_path / 'c.parquet', {'b': ['1'], 'a': ['2']})
  assert file_columns(path) == ['b', 'a']
