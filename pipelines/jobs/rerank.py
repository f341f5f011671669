"""The rerank job: queries x corpus -> candidates -> cross-encoder -> ranked Parquet."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import polars as pl
from apache_beam.io.filesystems import FileSystems

from pipelines import common
from pipelines.jobs import encode as encode_job
from pipelines.jobs.evaluate import evaluate_ranked
from pipelines.steps.rerank import (
  check_inputs,
  model_coverage,
  previous_scores,
  read_tuning_qrels,
  run_report,
  sample_pairs,
  summary_lines,
  write_trec,
)
from transforms.core.language import LanguageSettings
from transforms.core.settings import REQUIRED, group, non_negative_float, positive_int, setting
from transforms.core.texts import TextColumns
from transforms.graphs.rerank import RerankConfig, build_rerank_pipeline, score_pairs
from transforms.io.parquet_sink import (
  dead_letter_limit_setting,
  rows_per_shard_setting,
  write_json,
)
from transforms.models.inference_settings import InferenceSettings
from transforms.models.model_info import inspect_cross_encoder
from transforms.ranking import evaluation
from transforms.ranking.fusion import (
  AUTO,
  DEFAULT_RRF_K,
  METHODS,
)
from transforms.retrieval.bm25 import BM25Options
from transforms.retrieval.dense import (
  DEFAULT_CORPUS_BLOCK_SIZE,
  DEFAULT_MAX_QUERIES_IN_MEMORY,
  DEFAULT_QUERY_BLOCK_SIZE,
)

PROG = 'beam-rerank rerank'


NO_CROSS_ENCODER = 'none'


logger = logging.getLogger(__name__)




@dataclasses.dataclass(frozen=True)
class RerankJobConfig:
  """The rerank job's options (the command line's, one field per option).

  ``cross_encoder`` None means the product's default cross-encoder: ``run``
  resolves it (building it once) before ``execute``; ``execute`` itself needs
  a model.
  """
  queries: str = setting(
      REQUIRED, 'Parquet queries (query_id, text).', metavar='GLOB', group='input and output')
  corpus: str = setting(
      REQUIRED, 'Parquet corpus (doc_id, text[, title]).', metavar='GLOB', group='input and output')
  output: str = setting(
      REQUIRED, 'Folder for ranked part-*.parquet (top-n per query), candidates/ '
      '(every scored candidate), dead_letter/, manifest.json, report.json.', metavar='DIR',
      group='input and output')
  cross_encoder: Optional[str] = setting(
      None, "sentence-transformers CrossEncoder directory or hub id (1 label); 'none' "
      'ranks by the fused first stage alone (hybrid retrieval, no model scoring). '
      'Default: a cross-encoder fine-tuned locally from the packaged all-MiniLM-L6-v2 '
      'on the sample collection (built once, cached; see its note).', metavar='NAME_OR_PATH',
      group='cross-encoder')
  columns: TextColumns = group(TextColumns(), 'input and output')
  previous: Optional[str] = setting(
      None, 'A previous rerank output (may equal --output): a pair whose query text and '
      'passage text are unchanged reuses its cross-encoder score when the model '
      'fingerprint, max length, activation and backend match; every other pair is scored. '
      'Candidates are always recomputed.', metavar='DIR', group='input and output')
  trec: bool = setting(
      False, 'Also write the ranked lists as a TREC run file, OUTPUT/run.trec.',
      group='input and output')
  rows_per_shard: int = rows_per_shard_setting()
  max_dead_letter_fraction: float = dead_letter_limit_setting()
  query_embeddings: Optional[str] = setting(
      None, 'Query embedding shards made by the encode job.', metavar='DIR', group='candidates')
  corpus_embeddings: Optional[str] = setting(
      None, 'Corpus embedding shards made by the encode job with the same model.', metavar='DIR',
      group='candidates')
  model: Optional[str] = setting(
      None, 'Bi-encoder: encode queries and corpus first (into OUTPUT/embeddings/; a '
      're-run into the same output re-encodes only changed texts), then retrieve.',
      metavar='NAME_OR_PATH', group='candidates')
  candidates: Optional[str] = setting(
      None, 'Supplied candidates Parquet: query_id, doc_id[, score] (e.g. a BM25 run).',
      metavar='GLOB', group='candidates')
  candidates_score_column: str = setting(
      'score', 'Score column of --candidates, if present (default: %(default)s).',
      group='candidates')
  bm25: BM25Options = group(BM25Options(), 'candidates')
  language: LanguageSettings = group(LanguageSettings(), 'candidates')
  top_k: int = setting(
      100, 'Candidates per query from each source, dense and BM25 (default: %(default)s).',
      type=positive_int, group='candidates')
  corpus_block_size: int = setting(
      DEFAULT_CORPUS_BLOCK_SIZE, 'Corpus rows per matrix product; the score matrix of one '
      'product is query block x this x 4 bytes (default: %(default)s).', type=positive_int,
      group='candidates')
  query_block_size: int = setting(
      DEFAULT_QUERY_BLOCK_SIZE, 'Queries per matrix product (default: %(default)s).',
      type=positive_int, group='candidates')
  max_queries_in_memory: int = setting(
      DEFAULT_MAX_QUERIES_IN_MEMORY, 'Query embeddings one worker holds as a side input; more '
      'queries are split into groups scored in separate branches (default: %(default)s).',
      type=positive_int, group='candidates')
  top_n: int = setting(
      10, 'Ranked rows kept per query (default: %(default)s).', type=positive_int,
      group='cross-encoder')
  max_length: Optional[int] = setting(
      None, "Tokens per pair (default: the model's).", type=positive_int,
      group='cross-encoder')
  activation: str = setting(
      'identity', 'Applied to the logit: identity = raw logits (right for BCE-trained '
      "models), sigmoid, or the model's own default (default: %(default)s).",
      choices=['identity', 'sigmoid', 'model'], group='cross-encoder')
  qrels: Optional[str] = setting(
      None, 'Evaluate against these judgments after ranking.', metavar='GLOB', group='evaluation')
  metrics: str = setting(
      ','.join(evaluation.DEFAULT_MEASURES), 'With --qrels (default: %(default)s).',
      group='evaluation')
  fusion: str = setting(
      'linear', 'none: one signal per stage; linear: weighted sum of normalised scores; '
      'rrf: weighted reciprocal rank fusion (default: %(default)s).', choices=METHODS,
      group='fusion')
  fusion_weights: str = setting(
      AUTO, "'auto' (tuned on --tune-qrels, guarded: unless the gain holds up in a paired "
      "test, a stage falls back to equal weights where they beat its best single signal on "
      'the tuning queries, else to that signal), or fixed, e.g. '
      "'dense=0.5,bm25=0.5,ce=1' (default: %(default)s).", metavar='auto|SIGNAL=W,...',
      group='fusion')
  first_stage_weights: Optional[str] = setting(
      None, "With --fusion-weights auto: fix the first stage's weights (e.g. "
      "'dense=0.55,bm25=0.45', as tuned on more judged queries than the final stage may "
      'use) and tune only the final stage on --tune-qrels (default: both tuned).',
      metavar='SIGNAL=W,...', group='fusion')
  rrf_k: float = setting(
      DEFAULT_RRF_K, '(default: %(default)s)', type=non_negative_float, group='fusion')
  tune_qrels: Optional[str] = setting(
      None, 'Judgments of the tuning queries (also in --queries) for auto weights; '
      'they are left out of the reported metrics. Without it, auto ranks each stage '
      'by one signal: the cross-encoder, else dense, supplied, BM25.', metavar='GLOB',
      group='fusion')
  inference: InferenceSettings = group(InferenceSettings(), 'inference and batching (both models)')
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


def execute(job: RerankJobConfig) -> RerankResult:
  """Runs the rerank job with ``job.cross_encoder`` (a model, or 'none' for the
  fused first stage alone); its report is also written as report.json."""
  common.quiet_libraries()
  started = time.perf_counter()
  if job.cross_encoder is None:
    raise ValueError(
        "execute() needs a cross-encoder (or 'none'); run() resolves the default one "
        '(pipelines.jobs.default_cross_encoder)')
  checked = check_inputs(job)
  options = checked.options
  queries_input, corpus_input = checked.queries, checked.corpus
  candidates_input, score_column = checked.candidates, checked.candidates_score_column
  candidates_pattern = candidates_input.pattern if candidates_input else None
  settings = job.inference
  tuning_qrels, tuning_check = {}, None
  if job.tune_qrels:
    query_ids = evaluation.read_parquet_files(
        queries_input.files, [job.columns.query_id])[job.columns.query_id].cast(pl.String).to_list()
    tuning_qrels, tuning_check = read_tuning_qrels(job.tune_qrels, query_ids)
  # The cross-encoder is checked before any encoding.
  ce = None
  if job.uses_cross_encoder:
    ce = inspect_cross_encoder(
        job.cross_encoder, job.max_length, settings.trust_remote_code,
        settings.allow_pickle_weights)
  previous_files, previous_ignored = (), None
  if ce:
    previous_files, previous_ignored = previous_scores(job, {
        'cross_encoder_fingerprint': ce.fingerprint, 'max_length': ce.max_length,
        'activation': job.activation, 'backend': settings.backend})
  elif job.previous:
    previous_ignored = 'there is no cross-encoder to reuse scores of'
    logger.warning('%s: warning: --previous is not used: %s', PROG, previous_ignored)
  query_dir, corpus_dir = job.query_embeddings, job.corpus_embeddings
  if job.model:
    folders = encode_job.encode_collection(
        job.model, job.columns, FileSystems.join(job.output, 'embeddings'),
        [('queries', job.queries, 'queries'), ('corpus', job.corpus, 'corpus')],
        job.inference, job.pipeline_args)
    query_dir, corpus_dir = folders['queries'], folders['corpus']
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
      columns=job.columns,
      activation=job.activation,
      corpus_block_size=job.corpus_block_size,
      query_block_size=job.query_block_size,
      rows_per_shard=job.rows_per_shard,
      inference=settings)
  coverage = model_coverage(job, ce, embeddings, queries_input.files, corpus_input.files)
  fidelity = None
  if ce:
    fidelity = common.check_backend(
        settings, 'cross-encoder',
        lambda backend: score_pairs(config).handler(backend),
        sample_pairs(queries_input.files, corpus_input.files, job))
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
  result, pipeline_started = common.run_pipeline(
      options, lambda pipeline: build_rerank_pipeline(pipeline, config, manifest),
      output_dir, job.max_dead_letter_fraction, rows_in)
  finished = time.perf_counter()

  report = run_report(
      result, output_dir, sources, checked.bm25, tuning_check, language=checked.language,
      coverage=coverage,
      backend=settings.backend if ce else None, fidelity=fidelity,
      seconds=(started, pipeline_started, finished))
  if job.trec:
    report['trec_run'] = write_trec(output_dir, 'beam-rerank')
  if job.qrels:
    # The same scope as `evaluate` on this folder: every query the run read.
    report['evaluation'] = evaluate_ranked(
        output_dir, job.qrels, job.metrics.split(','), output_dir)
  write_json(report, FileSystems.join(output_dir, 'report.json'))
  common.print_summary('rerank summary', summary_lines(report, bool(job.previous)))
  evaluated = report.get('evaluation')
  return RerankResult(
      output_dir=output_dir, queries_ranked=report['queries_ranked'],
      pairs_scored=report['pairs_scored'],
      ranked_rows=report['ranked_rows'], metrics=evaluated['metrics'] if evaluated else None,
      report=report)


