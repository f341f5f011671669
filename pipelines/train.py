"""The ``train`` job: mined training pairs -> a fine-tuned model directory.

    beam-rerank train --pairs out/pairs --kind cross-encoder \\
        --base-model all-MiniLM-L6-v2 --output out/my-cross-encoder

Uses the sentence-transformers trainers: CrossEncoder + BinaryCrossEntropyLoss on
``labeled-pair`` rows, SentenceTransformer + MultipleNegativesRankingLoss on
``triplet``/``pair`` rows. One machine (CPU or GPU); not a Beam pipeline. The
output loads with ``CrossEncoder(path)``/``SentenceTransformer(path)`` and works as
the rerank job's ``--cross-encoder``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from pipelines import common
from transforms.errors import UserInputError
from transforms.model_info import check_weights_format, resolve_model_dir, resolve_model_name
from transforms.training import TrainConfig, train

PROG = 'beam-rerank train'


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
  parser.add_argument('--pairs', required=True, metavar='DIR', help='Output folder of the mine job.')
  parser.add_argument('--kind', required=True, choices=['cross-encoder', 'bi-encoder'])
  parser.add_argument(
      '--base-model', default=None, metavar='NAME_OR_PATH',
      help='Model to start from (default: the packaged all-MiniLM-L6-v2).')
  parser.add_argument('--output', required=True, metavar='DIR', help='Where the model goes (replaced at the end).')
  parser.add_argument('--format', default=None, help='Mined format to use (default: labeled-pair; bi-encoder: triplet, else pair).')
  parser.add_argument('--epochs', type=float, default=1.0, help='(default: %(default)s)')
  parser.add_argument('--max-steps', type=int, default=-1, help='Stop after N steps (default: off).')
  parser.add_argument('--batch-size', type=common.positive_int, default=16, help='(default: %(default)s)')
  parser.add_argument('--learning-rate', type=float, default=5e-5, help='(default: %(default)s; a new cross-encoder head needs more than 2e-5)')
  parser.add_argument('--warmup-ratio', type=float, default=0.1, help='(default: %(default)s)')
  parser.add_argument('--max-length', type=common.positive_int, default=None, help="Tokens per input (default: the model's).")
  parser.add_argument('--pos-weight', type=float, default=None, help='Cross-encoder: BCE weight of positives (e.g. #neg/#pos).')
  parser.add_argument('--seed', type=int, default=12, help='(default: %(default)s)')
  parser.add_argument('--trust-remote-code', action='store_true', help='Allow models that ship Python code.')
  parser.add_argument('--allow-pickle-weights', action='store_true', help='Allow models whose weights are only pickle files (.bin); off by default: unpickling can run code.')
  parser.add_argument('--no-progress', action='store_true', help='No progress bar.')
  return parser


def run(argv: Sequence[str] | None = None) -> dict:
  common.quiet_libraries()
  args = build_parser().parse_args(argv)
  if not os.path.isdir(args.pairs):
    raise UserInputError(f'--pairs {args.pairs!r} is not a folder')
  if args.learning_rate <= 0 or args.epochs <= 0:
    raise UserInputError('--learning-rate and --epochs must be positive')
  base = resolve_model_dir(resolve_model_name(args.base_model))
  check_weights_format(base, args.base_model or base, args.allow_pickle_weights)
  report = train(TrainConfig(
      pairs_dir=args.pairs, kind=args.kind, base_model=base, output_dir=args.output,
      pairs_format=args.format, epochs=args.epochs, batch_size=args.batch_size,
      learning_rate=args.learning_rate, warmup_ratio=args.warmup_ratio,
      max_length=args.max_length, pos_weight=args.pos_weight, seed=args.seed,
      max_steps=args.max_steps, trust_remote_code=args.trust_remote_code,
      show_progress=not args.no_progress))
  common.print_summary('train summary', [
      ('model', args.output),
      ('kind', report['kind']),
      ('format', report['format']),
      ('train rows', report['train_rows']),
      ('dev rows', report['dev_rows']),
      ('steps', report['steps']),
      ('train loss', report['train_loss']),
      *[(f'dev {k}', v) for k, v in report['dev_metrics'].items() if 'loss' in k],
      ('train time (s)', report['train_seconds']),
  ])
  return report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
