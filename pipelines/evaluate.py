"""The ``evaluate`` job: ranked Parquet + qrels -> metrics per stage.

    beam-rerank evaluate --ranked out/ranked --qrels qrels.parquet

Writes ``metrics.json``, ``metrics.parquet`` and ``metrics.png`` (into --output,
default the ranked folder) and prints the stages side by side: each first-stage
source (dense, BM25, supplied), the fused first stage, the cross-encoder alone
and the final ranking (those the folder has), averaged over every judged query
the run read (ranked, listed in ``no_candidates/`` or dead-lettered): a judged
query with no result counts as 0, as trec_eval's ``-c`` does, so the figures
equal ``rerank --qrels`` on the same folder. Queries the rerank job tuned
fusion weights on (its manifest's ``fusion.tuning_query_ids``) are left out.
The metrics themselves are ir-measures' (trec_eval); no Beam pipeline is needed
for a table this size.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipelines import common
from pipelines.jobs.evaluate import (
  PROG,
  EvaluateJobConfig,
  execute,
)
from transforms.core import settings


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  """The command line, generated from the job config's fields."""
  return settings.build_parser(
      EvaluateJobConfig, prog, 'Score a rerank output against relevance judgments: nDCG@10, '
      'MRR@10, Recall@100 (and any @k asked) for each stage side by side (dense, '
      'BM25, supplied, fused first stage, cross-encoder alone, final), leaving '
      'out the queries fusion weights were tuned on.',
      )


def parse_config(argv: Sequence[str] | None = None) -> EvaluateJobConfig:
  """The command line -> the job's config."""
  return settings.from_arguments(EvaluateJobConfig, build_parser().parse_args(argv))


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the job; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
