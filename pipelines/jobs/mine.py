"""The mine job: ranked candidates + labels -> training-pair Parquet per format."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import common
from transforms.core.errors import UserInputError
from transforms.core.language import LanguageSettings
from transforms.core.settings import REQUIRED, group, positive_int, setting
from transforms.core.texts import TextColumns
from transforms.graphs.mine import MineConfig, build_mine_pipeline
from transforms.io.parquet_input import check_parquet_files, check_parquet_input, file_columns
from transforms.io.parquet_sink import (
  MANIFEST_NAME,
  committed_files,
  committed_output_exists,
  dead_letter_limit_setting,
  read_json,
  rows_per_shard_setting,
  write_json,
)
from transforms.ranking.fusion import AUTO, FusionDecision, parse_fusion_weights
from transforms.retrieval.bm25 import BM25Options
from transforms.retrieval.dense import DEFAULT_MAX_QUERIES_IN_MEMORY
from transforms.training.mining import FORMATS, GUARDS, NegativeMiningSettings
from transforms.training.pseudo_queries import (
  TITLE,
  PseudoQuerySettings,
)

PROG = 'beam-rerank mine'


MINE_FUSION_WEIGHTS = 'dense=0.5,bm25=0.5'



@dataclasses.dataclass(frozen=True)
class MineJobConfig:
  """The mine job's options (the command line's, one field per option)."""
  corpus: str = setting(
      REQUIRED, 'Parquet corpus (doc_id, text[, title]).', metavar='GLOB', group='input and output')
  output: str = setting(
      REQUIRED,
      'Folder: FORMAT/train, FORMAT/dev, FORMAT/train-ids, ..., manifest.json, report.json.',
      metavar='DIR', group='input and output')
  queries: Optional[str] = setting(
      None, 'Parquet queries (query_id, text); optional with --pseudo-queries.',
      metavar='GLOB', group='input and output')
  ranked: Optional[str] = setting(
      None, 'Output of the rerank job (its candidates/ with cross-encoder scores).', metavar='DIR',
      group='input and output')
  candidates: Optional[str] = setting(
      None, 'Candidates Parquet: query_id, doc_id[, score][, retrieval_rank].', metavar='GLOB',
      group='input and output')
  query_embeddings: Optional[str] = setting(
      None, 'With --corpus-embeddings: retrieve dense candidates here.', metavar='DIR',
      group='input and output')
  corpus_embeddings: Optional[str] = setting(
      None, '', metavar='DIR', group='input and output')
  top_k: int = setting(
      100, 'Dense (and BM25) candidates per query (default: %(default)s).', type=positive_int,
      group='input and output')
  bm25: BM25Options = group(BM25Options(), 'input and output')
  language: LanguageSettings = group(LanguageSettings(), 'input and output')
  fusion: str = setting(
      'linear', 'With dense and --bm25 together: how their scores are fused into one '
      'retrieval order, as rerank fuses its first stage (default: %(default)s). For '
      "weights tuned on judgments, run rerank --cross-encoder none and mine its --ranked.",
      choices=('linear', 'rrf'), group='input and output')
  fusion_weights: str = setting(
      MINE_FUSION_WEIGHTS, 'Fixed weights of dense and bm25 (default: %(default)s).',
      group='input and output')
  max_queries_in_memory: int = setting(
      DEFAULT_MAX_QUERIES_IN_MEMORY, 'Dense: query embeddings one worker holds; more are split '
      'into groups (default: %(default)s).', type=positive_int, group='input and output')
  columns: TextColumns = group(TextColumns(), 'input and output')
  rows_per_shard: int = rows_per_shard_setting()
  max_dead_letter_fraction: float = dead_letter_limit_setting()
  qrels: Optional[str] = setting(
      None, 'query_id, doc_id, relevance: positives are relevance >= --min-relevance.',
      metavar='GLOB', group='labels')
  positives: Optional[str] = setting(
      None, 'A positives table: query_id, doc_id (every row a positive).', metavar='GLOB',
      group='labels')
  format: str = setting(
      'labeled-pair,pair', f'Comma-separated, of {",".join(FORMATS)} (default: %(default)s).',
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  # Labels' thresholds, negatives' guards and sampling (--min-relevance,
  # --positive-threshold, --num-negatives, --range-min, ..., --sampling, --seed).
  mining: NegativeMiningSettings = group(NegativeMiningSettings())
  score_column: Optional[str] = setting(
      None, 'Candidate score used by the guards and distill labels (default: the '
      'cross-encoder score, ce_score, for --ranked; for a --ranked made with '
      '--cross-encoder none, the fused first stage, retrieval_score; score for '
      '--candidates; the retrieval score when retrieving here).',
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  dev_fraction: float = setting(
      0.0, 'Share of queries (by id hash) in dev/; with --qrels or --positives, of the '
      'judged queries only: pseudo-queries then all train (default: %(default)s).', type=float,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  dev_negatives: Optional[int] = setting(
      None, "Mine each dev query's N best-ranked negatives (the other guards apply; "
      'no --range-min, no sampling), so checkpoints are selected on the hard '
      'candidates a rerank of the first stage sees, not on easy ones (default: as '
      'training, --num-negatives).', type=positive_int, metavar='N',
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  # --pseudo-queries, --pseudo-per-doc, ..., --pseudo-title-column (and --seed).
  pseudo: PseudoQuerySettings = group(PseudoQuerySettings())
  pipeline_args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MineResult:
  """What a mine run did; ``rows``: rows written per output (``FORMAT/SPLIT``)."""
  output_dir: str
  rows: dict[str, int]
  report: dict


def _hybrid_fusion(job: MineJobConfig) -> FusionDecision:
  """Dense + BM25 in mine: the fixed first-stage fusion asked for."""
  try:
    weights = parse_fusion_weights(job.fusion_weights)
    if weights == AUTO or set(weights) - {'dense', 'bm25'}:
      raise ValueError("mine fuses with fixed weights of 'dense' and 'bm25' only")
    return FusionDecision(weights, job.fusion, False, 'fixed fusion (mine)')
  except ValueError as error:
    raise UserInputError(f'--fusion-weights {job.fusion_weights}: {error}') from None


def _check_pseudo_sources(job: MineJobConfig, label_sources: int) -> None:
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


def _pseudo_settings(job: MineJobConfig, corpus) -> PseudoQuerySettings:
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


def _ranked_score_column(manifest: dict, files: Sequence[str], job: MineJobConfig) -> str:
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


def execute(job: MineJobConfig) -> MineResult:
  """Runs the mine job; its report is also written as report.json."""
  common.quiet_libraries()
  started = time.perf_counter()
  options = common.pipeline_options(job.pipeline_args, PROG)
  mining = job.mining
  label_sources = [bool(job.qrels), bool(job.positives), mining.positive_threshold is not None]
  pseudo = job.pseudo if job.pseudo.sources else None
  if pseudo is not None:
    _check_pseudo_sources(job, sum(label_sources))
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

  queries = None
  if job.queries:
    queries = check_parquet_input(job.queries, '--queries', {
        job.columns.query_id: 'id', job.columns.query_text: 'string'})
  corpus_columns = {job.columns.doc_id: 'id', job.columns.doc_text: 'string'}
  if job.columns.doc_title:
    corpus_columns[job.columns.doc_title] = 'string'
  corpus = check_parquet_input(job.corpus, '--corpus', corpus_columns)
  if pseudo is not None:
    pseudo = _pseudo_settings(job, corpus)
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
    score_column = score_column or _ranked_score_column(ranked_manifest, ranked_files, job)
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
  retrieved_here = source in ('dense', 'bm25', 'hybrid')
  rows_in = ((queries.num_rows if queries else 0) + corpus.num_rows +
             (0 if retrieved_here else checked.num_rows))
  if job.qrels:
    rows_in += check_parquet_input(
        job.qrels, '--qrels', {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'}).num_rows
  if job.positives:
    rows_in += check_parquet_input(
        job.positives, '--positives', {'query_id': 'id', 'doc_id': 'id'}).num_rows

  output_dir = job.output.rstrip('/')
  config = MineConfig(
      queries_pattern=queries.pattern if queries else None,
      corpus_pattern=corpus.pattern, output_dir=output_dir, formats=formats, mining=mining,
      candidate_source=source,
      candidates_pattern=candidates_pattern, candidates_files=candidates_files,
      candidates_score_column=score_column,
      candidates_have_retrieval_rank=has_rank,
      query_embeddings_dir=job.query_embeddings, corpus_embeddings_dir=job.corpus_embeddings,
      normalize_embeddings=normalize, top_k=job.top_k, bm25=bm25, fusion=fusion,
      qrels_pattern=job.qrels,
      query_groups=common.query_groups(embeddings, job.max_queries_in_memory),
      positives_pattern=job.positives, columns=job.columns,
      dev_fraction=job.dev_fraction,
      dev_mining=None if job.dev_negatives is None else mining.best_ranked(job.dev_negatives),
      rows_per_shard=job.rows_per_shard, pseudo=pseudo)
  labels = ('pseudo: cross-encoder score thresholds '
            f'(positive >= {mining.positive_threshold}, '
            f'negative <= {mining.negative_threshold})'
            if mining.positive_threshold is not None else
            'qrels' if job.qrels else 'positives table' if job.positives else None)
  if pseudo is not None:
    made = f'pseudo-queries ({", ".join(pseudo.sources)})'
    labels = f'{labels} + {made}' if labels else made
  manifest = {
      'kind': 'training_pairs',
      'formats': formats,
      'candidate_source': source,
      'score_column': 'retrieval_score' if retrieved_here else score_column,
      'bm25': dataclasses.asdict(bm25) if bm25 else None,
      'fusion': fusion.as_dict() if fusion else None,
      'labels': labels,
      'pseudo_labels': mining.positive_threshold is not None,
      'pseudo_queries': dataclasses.asdict(pseudo) if pseudo else None,
      'mining': {k: v for k, v in vars(mining).items()},
      'dev_fraction': job.dev_fraction,
      'dev_negatives': job.dev_negatives,
      'split': 'dev if blake2b(query_id) % 1e6 < dev_fraction * 1e6' + (
          ' (judged queries only; pseudo-queries train)'
          if pseudo and (job.qrels or job.positives) else ''),
  }
  common.limit_dead_letters(options, job.max_dead_letter_fraction, rows_in)
  pipeline = beam.Pipeline(options=options)
  build_mine_pipeline(pipeline, config, manifest)
  result = pipeline.run()
  result.wait_until_finish()
  common.check_dead_letter_limit(result, output_dir, job.max_dead_letter_fraction, rows_in)
  finished = time.perf_counter()
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
      'wall_seconds': finished - started,
  }
  write_json(report, FileSystems.join(output_dir, 'report.json'))
  common.print_summary('mine summary', [
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
      ('labels', manifest['labels']),
      ('wall time (s)', report['wall_seconds']),
      ('output', output_dir),
  ])
  return MineResult(output_dir=output_dir, rows=rows, report=report)
