"""The ``train`` job: mined training pairs -> a fine-tuned model directory.

    beam-rerank train --pairs out/pairs --kind cross-encoder \\
        --base-model all-MiniLM-L6-v2 --output out/my-cross-encoder \\
        --eval-steps 200 --early-stopping-patience 3

Uses the sentence-transformers trainers: CrossEncoder + BinaryCrossEntropyLoss on
``labeled-pair`` rows, SentenceTransformer + MultipleNegativesRankingLoss on
``triplet``/``pair`` rows. With a mined dev split, nDCG@10 on the dev queries
(CrossEncoderRerankingEvaluator / InformationRetrievalEvaluator) is scored every
``--eval-steps`` (else once per epoch); the output is the best checkpoint, and
training can stop early. ``--then-pairs`` continues on further mined folders (a
curriculum: easy negatives first, then hard). ``--distill-steps N`` first warms a
cross-encoder up on a bi-encoder's similarities of the pairs (MSELoss). One
machine (CPU or GPU; fp16/bf16 on a GPU, bf16 on a CPU that has it); not a Beam
pipeline. The output loads with
``CrossEncoder(path)``/``SentenceTransformer(path)``, works as the rerank job's
``--cross-encoder``, and holds training_report.json and training_curve.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Optional, Sequence

from pipelines import common
from transforms.core.errors import UserInputError
from transforms.models.model_info import check_weights_format, resolve_model_dir, resolve_model_name
from transforms.training.trainer import (
    DEV_METRIC,
    PRECISIONS,
    TrainConfig,
    check_evaluation_settings,
    check_precision,
    check_teacher,
    train,
)

PROG = 'beam-rerank train'


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
  parser.add_argument(
      '--pairs', required=True, metavar='DIR',
      help='Output folder of the mine job.')
  parser.add_argument('--kind', required=True, choices=['cross-encoder', 'bi-encoder'])
  parser.add_argument(
      '--base-model', default=None, metavar='NAME_OR_PATH',
      help='Model to start from (default: the packaged all-MiniLM-L6-v2).')
  parser.add_argument(
      '--output', required=True, metavar='DIR',
      help='Where the model goes (replaced at the end).')
  parser.add_argument(
      '--format', default=None,
      help='Mined format to use (default: labeled-pair; bi-encoder: triplet, else pair).')
  parser.add_argument('--epochs', type=float, default=1.0, help='(default: %(default)s)')
  parser.add_argument(
      '--max-steps', type=int, default=-1,
      help='Stop after N steps (default: off).')
  parser.add_argument(
      '--batch-size', type=common.positive_int, default=16,
      help='(default: %(default)s)')
  parser.add_argument(
      '--learning-rate', type=float, default=5e-5,
      help='(default: %(default)s; a new cross-encoder head needs more than 2e-5)')
  parser.add_argument(
      '--warmup-ratio', type=common.fraction, default=0.1,
      help='Share of the steps over which the learning rate rises (default: %(default)s).')
  parser.add_argument(
      '--max-length', type=common.positive_int, default=None,
      help="Tokens per input (default: the model's).")
  parser.add_argument(
      '--pos-weight', type=float, default=None,
      help='Cross-encoder: BCE weight of positives (e.g. #neg/#pos).')
  parser.add_argument('--seed', type=int, default=12, help='(default: %(default)s)')
  parser.add_argument(
      '--trust-remote-code', action='store_true',
      help='Allow models that ship Python code.')
  parser.add_argument(
      '--allow-pickle-weights', action='store_true',
      help='Allow models whose weights are only pickle files (.bin); off by default: unpickling '
      'can run code.')
  dev = parser.add_argument_group('dev split, checkpoint selection and curriculum')
  dev.add_argument(
      '--eval-steps', type=common.positive_int, default=None, metavar='N',
      help=f'Score dev {DEV_METRIC} every N steps and keep the best checkpoint (default: '
      'once per epoch). Needs a dev split (mine --dev-fraction).')
  dev.add_argument(
      '--early-stopping-patience', type=common.positive_int, default=None, metavar='N',
      help=f'Stop after N evaluations without a better dev {DEV_METRIC} (default: off).')
  dev.add_argument(
      '--no-dev', action='store_true',
      help='Ignore the dev split: no evaluation, the last step is the model.')
  dev.add_argument(
      '--then-pairs', action='append', default=None, metavar='DIR',
      help='Curriculum: after --pairs, continue training the same model on this mine output '
      '(e.g. --pairs EASY --then-pairs HARD); repeatable, in order; --epochs/--max-steps '
      'apply to each phase. With a dev split, the best checkpoint of all phases is kept '
      '(dev queries of all phases together).')
  warm = parser.add_argument_group('cross-encoder warm start')
  warm.add_argument(
      '--distill-steps', type=common.non_negative_int, default=0, metavar='N',
      help='First train N steps to reproduce a bi-encoder\'s cosine similarities of the '
      '--pairs training pairs (MSELoss on standardised scores), then on the labels; the warmed '
      'model is a dev candidate too (step 0). A head freshly put on a bi-encoder otherwise '
      'sits at the class prior for hundreds of steps (default: %(default)s = off).')
  warm.add_argument(
      '--teacher', default=None, metavar='NAME_OR_PATH',
      help='The bi-encoder of --distill-steps (default: --base-model, when it is one).')
  warm.add_argument(
      '--teacher-bm25-weight', type=common.fraction, default=0.0, metavar='W',
      help='Blend BM25 into the warm-start targets: (1 - W) x the teacher\'s standardised '
      'cosine + W x the standardised BM25 score of the pair (BM25 statistics over the '
      'sampled documents, the score divided by the query\'s idf mass), as a dense + BM25 '
      'first stage ranks; 1: BM25 alone, no teacher model (default: %(default)s).')
  parser.add_argument(
      '--precision', choices=PRECISIONS, default='fp32',
      help='Mixed precision: fp16 or bf16 on a CUDA GPU, or bf16 on a CPU with native '
      'bfloat16 (AVX512-BF16 or AMX: about 1.6x the fp32 step rate there) (default: '
      '%(default)s; refused where the machine cannot).')
  parser.add_argument('--no-progress', action='store_true', help='No progress bar.')
  return parser


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


def parse_config(argv: Sequence[str] | None = None) -> TrainJobConfig:
  """The command line -> the job's config."""
  return common.config_from_args(TrainJobConfig, build_parser().parse_args(argv))


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


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the job; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
