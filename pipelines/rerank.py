"""The ``rerank`` job: queries x corpus -> candidates -> cross-encoder -> ranked Parquet.

    beam-rerank rerank --queries q.parquet --corpus c.parquet --output out/ranked \\
        --cross-encoder CE_DIR --query-embeddings out/q_emb --corpus-embeddings out/c_emb
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from typing import Optional, Sequence

import apache_beam as beam
import polars as pl
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import common, default_cross_encoder
from pipelines import encode as encode_job
from pipelines.evaluate import evaluate_ranked
from transforms.bm25 import BM25Settings
from transforms.core.errors import UserInputError
from transforms.graphs.rerank import RerankConfig, build_rerank_pipeline, score_pairs
from transforms.io.parquet_input import CheckedInput, check_parquet_input, file_columns
from transforms.io.parquet_sink import (
  DEFAULT_ROWS_PER_SHARD,
  MANIFEST_NAME,
  committed_files,
  committed_output_exists,
  read_json,
  unreadable_parquet,
  write_json,
)
from transforms.models import inference_settings
from transforms.models.inference_settings import InferenceSettings
from transforms.models.model_info import inspect_cross_encoder
from transforms.ranking import evaluation
from transforms.ranking.fusion import (
  AUTO,
  DEFAULT_RRF_K,
  METHODS,
  SIGNALS,
  FusionSpec,
  parse_fusion_weights,
)
from transforms.ranking.stage_fusion import StagePlan, plan_stages
from transforms.retrieval import query_accounting
from transforms.retrieval.dense import (
  DEFAULT_CORPUS_BLOCK_SIZE,
  DEFAULT_MAX_QUERIES_IN_MEMORY,
  DEFAULT_QUERY_BLOCK_SIZE,
)
from transforms.reuse.scores import QUERY_HASH, reusable_previous

PROG = 'beam-rerank rerank'
NO_CROSS_ENCODER = 'none'
logger = logging.getLogger(__name__)
_CANDIDATE_STAGES = ('rerank/candidates', 'rerank/join', 'rerank/score')


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description='Rank corpus passages for each query. Candidates come from exact '
      'dense top-k over embedding shards (--query-embeddings/--corpus-embeddings, or '
      '--model to encode first), exact BM25 top-k (--bm25), a supplied run '
      '(--candidates), or any of them (their union). The first stage fuses the '
      "sources' scores; a cross-encoder then scores every candidate and the final "
      'ranking fuses it with the first stage (--fusion; weights fixed or tuned on '
      '--tune-qrels, guarded).',
      epilog=common.BEAM_EPILOG)
  io = parser.add_argument_group('input and output')
  io.add_argument(
      '--queries', required=True, metavar='GLOB',
      help='Parquet queries (query_id, text).')
  io.add_argument(
      '--corpus', required=True, metavar='GLOB',
      help='Parquet corpus (doc_id, text[, title]).')
  io.add_argument(
      '--output', required=True, metavar='DIR',
      help='Folder for ranked part-*.parquet (top-n per query), candidates/ '
      '(every scored candidate), dead_letter/, manifest.json, report.json.')
  io.add_argument('--query-id-column', default='query_id', help='(default: %(default)s)')
  io.add_argument('--query-text-column', default='text', help='(default: %(default)s)')
  io.add_argument('--doc-id-column', default='doc_id', help='(default: %(default)s)')
  io.add_argument('--doc-text-column', default='text', help='(default: %(default)s)')
  io.add_argument(
      '--doc-title-column', default=None,
      help='Optional title column put in front of passage texts (default: none).')
  io.add_argument(
      '--title-separator', default='\n', help='What joins title and text (default: newline).')
  io.add_argument(
      '--previous', metavar='DIR', default=None,
      help='A previous rerank output (may equal --output): a pair whose query text and '
      'passage text are unchanged reuses its cross-encoder score when the model '
      'fingerprint, max length, activation and backend match; every other pair is scored. '
      'Candidates are always recomputed.')
  io.add_argument(
      '--trec', action='store_true',
      help='Also write the ranked lists as a TREC run file, OUTPUT/run.trec.')
  io.add_argument(
      '--rows-per-shard', type=common.positive_int, default=DEFAULT_ROWS_PER_SHARD,
      help='(default: %(default)s)')
  common.add_dead_letter_limit_argument(io)

  cands = parser.add_argument_group('candidates')
  cands.add_argument(
      '--query-embeddings', metavar='DIR', default=None,
      help='Query embedding shards made by the encode job.')
  cands.add_argument(
      '--corpus-embeddings', metavar='DIR', default=None,
      help='Corpus embedding shards made by the encode job with the same model.')
  cands.add_argument(
      '--model', metavar='NAME_OR_PATH', default=None,
      help='Bi-encoder: encode queries and corpus first (into OUTPUT/embeddings/; a '
      're-run into the same output re-encodes only changed texts), then retrieve.')
  cands.add_argument(
      '--candidates', metavar='GLOB', default=None,
      help='Supplied candidates Parquet: query_id, doc_id[, score] (e.g. a BM25 run).')
  cands.add_argument(
      '--candidates-score-column', default='score',
      help='Score column of --candidates, if present (default: %(default)s).')
  common.add_bm25_arguments(cands)
  cands.add_argument(
      '--top-k', type=common.positive_int, default=100,
      help='Candidates per query from each source, dense and BM25 (default: %(default)s).')
  cands.add_argument(
      '--corpus-block-size', type=common.positive_int, default=DEFAULT_CORPUS_BLOCK_SIZE,
      help='Corpus rows per matrix product; the score matrix of one product is query '
      'block x this x 4 bytes (default: %(default)s).')
  cands.add_argument(
      '--query-block-size', type=common.positive_int, default=DEFAULT_QUERY_BLOCK_SIZE,
      help='Queries per matrix product (default: %(default)s).')
  cands.add_argument(
      '--max-queries-in-memory', type=common.positive_int,
      default=DEFAULT_MAX_QUERIES_IN_MEMORY,
      help='Query embeddings one worker holds as a side input; more queries are split '
      'into groups scored in separate branches (default: %(default)s).')

  scoring = parser.add_argument_group('cross-encoder')
  scoring.add_argument(
      '--cross-encoder', default=None, metavar='NAME_OR_PATH',
      help="sentence-transformers CrossEncoder directory or hub id (1 label); 'none' "
      'ranks by the fused first stage alone (hybrid retrieval, no model scoring). '
      'Default: a cross-encoder fine-tuned locally from the packaged all-MiniLM-L6-v2 '
      'on the sample collection (built once, cached; see its note).')
  scoring.add_argument(
      '--top-n', type=common.positive_int, default=10,
      help='Ranked rows kept per query (default: %(default)s).')
  scoring.add_argument(
      '--max-length', type=common.positive_int, default=None,
      help="Tokens per pair (default: the model's).")
  scoring.add_argument(
      '--activation', choices=['identity', 'sigmoid', 'model'], default='identity',
      help='Applied to the logit: identity = raw logits (right for BCE-trained '
      "models), sigmoid, or the model's own default (default: %(default)s).")
  inference_settings.add_arguments(parser, 'inference and batching (both models)')

  fusion_group = parser.add_argument_group(
      'fusion', 'The first stage fuses dense, BM25 and supplied scores into '
      'retrieval_score; the final ranking fuses that (signal "retrieval") with the '
      'cross-encoder ("ce"). Linear fusion min-max normalises each signal per query.')
  fusion_group.add_argument(
      '--fusion', choices=METHODS, default='linear',
      help='none: one signal per stage; linear: weighted sum of normalised scores; '
      'rrf: weighted reciprocal rank fusion (default: %(default)s).')
  fusion_group.add_argument(
      '--fusion-weights', default=AUTO, metavar='auto|SIGNAL=W,...',
      help="'auto' (tuned on --tune-qrels, guarded: unless the gain holds up in a paired "
      "test, a stage falls back to equal weights where they beat its best single signal on "
      'the tuning queries, else to that signal), or fixed, e.g. '
      "'dense=0.5,bm25=0.5,ce=1' (default: %(default)s).")
  fusion_group.add_argument(
      '--first-stage-weights', default=None, metavar='SIGNAL=W,...',
      help="With --fusion-weights auto: fix the first stage's weights (e.g. "
      "'dense=0.55,bm25=0.45', as tuned on more judged queries than the final stage may "
      'use) and tune only the final stage on --tune-qrels (default: both tuned).')
  fusion_group.add_argument(
      '--rrf-k', type=common.non_negative_float, default=DEFAULT_RRF_K,
      help='(default: %(default)s)')
  fusion_group.add_argument(
      '--tune-qrels', metavar='GLOB', default=None,
      help='Judgments of the tuning queries (also in --queries) for auto weights; '
      'they are left out of the reported metrics. Without it, auto ranks each stage '
      'by one signal: the cross-encoder, else dense, supplied, BM25.')

  evaluation_group = parser.add_argument_group('evaluation')
  evaluation_group.add_argument(
      '--qrels', metavar='GLOB', default=None,
      help='Evaluate against these judgments after ranking.')
  evaluation_group.add_argument(
      '--metrics', default=','.join(evaluation.DEFAULT_MEASURES),
      help='With --qrels (default: %(default)s).')
  return parser


@dataclasses.dataclass(frozen=True)
class RerankJobConfig:
  """The rerank job's options (the command line's, one field per option).

  ``cross_encoder`` None means the product's default cross-encoder: ``run``
  resolves it (building it once) before ``execute``; ``execute`` itself needs
  a model.
  """
  queries: str
  corpus: str
  output: str
  cross_encoder: Optional[str] = None
  query_id_column: str = 'query_id'
  query_text_column: str = 'text'
  doc_id_column: str = 'doc_id'
  doc_text_column: str = 'text'
  doc_title_column: Optional[str] = None
  title_separator: str = '\n'
  previous: Optional[str] = None
  trec: bool = False
  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
  max_dead_letter_fraction: float = 1.0
  query_embeddings: Optional[str] = None
  corpus_embeddings: Optional[str] = None
  model: Optional[str] = None
  candidates: Optional[str] = None
  candidates_score_column: str = 'score'
  bm25: bool = False
  bm25_k1: float = BM25Settings().k1
  bm25_b: float = BM25Settings().b
  bm25_stemmer: str = 'none'
  bm25_top_k: Optional[int] = None
  top_k: int = 100
  corpus_block_size: int = DEFAULT_CORPUS_BLOCK_SIZE
  query_block_size: int = DEFAULT_QUERY_BLOCK_SIZE
  max_queries_in_memory: int = DEFAULT_MAX_QUERIES_IN_MEMORY
  top_n: int = 10
  max_length: Optional[int] = None
  activation: str = 'identity'
  qrels: Optional[str] = None
  metrics: str = ','.join(evaluation.DEFAULT_MEASURES)
  fusion: str = 'linear'
  fusion_weights: str = AUTO
  first_stage_weights: Optional[str] = None
  rrf_k: float = DEFAULT_RRF_K
  tune_qrels: Optional[str] = None
  inference: InferenceSettings = InferenceSettings()
  pipeline_args: tuple[str, ...] = ()

  @property
  def uses_cross_encoder(self) -> bool:
    return (self.cross_encoder or '').lower() != NO_CROSS_ENCODER


@dataclasses.dataclass(frozen=True)
class RerankResult:
  """What a rerank run did; ``report`` is its report.json.

  ``metrics``: ``{stage: {measure: value}}`` when qrels were given, else None.
  """
  output_dir: str
  queries_ranked: int
  pairs_scored: int
  ranked_rows: int
  metrics: Optional[dict[str, dict[str, float]]]
  report: dict


def parse_config(argv: Sequence[str] | None = None) -> RerankJobConfig:
  """The command line -> the job's config (Beam's options kept for the run)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return common.config_from_args(RerankJobConfig, args, beam_args)


def _encode_first(job: RerankJobConfig) -> tuple[str, str]:
  """--model: run the encode job for queries and corpus into OUTPUT/embeddings."""
  dirs = {}
  for name, pattern, id_column, text_column, title in (
      ('queries', job.queries, job.query_id_column, job.query_text_column, None),
      ('corpus', job.corpus, job.doc_id_column, job.doc_text_column, job.doc_title_column)):
    directory = FileSystems.join(job.output, 'embeddings', name)
    previous = directory if FileSystems.exists(
        FileSystems.join(directory, MANIFEST_NAME)) else None
    encode_job.execute(encode_job.EncodeJobConfig(
        input=pattern, output=directory, model=job.model, id_column=id_column,
        text_column=text_column, title_column=title,
        title_separator=job.title_separator, previous=previous,
        inference=job.inference, pipeline_args=job.pipeline_args))
    dirs[name] = directory
  return dirs['queries'], dirs['corpus']


def _write_trec(output_dir: str, tag: str) -> str:
  """OUTPUT/run.trec: the committed ranked lists in TREC run format."""
  frame = evaluation.read_parquet_files(
      committed_files(output_dir, 'ranked', '--output'),
      ['query_id', 'doc_id', 'rank', 'score']).sort('query_id', 'rank')
  lines = frame.select(pl.format(
      '{} Q0 {} {} {} ' + tag, 'query_id', 'doc_id', 'rank', 'score'))
  path = FileSystems.join(output_dir, 'run.trec')
  text = ''.join(f'{line}\n' for line in lines.to_series().to_list())
  with FileSystems.create(path) as handle:
    handle.write(text.encode('utf-8'))
  return path


def _sample_pairs(
    query_files: Sequence[str], corpus_files: Sequence[str],
    job: RerankJobConfig) -> list[tuple[str, str]]:
  """Pairs for the fidelity check: the i-th query with the i-th passage."""
  size = job.inference.fidelity_sample
  if size <= 0 or job.inference.backend == 'torch':
    return []
  queries = common.first_values(query_files, [job.query_text_column], size)
  passages = common.first_values(corpus_files, [job.doc_text_column], size)
  if not queries or not passages:
    return []
  return [(queries[i % len(queries)][0], passages[i % len(passages)][0])
          for i in range(size)]


@dataclasses.dataclass(frozen=True)
class _CheckedInputs:
  options: PipelineOptions
  queries: CheckedInput
  corpus: CheckedInput
  candidates: Optional[CheckedInput]
  candidates_score_column: Optional[str]
  bm25: Optional[BM25Settings]
  plan: StagePlan


def _stage_plan(job: RerankJobConfig, score_column: Optional[str]) -> StagePlan:
  sources = [s for s, on in (
      ('dense', bool(job.model or job.query_embeddings)), ('bm25', job.bm25),
      ('supplied', bool(job.candidates and score_column))) if on]
  try:
    spec = FusionSpec(job.fusion, parse_fusion_weights(job.fusion_weights), job.rrf_k)
  except ValueError as error:
    raise UserInputError(f'--fusion {job.fusion} --fusion-weights {job.fusion_weights}: '
                         f'{error}') from None
  first_stage_weights = None
  if job.first_stage_weights is not None:
    try:
      first_stage_weights = parse_fusion_weights(job.first_stage_weights)
      if isinstance(first_stage_weights, str):
        raise ValueError("it takes weights, not 'auto' (auto is the default)")
      FusionSpec(job.fusion, first_stage_weights, job.rrf_k)  # e.g. none with two signals
    except ValueError as error:
      raise UserInputError(
          f'--first-stage-weights {job.first_stage_weights}: {error}') from None
  try:
    return plan_stages(spec, sources, job.uses_cross_encoder, first_stage_weights)
  except ValueError as error:
    raise UserInputError(f'--fusion {job.fusion} --fusion-weights {job.fusion_weights}: '
                         f'{error}') from None


def read_tuning_qrels(
    pattern: str, query_ids: Optional[Sequence[str]] = None,
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
  """--tune-qrels -> (query_id -> doc_id -> relevance of the queries fusion is
  tuned on, what the check found).

  The tuning queries are the judged queries of this run (``query_ids``) with
  at least one relevant judgment. Rows with a null, duplicate (query, doc)
  pairs (the highest relevance is kept), negative relevance (not relevant),
  ids not among the queries and queries without a relevant doc are each
  counted and warned about in one line; so is a file with no rows.
  """
  checked = check_parquet_input(
      pattern, '--tune-qrels', {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'})
  raw = evaluation.read_parquet_files(checked.files, ['query_id', 'doc_id', 'relevance'])
  rows = raw.height
  frame = evaluation.clean_qrels(raw)
  deduplicated = frame.group_by('query_id', 'doc_id').agg(pl.col('relevance').max())
  judged = set(deduplicated['query_id'].to_list())
  known = judged if query_ids is None else judged & set(query_ids)
  relevant = set(deduplicated.filter(
      (pl.col('relevance') > 0) & pl.col('query_id').is_in(list(known)))['query_id'].to_list())
  found = {
      'rows': rows,
      'null_rows': rows - frame.height,
      'duplicate_rows': frame.height - deduplicated.height,
      'negative_relevance_rows': int((deduplicated['relevance'] < 0).sum()),
      'judged_queries': len(judged),
      'unknown_query_ids': len(judged - known),
      'queries_without_relevant': len(known - relevant),
      'tuning_queries': len(relevant),
  }
  problems = {
      'null_rows': 'rows with a null id or relevance (left out)',
      'duplicate_rows': 'duplicate (query, doc) rows (the highest relevance kept)',
      'negative_relevance_rows': 'rows with a negative relevance (read as not relevant)',
      'unknown_query_ids': 'query ids that are not in --queries (left out)',
      'queries_without_relevant': 'judged queries without a relevant doc (nothing to tune '
                                  'on: left out)',
  }
  if not rows:
    logger.warning('%s: warning: --tune-qrels %r has no rows: fusion cannot be tuned',
                   PROG, pattern)
  for key, what in problems.items():
    if found[key]:
      logger.warning('%s: warning: --tune-qrels has %s %s', PROG, f'{found[key]:,}', what)
  qrels: dict[str, dict[str, int]] = {}
  for query_id, doc_id, relevance in deduplicated.filter(
      pl.col('query_id').is_in(list(relevant))).sort('query_id', 'doc_id').iter_rows():
    qrels.setdefault(query_id, {})[doc_id] = int(relevance)
  return qrels, found


def check_inputs(job: RerankJobConfig) -> _CheckedInputs:
  """The cheap checks of a run's options and input files (one error line each)."""
  options = common.pipeline_options(job.pipeline_args, PROG)
  if bool(job.query_embeddings) != bool(job.corpus_embeddings):
    raise UserInputError('--query-embeddings and --corpus-embeddings go together')
  if job.model and job.query_embeddings:
    raise UserInputError('give either --model or --query-embeddings/--corpus-embeddings')
  if not (job.model or job.query_embeddings or job.candidates or job.bm25):
    raise UserInputError(
        'no candidates: give --query-embeddings and --corpus-embeddings, --model, '
        '--bm25 or --candidates')
  if os.path.isfile(job.output):
    raise UserInputError(f'--output {job.output!r} is a file, not a folder')
  queries_input = check_parquet_input(
      job.queries, '--queries',
      {job.query_id_column: 'id', job.query_text_column: 'string'})
  corpus_columns = {job.doc_id_column: 'id', job.doc_text_column: 'string'}
  if job.doc_title_column:
    corpus_columns[job.doc_title_column] = 'string'
  corpus_input = check_parquet_input(job.corpus, '--corpus', corpus_columns)
  candidates_input, score_column = None, None
  if job.candidates:
    candidates_input = check_parquet_input(
        job.candidates, '--candidates', {'query_id': 'id', 'doc_id': 'id'})
    if job.candidates_score_column in file_columns(candidates_input.files[0]):
      check_parquet_input(
          job.candidates, '--candidates', {job.candidates_score_column: 'float'})
      score_column = job.candidates_score_column
  if job.qrels:
    check_parquet_input(
        job.qrels, '--qrels', {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'})
    evaluation.parse_measures(job.metrics.split(','))
  if job.tune_qrels:
    check_parquet_input(
        job.tune_qrels, '--tune-qrels', {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'})
  plan = _stage_plan(job, score_column)
  if plan.first is None and not job.uses_cross_encoder:
    raise UserInputError(
        '--cross-encoder none ranks by the candidates\' scores, and these have none: '
        f'--candidates has no {job.candidates_score_column!r} column and no dense or BM25 '
        'source is given')
  return _CheckedInputs(
      options, queries_input, corpus_input, candidates_input, score_column,
      common.bm25_settings(job), plan)


def _fusion_lines(fusion: Optional[dict]) -> list[tuple[str, str]]:
  if not fusion:
    return []
  lines = []
  for stage, label in (('first_stage', 'first stage'), ('final', 'final')):
    decision = fusion.get(stage)
    if decision:
      weights = ', '.join(f'{s}={decision["weights"][s]:g}' for s in SIGNALS
                          if s in decision['weights'])
      lines.append((f'fusion, {label}', f"{decision['method']} {weights}"))
      lines.append(('  why', decision['reason']))
  return lines


def _previous_scores(
    job: RerankJobConfig, current: dict) -> tuple[tuple[str, ...], Optional[str]]:
  """--previous -> (its candidates files to reuse scores from, why not reused)."""
  if not job.previous:
    return (), None
  previous = job.previous.rstrip('/')
  manifest_path = FileSystems.join(previous, MANIFEST_NAME)
  has_manifest = FileSystems.exists(manifest_path)
  if not has_manifest and previous != job.output.rstrip('/'):
    raise UserInputError(f'--previous {job.previous!r} has no {MANIFEST_NAME}: not a '
                         'finished rerank output')
  try:
    manifest = read_json(manifest_path) if has_manifest else None
    files: list[str] = []
    if manifest and manifest.get('kind') == 'ranked' and committed_output_exists(
        previous, 'candidates', '--previous', manifest):
      files = committed_files(previous, 'candidates', '--previous', manifest)
    why = unreadable_parquet(files)
    has_hashes = bool(why) or not files or QUERY_HASH in file_columns(files[0])
  except UserInputError as error:  # A damaged manifest, a listed file missing.
    manifest, why, has_hashes = None, str(error), True
  if why:
    why = f'it cannot be read: {why}'
  else:
    why = reusable_previous(manifest, current, has_hashes)
  if why:
    logger.warning('%s: warning: --previous %r is not reused: %s; scoring every pair',
                   PROG, job.previous, why)
    return (), why
  return tuple(files), None


def execute(job: RerankJobConfig) -> RerankResult:
  """Runs the rerank job with ``job.cross_encoder`` (a model, or 'none' for the
  fused first stage alone); its report is also written as report.json."""
  common.quiet_libraries()
  started = time.perf_counter()
  if job.cross_encoder is None:
    raise ValueError(
        "execute() needs a cross-encoder (or 'none'); run() resolves the default one "
        '(pipelines.default_cross_encoder)')
  checked = check_inputs(job)
  options = checked.options
  queries_input, corpus_input = checked.queries, checked.corpus
  candidates_input, score_column = checked.candidates, checked.candidates_score_column
  candidates_pattern = candidates_input.pattern if candidates_input else None
  settings = job.inference
  tuning_qrels, tuning_check = {}, None
  if job.tune_qrels:
    query_ids = evaluation.read_parquet_files(
        queries_input.files, [job.query_id_column])[job.query_id_column].cast(pl.String).to_list()
    tuning_qrels, tuning_check = read_tuning_qrels(job.tune_qrels, query_ids)
  # The cross-encoder is checked before any encoding.
  ce = None
  if job.uses_cross_encoder:
    ce = inspect_cross_encoder(
        job.cross_encoder, job.max_length, settings.trust_remote_code,
        settings.allow_pickle_weights)
  previous_files, previous_ignored = (), None
  if ce:
    previous_files, previous_ignored = _previous_scores(job, {
        'cross_encoder_fingerprint': ce.fingerprint, 'max_length': ce.max_length,
        'activation': job.activation, 'backend': settings.backend})
  elif job.previous:
    previous_ignored = 'there is no cross-encoder to reuse scores of'
    logger.warning('%s: warning: --previous is not used: %s', PROG, previous_ignored)
  query_dir, corpus_dir = job.query_embeddings, job.corpus_embeddings
  if job.model:
    query_dir, corpus_dir = _encode_first(job)
  embeddings = None
  if query_dir:
    embeddings, _ = common.check_embedding_pair(query_dir, corpus_dir)

  output_dir = job.output.rstrip('/')
  config = RerankConfig(
      queries_pattern=queries_input.pattern,
      corpus_pattern=corpus_input.pattern,
      output_dir=output_dir,
      plan=checked.plan,
      cross_encoder=ce.name_or_path if ce else None,
      cross_encoder_fingerprint=ce.fingerprint if ce else None,
      max_length=ce.max_length if ce else None,
      bm25=checked.bm25,
      tuning_qrels=tuning_qrels,
      previous_files=previous_files,
      previous_dir=job.previous.rstrip('/') if job.previous else None,
      query_embeddings_dir=query_dir,
      corpus_embeddings_dir=corpus_dir,
      normalize_embeddings=bool(
          embeddings and not embeddings['normalized'] and
          embeddings['similarity'] == 'cosine'),
      query_groups=common.query_groups(embeddings, job.max_queries_in_memory),
      candidates_pattern=candidates_pattern,
      candidates_score_column=score_column,
      top_k=job.top_k,
      top_n=job.top_n,
      query_id_column=job.query_id_column,
      query_text_column=job.query_text_column,
      doc_id_column=job.doc_id_column,
      doc_text_column=job.doc_text_column,
      doc_title_column=job.doc_title_column,
      title_separator=job.title_separator,
      activation=job.activation,
      corpus_block_size=job.corpus_block_size,
      query_block_size=job.query_block_size,
      rows_per_shard=job.rows_per_shard,
      inference=settings)
  fidelity = None
  if ce:
    fidelity = common.check_backend(
        settings, 'cross-encoder',
        lambda backend: score_pairs(config).handler(backend),
        _sample_pairs(queries_input.files, corpus_input.files, job))
  sources = [s for s, on in (
      ('dense', bool(query_dir)), ('bm25', bool(checked.bm25)),
      ('supplied', bool(candidates_pattern))) if on]
  manifest = {
      'kind': 'ranked',
      'cross_encoder': ce.name_or_path if ce else None,
      'cross_encoder_fingerprint': ce.fingerprint if ce else None,
      'activation': job.activation if ce else None,
      'max_length': ce.max_length if ce else None,
      'top_k': job.top_k if query_dir else None,
      'bm25': dataclasses.asdict(checked.bm25) if checked.bm25 else None,
      'top_n': job.top_n,
      'candidate_sources': sources,
      'retrieval_model_fingerprint': embeddings and embeddings['model_fingerprint'],
      'fusion_requested': checked.plan.as_dict(),
      'tune_qrels': job.tune_qrels,
      'tune_qrels_check': tuning_check,
      # Replaced by {'path', 'pairs_reused'} when the run reuses scores.
      'previous': ({'path': job.previous, 'ignored': previous_ignored}
                   if job.previous else None),
      'ranking': 'score desc, then retrieval_rank asc, then doc_id asc',
      'backend': settings.backend if ce else None,
      'backend_fidelity': fidelity,
  }
  logger.info(
      '[rerank] queries %s rows, corpus %s rows; candidates from %s; %s; fusion %s '
      '(weights %s%s)', f'{queries_input.num_rows:,}', f'{corpus_input.num_rows:,}',
      ' + '.join(sources),
      f'cross-encoder {ce.name_or_path} (max_length {ce.max_length}, activation '
      f'{job.activation})' if ce else 'no cross-encoder',
      job.fusion, job.fusion_weights,
      f', tuned on {len(tuning_qrels):,} judged queries' if tuning_qrels else '')

  rows_in = queries_input.num_rows + corpus_input.num_rows + (
      candidates_input.num_rows if candidates_input else 0)
  common.limit_dead_letters(options, job.max_dead_letter_fraction, rows_in)
  pipeline = beam.Pipeline(options=options)
  build_rerank_pipeline(pipeline, config, manifest)
  pipeline_started = time.perf_counter()
  result = pipeline.run()
  result.wait_until_finish()
  common.check_dead_letter_limit(result, output_dir, job.max_dead_letter_fraction, rows_in)
  finished = time.perf_counter()

  counts = common.counters(result, 'rerank')
  written = read_json(FileSystems.join(output_dir, MANIFEST_NAME))
  dead = common.dead_letter_counts(output_dir)
  by_reason = {f'{stage} {code}': rows for stage, code, rows in dead}
  candidate_dead = sum(rows for stage, _, rows in dead if stage in _CANDIDATE_STAGES)
  candidates_in = (counts.get('dense_candidates', 0) + counts.get('bm25_candidates', 0) +
                   counts.get('supplied_candidates_in', 0))
  scored = counts.get('pairs_scored', 0)
  reused = counts.get('pairs_reused', 0)
  ranked = counts.get('candidates_ranked', 0)
  fusion = written.get('fusion')
  query_accounts = query_accounting.summarize(
      counts, sources, queries_in=counts.get('queries/rows_in', 0),
      dead_lettered=sum(rows for stage, _, rows in dead if stage == 'rerank/queries'),
      ranked=counts.get('queries_ranked', 0))
  _warn_silent_sources(query_accounts, checked.bm25)
  report = {
      'job': 'rerank',
      'output': output_dir,
      'queries_ranked': counts.get('queries_ranked', 0),
      'queries': query_accounts,
      'tune_qrels_check': tuning_check,
      'candidates_in': candidates_in,
      'dense_candidates': counts.get('dense_candidates', 0),
      'bm25_candidates': counts.get('bm25_candidates', 0),
      'supplied_candidates': counts.get('supplied_candidates_in', 0),
      'union_overlap': counts.get('union_overlap', 0),
      'candidates_ranked': ranked,
      'pairs_scored': scored,
      'pairs_reused': reused,
      # Scoring work saved, taking every pair to cost the same.
      'scoring_time_saved': reused / (reused + scored) if reused + scored else 0.0,
      'previous': written.get('previous'),
      'candidate_dead_letters': candidate_dead,
      'reconciles': candidates_in == ranked + candidate_dead + counts.get('union_overlap', 0),
      'dead_letters': sum(rows for _, _, rows in dead),
      'dead_letters_by_reason': by_reason,
      'pairs_truncated': counts.get('texts_truncated', 0),
      'batches': counts.get('batches', 0),
      'padding_fraction': (1 - counts.get('real_tokens', 0) / counts['padded_tokens'])
      if counts.get('padded_tokens') else 0.0,
      'ranked_rows': written['outputs']['ranked']['rows'],
      'fusion': fusion,
      'wall_seconds': finished - started,
      'pipeline_seconds': finished - pipeline_started,
      'pairs_per_second': scored / (finished - pipeline_started) if scored else 0.0,
      'backend': settings.backend if ce else None,
      'backend_fidelity': fidelity,
  }
  if job.trec:
    report['trec_run'] = _write_trec(output_dir, 'beam-rerank')
  if job.qrels:
    # The same scope as `evaluate` on this folder: every query the run read.
    report['evaluation'] = evaluate_ranked(
        output_dir, job.qrels, job.metrics.split(','), output_dir)
  write_json(report, FileSystems.join(output_dir, 'report.json'))
  common.print_summary('rerank summary', [
      *_query_lines(query_accounts),
      *([('tuning queries (--tune-qrels)',
          f"{tuning_check['tuning_queries']:,} of {tuning_check['judged_queries']:,} judged")]
        if tuning_check else []),
      ('candidates in', report['candidates_in']),
      ('  dense', report['dense_candidates']),
      ('  BM25', report['bm25_candidates']),
      ('  supplied', report['supplied_candidates']),
      ('  in more than one source', report['union_overlap']),
      ('candidates ranked', ranked),
      ('  scored by the cross-encoder', scored),
      *([('  reused from --previous', reused),
         ('  scoring time saved (est.)', f"{report['scoring_time_saved']:.0%}")]
        if job.previous else []),
      ('candidates dead-lettered', candidate_dead),
      ('in = ranked + dead + overlap', 'yes' if report['reconciles'] else 'NO'),
      ('all dead letters', report['dead_letters']),
      *[(f'  {k}', n) for k, n in by_reason.items()],
      *_fusion_lines(fusion),
      *([('pairs truncated at max_length', report['pairs_truncated']),
         ('padding fraction', f"{report['padding_fraction']:.1%}")] if ce else []),
      ('wall time (s)', report['wall_seconds']),
      *([('pairs/s (pipeline)', report['pairs_per_second']),
         ('backend', settings.backend + (
             f" (score correlation with float32 {fidelity['mean']:.5f})" if fidelity
             else ''))] if ce else []),
      ('output', output_dir),
  ])
  evaluated = report.get('evaluation')
  return RerankResult(
      output_dir=output_dir, queries_ranked=report['queries_ranked'], pairs_scored=scored,
      ranked_rows=report['ranked_rows'], metrics=evaluated['metrics'] if evaluated else None,
      report=report)


_SOURCE_NAMES = {'dense': 'dense', 'bm25': 'BM25', 'supplied': 'supplied'}


def _query_lines(accounts: dict) -> list[tuple[str, object]]:
  """The summary's query accounting: in = ranked + dead-lettered + none."""
  lines = [
      ('queries in', accounts['in']),
      ('  ranked', accounts['ranked']),
      ('  dead-lettered', accounts['dead_lettered']),
      ('  no candidates', accounts['no_candidates']),
  ]
  for reason, n in accounts['no_candidates_by_reason'].items():
    if n:
      lines.append((f'    {reason}', n))
  lines.append(('in = ranked + dead + none', 'yes' if accounts['reconciles'] else 'NO'))
  for source, statuses in accounts['by_source'].items():
    misses = ', '.join(f'{status} {n:,}' for status, n in statuses.items()
                       if status != query_accounting.WITH_CANDIDATES and n)
    lines.append((f'{_SOURCE_NAMES[source]}: queries with candidates',
                  f"{statuses[query_accounting.WITH_CANDIDATES]:,}"
                  + (f' ({misses})' if misses else '')))
  return lines


def _warn_silent_sources(accounts: dict, bm25: Optional[BM25Settings]) -> None:
  """One warning line per source that returned nothing for every query."""
  accepted = accounts['in'] - accounts['dead_lettered']
  for source, statuses in accounts['by_source'].items():
    if accepted and not statuses[query_accounting.WITH_CANDIDATES]:
      hint = ''
      if source == 'bm25' and statuses.get('no_match'):
        hint = f' (k1 {bm25.k1:g}, b {bm25.b:g}: are the settings and the corpus right?)'
      logger.warning(
          '%s: warning: %s returned no candidate for any of the %s queries%s',
          PROG, _SOURCE_NAMES[source], f'{accepted:,}', hint)


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv``, builds the default cross-encoder when
  none is given (once, cached), runs the job; returns its report."""
  common.configure_logging()
  job = parse_config(argv)
  if job.cross_encoder is None:
    # Every cheap check runs before the (minutes-long, once) build.
    check_inputs(job)
    job = dataclasses.replace(job, cross_encoder=default_cross_encoder.resolve())
  return execute(job).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
