"""The loop job: split -> mine -> train -> rerank -> test metrics, one table."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from typing import Mapping, Optional, Union

from pipelines import common
from pipelines.jobs import encode as encode_job
from pipelines.jobs import mine as mine_job
from pipelines.jobs import rerank as rerank_job
from pipelines.jobs import train as train_job
from pipelines.steps.loop import (
  candidate_depth_note,
  check_mined_splits,
  check_tuning,
  first_stage_bm25_share,
  first_stage_decision,
  first_stage_weights_text,
  format_table,
  fusion_reasons,
  metrics_table,
  row_labels,
  write_splits,
)
from transforms.core.errors import UserInputError
from transforms.core.language import LanguageSettings
from transforms.core.settings import REQUIRED, fraction, group, positive_int, setting
from transforms.core.texts import TextColumns
from transforms.io.parquet_input import check_parquet_input
from transforms.io.parquet_sink import write_json
from transforms.models.inference_settings import InferenceSettings
from transforms.models.model_info import resolve_model_dir, resolve_model_name
from transforms.ranking import evaluation
from transforms.ranking.fusion import AUTO, MIN_TUNING_QUERIES
from transforms.retrieval.bm25 import BM25Options
from transforms.training import trainer
from transforms.training.mining import NegativeMiningSettings
from transforms.training.pseudo_queries import PseudoQuerySettings, pseudo_sources
from transforms.training.splits import EXPLICIT_TEST_RULE, SPLIT_RULE
from transforms.training.trainer import TrainingSettings, is_cross_encoder

PROG = 'beam-rerank loop'


KINDS = ('cross-encoder', 'bi-encoder', 'both')


NEGATIVE_SAMPLING = ('random', 'top')


# Cross-encoder warm-start steps on the first-stage bi-encoder's similarities:
# in a Cranfield trial (seed 7) 300 steps took a fresh head to the teacher's own
# ranking of the dev queries' candidates (nDCG@10 0.434, teacher 0.438), and the
# label steps after it left the class prior at once.
DEFAULT_DISTILL_STEPS = 300


REPORT_NAME = 'loop_report.json'


logger = logging.getLogger(__name__)


def bm25_weight(value: str) -> Union[float, str]:
  """argparse type of ``--teacher-bm25-weight``: ``auto`` or a number in [0, 1]."""
  return AUTO if value == AUTO else fraction(value)


@dataclasses.dataclass(frozen=True)
class LoopJobConfig:
  """The loop job's options (the command line's, one field per option)."""
  queries: str = setting(
      REQUIRED, 'Parquet queries (query_id, text).', metavar='GLOB', group='input and output')
  corpus: str = setting(
      REQUIRED, 'Parquet corpus (doc_id, text[, title]).', metavar='GLOB', group='input and output')
  qrels: str = setting(
      REQUIRED, 'Parquet judgments: query_id, doc_id, relevance (int; >= 1 relevant).',
      metavar='GLOB', group='input and output')
  output: str = setting(
      REQUIRED, 'A local folder: splits/, embeddings/, pairs/, models/, rerank/, '
      f'{REPORT_NAME}.', metavar='DIR', group='input and output')
  columns: TextColumns = group(TextColumns(), 'input and output')
  test_fraction: float = setting(
      0.5, 'Share of the judged queries held out for the test metrics (default: '
      '%(default)s).', type=fraction, group='query splits (by a stable hash of the query id)')
  test_queries: Optional[str] = setting(
      None, 'Parquet whose --query-id-column lists the test queries (a held-out set of '
      'your own; default: --test-fraction by hash). Dev and train split the other judged '
      'queries by hash.', metavar='GLOB', group='query splits (by a stable hash of the query id)')
  dev_fraction: float = setting(
      0.2, 'Share of the other judged queries used to pick the training checkpoint and '
      f'tune the final fusion; raised to hold {MIN_TUNING_QUERIES} queries (the fusion '
      f'guard\'s minimum) when the hash gives fewer and {2 * MIN_TUNING_QUERIES} or more are '
      'not test (default: %(default)s; 0: no dev split).', type=fraction,
      group='query splits (by a stable hash of the query id)')
  kind: str = setting(
      'cross-encoder', 'What to fine-tune (default: %(default)s).', choices=KINDS, group='models')
  base_model: Optional[str] = setting(
      None, 'The cross-encoder starts from it (a CrossEncoder, or any transformer: a new '
      'head); default: the packaged all-MiniLM-L6-v2.', metavar='NAME_OR_PATH', group='models')
  bi_encoder: Optional[str] = setting(
      None, 'The first-stage sentence-transformers bi-encoder, and where --kind '
      'bi-encoder starts from (default: the packaged all-MiniLM-L6-v2; never --base-model, '
      'which may be a cross-encoder).', metavar='NAME_OR_PATH', group='models')
  language: LanguageSettings = group(LanguageSettings(), 'candidates and mining')
  bm25: bool = setting(
      True, 'BM25 candidates next to dense ones, in mining and reranking (default: on).',
      action=argparse.BooleanOptionalAction, group='candidates and mining')
  top_k: int = setting(
      100, 'Candidates per query from each source that mining draws negatives from '
      '(default: %(default)s).', type=positive_int, group='candidates and mining')
  rerank_top_k: int = setting(
      20, 'Candidates per query from each source that the fine-tuned cross-encoder '
      'reranks on the dev and test queries (default: %(default)s; mining draws negatives '
      'from --top-k).', type=positive_int, metavar='N', group='candidates and mining')
  top_n: int = setting(
      10, 'Ranked rows kept per query (default: %(default)s).', type=positive_int,
      group='candidates and mining')
  pseudo_queries: tuple[str, ...] = setting(
      (), 'Also mine pseudo-queries made from the corpus (title,sentence; needs BM25) '
      '(default: none).', type=pseudo_sources, metavar='SOURCES',
      group='candidates and mining')
  pseudo_max_docs: Optional[int] = setting(
      None, 'Pseudo-queries from at most N documents (default: all).', type=positive_int,
      metavar='N', group='candidates and mining')
  num_negatives: int = setting(
      4, 'Negatives per mined query (default: %(default)s).', type=positive_int,
      group='candidates and mining')
  negatives: str = setting(
      'random', 'random: drawn at random from each query\'s top-k candidates (easy ones, '
      'mostly; what a model trained from a bi-encoder base learns from in a short CPU run); '
      'top: its highest-ranked non-positives (hard ones; more false negatives where '
      'judgments are sparse) (default: %(default)s).', choices=NEGATIVE_SAMPLING,
      group='candidates and mining')
  dev_negatives: Optional[int] = setting(
      None, "Negatives per dev query: its N best-ranked candidates, so the checkpoint is "
      'chosen on the hard lists a rerank sees (default: --rerank-top-k).', type=positive_int,
      metavar='N', group='candidates and mining')
  bi_encoder_format: str = setting(
      'triplet', 'Mined rows the bi-encoder trains on with MNRL (default: %(default)s).',
      choices=('triplet', 'pair'), group='candidates and mining')
  training: TrainingSettings = group(TrainingSettings(distill_steps=DEFAULT_DISTILL_STEPS))
  teacher_bm25_weight: Union[float, str] = setting(
      0.0, 'The share of BM25 in the warm-start targets (train --teacher-bm25-weight). '
      '"auto": the first stage\'s own choice, made on the dev queries before training: '
      'its BM25 weight when it fuses dense + BM25, 1 when it falls back to BM25, 0 when '
      'to dense (default: %(default)s).', type=bm25_weight, metavar='W', group='training')
  metrics: str = setting(
      ','.join(evaluation.DEFAULT_MEASURES),
      'Comma-separated ir-measures names (default: %(default)s).')
  inference: InferenceSettings = group(
      InferenceSettings(), 'inference and batching (encode and rerank)')
  pipeline_args: tuple[str, ...] = ()

  @property
  def kinds(self) -> tuple[str, ...]:
    return ('cross-encoder', 'bi-encoder') if self.kind == 'both' else (self.kind,)


@dataclasses.dataclass(frozen=True)
class LoopResult:
  """What a loop run did.

  ``table``: ``{row: {measure: value}}`` on the test queries (rows of
  ``TABLE_ROWS`` that the run has); ``splits``: judged queries per split;
  ``report``: loop_report.json.
  """
  output_dir: str
  splits: dict[str, int]
  table: dict[str, dict[str, float]]
  report: dict


def _encode(job: LoopJobConfig, model: Optional[str], directory: str,
            queries: Mapping[str, str]) -> dict[str, str]:
  """Encodes the corpus and each of ``queries`` (name -> pattern) with ``model``
  into ``directory/NAME`` (reusing what is there when unchanged)."""
  texts = [('corpus', job.corpus, 'corpus')]
  texts += [(name, pattern, 'queries') for name, pattern in queries.items()]
  return encode_job.encode_collection(
      model, job.columns, directory, texts, job.inference, job.pipeline_args)


def _mine(job: LoopJobConfig, files: Mapping[str, str], embeddings: Mapping[str, str],
          output: str, dev_share: float) -> mine_job.MineResult:
  formats = []
  if 'cross-encoder' in job.kinds:
    formats.append('labeled-pair')
  if 'bi-encoder' in job.kinds:
    formats.append(job.bi_encoder_format)
  return mine_job.execute(mine_job.MineJobConfig(
      corpus=job.corpus, output=output, queries=files['queries_tune'],
      query_embeddings=embeddings['queries_tune'], corpus_embeddings=embeddings['corpus'],
      top_k=job.top_k, bm25=BM25Options(enabled=job.bm25), language=job.language,
      columns=job.columns,
      qrels=files['tune'], format=','.join(formats),
      mining=NegativeMiningSettings(
          num_negatives=job.num_negatives, sampling_strategy=job.negatives, seed=job.training.seed),
      dev_fraction=dev_share,
      dev_negatives=(job.dev_negatives or job.rerank_top_k) if job.dev_fraction else None,
      pseudo=PseudoQuerySettings(
          sources=tuple(job.pseudo_queries), max_docs=job.pseudo_max_docs, seed=job.training.seed),
      pipeline_args=job.pipeline_args))


def warm_start_teacher(job: LoopJobConfig) -> Optional[str]:
  """The cross-encoder's warm-start teacher, the first-stage bi-encoder (a local
  folder); None without a warm start: ``--distill-steps 0``, no cross-encoder
  trained, or a ``--base-model`` that is a cross-encoder already."""
  if not job.training.distill_steps or 'cross-encoder' not in job.kinds:
    return None
  if is_cross_encoder(resolve_model_dir(resolve_model_name(job.base_model))):
    return None
  teacher = resolve_model_dir(resolve_model_name(job.bi_encoder))
  trainer.check_teacher(
      teacher, job.bi_encoder or teacher, 'the teacher is --bi-encoder; or turn the warm start '
      'off with --distill-steps 0')
  return teacher


def _train(job: LoopJobConfig, kind: str, pairs: str, output: str,
           teacher_bm25_weight: float = 0.0) -> train_job.TrainResult:
  base = job.base_model if kind == 'cross-encoder' else job.bi_encoder
  teacher = warm_start_teacher(job) if kind == 'cross-encoder' else None
  if kind == 'cross-encoder' and job.training.distill_steps and teacher is None:
    logger.info('[loop] --base-model is a cross-encoder already: no warm start')
  return train_job.execute(train_job.TrainJobConfig(
      pairs=pairs, kind=kind, output=output, base_model=base,
      format='labeled-pair' if kind == 'cross-encoder' else job.bi_encoder_format,
      training=dataclasses.replace(
          job.training, distill_steps=job.training.distill_steps if teacher else 0),
      trust_remote_code=job.inference.trust_remote_code,
      allow_pickle_weights=job.inference.allow_pickle_weights,
      teacher=teacher if teacher_bm25_weight < 1 else None,
      teacher_bm25_weight=teacher_bm25_weight if teacher else 0.0))


def _tune_first_stage(job: LoopJobConfig, output: str, embeddings: Mapping[str, str],
                      files: Mapping[str, str]) -> rerank_job.RerankResult:
  """The base first stage (dense + BM25, no model trained here) on the train and
  dev queries, its fusion tuned and guarded on all their judgments: neither
  signal was fit to them, so the train queries may tune it too, and the guard
  gets four times the queries the dev split alone gives it. No metrics."""
  return rerank_job.execute(rerank_job.RerankJobConfig(
      queries=files['queries_tune'], corpus=job.corpus, output=output,
      cross_encoder=rerank_job.NO_CROSS_ENCODER,
      columns=job.columns, query_embeddings=embeddings['queries_tune'],
      corpus_embeddings=embeddings['corpus'],
      bm25=BM25Options(enabled=job.bm25), language=job.language, top_k=job.rerank_top_k,
      top_n=job.top_n, fusion='linear',
      fusion_weights='auto', tune_qrels=files['tune'], inference=job.inference,
      pipeline_args=job.pipeline_args))


def _rerank(job: LoopJobConfig, output: str, cross_encoder: str,
            embeddings: Mapping[str, str], files: Mapping[str, str],
            first_stage_weights: Optional[str] = None) -> rerank_job.RerankResult:
  """Ranks the dev and test queries; fusion tuned on the dev judgments (the models
  were trained on train's, so their scores there are optimistic), metrics on test's.
  ``first_stage_weights``: the first stage as tuned on train + dev instead."""
  return rerank_job.execute(rerank_job.RerankJobConfig(
      queries=files['queries_eval'], corpus=job.corpus, output=output, cross_encoder=cross_encoder,
      columns=job.columns, query_embeddings=embeddings['queries_eval'],
      corpus_embeddings=embeddings['corpus'],
      bm25=BM25Options(enabled=job.bm25), language=job.language, top_k=job.rerank_top_k,
      top_n=job.top_n,
      max_length=job.training.max_length if cross_encoder != rerank_job.NO_CROSS_ENCODER else None,
      qrels=files['test'], metrics=job.metrics, fusion='linear', fusion_weights='auto',
      first_stage_weights=first_stage_weights, tune_qrels=files['dev'],
      inference=job.inference, pipeline_args=job.pipeline_args))


def _check(job: LoopJobConfig) -> None:
  if job.kind not in KINDS:
    raise UserInputError(f'--kind {job.kind!r} is not one of {", ".join(KINDS)}')
  if not 0 < job.test_fraction < 1:
    raise UserInputError('--test-fraction must be between 0 and 1 (both excluded)')
  if not 0 <= job.dev_fraction < 1:
    raise UserInputError('--dev-fraction must be in [0, 1)')
  if job.test_queries:
    check_parquet_input(job.test_queries, '--test-queries', {job.columns.query_id: 'id'})
  if job.negatives not in NEGATIVE_SAMPLING:
    raise UserInputError(
        f'--negatives {job.negatives!r} is not one of {", ".join(NEGATIVE_SAMPLING)}')
  if job.pseudo_queries and not job.bm25:
    raise UserInputError('--pseudo-queries needs BM25 candidates: drop --no-bm25')
  if '://' in job.output:
    raise UserInputError(
        f'--output {job.output!r}: the loop trains on this machine and needs a local folder')
  if os.path.isfile(job.output):
    raise UserInputError(f'--output {job.output!r} is a file, not a folder')
  evaluation.parse_measures(job.metrics.split(','))
  common.pipeline_options(job.pipeline_args, PROG)
  # Checks the train step would make, before minutes of encoding and mining.
  trainer.check_precision(job.training.precision)
  warm_start_teacher(job)
  if (job.training.eval_steps or job.training.early_stopping_patience) and job.dev_fraction == 0:
    raise UserInputError(
        '--eval-steps/--early-stopping-patience need a dev split: give --dev-fraction > 0')


def execute(job: LoopJobConfig) -> LoopResult:
  """Runs the loop; its report is also written as OUTPUT/loop_report.json."""
  common.quiet_libraries()
  started = time.perf_counter()
  _check(job)
  root = os.path.abspath(job.output.rstrip('/'))
  steps = 5 + len(job.kinds) + bool(job.bm25)
  step = iter(range(1, steps + 1))

  logger.info('[loop] step %d/%d: query splits', next(step), steps)
  split_info, splits = write_splits(job, os.path.join(root, 'splits'))
  files = split_info['files']
  sizes = {name: len(ids) for name, ids in splits.items()}
  logger.info('[loop] judged queries: train %d, dev %d, test %d',
              sizes['train'], sizes['dev'], sizes['test'])

  language = None
  if job.bm25:  # resolved once: every step stems as the first one does
    corpus = check_parquet_input(job.corpus, '--corpus', {job.columns.doc_text: 'string'})
    language = common.corpus_language(
        job.language.language, corpus.files, job.columns.doc_text, 'loop')
    job = dataclasses.replace(job, language=LanguageSettings(language.language))

  logger.info('[loop] step %d/%d: encode with the first-stage bi-encoder', next(step), steps)
  first_stage_model = job.bi_encoder  # None: the encode job's packaged default
  base = _encode(job, first_stage_model, os.path.join(root, 'embeddings', 'base'),
                 {'queries_eval': files['queries_eval'],
                  'queries_tune': files['queries_tune']})

  logger.info('[loop] step %d/%d: mine train+dev queries', next(step), steps)
  pairs_dir = os.path.join(root, 'pairs')
  mined = _mine(job, files, base, pairs_dir, split_info['mine_dev_fraction'])
  mined_queries = check_mined_splits(pairs_dir, splits)

  models, trained, runs, embedding_dirs = {}, {}, {}, {'base': base}
  rerank_dir = os.path.join(root, 'rerank')
  first_stage_tuning, first_stage_weights = None, None
  if job.bm25:
    logger.info('[loop] step %d/%d: tune the first stage (dense + BM25) on the train and dev '
                'queries', next(step), steps)
    first_stage_tuning = _tune_first_stage(
        job, os.path.join(rerank_dir, 'first-stage-tuning'), base, files)
    first_stage_weights = first_stage_weights_text(first_stage_tuning.report)
    logger.info('[loop] first stage: %s (%s)', first_stage_weights,
                first_stage_decision(first_stage_tuning.report).get('reason'))
  teacher_bm25_weight = 0.0 if job.teacher_bm25_weight == AUTO else job.teacher_bm25_weight
  if job.teacher_bm25_weight == AUTO and first_stage_tuning and warm_start_teacher(job):
    teacher_bm25_weight = first_stage_bm25_share(first_stage_tuning.report)
    logger.info('[loop] warm-start targets: BM25 share %g (the first stage\'s)',
                teacher_bm25_weight)
  for kind in job.kinds:
    logger.info('[loop] step %d/%d: train the %s', next(step), steps, kind)
    models[kind] = os.path.join(root, 'models', kind)
    trained[kind] = _train(job, kind, pairs_dir, models[kind], teacher_bm25_weight)

  logger.info('[loop] step %d/%d: rerank and evaluate on the test queries', next(step), steps)
  # The cross-encoder reranks the best first stage the run has: the fine-tuned
  # bi-encoder's (+ BM25) when both are trained, as they would be deployed.
  ce_first_stage = base
  if 'bi-encoder' in job.kinds:
    ce_first_stage = _encode(job, models['bi-encoder'],
                             os.path.join(root, 'embeddings', 'bi-encoder'),
                             {'queries_eval': files['queries_eval']})
    embedding_dirs['bi-encoder'] = ce_first_stage
    runs['bi-encoder'] = _rerank(
        job, os.path.join(rerank_dir, 'bi-encoder'), rerank_job.NO_CROSS_ENCODER,
        ce_first_stage, files)
  if 'cross-encoder' in job.kinds:
    # Over the base first stage, its weights come from the train + dev tuning;
    # the fine-tuned bi-encoder's dense scores were fit to the train queries.
    runs['cross-encoder'] = _rerank(
        job, os.path.join(rerank_dir, 'cross-encoder'), models['cross-encoder'],
        ce_first_stage, files,
        first_stage_weights if ce_first_stage is base else None)
  if 'cross-encoder' in job.kinds and 'bi-encoder' not in job.kinds:
    runs['base'] = runs['cross-encoder']
  else:
    runs['base'] = _rerank(
        job, os.path.join(rerank_dir, 'first-stage'), rerank_job.NO_CROSS_ENCODER, base,
        files, first_stage_weights)
  for result in [*runs.values(), *([first_stage_tuning] if first_stage_tuning else [])]:
    check_tuning(result, splits)

  logger.info('[loop] step %d/%d: report', next(step), steps)
  table = metrics_table(runs)
  evaluated = runs['base'].report['evaluation']['queries_evaluated']
  report = {
      'job': 'loop',
      'output': root,
      'kind': job.kind,
      'language': language.as_dict() if language else None,
      'splits': {
          **sizes, 'rule': EXPLICIT_TEST_RULE if job.test_queries else SPLIT_RULE,
          'test_fraction': None if job.test_queries else job.test_fraction,
          'dev_fraction': job.dev_fraction,
          'test_queries': job.test_queries,
          'mine_dev_fraction': split_info['mine_dev_fraction'],
          'judged_not_in_queries': split_info['judged_not_in_queries'],
          'test_queries_check': split_info['test_queries_check'],
          'files': files,
      },
      'mined': {'rows': mined.rows, 'queries': mined_queries,
                'pseudo_queries': mined.report.get('pseudo_queries')},
      'training': {kind: {
          'steps': result.steps, 'train_rows': result.train_rows,
          'dev_rows': result.report.get('dev_rows'),
          'best_dev_score': result.report.get('best_dev_score'),
          'dev_metric': result.report.get('dev_metric'),
          'train_loss': result.train_loss, 'train_seconds': result.train_seconds,
          'warm_start': trainer.warm_start_summary(result.report),
      } for kind, result in trained.items()},
      'fusion': {name: result.report.get('fusion') for name, result in runs.items()
                 if name != 'base' or result is not runs.get('cross-encoder')},
      'first_stage_tuning': (first_stage_tuning.report.get('fusion')
                             if first_stage_tuning else None),
      'test_queries_evaluated': evaluated,
      'table': table,
      'table_labels': row_labels(table),
      'steps': {
          'splits': os.path.join(root, 'splits'),
          'embeddings': embedding_dirs,
          'mine': pairs_dir,
          'train': models,
          'rerank': {name: result.output_dir for name, result in runs.items()},
          'first_stage_tuning': first_stage_tuning.output_dir if first_stage_tuning else None,
      },
      'models': {'first_stage': first_stage_model, 'base_model': job.base_model},
      'wall_seconds': time.perf_counter() - started,
  }
  write_json(report, os.path.join(root, REPORT_NAME))
  print(format_table(table, (
      f'loop: {evaluated:,} test queries (never mined, trained or tuned on); '
      f'train {sizes["train"]:,} / dev {sizes["dev"]:,} / test {sizes["test"]:,}')))
  for label, decision in fusion_reasons(report).items():
    print(f'  {label}: {decision}')
  depth = candidate_depth_note(
      [m for values in table.values() for m in values], job.rerank_top_k, job.bm25)
  if depth:
    print(f'  {depth}')
  print(f'  written: {os.path.join(root, REPORT_NAME)}')
  return LoopResult(output_dir=root, splits=sizes, table=table, report=report)
