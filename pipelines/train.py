"""The ``train`` job: mined training pairs -> a fine-tuned model directory.

    beam-rerank train --pairs out/pairs --kind cross-encoder \\
        --base-model all-MiniLM-L6-v2 --output out/my-cross-encoder \\
        --eval-steps 200 --early-stopping-patience 3

Uses the sentence-transformers trainers: CrossEncoder + BinaryCrossEntropyLoss on
``labeled-pair`` rows, SentenceTransformer + MultipleNegativesRankingLoss on
``triplet``/``pair`` rows. With a mined dev split, nDCG@10 on the dev queries
(CrossEncoderRerankingEvaluator / InformationRetrievalEvaluator) is scored every
``--eval-steps`` (else once per epoch); the output is the best checkpoint, and
training can stop early. ``--then-pairs`` continues on further mined folders (a
curriculum: easy negatives first, then hard). ``--distill-steps N`` first warms a
cross-encoder up on a bi-encoder's similarities of the pairs (MSELoss). One
machine (CPU or GPU; fp16/bf16 on a GPU, bf16 on a CPU that has it); not a Beam
pipeline. The output loads with
``CrossEncoder(path)``/``SentenceTransformer(path)``, works as the rerank job's
``--cross-encoder``, and holds training_report.json and training_curve.png.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipelines import common
from pipelines.jobs.train import (
  PROG,
  TrainJobConfig,
  execute,
)
from transforms.core import settings

_SECTIONS = {
    'training': None,
    'dev split, checkpoint selection and curriculum': None,
    'cross-encoder warm start': None,
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  """The command line, generated from the job config's fields."""
  return settings.build_parser(
      TrainJobConfig, prog, __doc__.split('\n\n')[0],
      descriptions=_SECTIONS)


def parse_config(argv: Sequence[str] | None = None) -> TrainJobConfig:
  """The command line -> the job's config."""
  return settings.from_arguments(TrainJobConfig, build_parser().parse_args(argv))


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the job; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
