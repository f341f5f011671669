"""The ``mine`` job: ranked or retrieved candidates + labels -> training pairs.

    beam-rerank mine --ranked out/ranked --queries q.parquet --corpus c.parquet \\
        --qrels qrels.parquet --output out/pairs --format labeled-pair,pair

Without judgments, pseudo-queries made from the corpus (titles, sentences)::

    beam-rerank mine --bm25 --corpus c.parquet --pseudo-queries title,sentence \\
        --range-min 5 --output out/pairs
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipelines import common
from pipelines.jobs.mine import (
  MINE_FUSION_WEIGHTS,
  PROG,
  MineJobConfig,
  execute,
)
from transforms.core import settings
from transforms.core.texts import TextColumns
from transforms.io.parquet_sink import (
  DEFAULT_ROWS_PER_SHARD,
)
from transforms.retrieval.dense import DEFAULT_MAX_QUERIES_IN_MEMORY
from transforms.training.mining import FORMATS
from transforms.training.pseudo_queries import (
  PSEUDO_SOURCES,
)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description='Mine training pairs: positives from qrels (or a positives table, '
      'or cross-encoder score thresholds), hard negatives from ranked/retrieved '
      'candidates with the guards of sentence-transformers mine_hard_negatives; one '
      'folder per format, train/dev split by query id, ready for the '
      'sentence-transformers trainers (ids in aligned *-ids folders).',
      epilog=common.BEAM_EPILOG)
  io = parser.add_argument_group('input and output')
  io.add_argument(
      '--ranked', metavar='DIR', default=None,
      help='Output of the rerank job (its candidates/ with cross-encoder scores).')
  io.add_argument(
      '--candidates', metavar='GLOB', default=None,
      help='Candidates Parquet: query_id, doc_id[, score][, retrieval_rank].')
  io.add_argument(
      '--query-embeddings', metavar='DIR', default=None,
      help='With --corpus-embeddings: retrieve dense candidates here.')
  io.add_argument('--corpus-embeddings', metavar='DIR', default=None)
  io.add_argument(
      '--top-k', type=common.positive_int, default=100,
      help='Dense (and BM25) candidates per query (default: %(default)s).')
  common.add_bm25_arguments(io)
  io.add_argument(
      '--fusion', choices=('linear', 'rrf'), default='linear',
      help='With dense and --bm25 together: how their scores are fused into one '
      'retrieval order, as rerank fuses its first stage (default: %(default)s). For '
      "weights tuned on judgments, run rerank --cross-encoder none and mine its --ranked.")
  io.add_argument(
      '--fusion-weights', default=MINE_FUSION_WEIGHTS,
      help='Fixed weights of dense and bm25 (default: %(default)s).')
  io.add_argument(
      '--max-queries-in-memory', type=common.positive_int,
      default=DEFAULT_MAX_QUERIES_IN_MEMORY,
      help='Dense: query embeddings one worker holds; more are split into groups '
      '(default: %(default)s).')
  io.add_argument(
      '--queries', metavar='GLOB', default=None,
      help='Parquet queries (query_id, text); optional with --pseudo-queries.')
  io.add_argument(
      '--corpus', required=True, metavar='GLOB',
      help='Parquet corpus (doc_id, text[, title]).')
  io.add_argument(
      '--output', required=True, metavar='DIR',
      help='Folder: FORMAT/train, FORMAT/dev, FORMAT/train-ids, ..., manifest.json, report.json.')
  settings.add_arguments(io, TextColumns)
  io.add_argument(
      '--rows-per-shard', type=common.positive_int, default=DEFAULT_ROWS_PER_SHARD)
  common.add_dead_letter_limit_argument(io)

  labels = parser.add_argument_group('labels')
  labels.add_argument(
      '--qrels', metavar='GLOB', default=None,
      help='query_id, doc_id, relevance: positives are relevance >= --min-relevance.')
  labels.add_argument('--min-relevance', type=int, default=1, help='(default: %(default)s)')
  labels.add_argument(
      '--positives', metavar='GLOB', default=None,
      help='A positives table: query_id, doc_id (every row a positive).')
  labels.add_argument(
      '--positive-threshold', type=float, default=None,
      help='No qrels: candidates scoring >= this are pseudo-positives (marked as such in the '
      'manifest).')
  labels.add_argument(
      '--negative-threshold', type=float, default=None,
      help='No qrels: only candidates scoring <= this may be negatives.')

  pseudo = parser.add_argument_group(
      'pseudo-queries (no judgments needed)',
      'Queries made from the corpus: a title -> its text without the title; a sentence '
      '-> the rest of its document (the inverse cloze task). The positive is the source '
      'document, shown without the query part; title queries\' negatives are shown '
      'without their titles too. Negatives come from BM25 (--bm25; with dense embeddings '
      'too, pseudo-queries still get BM25 candidates only): hard ones past --range-min, '
      'easy ones with --sampling random from a wide --top-k. With --queries and '
      '--qrels/--positives they mix with judged queries; without, they are the only '
      'queries. Ids title:DOC_ID and sentence:DOC_ID:N; the *-ids folders get a source '
      'column (qrels, positives, title, sentence).')
  pseudo.add_argument(
      '--pseudo-queries', dest='sources', type=common.pseudo_sources, default=(),
      metavar='SOURCES',
      help=f'Comma-separated, of {",".join(PSEUDO_SOURCES)} (default: none).')
  pseudo.add_argument(
      '--pseudo-per-doc', dest='per_doc', type=common.positive_int, default=1, metavar='N',
      help='Sentence queries per document, at most (default: %(default)s).')
  pseudo.add_argument(
      '--pseudo-min-chars', dest='min_chars', type=common.positive_int, default=20,
      metavar='N',
      help='The least characters of a pseudo-query and of its positive text '
      '(default: %(default)s).')
  pseudo.add_argument(
      '--pseudo-max-docs', dest='max_docs', type=common.positive_int, default=None,
      metavar='N',
      help='Make pseudo-queries from at most N documents, a sample by --seed '
      '(default: all).')
  pseudo.add_argument(
      '--pseudo-title-column', dest='title_column', default=None, metavar='COLUMN',
      help="The corpus's title column (default: --doc-title-column, else 'title' when "
      'the corpus has it). Title queries need it; sentence queries use it to never '
      'take the leading title for a sentence.')

  guards = parser.add_argument_group(
      'negatives (sentence-transformers mine_hard_negatives semantics)')
  guards.add_argument(
      '--format', default='labeled-pair,pair',
      help=f'Comma-separated, of {",".join(FORMATS)} (default: %(default)s).')
  guards.add_argument(
      '--num-negatives', type=common.positive_int, default=3,
      help='(default: %(default)s)')
  guards.add_argument(
      '--range-min', type=int, default=0,
      help='Skip the best N candidates (after the other guards) (default: %(default)s).')
  guards.add_argument(
      '--range-max', type=common.positive_int, default=None,
      help='Consider only the first N candidates in retrieval order (plus one per positive).')
  guards.add_argument(
      '--max-score', type=float, default=None,
      help='Drop candidates scoring above this.')
  guards.add_argument(
      '--min-score', type=float, default=None,
      help='Drop candidates scoring below this.')
  guards.add_argument(
      '--absolute-margin', type=float, default=None,
      help='Keep a negative only if score + margin <= weakest positive score.')
  guards.add_argument(
      '--relative-margin', type=float, default=None,
      help='Keep a negative only if score <= p - |p| * margin (p: weakest positive score).')
  guards.add_argument(
      '--sampling', dest='sampling_strategy', choices=['top', 'random'], default='top',
      help='(default: %(default)s)')
  guards.add_argument(
      '--seed', type=int, default=12,
      help='For --sampling random, and the sentences and documents --pseudo-queries '
      'picks (default: %(default)s).')
  guards.add_argument(
      '--score-column', default=None,
      help='Candidate score used by the guards and distill labels (default: the '
      'cross-encoder score, ce_score, for --ranked; for a --ranked made with '
      '--cross-encoder none, the fused first stage, retrieval_score; score for '
      '--candidates; the retrieval score when retrieving here).')
  guards.add_argument(
      '--dev-fraction', type=float, default=0.0,
      help='Share of queries (by id hash) in dev/; with --qrels or --positives, of the '
      'judged queries only: pseudo-queries then all train (default: %(default)s).')
  guards.add_argument(
      '--dev-negatives', type=common.positive_int, default=None, metavar='N',
      help="Mine each dev query's N best-ranked negatives (the other guards apply; "
      'no --range-min, no sampling), so checkpoints are selected on the hard '
      'candidates a rerank of the first stage sees, not on easy ones (default: as '
      'training, --num-negatives).')
  return parser


def parse_config(argv: Sequence[str] | None = None) -> MineJobConfig:
  """The command line -> the job's config (Beam's options kept for the run)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return common.config_from_args(MineJobConfig, args, beam_args)


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the job; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
