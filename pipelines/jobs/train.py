"""The train job: training pairs -> a fine-tuned CrossEncoder or bi-encoder."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from pipelines import common
from transforms.core.errors import UserInputError
from transforms.core.settings import REQUIRED, fraction, group, setting
from transforms.models.inference_settings import (
    allow_pickle_weights_setting,
    trust_remote_code_setting,
)
from transforms.models.model_info import check_weights_format, resolve_model_dir, resolve_model_name
from transforms.training.trainer import (
  DEV_METRIC,
  TrainConfig,
  TrainingSettings,
  check_evaluation_settings,
  check_precision,
  check_teacher,
  train,
)

PROG = 'beam-rerank train'


@dataclasses.dataclass(frozen=True)
class TrainJobConfig:
  """The train job's options (the command line's, one field per option)."""
  pairs: str = setting(
      REQUIRED, 'Output folder of the mine job.', metavar='DIR')
  kind: str = setting(
      REQUIRED, '', choices=['cross-encoder', 'bi-encoder'])
  output: str = setting(
      REQUIRED, 'Where the model goes (replaced at the end).', metavar='DIR')
  base_model: Optional[str] = setting(
      None, 'Model to start from (default: the packaged all-MiniLM-L6-v2).', metavar='NAME_OR_PATH')
  format: Optional[str] = setting(
      None, 'Mined format to use (default: labeled-pair; bi-encoder: triplet, else pair).')
  training: TrainingSettings = group(TrainingSettings())
  pos_weight: Optional[float] = setting(
      None, 'Cross-encoder: BCE weight of positives (e.g. #neg/#pos).', type=float)
  trust_remote_code: bool = trust_remote_code_setting()
  allow_pickle_weights: bool = allow_pickle_weights_setting()
  no_dev: bool = setting(
      False, 'Ignore the dev split: no evaluation, the last step is the model.',
      group='dev split, checkpoint selection and curriculum')
  then_pairs: Optional[Sequence[str]] = setting(
      None, 'Curriculum: after --pairs, continue training the same model on this mine output '
      '(e.g. --pairs EASY --then-pairs HARD); repeatable, in order; --epochs/--max-steps '
      'apply to each phase. With a dev split, the best checkpoint of all phases is kept '
      '(dev queries of all phases together).', metavar='DIR', action='append',
      group='dev split, checkpoint selection and curriculum')
  teacher: Optional[str] = setting(
      None, 'The bi-encoder of --distill-steps (default: --base-model, when it is one).',
      metavar='NAME_OR_PATH', group='cross-encoder warm start')
  teacher_bm25_weight: float = setting(
      0.0, 'Blend BM25 into the warm-start targets: (1 - W) x the teacher\'s standardised '
      'cosine + W x the standardised BM25 score of the pair (BM25 statistics over the '
      'sampled documents, the score divided by the query\'s idf mass), as a dense + BM25 '
      'first stage ranks; 1: BM25 alone, no teacher model (default: %(default)s).',
      type=fraction, metavar='W', group='cross-encoder warm start')


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a train run did; ``report`` is its training report."""
  output_dir: str
  train_rows: int
  steps: int
  train_loss: float
  train_seconds: float
  report: dict


def _teacher_text(warm: dict) -> str:
  weight = warm.get('teacher_bm25_weight') or 0
  if weight >= 1:
    return 'BM25'
  return warm['teacher'] + (f' + BM25 ({weight:g})' if weight else '')


def execute(job: TrainJobConfig) -> TrainResult:
  """Fine-tunes ``job.base_model`` on the mined pairs into ``job.output``."""
  common.quiet_libraries()
  if job.kind not in ('cross-encoder', 'bi-encoder'):
    raise UserInputError(f'--kind {job.kind!r} is not cross-encoder or bi-encoder')
  for option, folder in [('--pairs', job.pairs)] + [
      ('--then-pairs', d) for d in job.then_pairs or ()]:
    if not os.path.isdir(folder):
      raise UserInputError(f'{option} {folder!r} is not a folder')
  training = job.training
  if training.learning_rate <= 0 or training.epochs <= 0:
    raise UserInputError('--learning-rate and --epochs must be positive')
  config = TrainConfig(
      pairs_dir=job.pairs, kind=job.kind, base_model='', output_dir=job.output,
      pairs_format=job.format, epochs=training.epochs, batch_size=training.batch_size,
      learning_rate=training.learning_rate, warmup_ratio=training.warmup_ratio,
      max_length=training.max_length, pos_weight=job.pos_weight, seed=training.seed,
      max_steps=training.max_steps, trust_remote_code=job.trust_remote_code,
      show_progress=not training.no_progress, then_pairs=tuple(job.then_pairs or ()),
      dev=not job.no_dev, eval_steps=training.eval_steps,
      early_stopping_patience=training.early_stopping_patience,
      precision=training.precision, distill_steps=training.distill_steps,
      teacher_bm25_weight=job.teacher_bm25_weight)
  check_precision(config.precision)  # before any model is loaded
  check_evaluation_settings(config)
  if job.teacher and job.kind != 'cross-encoder':
    raise UserInputError('--teacher warms up a cross-encoder; a bi-encoder needs none')
  if job.teacher and not training.distill_steps:
    raise UserInputError('--teacher is the bi-encoder of --distill-steps: add --distill-steps N')
  if job.teacher_bm25_weight and not training.distill_steps:
    raise UserInputError('--teacher-bm25-weight blends the targets of --distill-steps: '
                         'add --distill-steps N')
  if job.teacher and job.teacher_bm25_weight >= 1:
    raise UserInputError('--teacher-bm25-weight 1 warms up on BM25 alone: drop --teacher')
  base = resolve_model_dir(resolve_model_name(job.base_model))
  check_weights_format(base, job.base_model or base, job.allow_pickle_weights)
  teacher = None
  if training.distill_steps and job.teacher_bm25_weight < 1:
    teacher = resolve_model_dir(resolve_model_name(job.teacher)) if job.teacher else base
    named = job.teacher or job.base_model or teacher
    check_weights_format(teacher, named, job.allow_pickle_weights)
    check_teacher(teacher, named, 'name a bi-encoder with --teacher' if job.teacher else
                  'the teacher defaults to --base-model: name a bi-encoder with --teacher')
  report = train(dataclasses.replace(config, base_model=base, teacher_model=teacher))
  warm = report.get('warm_start')
  warm_loss = f"{warm['loss']:.4f}" if warm and warm['loss'] is not None else 'n/a'
  warm_line = (f"{warm['steps']} steps on the similarities of {_teacher_text(warm)}, loss "
               f'{warm_loss}' + (f", dev {DEV_METRIC} {warm['dev_score']:.4f}"
                                 if warm and warm.get('dev_score') is not None else '')
               if warm else None)
  best = report['best_dev_score']
  common.print_summary('train summary', [
      ('model', job.output),
      ('kind', report['kind']),
      ('format', report['format']),
      ('train rows', report['train_rows']),
      ('dev rows', report['dev_rows']),
      *([('warm start', warm_line)] if warm_line else []),
      ('steps', report['steps']),
      *[(f'phase {i}', f"{p['pairs']} ({p['format']}), steps {p['first_step']}-{p['last_step']}")
        for i, p in enumerate(report['phases'], 1) if len(report['phases']) > 1],
      ('train loss', report['train_loss']),
      *[(f'dev {k}', v) for k, v in report['dev_metrics'].items() if 'loss' in k],
      *([(f'best dev {report["dev_metric"]}', f'{best:.4f} at step {report["best_step"]}')]
        if best is not None else []),
      *([('stopped early', 'yes')] if report['early_stopped'] else []),
      ('train time (s)', report['train_seconds']),
  ])
  return TrainResult(
      output_dir=job.output, train_rows=report['train_rows'], steps=report['steps'],
      train_loss=report['train_loss'], train_seconds=report['train_seconds'], report=report)
