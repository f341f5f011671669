"""transforms.io.parquet_sink: stable sharding, staged shards, the all-or-nothing commit."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline

from tests.fixtures import REPO_ROOT
from transforms.core.errors import UserInputError
from transforms.core.hashing import stable_hash
from transforms.io import parquet_sink
from transforms.io.parquet_sink import (
  MANIFEST_NAME,
  STAGING_NAME,
  CommitOutputs,
  ShardedOutput,
  WriteParquetShards,
  commit_outputs,
  committed_files,
  committed_output_exists,
  read_json,
  read_manifest,
  shard_file_name,
  write_json,
  write_table,
)

SCHEMA = pa.schema([('key', pa.string()), ('value', pa.int64())],
                   metadata={b'test': b'yes'})


def _output(root, name='rows', subdirectory='', rows_per_shard=3):
  return ShardedOutput(
      name=name, root=str(root), subdirectory=subdirectory, schema=SCHEMA,
      key_fn=lambda row: row['key'], rows_per_shard=rows_per_shard)


def _part_files(directory):
  return sorted(f for f in os.listdir(directory) if f.startswith('part-'))


# ---------------------------------------------------------------- stable_hash

def test_stable_hash_is_blake2b_64():
  for key in ['', 'doc-1', 'Документ 7']:
    expected = int.from_bytes(
        hashlib.blake2b(key.encode('utf-8'), digest_size=8).digest(), 'big')
    assert stable_hash(key) == expected


def test_stable_hash_pinned_values():
  # Shard assignment must never change between releases: outputs of an
  # earlier version are compared byte for byte with new ones.
  assert stable_hash('') == 16476032584258269876
  assert stable_hash('doc-1') == 6265767295393789249
  assert stable_hash('Документ 7') == 13979071608515471506


def test_stable_hash_same_in_another_process():
  keys = ['a', 'doc-1', 'Документ 7']
  code = ('import sys; sys.path.insert(0, sys.argv[1]);'
          'from transforms.core.hashing import stable_hash;'
          f'print([stable_hash(k) for k in {keys!r}])')
  env = dict(os.environ, PYTHONHASHSEED='12345')
  repo_root = str(REPO_ROOT)
  out = subprocess.run(
      [sys.executable, '-c', code, repo_root], env=env, check=True,
      capture_output=True, text=True, cwd=repo_root)
  assert out.stdout.strip() == str([stable_hash(k) for k in keys])


def test_shard_file_name():
  assert shard_file_name(0, 1) == 'part-00000-of-00001.parquet'
  assert shard_file_name(12, 345) == 'part-00012-of-00345.parquet'


def test_num_shards(tmp_path):
  output = _output(tmp_path, rows_per_shard=3)
  assert [output.num_shards(n) for n in [0, 1, 3, 4, 6, 7]] == [1, 1, 1, 2, 2, 3]


# ---------------------------------------------------------------- JSON helpers

def test_write_json_replaces_and_leaves_no_temp_file(tmp_path):
  path = str(tmp_path / 'x.json')
  write_json({'b': 1, 'a': 'ё'}, path)
  write_json({'c': 2}, path)
  assert read_json(path) == {'c': 2}
  assert os.listdir(tmp_path) == ['x.json']
  write_json({'b': 1, 'a': 'ё'}, path)
  with open(path, encoding='utf-8') as handle:
    assert handle.read() == '{\n  "a": "ё",\n  "b": 1\n}\n'


# ---------------------------------------------------------------- commit_outputs

def _stage(output, shard, num_shards, rows):
  file_name = shard_file_name(shard, num_shards)
  write_table(pa.Table.from_pylist(rows, schema=SCHEMA),
              FileSystems.join(output.staging_directory, file_name))
  return {'file': file_name, 'rows': len(rows), 'num_shards': num_shards}


def test_commit_moves_shards_and_writes_empty_ones(tmp_path):
  output = _output(tmp_path)
  # Three shards, but only shard 1 got rows.
  written = {'rows': [_stage(output, 1, 3, [{'key': 'a', 'value': 1}])]}
  manifest = commit_outputs(
      [output], written, str(tmp_path / MANIFEST_NAME), {'kind': 'test'},
      row_count_output='rows')
  assert _part_files(tmp_path) == [
      'part-00000-of-00003.parquet', 'part-00001-of-00003.parquet',
      'part-00002-of-00003.parquet']
  for shard, rows in [(0, 0), (1, 1), (2, 0)]:
    table = pq.read_table(tmp_path / shard_file_name(shard, 3))
    assert table.num_rows == rows
    assert table.schema.equals(SCHEMA, check_metadata=True)
  assert not (tmp_path / STAGING_NAME).exists()
  assert manifest == {
      'kind': 'test',
      'row_count': 1,
      'outputs': {'rows': {
          'directory': '.',
          'rows': 1,
          'files': [
              {'path': 'part-00000-of-00003.parquet', 'rows': 0},
              {'path': 'part-00001-of-00003.parquet', 'rows': 1},
              {'path': 'part-00002-of-00003.parquet', 'rows': 0},
          ]}},
  }
  assert read_json(str(tmp_path / MANIFEST_NAME)) == manifest


def test_commit_with_no_rows_writes_one_empty_shard(tmp_path):
  output = _output(tmp_path, subdirectory='dead_letter')
  manifest = commit_outputs(
      [output], {'rows': []}, str(tmp_path / MANIFEST_NAME), {})
  assert _part_files(tmp_path / 'dead_letter') == ['part-00000-of-00001.parquet']
  assert pq.read_table(tmp_path / 'dead_letter' / 'part-00000-of-00001.parquet').num_rows == 0
  assert manifest['outputs']['rows'] == {
      'directory': 'dead_letter', 'rows': 0,
      'files': [{'path': 'part-00000-of-00001.parquet', 'rows': 0}]}
  assert 'row_count' not in manifest


def test_commit_removes_stale_part_files_only(tmp_path):
  output = _output(tmp_path)
  # A previous run with three shards, and files that are not shards.
  for shard in range(3):
    write_table(SCHEMA.empty_table(), str(tmp_path / shard_file_name(shard, 3)))
  (tmp_path / 'report.json').write_text('{}')
  (tmp_path / 'notes.txt').write_text('keep me')
  (tmp_path / 'sub').mkdir()
  write_table(SCHEMA.empty_table(), str(tmp_path / 'sub' / 'part-00000-of-00003.parquet'))
  rows = [{'key': 'k', 'value': 5}]
  written = {'rows': [_stage(output, 0, 1, rows)]}
  commit_outputs([output], written, str(tmp_path / MANIFEST_NAME), {})
  assert _part_files(tmp_path) == ['part-00000-of-00001.parquet']
  assert pq.read_table(tmp_path / 'part-00000-of-00001.parquet').to_pylist() == rows
  assert (tmp_path / 'report.json').read_text() == '{}'
  assert (tmp_path / 'notes.txt').read_text() == 'keep me'
  assert (tmp_path / 'sub' / 'part-00000-of-00003.parquet').exists()


def test_commit_replaces_a_shard_of_the_same_name(tmp_path):
  output = _output(tmp_path)
  old = [{'key': 'old', 'value': 0}]
  write_table(pa.Table.from_pylist(old, schema=SCHEMA),
              str(tmp_path / shard_file_name(0, 1)))
  new = [{'key': 'new', 'value': 1}]
  commit_outputs([output], {'rows': [_stage(output, 0, 1, new)]},
                 str(tmp_path / MANIFEST_NAME), {})
  assert pq.read_table(tmp_path / shard_file_name(0, 1)).to_pylist() == new


def test_commit_deletes_old_manifest_first_and_writes_new_one_last(tmp_path, monkeypatch):
  output = _output(tmp_path)
  dead = _output(tmp_path, name='dead', subdirectory='dead_letter')
  manifest_path = str(tmp_path / MANIFEST_NAME)
  write_json({'generation': 1}, manifest_path)
  written = {
      'rows': [_stage(output, 0, 2, [{'key': 'a', 'value': 1}]),
               _stage(output, 1, 2, [{'key': 'b', 'value': 2}])],
      'dead': [_stage(dead, 0, 1, [{'key': 'z', 'value': 9}])],
  }
  events = []
  real_rename, real_delete = FileSystems.rename, FileSystems.delete
  real_write_json = parquet_sink.write_json

  def rename(sources, destinations):
    events.append(('rename', os.path.relpath(destinations[0], tmp_path)))
    return real_rename(sources, destinations)

  def delete(paths):
    events.append(('delete', os.path.relpath(paths[0], tmp_path)))
    return real_delete(paths)

  def record_write_json(value, path):
    # When the manifest is written, every shard is in place and staging is gone.
    assert _part_files(tmp_path) == [shard_file_name(0, 2), shard_file_name(1, 2)]
    assert _part_files(tmp_path / 'dead_letter') == [shard_file_name(0, 1)]
    assert not (tmp_path / STAGING_NAME).exists()
    assert not os.path.exists(manifest_path)
    events.append(('write_json', os.path.relpath(path, tmp_path)))
    return real_write_json(value, path)

  monkeypatch.setattr(FileSystems, 'rename', staticmethod(rename))
  monkeypatch.setattr(FileSystems, 'delete', staticmethod(delete))
  monkeypatch.setattr(parquet_sink, 'write_json', record_write_json)
  commit_outputs([output, dead], written, manifest_path, {'generation': 2})
  assert events[0] == ('delete', MANIFEST_NAME)
  # write_json writes a temporary file and renames it into place: the last step.
  assert events[-2:] == [('write_json', MANIFEST_NAME), ('rename', MANIFEST_NAME)]
  assert [e for e in events if e[0] == 'write_json'] == [('write_json', MANIFEST_NAME)]
  moved = [e[1] for e in events[:-2] if e[0] == 'rename']
  assert moved == [shard_file_name(0, 2), shard_file_name(1, 2),
                   os.path.join('dead_letter', shard_file_name(0, 1))]
  assert read_json(manifest_path)['generation'] == 2


def test_commit_can_run_again(tmp_path):
  output = _output(tmp_path)
  written = {'rows': [_stage(output, 1, 2, [{'key': 'a', 'value': 1}])]}
  manifest_path = str(tmp_path / MANIFEST_NAME)
  first = commit_outputs([output], written, manifest_path, {'x': 1}, 'rows')
  contents = {f: (tmp_path / f).read_bytes() for f in _part_files(tmp_path)}
  second = commit_outputs([output], written, manifest_path, {'x': 1}, 'rows')
  assert second == first
  assert {f: (tmp_path / f).read_bytes() for f in _part_files(tmp_path)} == contents


# ------------------------------------------------- WriteParquetShards + commit

def _write_with_pipeline(root, rows, rows_per_shard):
  output = _output(root, rows_per_shard=rows_per_shard)
  with TestPipeline() as p:
    written = p | beam.Create(rows) | WriteParquetShards(output)
    _ = p | CommitOutputs(
        [output], {'rows': written}, str(root / MANIFEST_NAME), {'kind': 'test'},
        row_count_output='rows')
  return output


def test_write_parquet_shards_places_rows_by_stable_hash(tmp_path):
  rows = [{'key': f'k{i:02d}', 'value': i} for i in range(10)]
  _write_with_pipeline(tmp_path / 'a', rows, rows_per_shard=4)
  files = _part_files(tmp_path / 'a')
  assert files == [shard_file_name(s, 3) for s in range(3)]
  seen = []
  for shard, name in enumerate(files):
    table = pq.read_table(tmp_path / 'a' / name)
    assert table.schema.equals(SCHEMA, check_metadata=True)
    keys = table.column('key').to_pylist()
    assert keys == sorted(keys)
    assert all(stable_hash(k) % 3 == shard for k in keys)
    seen.extend(table.to_pylist())
  assert sorted(seen, key=lambda r: r['key']) == rows
  manifest = read_json(str(tmp_path / 'a' / MANIFEST_NAME))
  assert manifest['row_count'] == 10
  assert sum(f['rows'] for f in manifest['outputs']['rows']['files']) == 10
  assert not (tmp_path / 'a' / STAGING_NAME).exists()


def test_write_parquet_shards_is_deterministic(tmp_path):
  rows = [{'key': f'k{i:02d}', 'value': i} for i in range(10)]
  _write_with_pipeline(tmp_path / 'a', rows, rows_per_shard=4)
  _write_with_pipeline(tmp_path / 'b', list(reversed(rows)), rows_per_shard=4)
  for name in _part_files(tmp_path / 'a') + [MANIFEST_NAME]:
    assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()


def test_write_parquet_shards_empty_input(tmp_path):
  _write_with_pipeline(tmp_path / 'e', [], rows_per_shard=4)
  assert _part_files(tmp_path / 'e') == ['part-00000-of-00001.parquet']
  table = pq.read_table(tmp_path / 'e' / 'part-00000-of-00001.parquet')
  assert table.num_rows == 0
  assert table.schema.equals(SCHEMA, check_metadata=True)
  assert json.loads((tmp_path / 'e' / MANIFEST_NAME).read_text())['row_count'] == 0


# ------------------------------------------------------------ listing errors

def test_list_of_a_pattern_that_matches_nothing_is_empty(tmp_path):
  assert parquet_sink._list(str(tmp_path / 'part-*.parquet')) == []
  assert parquet_sink._list(str(tmp_path / 'absent' / 'part-*.parquet')) == []


def _failing_match(patterns, limits=None):
  raise BeamIOError('Match operation failed', {patterns[0]: OSError('listing denied')})


def test_a_listing_error_fails_the_commit(tmp_path, monkeypatch):
  output = _output(tmp_path)
  stale = tmp_path / shard_file_name(0, 3)
  write_table(SCHEMA.empty_table(), str(stale))
  written = {'rows': [_stage(output, 0, 1, [{'key': 'a', 'value': 1}])]}
  monkeypatch.setattr(FileSystems, 'match', staticmethod(_failing_match))
  with pytest.raises(BeamIOError, match='Match operation failed'):
    commit_outputs([output], written, str(tmp_path / MANIFEST_NAME), {})
  # No manifest: readers refuse the folder instead of reading the stale shard.
  assert not (tmp_path / MANIFEST_NAME).exists()
  assert stale.exists()
  with pytest.raises(UserInputError, match='has no manifest.json'):
    committed_files(str(tmp_path), 'rows', '--in')


# ----------------------------------------------------------- committed_files

def _committed(root, subdirectory='', num_shards=2):
  output = _output(root, subdirectory=subdirectory)
  written = {'rows': [
      _stage(output, shard, num_shards, [{'key': f'k{shard}', 'value': shard}])
      for shard in range(num_shards)]}
  commit_outputs([output], written, str(root / MANIFEST_NAME), {'kind': 'test'})
  return output


def test_committed_files_in_manifest_order(tmp_path):
  _committed(tmp_path)
  _committed(tmp_path / 'other', subdirectory='sub/dir', num_shards=3)
  assert committed_files(str(tmp_path), 'rows', '--in') == [
      FileSystems.join(str(tmp_path), shard_file_name(s, 2)) for s in range(2)]
  sub = FileSystems.join(str(tmp_path / 'other'), 'sub/dir')
  assert committed_files(str(tmp_path / 'other'), 'rows', '--in') == [
      FileSystems.join(sub, shard_file_name(s, 3)) for s in range(3)]


def test_committed_files_ignore_and_report_an_unlisted_shard(tmp_path, caplog):
  _committed(tmp_path)
  write_table(SCHEMA.empty_table(), str(tmp_path / shard_file_name(2, 3)))
  (tmp_path / 'notes.txt').write_text('not a shard')
  with caplog.at_level('WARNING', logger='transforms.io.parquet_sink'):
    files = committed_files(str(tmp_path), 'rows', '--in')
  assert [f.rsplit('/', 1)[-1] for f in files] == [shard_file_name(s, 2) for s in range(2)]
  warnings = [r for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1
  message = warnings[0].getMessage()
  assert '--in' in message and shard_file_name(2, 3) in message
  assert 'notes.txt' not in message


def test_committed_files_refuse_a_missing_listed_file(tmp_path):
  _committed(tmp_path, subdirectory='dead_letter')
  missing = tmp_path / 'dead_letter' / shard_file_name(1, 2)
  missing.unlink()
  with pytest.raises(UserInputError) as error:
    committed_files(str(tmp_path), 'rows', '--ranked')
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'--ranked {str(tmp_path)!r}:')
  assert str(missing) in message and 'missing' in message


def test_committed_files_need_a_manifest_and_the_output(tmp_path):
  with pytest.raises(UserInputError, match=r"^--pairs .* has no manifest.json"):
    committed_files(str(tmp_path), 'rows', '--pairs')
  with pytest.raises(UserInputError, match=r"^--pairs .* has no manifest.json"):
    committed_output_exists(str(tmp_path), 'rows', '--pairs')
  _committed(tmp_path)
  assert committed_output_exists(str(tmp_path), 'rows', '--pairs')
  assert not committed_output_exists(str(tmp_path), 'candidates', '--pairs')
  with pytest.raises(UserInputError, match="lists no 'candidates' output"):
    committed_files(str(tmp_path), 'candidates', '--pairs')
  manifest = read_manifest(str(tmp_path), '--pairs')
  assert committed_files(str(tmp_path), 'rows', '--pairs', manifest) == committed_files(
      str(tmp_path), 'rows', '--pairs')


def test_committed_files_turn_a_listing_error_into_one_line(tmp_path, monkeypatch):
  _committed(tmp_path)
  monkeypatch.setattr(FileSystems, 'match', staticmethod(_failing_match))
  with pytest.raises(UserInputError, match=r'^--in .*: cannot list .*listing denied'):
    committed_files(str(tmp_path), 'rows', '--in')
