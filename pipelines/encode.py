"""The ``encode`` job: a Parquet corpus (or queries) -> embedding shards.

    beam-rerank encode --input corpus.parquet --output out/corpus_emb
    python -m pipelines.encode --input 'gs://bucket/corpus/*.parquet' ...
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipelines import common
from pipelines.jobs.encode import (
  PROG,
  EncodeJobConfig,
  execute,
)
from transforms.core import settings

_SECTIONS = {
    'input and output': None,
    'model': None,
    'inference and batching': None,
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  """The command line, generated from the job config's fields."""
  return settings.build_parser(
      EncodeJobConfig, prog, 'Encode the texts of a Parquet corpus (or queries) with a '
          'sentence-transformers bi-encoder into embedding shards '
          '(id, embedding, text_sha256) with a manifest.json, on any Beam runner.',
      epilog=common.BEAM_EPILOG, descriptions=_SECTIONS)


def parse_config(argv: Sequence[str] | None = None) -> EncodeJobConfig:
  """The command line -> the job's config (Beam's options kept for the run)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return settings.from_arguments(EncodeJobConfig, args, pipeline_args=tuple(beam_args))


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the job; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
