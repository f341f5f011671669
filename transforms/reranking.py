"""The rerank job's graph: candidates -> texts -> cross-encoder -> ranked Parquet."""
from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.candidates import SOURCE_DENSE, JoinTexts, MergeCandidates, SuppliedCandidates
from transforms.dead_letters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TAG, dead_letter_sort_key
from transforms.inference_settings import InferenceSettings
from transforms.parquet_sink import (
    DEFAULT_ROWS_PER_SHARD,
    MANIFEST_NAME,
    CommitOutputs,
    ShardedOutput,
    WriteParquetShards,
)
from transforms.ranking import ALL_TAG, RANKED_SCHEMA, RankPerQuery, ranked_sort_key
from transforms.retrieval import (
    DEFAULT_CORPUS_BLOCK_SIZE,
    DEFAULT_QUERY_BLOCK_SIZE,
    ExactTopK,
    ReadEmbeddingTables,
)
from transforms.scoring import ScorePairs
from transforms.texts import METRICS_NAMESPACE, ReadTexts


@dataclasses.dataclass(frozen=True)
class RerankConfig:
  """Everything the rerank job needs, validated by the launcher."""
  queries_pattern: str
  corpus_pattern: str
  output_dir: str
  cross_encoder: str
  cross_encoder_fingerprint: str
  max_length: int
  query_embeddings_dir: Optional[str] = None
  corpus_embeddings_dir: Optional[str] = None
  normalize_embeddings: bool = False
  query_groups: int = 1
  candidates_pattern: Optional[str] = None
  candidates_score_column: Optional[str] = None
  top_k: int = 100
  top_n: int = 10
  query_id_column: str = 'query_id'
  query_text_column: str = 'text'
  doc_id_column: str = 'doc_id'
  doc_text_column: str = 'text'
  doc_title_column: Optional[str] = None
  title_separator: str = '\n'
  activation: str = 'identity'
  corpus_block_size: int = DEFAULT_CORPUS_BLOCK_SIZE
  query_block_size: int = DEFAULT_QUERY_BLOCK_SIZE
  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
  inference: InferenceSettings = InferenceSettings()


_DENSE_CANDIDATES = Metrics.counter(METRICS_NAMESPACE, 'rerank/dense_candidates')


def _dense_row(row: dict) -> dict:
  _DENSE_CANDIDATES.inc()
  return dict(row, source=SOURCE_DENSE)


def score_pairs(config: RerankConfig) -> ScorePairs:
  """The job's cross-encoder scoring step, as configured."""
  return ScorePairs(
      config.cross_encoder, config.cross_encoder_fingerprint, config.max_length,
      config.inference, activation=config.activation)


def build_rerank_pipeline(
    pipeline: beam.Pipeline, config: RerankConfig, manifest: dict) -> None:
  """Wires the rerank job onto ``pipeline``; ``manifest`` describes the run."""
  queries = pipeline | 'ReadQueries' >> ReadTexts(
      config.queries_pattern, 'rerank/queries', config.query_id_column,
      config.query_text_column)
  corpus = pipeline | 'ReadCorpus' >> ReadTexts(
      config.corpus_pattern, 'rerank/corpus', config.doc_id_column,
      config.doc_text_column, config.doc_title_column, config.title_separator)

  candidate_sources = []
  dead_letters = [queries[DEAD_LETTER_TAG], corpus[DEAD_LETTER_TAG]]
  if config.query_embeddings_dir:
    dense = (
        {
            'queries': pipeline | 'ReadQueryEmbeddings' >> ReadEmbeddingTables(
                config.query_embeddings_dir, '--query-embeddings'),
            'corpus': pipeline | 'ReadCorpusEmbeddings' >> ReadEmbeddingTables(
                config.corpus_embeddings_dir, '--corpus-embeddings'),
        }
        | 'ExactDenseTopK' >> ExactTopK(
            config.top_k, corpus_block_size=config.corpus_block_size,
            query_block_size=config.query_block_size,
            normalize=config.normalize_embeddings,
            query_groups=config.query_groups)
        | 'MarkDense' >> beam.Map(_dense_row))
    candidate_sources.append(dense)
  if config.candidates_pattern:
    columns = ['query_id', 'doc_id']
    if config.candidates_score_column:
      columns.append(config.candidates_score_column)
    supplied = (
        pipeline
        | 'ReadCandidatesParquet' >> beam.io.ReadFromParquet(
            config.candidates_pattern, columns=columns)
        | 'CheckSuppliedCandidates' >> SuppliedCandidates(
            config.candidates_score_column))
    candidate_sources.append(supplied['candidates'])
    dead_letters.append(supplied[DEAD_LETTER_TAG])

  candidates = (
      candidate_sources | 'FlattenCandidateSources' >> beam.Flatten()
      | 'MergeCandidates' >> MergeCandidates())
  pairs = {
      'candidates': candidates['candidates'],
      'queries': queries['texts'],
      'corpus': corpus['texts'],
  } | 'JoinTexts' >> JoinTexts()
  scored = (
      pairs['pairs']
      | 'SpreadPairs' >> beam.Reshuffle()
      | 'ScorePairs' >> score_pairs(config))
  ranked = scored['scored'] | 'RankPerQuery' >> RankPerQuery(config.top_n)
  dead_letters += [
      candidates[DEAD_LETTER_TAG], pairs[DEAD_LETTER_TAG], scored[DEAD_LETTER_TAG]]
  dead = dead_letters | 'FlattenDeadLetters' >> beam.Flatten()

  def ranked_output(name, subdirectory):
    return ShardedOutput(
        name=name, root=config.output_dir, subdirectory=subdirectory,
        schema=RANKED_SCHEMA, key_fn=lambda row: row['query_id'],
        sort_key_fn=ranked_sort_key, rows_per_shard=config.rows_per_shard)

  outputs = [
      ranked_output('ranked', ''),
      ranked_output('candidates', 'candidates'),
      ShardedOutput(
          name='dead_letter', root=config.output_dir, subdirectory='dead_letter',
          schema=DEAD_LETTER_SCHEMA, key_fn=lambda row: row['record_id'] or '',
          sort_key_fn=dead_letter_sort_key, rows_per_shard=config.rows_per_shard),
  ]
  written = {
      'ranked': ranked['top'] | 'WriteRanked' >> WriteParquetShards(outputs[0]),
      'candidates': ranked[ALL_TAG] | 'WriteScoredCandidates' >> WriteParquetShards(
          outputs[1]),
      'dead_letter': dead | 'WriteDeadLetters' >> WriteParquetShards(outputs[2]),
  }
  _ = pipeline | 'CommitOutputs' >> CommitOutputs(
      outputs, written, FileSystems.join(config.output_dir, MANIFEST_NAME),
      manifest, row_count_output='ranked')
