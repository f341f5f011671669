"""The rerank job's graph: candidates (dense, BM25, supplied) -> texts -> cross-encoder
-> two-stage fusion -> ranked Parquet."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.core.dead_letters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TAG, dead_letter_sort_key
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.core.texts import ReadTexts, TextColumns
from transforms.io.parquet_sink import (
  DEFAULT_ROWS_PER_SHARD,
  MANIFEST_NAME,
  NO_CANDIDATES,
  CommitOutputs,
  ShardedOutput,
  WriteParquetShards,
)
from transforms.models.inference_settings import InferenceSettings
from transforms.ranking.ranked import ALL_TAG, RANKED_SCHEMA, ranked_sort_key
from transforms.ranking.scoring import ScorePairs
from transforms.ranking.stage_fusion import FuseStages, StagePlan
from transforms.retrieval.bm25 import BM25Settings, BM25TopK
from transforms.retrieval.candidates import (
  SOURCE_BM25,
  SOURCE_DENSE,
  JoinTexts,
  MergeCandidates,
  SuppliedCandidates,
  source_row,
)
from transforms.retrieval.dense import (
  DEFAULT_CORPUS_BLOCK_SIZE,
  DEFAULT_QUERY_BLOCK_SIZE,
  ExactTopK,
  ReadEmbeddingTables,
)
from transforms.retrieval.query_accounting import (
  NO_CANDIDATES_SCHEMA,
  SOURCES,
  AccountQueries,
)
from transforms.reuse.scores import REUSED_TAG, TO_SCORE_TAG, ReuseScores


@dataclasses.dataclass(frozen=True)
class RerankConfig:
  """Everything the rerank job needs, validated by the launcher.

  ``cross_encoder`` None: no model scoring (the first stage is the final
  ranking). ``bm25`` None: no BM25 candidates. ``tuning_qrels``: judgments
  of the queries that tune ``auto`` fusion weights.
  """
  queries_pattern: str
  corpus_pattern: str
  output_dir: str
  plan: StagePlan
  cross_encoder: Optional[str] = None
  cross_encoder_fingerprint: Optional[str] = None
  max_length: Optional[int] = None
  bm25: Optional[BM25Settings] = None
  tuning_qrels: Mapping[str, Mapping[str, int]] = dataclasses.field(
      default_factory=dict, hash=False)
  # A previous rerank output's candidates files whose scores may be reused
  # (checked by the launcher: same cross-encoder identity).
  previous_files: tuple[str, ...] = ()
  previous_dir: Optional[str] = None
  query_embeddings_dir: Optional[str] = None
  corpus_embeddings_dir: Optional[str] = None
  normalize_embeddings: bool = False
  query_groups: int = 1
  candidates_pattern: Optional[str] = None
  candidates_score_column: Optional[str] = None
  top_k: int = 100
  top_n: int = 10
  columns: TextColumns = TextColumns()
  activation: str = 'identity'
  corpus_block_size: int = DEFAULT_CORPUS_BLOCK_SIZE
  query_block_size: int = DEFAULT_QUERY_BLOCK_SIZE
  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
  inference: InferenceSettings = InferenceSettings()


_SOURCE_COUNTERS = {
    source: Metrics.counter(METRICS_NAMESPACE, f'rerank/{source}_candidates')
    for source in (SOURCE_DENSE, SOURCE_BM25)}


def _counted_source_row(row: dict, source: str) -> dict:
  _SOURCE_COUNTERS[source].inc()
  return source_row(row, source)


def _with_ce_score(row: dict) -> dict:
  return dict(row, ce_score=row['score'])


def score_pairs(config: RerankConfig) -> ScorePairs:
  """The job's cross-encoder scoring step, as configured."""
  return ScorePairs(
      config.cross_encoder, config.cross_encoder_fingerprint, config.max_length,
      config.inference, activation=config.activation)


def build_rerank_pipeline(
    pipeline: beam.Pipeline, config: RerankConfig, manifest: dict) -> None:
  """Wires the rerank job onto ``pipeline``; ``manifest`` describes the run."""
  queries = pipeline | 'ReadQueries' >> ReadTexts(
      config.queries_pattern, 'rerank/queries', config.columns.query_id,
      config.columns.query_text)
  corpus = pipeline | 'ReadCorpus' >> ReadTexts(
      config.corpus_pattern, 'rerank/corpus', config.columns.doc_id,
      config.columns.doc_text, config.columns.doc_title, config.columns.title_separator)

  candidate_sources = []
  by_source = {}  # Each source's rows, for the query accounting.
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
        | 'MarkDense' >> beam.Map(_counted_source_row, SOURCE_DENSE))
    candidate_sources.append(dense)
    by_source['dense'] = dense
  if config.bm25 is not None:
    bm25 = (
        {
            'queries': queries['texts'] | 'BM25QueryTexts' >> beam.Map(
                lambda r: (r['id'], r['text'])),
            'corpus': corpus['texts'] | 'BM25CorpusTexts' >> beam.Map(
                lambda r: (r['id'], r['text'])),
        }
        | 'ExactBM25TopK' >> BM25TopK(config.bm25)
        | 'MarkBM25' >> beam.Map(_counted_source_row, SOURCE_BM25))
    candidate_sources.append(bm25)
    by_source['bm25'] = bm25
  if config.candidates_pattern:
    columns = ['query_id', 'doc_id']
    if config.candidates_score_column:
      columns.append(config.candidates_score_column)
    supplied_rows = pipeline | 'ReadCandidatesParquet' >> beam.io.ReadFromParquet(
        config.candidates_pattern, columns=columns)
    supplied = supplied_rows | 'CheckSuppliedCandidates' >> SuppliedCandidates(
        config.candidates_score_column)
    candidate_sources.append(supplied['candidates'])
    dead_letters.append(supplied[DEAD_LETTER_TAG])
    by_source['supplied'] = supplied['candidates']
    by_source['supplied_rows'] = supplied_rows

  candidates = (
      candidate_sources | 'FlattenCandidateSources' >> beam.Flatten()
      | 'MergeCandidates' >> MergeCandidates())
  pairs = {
      'candidates': candidates['candidates'],
      'queries': queries['texts'],
      'corpus': corpus['texts'],
  } | 'JoinTexts' >> JoinTexts()
  dead_letters += [candidates[DEAD_LETTER_TAG], pairs[DEAD_LETTER_TAG]]
  extras = {}
  if config.cross_encoder:
    to_score = pairs['pairs']
    reused = []
    if config.previous_files:
      cache = to_score | 'ReusePreviousScores' >> ReuseScores(config.previous_files)
      to_score, reused = cache[TO_SCORE_TAG], [cache[REUSED_TAG]]
      extras['previous'] = (
          cache[REUSED_TAG]
          | 'CountReused' >> beam.combiners.Count.Globally()
          | 'DescribePrevious' >> beam.Map(
              lambda n, path: {'path': path, 'pairs_reused': n}, config.previous_dir))
    scored = (
        to_score
        | 'SpreadPairs' >> beam.Reshuffle()
        | 'ScorePairs' >> score_pairs(config))
    dead_letters.append(scored[DEAD_LETTER_TAG])
    to_rank = (
        [scored['scored'], *reused] | 'ScoredAndReused' >> beam.Flatten()
        | 'CrossEncoderScore' >> beam.Map(_with_ce_score))
  else:
    to_rank = pairs['pairs']
  ranked = to_rank | 'FuseAndRank' >> FuseStages(
      config.plan, config.tuning_qrels, config.top_n)
  no_candidates = (
      {'queries': queries['texts'], 'ranked': ranked['top'], **by_source}
      | 'AccountQueries' >> AccountQueries(
          [s for s in by_source if s in SOURCES],
          config.bm25.stemmer if config.bm25 else None))
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
      ShardedOutput(
          name=NO_CANDIDATES, root=config.output_dir, subdirectory=NO_CANDIDATES,
          schema=NO_CANDIDATES_SCHEMA, key_fn=lambda row: row['query_id'],
          rows_per_shard=config.rows_per_shard),
  ]
  written = {
      'ranked': ranked['top'] | 'WriteRanked' >> WriteParquetShards(outputs[0]),
      'candidates': ranked[ALL_TAG] | 'WriteScoredCandidates' >> WriteParquetShards(
          outputs[1]),
      'dead_letter': dead | 'WriteDeadLetters' >> WriteParquetShards(outputs[2]),
      NO_CANDIDATES: no_candidates | 'WriteNoCandidates' >> WriteParquetShards(outputs[3]),
  }
  _ = pipeline | 'CommitOutputs' >> CommitOutputs(
      outputs, written, FileSystems.join(config.output_dir, MANIFEST_NAME),
      manifest, row_count_output='ranked',
      manifest_extras={'fusion': ranked['decisions'], **extras})
