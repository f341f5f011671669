"""``sample-data``: writes the project's small bilingual sample collection.

    beam-rerank sample-data --output sample_data/
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from pipelines import common
from transforms.io.sample_data import write_sample_data

PROG = 'beam-rerank sample-data'
logger = logging.getLogger(__name__)


def run(argv: Sequence[str] | None = None) -> dict[str, str]:
  parser = argparse.ArgumentParser(
      prog=PROG, description='Write corpus.parquet, queries.parquet, qrels.parquet and '
      'qrels_train.parquet (the train split: tuning queries) (36 English/Russian passages, '
      '36 queries) into a folder.')
  parser.add_argument('--output', required=True, metavar='DIR', help='Folder to write into.')
  args = parser.parse_args(argv)
  common.configure_logging()
  paths = write_sample_data(args.output)
  for name, path in paths.items():
    logger.info('[sample-data] %s: %s', name, path)
  return paths


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
