"""The train job: training pairs -> a fine-tuned CrossEncoder or bi-encoder."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from pipelines import common
from transforms.core.errors import UserInputError
from transforms.models.model_info import check_weights_format, resolve_model_dir, resolve_model_name
from transforms.training.trainer import (
  DEV_METRIC,
  TrainConfig,
  check_evaluation_settings,
  check_precision,
  check_teacher,
  train,
)

PROG = 'beam-rerank train'


@dataclasses.dataclass(frozen=True)
class TrainJobConfig:
  """The train job's options (the command line's, one field per option)."""
  pairs: str
  kind: str
  output: str
  base_model: Optional[str] = None
  format: Optional[str] = None
  epochs: float = 1.0
  max_steps: int = -1
  batch_size: int = 16
  learning_rate: float = 5e-5
  warmup_ratio: float = 0.1
  max_length: Optional[int] = None
  pos_weight: Optional[float] = None
  seed: int = 12
  trust_remote_code: bool = False
  allow_pickle_weights: bool = False
  no_progress: bool = False
  eval_steps: Optional[int] = None
  early_stopping_patience: Optional[int] = None
  no_dev: bool = False
  then_pairs: Optional[Sequence[str]] = None
  precision: str = 'fp32'
  distill_steps: int = 0
  teacher: Optional[str] = None
  teacher_bm25_weight: float = 0.0


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
  if job.learning_rate <= 0 or job.epochs <= 0:
    raise UserInputError('--learning-rate and --epochs must be positive')
  config = TrainConfig(
      pairs_dir=job.pairs, kind=job.kind, base_model='', output_dir=job.output,
      pairs_format=job.format, epochs=job.epochs, batch_size=job.batch_size,
      learning_rate=job.learning_rate, warmup_ratio=job.warmup_ratio,
      max_length=job.max_length, pos_weight=job.pos_weight, seed=job.seed,
      max_steps=job.max_steps, trust_remote_code=job.trust_remote_code,
      show_progress=not job.no_progress, then_pairs=tuple(job.then_pairs or ()),
      dev=not job.no_dev, eval_steps=job.eval_steps,
      early_stopping_patience=job.early_stopping_patience, precision=job.precision,
      distill_steps=job.distill_steps, teacher_bm25_weight=job.teacher_bm25_weight)
  check_precision(config.precision)  # before any model is loaded
  check_evaluation_settings(config)
  if job.teacher and job.kind != 'cross-encoder':
    raise UserInputError('--teacher warms up a cross-encoder; a bi-encoder needs none')
  if job.teacher and not job.distill_steps:
    raise UserInputError('--teacher is the bi-encoder of --distill-steps: add --distill-steps N')
  if job.teacher_bm25_weight and not job.distill_steps:
    raise UserInputError('--teacher-bm25-weight blends the targets of --distill-steps: '
                         'add --distill-steps N')
  if job.teacher and job.teacher_bm25_weight >= 1:
    raise UserInputError('--teacher-bm25-weight 1 warms up on BM25 alone: drop --teacher')
  base = resolve_model_dir(resolve_model_name(job.base_model))
  check_weights_format(base, job.base_model or base, job.allow_pickle_weights)
  teacher = None
  if job.distill_steps and job.teacher_bm25_weight < 1:
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
