"""The mine job's graph: candidates + labels -> training-pair Parquet per format."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.core.dead_letters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TAG, dead_letter_sort_key
from transforms.core.texts import PrepareTexts, ReadTexts, TextColumns
from transforms.io.parquet_sink import (
  DEFAULT_ROWS_PER_SHARD,
  MANIFEST_NAME,
  CommitOutputs,
  ShardedOutput,
  WriteParquetShards,
)
from transforms.ranking.fusion import FusionDecision
from transforms.ranking.stage_fusion import rank_query
from transforms.retrieval.bm25 import BM25Settings, BM25TopK
from transforms.retrieval.candidates import SOURCE_BM25, SOURCE_DENSE, MergeCandidates, source_row
from transforms.retrieval.dense import ExactTopK, ReadEmbeddingTables
from transforms.training.mining import (
  AttachMinedTexts,
  CheckQrelFn,
  KnownCandidates,
  MineNegatives,
  NegativeMiningSettings,
  check_candidates,
  format_rows,
  query_split,
)
from transforms.training.pseudo_queries import (
  PSEUDO_SOURCES,
  TITLE,
  AttachPseudoTexts,
  CorpusColumns,
  DocBodies,
  PseudoQueries,
  PseudoQuerySettings,
)

SPLITS = ('train', 'dev')


def text_schema(fmt: str, num_negatives: int) -> pa.Schema:
  """The columns the sentence-transformers trainers take, and nothing else."""
  s = pa.string()
  if fmt == 'labeled-pair':
    return pa.schema([('sentence_0', s), ('sentence_1', s), ('label', pa.float32())])
  if fmt == 'pair':
    return pa.schema([('sentence_0', s), ('sentence_1', s)])
  if fmt == 'triplet':
    return pa.schema([('anchor', s), ('positive', s), ('negative', s)])
  if fmt == 'n-tuple':
    return pa.schema([('anchor', s), ('positive', s)] +
                     [(f'negative_{i}', s) for i in range(1, num_negatives + 1)])
  if fmt == 'distill':
    return pa.schema([('query', s), ('passage', s), ('score', pa.float32())])
  raise ValueError(fmt)


def id_schema(fmt: str, with_source: bool = False) -> pa.Schema:
  """Ids of each row of a format, aligned row for row with its text files;
  ``with_source`` (pseudo-queries): a ``source`` column too, what made the
  row's query (``qrels``, ``positives``, ``title``, ``sentence``)."""
  s = pa.string()
  source = [('source', s)] if with_source else []
  if fmt in ('labeled-pair', 'pair', 'distill'):
    return pa.schema([('query_id', s), ('doc_id', s)] + source)
  if fmt == 'triplet':
    return pa.schema([('query_id', s), ('positive_id', s), ('negative_id', s)] + source)
  if fmt == 'n-tuple':
    return pa.schema(
        [('query_id', s), ('positive_id', s), ('negative_ids', pa.list_(s))] + source)
  raise ValueError(fmt)


@dataclasses.dataclass(frozen=True)
class MineConfig:
  """Everything the mine job needs, validated by the launcher."""
  queries_pattern: Optional[str]  # None: pseudo-queries only
  corpus_pattern: str
  output_dir: str
  formats: Sequence[str]
  mining: NegativeMiningSettings
  candidate_source: str  # 'ranked', 'candidates', 'dense', 'bm25' or 'hybrid' (dense + bm25)
  candidates_pattern: Optional[str] = None  # supplied candidates
  candidates_files: tuple[str, ...] = ()  # a rerank output's files (from its manifest)
  candidates_score_column: Optional[str] = None
  candidates_have_retrieval_rank: bool = False  # supplied candidates with ranks
  query_embeddings_dir: Optional[str] = None
  corpus_embeddings_dir: Optional[str] = None
  normalize_embeddings: bool = False
  query_groups: int = 1
  top_k: int = 100
  bm25: Optional[BM25Settings] = None
  fusion: Optional[FusionDecision] = None  # 'hybrid': how dense and BM25 are fused
  qrels_pattern: Optional[str] = None
  positives_pattern: Optional[str] = None
  columns: TextColumns = TextColumns()
  dev_fraction: float = 0.0
  # How the dev split's queries are mined (None: as ``mining``).
  dev_mining: Optional[NegativeMiningSettings] = None
  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
  # Pseudo-queries from the corpus (their title column resolved); None: none.
  pseudo: Optional[PseudoQuerySettings] = None


def _keyed_rows(item, fmt: str, num_negatives: int, dev_fraction: float,
                pseudo_in_dev: bool = True):
  """One mined query -> its rows, tagged with its split. Pseudo-queries go to
  train only, unless ``pseudo_in_dev`` (no judged queries to select on)."""
  mined, query_text, doc_texts, *source = item
  split = query_split(
      mined.query_id, dev_fraction, bool(source) and source[0] in PSEUDO_SOURCES, pseudo_in_dev)
  for index, (text_row, id_row) in enumerate(
      format_rows(fmt, mined, query_text, doc_texts, num_negatives)):
    if source:
      id_row = dict(id_row, source=source[0])
    key = f'{mined.query_id}\t{index:06d}'
    yield beam.pvalue.TaggedOutput(split, (key, text_row, id_row))


def _fused_rows(keyed: tuple, fusion: FusionDecision):
  """One query's merged dense/BM25 rows -> the fused first stage's rows."""
  query_id, rows = keyed
  for row in rank_query(query_id, rows, fusion, None):
    yield {'query_id': query_id, 'doc_id': row['doc_id'],
           'retrieval_rank': row['retrieval_rank'], 'retrieval_score': row['retrieval_score']}


def _pseudo_query_row(record: dict, id_column: str, text_column: str) -> dict:
  return {id_column: record['query_id'], text_column: record['text']}


def _pseudo_qrel(record: dict, relevance: int) -> dict:
  return {'query_id': record['query_id'], 'doc_id': record['doc_id'], 'relevance': relevance,
          'pseudo': True}


def _read_with_pseudo_queries(pipeline: beam.Pipeline, config: MineConfig):
  """Queries and corpus text records, the pseudo-queries made from the corpus
  rows (read once) and, for title queries, the corpus's bodies.

  The pseudo-queries join the query rows before their checks, so an id given
  twice (a judged query named like a pseudo-query) is dead-lettered as usual.
  """
  settings = config.pseudo
  columns = CorpusColumns(
      config.columns.doc_id, config.columns.doc_text, config.columns.doc_title,
      config.columns.title_separator)
  read = [config.columns.doc_id, config.columns.doc_text]
  for column in (config.columns.doc_title, settings.title_column):
    if column and column not in read:
      read.append(column)
  corpus_rows = pipeline | 'ReadCorpusParquet' >> beam.io.ReadFromParquet(
      config.corpus_pattern, columns=read)
  corpus = corpus_rows | 'PrepareCorpus' >> PrepareTexts(
      'mine/corpus', config.columns.doc_id, config.columns.doc_text,
      config.columns.doc_title, config.columns.title_separator)
  pseudo = corpus_rows | 'PseudoQueries' >> PseudoQueries(settings, columns)
  query_rows = [pseudo | 'PseudoQueryRows' >> beam.Map(
      _pseudo_query_row, config.columns.query_id, config.columns.query_text)]
  if config.queries_pattern:
    query_rows.append(pipeline | 'ReadQueriesParquet' >> beam.io.ReadFromParquet(
        config.queries_pattern, columns=[config.columns.query_id, config.columns.query_text]))
  queries = (
      query_rows
      | 'FlattenQueryRows' >> beam.Flatten()
      | 'PrepareQueries' >> PrepareTexts(
          'mine/queries', config.columns.query_id, config.columns.query_text))
  bodies = None
  if TITLE in settings.sources:
    bodies = corpus_rows | 'DocBodies' >> DocBodies(settings.title_column, columns)
  return queries, corpus, pseudo, bodies


def build_mine_pipeline(pipeline: beam.Pipeline, config: MineConfig, manifest: dict) -> None:
  """Wires the mine job onto ``pipeline``."""
  pseudo = bodies = None
  if config.pseudo is not None:
    queries, corpus, pseudo, bodies = _read_with_pseudo_queries(pipeline, config)
  else:
    queries = pipeline | 'ReadQueries' >> ReadTexts(
        config.queries_pattern, 'mine/queries', config.columns.query_id,
        config.columns.query_text)
    corpus = pipeline | 'ReadCorpus' >> ReadTexts(
        config.corpus_pattern, 'mine/corpus', config.columns.doc_id,
        config.columns.doc_text, config.columns.doc_title, config.columns.title_separator)

  if config.candidate_source in ('dense', 'bm25', 'hybrid'):
    retrieved = []
    if config.candidate_source in ('dense', 'hybrid'):
      retrieved.append(
          {'queries': pipeline | 'ReadQueryEmbeddings' >> ReadEmbeddingTables(
              config.query_embeddings_dir, '--query-embeddings'),
           'corpus': pipeline | 'ReadCorpusEmbeddings' >> ReadEmbeddingTables(
               config.corpus_embeddings_dir, '--corpus-embeddings')}
          | 'ExactDenseTopK' >> ExactTopK(
              config.top_k, normalize=config.normalize_embeddings,
              query_groups=config.query_groups)
          | 'MarkDense' >> beam.Map(source_row, SOURCE_DENSE))
    if config.candidate_source in ('bm25', 'hybrid'):
      retrieved.append(
          {'queries': queries['texts'] | 'BM25QueryTexts' >> beam.Map(
              lambda r: (r['id'], r['text'])),
           'corpus': corpus['texts'] | 'BM25CorpusTexts' >> beam.Map(
               lambda r: (r['id'], r['text']))}
          | 'ExactBM25TopK' >> BM25TopK(config.bm25)
          | 'MarkBM25' >> beam.Map(source_row, SOURCE_BM25))
    if len(retrieved) == 1:
      pool = retrieved[0]
    else:
      # Exact top-k lists hold no duplicate pairs: the merge dead-letters none.
      merged = (retrieved | 'FlattenSources' >> beam.Flatten()
                | 'MergeSources' >> MergeCandidates())
      pool = (
          merged['candidates']
          | 'KeyByQuery' >> beam.WithKeys(lambda row: row['query_id'])
          | 'GroupByQuery' >> beam.GroupByKey()
          | 'FuseSources' >> beam.FlatMap(_fused_rows, config.fusion))
    candidates = pool | 'CheckCandidates' >> beam.ParDo(
        check_candidates('retrieval_score')).with_outputs(DEAD_LETTER_TAG, main='candidates')
  else:
    columns = ['query_id', 'doc_id']
    if config.candidate_source == 'ranked' or config.candidates_have_retrieval_rank:
      columns.append('retrieval_rank')
    if config.candidates_score_column:
      columns.append(config.candidates_score_column)
    if config.candidate_source == 'ranked':
      rows = (pipeline
              | 'RankedFiles' >> beam.Create(list(config.candidates_files))
              | 'ReadRankedParquet' >> beam.io.ReadAllFromParquet(columns=columns))
    else:
      rows = pipeline | 'ReadCandidatesParquet' >> beam.io.ReadFromParquet(
          config.candidates_pattern, columns=columns)
    candidates = (
        rows
        | 'CheckCandidates' >> beam.ParDo(
            check_candidates(config.candidates_score_column)).with_outputs(
                DEAD_LETTER_TAG, main='candidates'))

  if config.qrels_pattern:
    labels = (pipeline
              | 'ReadQrelsParquet' >> beam.io.ReadFromParquet(
                  config.qrels_pattern, columns=['query_id', 'doc_id', 'relevance'])
              | 'CheckQrels' >> beam.ParDo(CheckQrelFn(True)).with_outputs(
                  DEAD_LETTER_TAG, main='qrels'))
  elif config.positives_pattern:
    labels = (pipeline
              | 'ReadPositivesParquet' >> beam.io.ReadFromParquet(
                  config.positives_pattern, columns=['query_id', 'doc_id'])
              | 'CheckQrels' >> beam.ParDo(CheckQrelFn(False)).with_outputs(
                  DEAD_LETTER_TAG, main='qrels'))
  else:
    labels = None

  known = {
      'candidates': candidates.candidates, 'queries': queries['texts'],
      'corpus': corpus['texts'],
  } | 'KnownCandidates' >> KnownCandidates()
  dead_letters = [queries[DEAD_LETTER_TAG], corpus[DEAD_LETTER_TAG],
                  candidates[DEAD_LETTER_TAG], known[DEAD_LETTER_TAG]]
  if labels is not None:
    dead_letters.append(labels[DEAD_LETTER_TAG])
    labels = labels.qrels
  else:
    labels = pipeline | 'NoQrels' >> beam.Create([])
  if pseudo is not None:
    # A pseudo-query's positive is its source document (relevant whatever
    # --min-relevance says about the judged grades).
    pseudo_qrels = pseudo | 'PseudoQrels' >> beam.Map(
        _pseudo_qrel, max(1, config.mining.min_relevance))
    labels = (labels, pseudo_qrels) | 'FlattenLabels' >> beam.Flatten()

  # With judged queries, the dev split (checkpoint selection) holds them only:
  # every pseudo-query trains.
  pseudo_in_dev = not (config.qrels_pattern or config.positives_pattern)
  mined = {
      'candidates': known['candidates'], 'qrels': labels,
  } | 'MineNegatives' >> MineNegatives(
      config.mining, 'score', config.dev_mining, config.dev_fraction, pseudo_in_dev)
  attached = {
      'mined': mined, 'queries': queries['texts'], 'corpus': corpus['texts'],
  } | 'AttachTexts' >> AttachMinedTexts()
  with_texts = attached.assembled
  if pseudo is not None:
    given = 'qrels' if config.qrels_pattern else 'positives'
    pseudo_texts = {'assembled': with_texts, 'pseudo': pseudo}
    if bodies is not None:
      pseudo_texts['bodies'] = bodies
    with_texts = pseudo_texts | 'AttachPseudoTexts' >> AttachPseudoTexts(given)

  outputs, written = [], {}
  for fmt in config.formats:
    label = ''.join(part.title() for part in fmt.split('-'))
    by_split = with_texts | f'Format{label}' >> beam.FlatMap(
        _keyed_rows, fmt, config.mining.num_negatives, config.dev_fraction,
        pseudo_in_dev).with_outputs(
            *SPLITS)
    for split in (SPLITS if config.dev_fraction > 0 else ('train',)):
      for kind, schema, index in (('', text_schema(fmt, config.mining.num_negatives), 1),
                                  ('-ids', id_schema(fmt, pseudo is not None), 2)):
        output = ShardedOutput(
            name=f'{fmt}/{split}{kind}', root=config.output_dir,
            subdirectory=f'{fmt}/{split}{kind}', schema=schema,
            key_fn=lambda row: row['_key'].split('\t', 1)[0],
            sort_key_fn=lambda row: row['_key'],
            rows_per_shard=config.rows_per_shard, write_empty=False,
            to_table=lambda rows, schema: pa.Table.from_pylist(
                [{k: v for k, v in r.items() if k != '_key'} for r in rows], schema=schema))
        outputs.append(output)
        step = f'{label}{split.title()}{"Ids" if kind else "Texts"}'
        written[output.name] = (
            by_split[split]
            | f'Rows{step}' >> beam.Map(
                lambda keyed, i=index: dict(keyed[i], _key=keyed[0]))
            | f'Write{step}' >> WriteParquetShards(output))
  dead = (dead_letters + [attached[DEAD_LETTER_TAG]]) | 'FlattenDeadLetters' >> beam.Flatten()
  dead_output = ShardedOutput(
      name='dead_letter', root=config.output_dir, subdirectory='dead_letter',
      schema=DEAD_LETTER_SCHEMA, key_fn=lambda row: row['record_id'] or '',
      sort_key_fn=dead_letter_sort_key, rows_per_shard=config.rows_per_shard)
  outputs.append(dead_output)
  written['dead_letter'] = dead | 'WriteDeadLetters' >> WriteParquetShards(dead_output)
  _ = pipeline | 'CommitOutputs' >> CommitOutputs(
      outputs, written, FileSystems.join(config.output_dir, MANIFEST_NAME), manifest)
