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
  PROG,
  LoopJobConfig,
  execute,
)
from transforms.core import settings

_SECTIONS = {
    'input and output': None,
    'query splits (by a stable hash of the query id)': None,
    'models': None,
    'candidates and mining': None,
    'training': None,
    'inference and batching (encode and rerank)': None,
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  """The command line, generated from the job config's fields."""
  return settings.build_parser(
      LoopJobConfig, prog, 'The whole loop on judged queries: split them into train/dev/test '
      '(by id hash, never leaking), mine training pairs from train+dev, fine-tune a '
      'cross-encoder and/or a bi-encoder, rerank with fusion tuned on the dev split, and '
      'print one table of test-query metrics: first stage, each signal alone, the '
      'fine-tuned models, final.',
      epilog=common.BEAM_EPILOG, descriptions=_SECTIONS)


def parse_config(argv: Sequence[str] | None = None) -> LoopJobConfig:
  """The command line -> the job's config (Beam's options kept for the run)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return settings.from_arguments(LoopJobConfig, args, pipeline_args=tuple(beam_args))


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the loop; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
