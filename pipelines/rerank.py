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

_SECTIONS = {
    'input and output': None,
    'candidates': None,
    'cross-encoder': None,
    'inference and batching (both models)': None,
    'fusion': 'The first stage fuses dense, BM25 and supplied scores into '
      'retrieval_score; the final ranking fuses that (signal "retrieval") with the '
      'cross-encoder ("ce"). Linear fusion min-max normalises each signal per query.',
    'evaluation': None,
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  """The command line, generated from the job config's fields."""
  return settings.build_parser(
      RerankJobConfig, prog, 'Rank corpus passages for each query. Candidates come from exact '
      'dense top-k over embedding shards (--query-embeddings/--corpus-embeddings, or '
      '--model to encode first), exact BM25 top-k (--bm25), a supplied run '
      '(--candidates), or any of them (their union). The first stage fuses the '
      "sources' scores; a cross-encoder then scores every candidate and the final "
      'ranking fuses it with the first stage (--fusion; weights fixed or tuned on '
      '--tune-qrels, guarded).',
      epilog=common.BEAM_EPILOG, descriptions=_SECTIONS)


def parse_config(argv: Sequence[str] | None = None) -> RerankJobConfig:
  """The command line -> the job's config (Beam's options kept for the run)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return settings.from_arguments(RerankJobConfig, args, pipeline_args=tuple(beam_args))


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
