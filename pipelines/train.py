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
import sys
from typing import Sequence

from pipelines import common
from pipelines.jobs.train import (
  PROG,
  TrainJobConfig,
  execute,
)
from transforms.training.trainer import (
  DEV_METRIC,
  PRECISIONS,
)


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


def parse_config(argv: Sequence[str] | None = None) -> TrainJobConfig:
  """The command line -> the job's config."""
  return common.config_from_args(TrainJobConfig, build_parser().parse_args(argv))


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the job; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
