"""The ``rerank`` job: queries x corpus -> candidates -> cross-encoder -> ranked Parquet.

    beam-rerank rerank --queries q.parquet --corpus c.parquet --output out/ranked \\
        --cross-encoder CE_DIR --query-embeddings out/q_emb --corpus-embeddings out/c_emb
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from pipelines import common
from pipelines.jobs import default_cross_encoder
from pipelines.jobs.rerank import (
  PROG,
  RerankJobConfig,
  execute,
)
from pipelines.steps.rerank import check_inputs
from transforms.core import settings
from transforms.core.texts import TextColumns
from transforms.io.parquet_sink import (
  DEFAULT_ROWS_PER_SHARD,
)
from transforms.models import inference_settings
from transforms.ranking import evaluation
from transforms.ranking.fusion import (
  AUTO,
  DEFAULT_RRF_K,
  METHODS,
)
from transforms.retrieval.dense import (
  DEFAULT_CORPUS_BLOCK_SIZE,
  DEFAULT_MAX_QUERIES_IN_MEMORY,
  DEFAULT_QUERY_BLOCK_SIZE,
)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description='Rank corpus passages for each query. Candidates come from exact '
      'dense top-k over embedding shards (--query-embeddings/--corpus-embeddings, or '
      '--model to encode first), exact BM25 top-k (--bm25), a supplied run '
      '(--candidates), or any of them (their union). The first stage fuses the '
      "sources' scores; a cross-encoder then scores every candidate and the final "
      'ranking fuses it with the first stage (--fusion; weights fixed or tuned on '
      '--tune-qrels, guarded).',
      epilog=common.BEAM_EPILOG)
  io = parser.add_argument_group('input and output')
  io.add_argument(
      '--queries', required=True, metavar='GLOB',
      help='Parquet queries (query_id, text).')
  io.add_argument(
      '--corpus', required=True, metavar='GLOB',
      help='Parquet corpus (doc_id, text[, title]).')
  io.add_argument(
      '--output', required=True, metavar='DIR',
      help='Folder for ranked part-*.parquet (top-n per query), candidates/ '
      '(every scored candidate), dead_letter/, manifest.json, report.json.')
  settings.add_arguments(io, TextColumns)
  io.add_argument(
      '--previous', metavar='DIR', default=None,
      help='A previous rerank output (may equal --output): a pair whose query text and '
      'passage text are unchanged reuses its cross-encoder score when the model '
      'fingerprint, max length, activation and backend match; every other pair is scored. '
      'Candidates are always recomputed.')
  io.add_argument(
      '--trec', action='store_true',
      help='Also write the ranked lists as a TREC run file, OUTPUT/run.trec.')
  io.add_argument(
      '--rows-per-shard', type=common.positive_int, default=DEFAULT_ROWS_PER_SHARD,
      help='(default: %(default)s)')
  common.add_dead_letter_limit_argument(io)

  cands = parser.add_argument_group('candidates')
  cands.add_argument(
      '--query-embeddings', metavar='DIR', default=None,
      help='Query embedding shards made by the encode job.')
  cands.add_argument(
      '--corpus-embeddings', metavar='DIR', default=None,
      help='Corpus embedding shards made by the encode job with the same model.')
  cands.add_argument(
      '--model', metavar='NAME_OR_PATH', default=None,
      help='Bi-encoder: encode queries and corpus first (into OUTPUT/embeddings/; a '
      're-run into the same output re-encodes only changed texts), then retrieve.')
  cands.add_argument(
      '--candidates', metavar='GLOB', default=None,
      help='Supplied candidates Parquet: query_id, doc_id[, score] (e.g. a BM25 run).')
  cands.add_argument(
      '--candidates-score-column', default='score',
      help='Score column of --candidates, if present (default: %(default)s).')
  common.add_bm25_arguments(cands)
  cands.add_argument(
      '--top-k', type=common.positive_int, default=100,
      help='Candidates per query from each source, dense and BM25 (default: %(default)s).')
  cands.add_argument(
      '--corpus-block-size', type=common.positive_int, default=DEFAULT_CORPUS_BLOCK_SIZE,
      help='Corpus rows per matrix product; the score matrix of one product is query '
      'block x this x 4 bytes (default: %(default)s).')
  cands.add_argument(
      '--query-block-size', type=common.positive_int, default=DEFAULT_QUERY_BLOCK_SIZE,
      help='Queries per matrix product (default: %(default)s).')
  cands.add_argument(
      '--max-queries-in-memory', type=common.positive_int,
      default=DEFAULT_MAX_QUERIES_IN_MEMORY,
      help='Query embeddings one worker holds as a side input; more queries are split '
      'into groups scored in separate branches (default: %(default)s).')

  scoring = parser.add_argument_group('cross-encoder')
  scoring.add_argument(
      '--cross-encoder', default=None, metavar='NAME_OR_PATH',
      help="sentence-transformers CrossEncoder directory or hub id (1 label); 'none' "
      'ranks by the fused first stage alone (hybrid retrieval, no model scoring). '
      'Default: a cross-encoder fine-tuned locally from the packaged all-MiniLM-L6-v2 '
      'on the sample collection (built once, cached; see its note).')
  scoring.add_argument(
      '--top-n', type=common.positive_int, default=10,
      help='Ranked rows kept per query (default: %(default)s).')
  scoring.add_argument(
      '--max-length', type=common.positive_int, default=None,
      help="Tokens per pair (default: the model's).")
  scoring.add_argument(
      '--activation', choices=['identity', 'sigmoid', 'model'], default='identity',
      help='Applied to the logit: identity = raw logits (right for BCE-trained '
      "models), sigmoid, or the model's own default (default: %(default)s).")
  inference_settings.add_arguments(parser, 'inference and batching (both models)')

  fusion_group = parser.add_argument_group(
      'fusion', 'The first stage fuses dense, BM25 and supplied scores into '
      'retrieval_score; the final ranking fuses that (signal "retrieval") with the '
      'cross-encoder ("ce"). Linear fusion min-max normalises each signal per query.')
  fusion_group.add_argument(
      '--fusion', choices=METHODS, default='linear',
      help='none: one signal per stage; linear: weighted sum of normalised scores; '
      'rrf: weighted reciprocal rank fusion (default: %(default)s).')
  fusion_group.add_argument(
      '--fusion-weights', default=AUTO, metavar='auto|SIGNAL=W,...',
      help="'auto' (tuned on --tune-qrels, guarded: unless the gain holds up in a paired "
      "test, a stage falls back to equal weights where they beat its best single signal on "
      'the tuning queries, else to that signal), or fixed, e.g. '
      "'dense=0.5,bm25=0.5,ce=1' (default: %(default)s).")
  fusion_group.add_argument(
      '--first-stage-weights', default=None, metavar='SIGNAL=W,...',
      help="With --fusion-weights auto: fix the first stage's weights (e.g. "
      "'dense=0.55,bm25=0.45', as tuned on more judged queries than the final stage may "
      'use) and tune only the final stage on --tune-qrels (default: both tuned).')
  fusion_group.add_argument(
      '--rrf-k', type=common.non_negative_float, default=DEFAULT_RRF_K,
      help='(default: %(default)s)')
  fusion_group.add_argument(
      '--tune-qrels', metavar='GLOB', default=None,
      help='Judgments of the tuning queries (also in --queries) for auto weights; '
      'they are left out of the reported metrics. Without it, auto ranks each stage '
      'by one signal: the cross-encoder, else dense, supplied, BM25.')

  evaluation_group = parser.add_argument_group('evaluation')
  evaluation_group.add_argument(
      '--qrels', metavar='GLOB', default=None,
      help='Evaluate against these judgments after ranking.')
  evaluation_group.add_argument(
      '--metrics', default=','.join(evaluation.DEFAULT_MEASURES),
      help='With --qrels (default: %(default)s).')
  return parser


def parse_config(argv: Sequence[str] | None = None) -> RerankJobConfig:
  """The command line -> the job's config (Beam's options kept for the run)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return common.config_from_args(RerankJobConfig, args, beam_args)


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv``, builds the default cross-encoder when
  none is given (once, cached), runs the job; returns its report."""
  common.configure_logging()
  job = parse_config(argv)
  if job.cross_encoder is None:
    # Every cheap check runs before the (minutes-long, once) build.
    check_inputs(job)
    job = dataclasses.replace(job, cross_encoder=default_cross_encoder.resolve())
  return execute(job).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
