"""Readers of committed folders read the files their manifest lists, never a glob.

A ``part-*.parquet`` file that the manifest does not list (e.g. left behind by
a commit that failed) is not read; a listed file that is missing is refused
with one error line.
"""
from __future__ import annotations

import pathlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.core.errors import UserInputError
from transforms.graphs.encode import embedding_schema, embeddings_to_table
from transforms.io.parquet_sink import (
  MANIFEST_NAME,
  ShardedOutput,
  commit_outputs,
  shard_file_name,
  write_table,
)
from transforms.ranking import evaluation
from transforms.retrieval.dense import ReadEmbeddingTables
from transforms.training import trainer as training

RANKED_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('doc_id', pa.string()), ('rank', pa.int32()),
    ('score', pa.float32()), ('retrieval_rank', pa.int32()),
    ('retrieval_score', pa.float32())])
PAIR_SCHEMA = pa.schema([
    ('sentence_0', pa.string()), ('sentence_1', pa.string()), ('label', pa.float32())])


def _commit(root: pathlib.Path, outputs: dict[str, tuple[str, pa.Schema, list]],
            to_table=None) -> None:
  """Commits each output (``name: (subdirectory, schema, rows)``) as one shard,
  the way a job does (staged file, then ``commit_outputs``)."""
  sharded, written = [], {}
  for name, (subdirectory, schema, rows) in outputs.items():
    output = ShardedOutput(
        name=name, root=str(root), subdirectory=subdirectory, schema=schema,
        key_fn=lambda row: str(row), to_table=to_table)
    file_name = shard_file_name(0, 1)
    write_table(output.make_table(rows),
                FileSystems.join(output.staging_directory, file_name))
    sharded.append(output)
    written[name] = [{'file': file_name, 'rows': len(rows), 'num_shards': 1}]
  commit_outputs(sharded, written, str(root / MANIFEST_NAME), {'kind': 'test'})


def _stale(folder: pathlib.Path, table: pa.Table) -> pathlib.Path:
  """An unlisted shard, as a failed commit could leave it."""
  path = folder / shard_file_name(1, 2)
  pq.write_table(table, path)
  return path


# ------------------------------------------------------------ embeddings

def _embedding_rows(ids, value=0.5):
  return [{'id': i, 'embedding': np.full(4, value, np.float32), 'text_sha256': 'x'}
          for i in ids]


@pytest.fixture
def embeddings_dir(tmp_path) -> pathlib.Path:
  root = tmp_path / 'emb'
  schema = embedding_schema(4, 'float32', {'kind': 'embeddings'})
  _commit(root, {'embeddings': ('', schema, _embedding_rows(['a', 'b']))},
          to_table=embeddings_to_table)
  _stale(root, embeddings_to_table(_embedding_rows(['stale'], 7.0), schema))
  return root


def test_read_embedding_tables_skips_an_unlisted_shard(embeddings_dir):
  with TestPipeline() as p:
    tables = p | ReadEmbeddingTables(str(embeddings_dir))
    ids = tables | beam.FlatMap(lambda table: table.column('id').to_pylist())
    columns = tables | beam.Map(lambda table: tuple(table.column_names))
    assert_that(ids, equal_to(['a', 'b']), label='Ids')
    assert_that(columns, equal_to([('id', 'embedding')]), label='Columns')


def test_read_embedding_tables_refuses_a_missing_listed_file(embeddings_dir):
  (embeddings_dir / shard_file_name(0, 1)).unlink()
  p = beam.Pipeline()
  with pytest.raises(UserInputError, match=r'^--corpus-embeddings .*missing'):
    _ = p | ReadEmbeddingTables(str(embeddings_dir), option='--corpus-embeddings')


# ---------------------------------------------------------------- ranked

def _ranked_rows(query_id, count):
  return [{'query_id': query_id, 'doc_id': f'd{r}', 'rank': r, 'score': 10.0 - r,
           'retrieval_rank': r, 'retrieval_score': 0.5} for r in range(1, count + 1)]


def test_read_ranked_skips_an_unlisted_candidates_shard(tmp_path):
  _commit(tmp_path, {
      'ranked': ('', RANKED_SCHEMA, _ranked_rows('q1', 2)),
      'candidates': ('candidates', RANKED_SCHEMA, _ranked_rows('q1', 3)),
  })
  _stale(tmp_path / 'candidates',
         pa.Table.from_pylist(_ranked_rows('stale', 5), schema=RANKED_SCHEMA))
  frame, which = evaluation.read_ranked(str(tmp_path))
  assert which == 'candidates'
  assert frame.sort('rank').rows() == [tuple(r.values()) for r in _ranked_rows('q1', 3)]


def test_read_ranked_of_an_output_without_candidates_ignores_a_candidates_folder(tmp_path):
  _commit(tmp_path, {'ranked': ('', RANKED_SCHEMA, _ranked_rows('q1', 2))})
  (tmp_path / 'candidates').mkdir()
  _stale(tmp_path / 'candidates',
         pa.Table.from_pylist(_ranked_rows('stale', 5), schema=RANKED_SCHEMA))
  frame, which = evaluation.read_ranked(str(tmp_path))
  assert which == 'ranked'
  assert frame['query_id'].to_list() == ['q1', 'q1']


def test_read_ranked_refuses_a_missing_listed_file(tmp_path):
  _commit(tmp_path, {
      'ranked': ('', RANKED_SCHEMA, _ranked_rows('q1', 2)),
      'candidates': ('candidates', RANKED_SCHEMA, _ranked_rows('q1', 3)),
  })
  (tmp_path / 'candidates' / shard_file_name(0, 1)).unlink()
  with pytest.raises(UserInputError, match=r"^--ranked .*candidates.*missing"):
    evaluation.read_ranked(str(tmp_path))


def test_read_ranked_needs_a_manifest(tmp_path):
  pq.write_table(pa.Table.from_pylist(_ranked_rows('q1', 2), schema=RANKED_SCHEMA),
                 tmp_path / shard_file_name(0, 1))
  with pytest.raises(UserInputError, match=r'^--ranked .*has no manifest.json'):
    evaluation.read_ranked(str(tmp_path))


# ------------------------------------------------------------ training pairs

def _pairs(count, prefix='q'):
  return [{'sentence_0': f'{prefix}{i}', 'sentence_1': f'passage {i}', 'label': 1.0}
          for i in range(count)]


@pytest.fixture
def pairs_dir(tmp_path) -> pathlib.Path:
  root = tmp_path / 'pairs'
  _commit(root, {'labeled-pair/train': ('labeled-pair/train', PAIR_SCHEMA, _pairs(3))})
  _stale(root / 'labeled-pair' / 'train', pa.Table.from_pylist(_pairs(5, 'stale'), PAIR_SCHEMA))
  # A format the manifest does not list at all.
  (root / 'triplet' / 'train').mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(_pairs(2, 'stale'), PAIR_SCHEMA),
                 root / 'triplet' / 'train' / shard_file_name(0, 1))
  return root


def _config(pairs_dir, kind='cross-encoder'):
  return training.TrainConfig(
      pairs_dir=str(pairs_dir), kind=kind, base_model='unused', output_dir='unused')


def test_training_pairs_skip_unlisted_files(pairs_dir):
  assert training._split_files(str(pairs_dir), 'labeled-pair', 'train') == [
      FileSystems.join(str(pairs_dir), 'labeled-pair/train', shard_file_name(0, 1))]
  assert training._split_files(str(pairs_dir), 'labeled-pair', 'dev') == []
  assert training._split_files(str(pairs_dir), 'triplet', 'train') == []
  assert training.pairs_format(_config(pairs_dir, 'bi-encoder')) == 'pair'
  fmt, data = training.load_pairs(_config(pairs_dir))
  assert fmt == 'labeled-pair'
  assert sorted(data['train']['sentence_0']) == ['q0', 'q1', 'q2']
  assert 'dev' not in data


def test_training_pairs_refuse_a_missing_listed_file(pairs_dir):
  (pairs_dir / 'labeled-pair' / 'train' / shard_file_name(0, 1)).unlink()
  with pytest.raises(UserInputError, match=r'^--pairs .*missing'):
    training.load_pairs(_config(pairs_dir))


def test_training_pairs_need_a_manifest(pairs_dir):
  (pairs_dir / MANIFEST_NAME).unlink()
  with pytest.raises(UserInputError, match=r'^--pairs .*has no manifest.json'):
    training.load_pairs(_config(pairs_dir))
