"""The rerank job's named steps below its ``execute``: checking the inputs and
the tuning judgments, previous scores, the TREC run, the summary's lines."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional, Sequence

import polars as pl
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import common
from transforms.core.errors import UserInputError
from transforms.core.language import Detected
from transforms.io.parquet_input import CheckedInput, check_parquet_input, file_columns
from transforms.io.parquet_sink import (
  MANIFEST_NAME,
  committed_files,
  committed_output_exists,
  read_json,
  unreadable_parquet,
)
from transforms.models.coverage import SAMPLE_SIZE
from transforms.ranking import evaluation
from transforms.ranking.fusion import (
  SIGNALS,
  FusionSpec,
  parse_fusion_weights,
)
from transforms.ranking.stage_fusion import StagePlan, plan_stages
from transforms.retrieval import query_accounting
from transforms.retrieval.bm25 import BM25Settings
from transforms.reuse.scores import QUERY_HASH, reusable_previous

PROG = 'beam-rerank rerank'
logger = logging.getLogger(__name__)
_CANDIDATE_STAGES = ('rerank/candidates', 'rerank/join', 'rerank/score')


def write_trec(output_dir: str, tag: str) -> str:
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


def sample_pairs(
    query_files: Sequence[str], corpus_files: Sequence[str],
    job: Any) -> list[tuple[str, str]]:
  """Pairs for the fidelity check: the i-th query with the i-th passage."""
  size = job.inference.fidelity_sample
  if size <= 0 or job.inference.backend == 'torch':
    return []
  queries = common.first_values(query_files, [job.columns.query_text], size)
  passages = common.first_values(corpus_files, [job.columns.doc_text], size)
  if not queries or not passages:
    return []
  return [(queries[i % len(queries)][0], passages[i % len(passages)][0])
          for i in range(size)]


@dataclasses.dataclass(frozen=True)
class CheckedInputs:
  options: PipelineOptions
  queries: CheckedInput
  corpus: CheckedInput
  candidates: Optional[CheckedInput]
  candidates_score_column: Optional[str]
  bm25: Optional[BM25Settings]
  plan: StagePlan
  language: Optional[Detected] = None


def _stage_plan(job: Any, score_column: Optional[str]) -> StagePlan:
  sources = [s for s, on in (
      ('dense', bool(job.model or job.query_embeddings)), ('bm25', job.bm25.enabled),
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


def check_inputs(job: Any) -> CheckedInputs:
  """The cheap checks of a run's options and input files (one error line each)."""
  options = common.pipeline_options(job.pipeline_args, PROG)
  if bool(job.query_embeddings) != bool(job.corpus_embeddings):
    raise UserInputError('--query-embeddings and --corpus-embeddings go together')
  if job.model and job.query_embeddings:
    raise UserInputError('give either --model or --query-embeddings/--corpus-embeddings')
  if not (job.model or job.query_embeddings or job.candidates or job.bm25.enabled):
    raise UserInputError(
        'no candidates: give --query-embeddings and --corpus-embeddings, --model, '
        '--bm25 or --candidates')
  if os.path.isfile(job.output):
    raise UserInputError(f'--output {job.output!r} is a file, not a folder')
  queries_input = check_parquet_input(
      job.queries, '--queries',
      {job.columns.query_id: 'id', job.columns.query_text: 'string'})
  corpus_columns = {job.columns.doc_id: 'id', job.columns.doc_text: 'string'}
  if job.columns.doc_title:
    corpus_columns[job.columns.doc_title] = 'string'
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
  language = common.corpus_language(
      job.language.language, corpus_input.files, job.columns.doc_text,
      'rerank') if job.bm25.enabled else None
  return CheckedInputs(
      options, queries_input, corpus_input, candidates_input, score_column,
      job.bm25.settings(job.top_k, language.stemmer if language else None), plan, language)


def fusion_lines(fusion: Optional[dict]) -> list[tuple[str, str]]:
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


def previous_scores(
    job: Any, current: dict) -> tuple[tuple[str, ...], Optional[str]]:
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


_SOURCE_NAMES = {'dense': 'dense', 'bm25': 'BM25', 'supplied': 'supplied'}


def query_lines(accounts: dict) -> list[tuple[str, object]]:
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


def warn_silent_sources(accounts: dict, bm25: Optional[BM25Settings]) -> None:
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


def run_report(
    result: Any, output_dir: str, sources: Sequence[str], bm25: Optional[BM25Settings],
    tuning_check: Optional[dict], *, backend: Optional[str], fidelity: Optional[dict],
    language: Optional[Detected] = None, coverage: Optional[dict] = None,
    seconds: tuple[float, float, float]) -> dict:
  """The report of a finished run, from its counters, manifest and dead letters
  (``backend`` None: no cross-encoder; ``seconds``: started, pipeline started,
  finished)."""
  started, pipeline_started, finished = seconds
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
  warn_silent_sources(query_accounts, bm25)
  report = {
      'job': 'rerank',
      'output': output_dir,
      'queries_ranked': counts.get('queries_ranked', 0),
      'queries': query_accounts,
      'tune_qrels_check': tuning_check,
      'language': language.as_dict() if language else None,
      'coverage': coverage,
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
      'backend': backend,
      'backend_fidelity': fidelity,
  }
  return report


def summary_lines(report: dict, previous_given: bool) -> list[tuple[str, Any]]:
  """The printed summary of a run's report (``previous_given``: ``--previous``)."""
  tuning_check = report['tune_qrels_check']
  ce = report['backend'] is not None
  fidelity = report['backend_fidelity']
  by_reason = report['dead_letters_by_reason']
  return [
      *query_lines(report['queries']),
      *([('tuning queries (--tune-qrels)',
          f"{tuning_check['tuning_queries']:,} of {tuning_check['judged_queries']:,} judged")]
        if tuning_check else []),
      *common.language_line(report.get('language')),
      *common.coverage_lines(report.get('coverage')),
      ('candidates in', report['candidates_in']),
      ('  dense', report['dense_candidates']),
      ('  BM25', report['bm25_candidates']),
      ('  supplied', report['supplied_candidates']),
      ('  in more than one source', report['union_overlap']),
      ('candidates ranked', report['candidates_ranked']),
      ('  scored by the cross-encoder', report['pairs_scored']),
      *([('  reused from --previous', report['pairs_reused']),
         ('  scoring time saved (est.)', f"{report['scoring_time_saved']:.0%}")]
        if previous_given else []),
      ('candidates dead-lettered', report['candidate_dead_letters']),
      ('in = ranked + dead + overlap', 'yes' if report['reconciles'] else 'NO'),
      ('all dead letters', report['dead_letters']),
      *[(f'  {k}', n) for k, n in by_reason.items()],
      *fusion_lines(report['fusion']),
      *([('pairs truncated at max_length', report['pairs_truncated']),
         ('padding fraction', f"{report['padding_fraction']:.1%}")] if ce else []),
      ('wall time (s)', report['wall_seconds']),
      *([('pairs/s (pipeline)', report['pairs_per_second']),
         ('backend', report['backend'] + (
             f" (score correlation with float32 {fidelity['mean']:.5f})" if fidelity
             else ''))] if ce else []),
      ('output', report['output']),
  ]


def model_coverage(job: Any, cross_encoder: Any, embeddings: Optional[dict],
                   query_files: Sequence[str], corpus_files: Sequence[str]) -> dict:
  """How the run's bi-encoder (passages) and cross-encoder (query + passage
  pairs) tokenizers cover a sample of its texts: ``{role: figures}``."""
  passages = [row[0] for row in common.first_values(
      corpus_files, [job.columns.doc_text], SAMPLE_SIZE)]
  found = {}
  if embeddings and embeddings.get('model') and passages:
    found['bi-encoder'] = common.model_coverage(
        embeddings['model'], int(embeddings['max_seq_length']), 'bi-encoder',
        'dense retrieval will be weak here (the fusion guard decides whether it counts)',
        texts=passages)
  queries = [row[0] for row in common.first_values(
      query_files, [job.columns.query_text], SAMPLE_SIZE)]
  if cross_encoder and queries and passages:
    pairs = [(queries[i % len(queries)], passages[i % len(passages)])
             for i in range(max(len(queries), len(passages)))]
    found['cross-encoder'] = common.model_coverage(
        cross_encoder.model_dir, cross_encoder.max_length, 'cross-encoder',
        'its scores will be weak here (the fusion guard decides whether they count)',
        pairs=pairs)
  return found
