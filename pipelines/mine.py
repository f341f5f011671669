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
  PROG,
  MineJobConfig,
  execute,
)
from transforms.core import settings

_SECTIONS = {
    'input and output': None,
    'labels': None,
    'pseudo-queries (no judgments needed)': (
      'Queries made from the corpus: a title -> its text without the title; a sentence '
      '-> the rest of its document (the inverse cloze task). The positive is the source '
      'document, shown without the query part; title queries\' negatives are shown '
      'without their titles too. Negatives come from BM25 (--bm25; with dense embeddings '
      'too, pseudo-queries still get BM25 candidates only): hard ones past --range-min, '
      'easy ones with --sampling random from a wide --top-k. With --queries and '
      '--qrels/--positives they mix with judged queries; without, they are the only '
      'queries. Ids title:DOC_ID and sentence:DOC_ID:N; the *-ids folders get a source '
      'column (qrels, positives, title, sentence).'),
    'negatives (sentence-transformers mine_hard_negatives semantics)': None,
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  """The command line, generated from the job config's fields."""
  return settings.build_parser(
      MineJobConfig, prog, 'Mine training pairs: positives from qrels (or a positives table, '
      'or cross-encoder score thresholds), hard negatives from ranked/retrieved '
      'candidates with the guards of sentence-transformers mine_hard_negatives; one '
      'folder per format, train/dev split by query id, ready for the '
      'sentence-transformers trainers (ids in aligned *-ids folders).',
      epilog=common.BEAM_EPILOG, descriptions=_SECTIONS)


def parse_config(argv: Sequence[str] | None = None) -> MineJobConfig:
  """The command line -> the job's config (Beam's options kept for the run)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return settings.from_arguments(MineJobConfig, args, pipeline_args=tuple(beam_args))


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the job; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
