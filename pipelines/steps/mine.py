"""The mine job's named steps below its ``execute``: checking the options and
the candidate source, the report and the summary's lines."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from pipelines import common
from transforms.core.errors import UserInputError
from transforms.core.language import Detected
from transforms.io.parquet_input import (
  CheckedInput,
  check_parquet_files,
  check_parquet_input,
  file_columns,
)
from transforms.io.parquet_sink import (
  MANIFEST_NAME,
  committed_files,
  committed_output_exists,
  read_json,
)
from transforms.ranking.fusion import AUTO, FusionDecision, parse_fusion_weights
from transforms.retrieval.bm25 import BM25Settings
from transforms.training.mining import FORMATS, GUARDS
from transforms.training.pseudo_queries import (
  TITLE,
  PseudoQuerySettings,
)

PROG = 'beam-rerank mine'
MINE_FUSION_WEIGHTS = 'dense=0.5,bm25=0.5'


def _hybrid_fusion(job: Any) -> FusionDecision:
  """Dense + BM25 in mine: the fixed first-stage fusion asked for."""
  try:
    weights = parse_fusion_weights(job.fusion_weights)
    if weights == AUTO or set(weights) - {'dense', 'bm25'}:
      raise ValueError("mine fuses with fixed weights of 'dense' and 'bm25' only")
    return FusionDecision(weights, job.fusion, False, 'fixed fusion (mine)')
  except ValueError as error:
    raise UserInputError(f'--fusion-weights {job.fusion_weights}: {error}') from None


def check_pseudo_sources(job: Any, label_sources: int) -> None:
  """--pseudo-queries: candidates from BM25, labels from the source documents
  (judged queries mixed in only with both --queries and their labels)."""
  if not job.bm25.enabled or job.ranked or job.candidates:
    raise UserInputError(
        '--pseudo-queries needs --bm25: pseudo-queries have no embeddings and no '
        'supplied or ranked candidates; their negatives come from BM25')
  if job.mining.positive_threshold is not None:
    raise UserInputError(
        '--pseudo-queries take their positives from the source documents, not '
        '--positive-threshold')
  if bool(job.queries) != bool(label_sources):
    raise UserInputError(
        'with --pseudo-queries, --queries and their labels (--qrels or --positives) go '
        'together: give both to mix judged queries in, or neither')
  if label_sources > 1:
    raise UserInputError('give at most one label source: --qrels or --positives')
  if job.query_embeddings and not job.queries:
    raise UserInputError('--query-embeddings need --queries (and their labels)')


def pseudo_settings(job: Any, corpus) -> PseudoQuerySettings:
  """The pseudo-query settings with their title column resolved and checked."""
  pseudo = job.pseudo
  title_column = pseudo.title_column or job.columns.doc_title
  if title_column is None and 'title' in file_columns(corpus.files[0]):
    title_column = 'title'
  if title_column is None and TITLE in pseudo.sources:
    raise UserInputError(
        '--pseudo-queries title needs a title column: the corpus has no \'title\'; '
        'name it with --pseudo-title-column')
  if title_column is not None:
    check_parquet_input(job.corpus, '--corpus', {title_column: 'string'})
  return dataclasses.replace(pseudo, title_column=title_column)


def ranked_score_column(manifest: dict, files: Sequence[str], job: Any) -> str:
  """The score a rerank output offers the guards: its cross-encoder's.

  The ranked ``score`` is the final fused score (normalised sums when fusion
  kept weights), not a model score, so thresholds, margins and distill labels
  read ``ce_score``; outputs written before it existed have the CE score in
  ``score``. Without a cross-encoder only the first stage's score exists, and
  rules that need model scores are refused.
  """
  columns = file_columns(files[0]) if files else []
  # Outputs from before --cross-encoder none always had a cross-encoder.
  if manifest.get('cross_encoder', True):
    return 'ce_score' if 'ce_score' in columns else 'score'
  mining = job.mining
  if mining.positive_threshold is not None or 'distill' in job.format:
    raise UserInputError(
        f'--ranked {job.ranked!r} was ranked without a cross-encoder: pseudo-labels '
        '(--positive-threshold) and distill labels need cross-encoder scores')
  return 'retrieval_score'


def check_options(job: Any) -> tuple[list[str], bool]:
  """The options that must agree (one error line each); returns the formats and
  whether pseudo-queries are asked for."""
  mining = job.mining
  label_sources = [bool(job.qrels), bool(job.positives), mining.positive_threshold is not None]
  pseudo = job.pseudo if job.pseudo.sources else None
  if pseudo is not None:
    check_pseudo_sources(job, sum(label_sources))
  sources = [bool(job.ranked), bool(job.candidates), bool(job.query_embeddings or job.bm25.enabled)]
  if sum(sources) != 1:
    raise UserInputError(
        'give exactly one candidate source: --ranked, --candidates, or retrieval here '
        '(--query-embeddings with --corpus-embeddings, and/or --bm25)')
  if bool(job.query_embeddings) != bool(job.corpus_embeddings):
    raise UserInputError('--query-embeddings and --corpus-embeddings go together')
  if pseudo is None:
    if sum(label_sources) != 1:
      raise UserInputError(
          'give exactly one label source: --qrels, --positives, or --positive-threshold')
    if not job.queries:
      raise UserInputError('--queries is required (unless --pseudo-queries)')
  formats = [f.strip() for f in job.format.split(',') if f.strip()]
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise UserInputError(f'unknown --format {",".join(unknown)}; choose from {",".join(FORMATS)}')
  if not 0 <= job.dev_fraction < 1:
    raise UserInputError('--dev-fraction must be in [0, 1)')
  if job.dev_negatives is not None and not job.dev_fraction:
    raise UserInputError('--dev-negatives mines the dev split: give --dev-fraction > 0')
  if mining.range_min < 0:
    raise UserInputError('--range-min must be >= 0')
  if mining.range_max is not None and mining.range_min >= mining.range_max:
    raise UserInputError('--range-min must be smaller than --range-max')
  if os.path.isfile(job.output):
    raise UserInputError(f'--output {job.output!r} is a file, not a folder')
  return formats, pseudo is not None


@dataclasses.dataclass(frozen=True)
class CheckedCandidates:
  """Where the candidates come from, checked: ``source`` is ranked, candidates,
  dense, bm25 or hybrid (the last three retrieved here)."""
  source: str
  pattern: Optional[str]
  files: Sequence[str]
  score_column: Optional[str]
  has_rank: bool
  embeddings: Optional[dict]
  normalize: bool
  bm25: Optional[BM25Settings]
  fusion: Optional[FusionDecision]
  language: Optional[Detected]
  rows: int

  @property
  def retrieved_here(self) -> bool:
    return self.source in ('dense', 'bm25', 'hybrid')


def check_candidates(job: Any, corpus: CheckedInput) -> CheckedCandidates:
  """The candidate source: a rerank output, a supplied run, or retrieval here
  (dense, BM25 stemmed as the texts' language asks, or both fused)."""
  mining = job.mining
  checked = None
  score_column = job.score_column
  candidates_pattern, candidates_files = None, ()
  normalize = False
  has_rank = False
  embeddings = None
  bm25 = fusion = language = None
  if job.ranked:
    ranked_manifest = common.output_manifest(job.ranked, '--ranked', 'ranked', 'rerank')
    # Every scored candidate when the output has them, else the top-n.
    output = 'candidates' if committed_output_exists(
        job.ranked, 'candidates', '--ranked', ranked_manifest) else 'ranked'
    ranked_files = committed_files(job.ranked, output, '--ranked', ranked_manifest)
    score_column = score_column or ranked_score_column(ranked_manifest, ranked_files, job)
    checked = check_parquet_files(
        ranked_files, '--ranked', {
            'query_id': 'id', 'doc_id': 'id', 'retrieval_rank': 'int', score_column: 'float'})
    candidates_files, source = checked.files, 'ranked'
  elif job.candidates:
    checked = check_parquet_input(job.candidates, '--candidates', {
        'query_id': 'id', 'doc_id': 'id'})
    score_column = score_column or 'score'
    columns = file_columns(checked.files[0])
    if score_column not in columns:
      score_column = None
    else:
      check_parquet_input(job.candidates, '--candidates', {score_column: 'float'})
    has_rank = 'retrieval_rank' in columns
    if has_rank:
      check_parquet_input(job.candidates, '--candidates', {'retrieval_rank': 'int'})
    candidates_pattern, source = checked.pattern, 'candidates'
  else:
    if job.query_embeddings:
      embeddings, _ = common.check_embedding_pair(job.query_embeddings, job.corpus_embeddings)
      normalize = not embeddings['normalized'] and embeddings['similarity'] == 'cosine'
    if job.bm25.enabled:
      language = common.corpus_language(
          job.language.language, corpus.files, job.columns.doc_text, 'mine')
    bm25 = job.bm25.settings(job.top_k, language.stemmer if language else None)
    source = 'hybrid' if bm25 and job.query_embeddings else 'bm25' if bm25 else 'dense'
    if source == 'hybrid':
      fusion = _hybrid_fusion(job)
  needs_scores = any(v is not None for v in (
      mining.max_score, mining.min_score, mining.absolute_margin, mining.relative_margin,
      mining.positive_threshold))
  if needs_scores and source == 'candidates' and score_column is None:
    raise UserInputError('score guards/thresholds need a score column in --candidates')
  return CheckedCandidates(
      source, candidates_pattern, candidates_files, score_column, has_rank, embeddings,
      normalize, bm25, fusion, language, checked.num_rows if checked is not None else 0)


def run_report(result: Any, output_dir: str, manifest: dict, pseudo: Optional[Any],
               language: Optional[Detected], seconds: float) -> dict:
  """The report of a finished run, from its counters and committed manifest."""
  counts = common.counters(result, 'mine')
  written = read_json(FileSystems.join(output_dir, MANIFEST_NAME))
  rows = {name: info['rows'] for name, info in written['outputs'].items()
          if not name.endswith('-ids')}
  report = {
      'job': 'mine',
      'output': output_dir,
      'queries_with_candidates': counts.get('queries', 0),
      'queries_with_positives': counts.get('queries_with_positives', 0),
      'queries_without_positives': counts.get('queries_without_positives', 0),
      'queries_without_negatives': counts.get('queries_without_negatives', 0),
      'positives': counts.get('positives', 0),
      'negatives_kept': counts.get('negatives_kept', 0),
      'candidates_dropped': {g: counts.get(f'dropped_{g}', 0) for g in GUARDS},
      'mined_ids_without_text': counts.get('mined_ids_without_text', 0),
      'candidates_in': counts.get('candidates_in', 0),
      'candidates_rejected': counts.get('candidates_rejected', 0),
      'candidates_without_positives': counts.get('candidates_without_positives', 0),
      'qrels_in': counts.get('qrels_in', 0),
      'qrels_rejected': counts.get('qrels_rejected', 0),
      'qrels_without_candidates': counts.get('qrels_without_candidates', 0),
      # Every candidate row is dead-lettered, of a query without positives, dropped
      # by a guard (or --negative-threshold), or a kept negative.
      'reconciles': counts.get('candidates_in', 0) == sum(counts.get(k, 0) for k in (
          'candidates_rejected', 'candidates_without_positives', 'negatives_kept',
          'dropped_negative_threshold', *(f'dropped_{g}' for g in GUARDS))),
      'dead_letters': written['outputs']['dead_letter']['rows'],
      'rows': rows,
      'pseudo_labels': manifest['pseudo_labels'],
      # Made per source, from how many documents (None without --pseudo-queries).
      'pseudo_queries': {
          'documents': counts.get('pseudo_query_docs', 0),
          'documents_without_queries': counts.get('pseudo_query_docs_without_queries', 0),
          **{source: counts.get(f'pseudo_queries_{source}', 0) for source in pseudo.sources},
      } if pseudo else None,
      'language': language.as_dict() if language else None,
      'wall_seconds': seconds,
  }
  return report


def summary_lines(report: dict, labels: Optional[str]) -> list[tuple[str, Any]]:
  """The printed summary of a run's report."""
  rows = report['rows']
  pseudo = report['pseudo_queries'] is not None
  output_dir = report['output']
  return [
      *common.language_line(report['language']),
      ('queries with candidates', report['queries_with_candidates']),
      ('  with positives', report['queries_with_positives']),
      ('  without positives', report['queries_without_positives']),
      ('  with no negative left', report['queries_without_negatives']),
      ('positives', report['positives']),
      ('negatives kept', report['negatives_kept']),
      *[(f'  dropped: {g}', n) for g, n in report['candidates_dropped'].items() if n],
      *([(f'pseudo-queries: {k.replace("_", " ")}', n)
         for k, n in report['pseudo_queries'].items()] if pseudo else []),
      ('mined ids without text (dead letters)', report['mined_ids_without_text']),
      ('candidates in', report['candidates_in']),
      ('  dead-lettered', report['candidates_rejected']),
      ('  of queries without positives', report['candidates_without_positives']),
      ('  in = dead + no positives + dropped + kept', 'yes' if report['reconciles'] else 'NO'),
      ('judgments in / dead-lettered / never retrieved', (
          f"{report['qrels_in']:,} / {report['qrels_rejected']:,} / "
          f"{report['qrels_without_candidates']:,}")),
      ('dead letters', report['dead_letters']),
      *[(f'rows {name}', n) for name, n in rows.items() if name != 'dead_letter'],
      ('labels', labels),
      ('wall time (s)', report['wall_seconds']),
      ('output', output_dir),
  ]
