"""The ``loop`` job: mine -> train -> rerank with guarded fusion -> evaluate, in one command.

    beam-rerank loop --queries q.parquet --corpus c.parquet --qrels qrels.parquet \\
        --output out/loop --base-model BASE --kind both --pseudo-queries title,sentence

The judged queries are split by a stable hash of their ids into train, dev and
test (``--test-fraction``, or the ``--test-queries`` given, then ``--dev-fraction``
of the rest); the split judgments go to OUTPUT/splits/. Test queries are never
mined, trained or tuned on. Each step is another job's ``execute``: encode (the
first-stage bi-encoder), mine (train+dev judgments, dense + BM25 candidates,
optional pseudo-queries, negatives at random from the top-k by default; the
mined dev split is exactly the dev queries), train (a cross-encoder on labeled
pairs, warmed up first on the base first-stage bi-encoder's similarities of
them, and/or a bi-encoder with MNRL on triplets or pairs, the best dev
checkpoint kept), rerank of the dev and test queries (fusion weights ``auto``,
tuned on the dev judgments, which the models never trained on; guarded; with
both models the cross-encoder reranks the fine-tuned bi-encoder's first stage)
and its evaluation on the test queries. One table compares the first stage,
each signal alone, the fine-tuned models and the final ranking;
OUTPUT/loop_report.json holds every figure, the split sizes and each step's
folder.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipelines import common
from pipelines.jobs.loop import (
  DEFAULT_DISTILL_STEPS,
  KINDS,
  NEGATIVE_SAMPLING,
  PROG,
  REPORT_NAME,
  LoopJobConfig,
  execute,
)
from transforms.core import settings
from transforms.core.texts import TextColumns
from transforms.models import inference_settings
from transforms.ranking import evaluation
from transforms.training.trainer import PRECISIONS


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description='The whole loop on judged queries: split them into train/dev/test '
      '(by id hash, never leaking), mine training pairs from train+dev, fine-tune a '
      'cross-encoder and/or a bi-encoder, rerank with fusion tuned on the dev split, and '
      'print one table of test-query metrics: first stage, each signal alone, the '
      'fine-tuned models, final.',
      epilog=common.BEAM_EPILOG)
  io_group = parser.add_argument_group('input and output')
  io_group.add_argument(
      '--queries', required=True, metavar='GLOB', help='Parquet queries (query_id, text).')
  io_group.add_argument(
      '--corpus', required=True, metavar='GLOB', help='Parquet corpus (doc_id, text[, title]).')
  io_group.add_argument(
      '--qrels', required=True, metavar='GLOB',
      help='Parquet judgments: query_id, doc_id, relevance (int; >= 1 relevant).')
  io_group.add_argument(
      '--output', required=True, metavar='DIR',
      help='A local folder: splits/, embeddings/, pairs/, models/, rerank/, '
      f'{REPORT_NAME}.')
  settings.add_arguments(io_group, TextColumns)

  splits = parser.add_argument_group('query splits (by a stable hash of the query id)')
  splits.add_argument(
      '--test-fraction', type=common.fraction, default=0.5,
      help='Share of the judged queries held out for the test metrics (default: '
      '%(default)s).')
  splits.add_argument(
      '--test-queries', default=None, metavar='GLOB',
      help='Parquet whose --query-id-column lists the test queries (a held-out set of '
      'your own; default: --test-fraction by hash). Dev and train split the other judged '
      'queries by hash.')
  splits.add_argument(
      '--dev-fraction', type=common.fraction, default=0.2,
      help='Share of the other judged queries used to pick the training checkpoint and '
      'tune the final fusion; raised to hold 20 queries (the fusion guard\'s minimum) '
      'when the hash gives fewer and 40 or more are not test (default: %(default)s; '
      '0: no dev split).')

  models = parser.add_argument_group('models')
  models.add_argument(
      '--kind', choices=KINDS, default='cross-encoder',
      help='What to fine-tune (default: %(default)s).')
  models.add_argument(
      '--base-model', default=None, metavar='NAME_OR_PATH',
      help='The cross-encoder starts from it (a CrossEncoder, or any transformer: a new '
      'head); default: the packaged all-MiniLM-L6-v2.')
  models.add_argument(
      '--bi-encoder', default=None, metavar='NAME_OR_PATH',
      help='The first-stage sentence-transformers bi-encoder, and where --kind '
      'bi-encoder starts from (default: the packaged all-MiniLM-L6-v2; never --base-model, '
      'which may be a cross-encoder).')

  candidates = parser.add_argument_group('candidates and mining')
  candidates.add_argument(
      '--bm25', action=argparse.BooleanOptionalAction, default=True,
      help='BM25 candidates next to dense ones, in mining and reranking (default: on).')
  candidates.add_argument(
      '--top-k', type=common.positive_int, default=100,
      help='Candidates per query from each source that mining draws negatives from '
      '(default: %(default)s).')
  candidates.add_argument(
      '--rerank-top-k', type=common.positive_int, default=20, metavar='N',
      help='Candidates per query from each source that the fine-tuned cross-encoder '
      'reranks on the dev and test queries (default: %(default)s; mining draws negatives '
      'from --top-k).')
  candidates.add_argument(
      '--top-n', type=common.positive_int, default=10,
      help='Ranked rows kept per query (default: %(default)s).')
  candidates.add_argument(
      '--pseudo-queries', type=common.pseudo_sources, default=(), metavar='SOURCES',
      help='Also mine pseudo-queries made from the corpus (title,sentence; needs BM25) '
      '(default: none).')
  candidates.add_argument(
      '--pseudo-max-docs', type=common.positive_int, default=None, metavar='N',
      help='Pseudo-queries from at most N documents (default: all).')
  candidates.add_argument(
      '--num-negatives', type=common.positive_int, default=4,
      help='Negatives per mined query (default: %(default)s).')
  candidates.add_argument(
      '--negatives', choices=NEGATIVE_SAMPLING, default='random',
      help='random: drawn at random from each query\'s top-k candidates (easy ones, '
      'mostly; what a model trained from a bi-encoder base learns from in a short CPU run); '
      'top: its highest-ranked non-positives (hard ones; more false negatives where '
      'judgments are sparse) (default: %(default)s).')
  candidates.add_argument(
      '--dev-negatives', type=common.positive_int, default=None, metavar='N',
      help="Negatives per dev query: its N best-ranked candidates, so the checkpoint is "
      'chosen on the hard lists a rerank sees (default: --rerank-top-k).')
  candidates.add_argument(
      '--bi-encoder-format', choices=('triplet', 'pair'), default='triplet',
      help='Mined rows the bi-encoder trains on with MNRL (default: %(default)s).')

  training = parser.add_argument_group('training')
  training.add_argument('--epochs', type=float, default=1.0, help='(default: %(default)s)')
  training.add_argument(
      '--max-steps', type=int, default=-1, help='Stop after N steps (default: off).')
  training.add_argument(
      '--batch-size', type=common.positive_int, default=16, help='(default: %(default)s)')
  training.add_argument(
      '--learning-rate', type=float, default=5e-5, help='(default: %(default)s)')
  training.add_argument(
      '--max-length', type=common.positive_int, default=None,
      help="Tokens per input, in training and reranking (default: the model's).")
  training.add_argument(
      '--distill-steps', type=common.non_negative_int, default=DEFAULT_DISTILL_STEPS,
      metavar='N',
      help='Cross-encoder warm start: N steps learning the --bi-encoder\'s similarities of '
      'the training pairs before the labels (train --distill-steps; the base bi-encoder, also '
      'with --kind both); skipped when --base-model is already a cross-encoder (default: '
      '%(default)s; 0: off).')
  training.add_argument(
      '--teacher-bm25-weight', type=common.bm25_weight, default=0.0, metavar='W',
      help='The share of BM25 in the warm-start targets (train --teacher-bm25-weight). '
      '"auto": the first stage\'s own choice, made on the dev queries before training: '
      'its BM25 weight when it fuses dense + BM25, 1 when it falls back to BM25, 0 when '
      'to dense (default: %(default)s).')
  training.add_argument(
      '--eval-steps', type=common.positive_int, default=None, metavar='N',
      help='Score dev nDCG@10 every N steps (default: once per epoch).')
  training.add_argument(
      '--early-stopping-patience', type=common.positive_int, default=None, metavar='N',
      help='Stop after N evaluations without a better dev score (default: off).')
  training.add_argument(
      '--train-precision', choices=PRECISIONS, default='fp32',
      help='Mixed precision of training: fp16/bf16 on a CUDA GPU, bf16 on a CPU with '
      'native bfloat16 (AVX512-BF16/AMX) (default: %(default)s).')
  training.add_argument(
      '--seed', type=int, default=12, help='Mining and training (default: %(default)s).')
  training.add_argument('--no-progress', action='store_true', help='No progress bars.')

  parser.add_argument(
      '--metrics', default=','.join(evaluation.DEFAULT_MEASURES),
      help='Comma-separated ir-measures names (default: %(default)s).')
  inference_settings.add_arguments(parser, 'inference and batching (encode and rerank)')
  return parser


def parse_config(argv: Sequence[str] | None = None) -> LoopJobConfig:
  """The command line -> the job's config (Beam's options kept for the runs)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return common.config_from_args(LoopJobConfig, args, beam_args)


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the loop; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
