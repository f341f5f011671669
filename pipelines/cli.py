"""``beam-rerank``: one command, one subcommand per job."""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Sequence

JOBS = {
    'encode': ('pipelines.encode', 'Parquet texts -> embedding shards + manifest'),
    'rerank': ('pipelines.rerank',
               'queries x corpus -> dense/BM25/supplied candidates -> cross-encoder -> ranked'),
    'evaluate': ('pipelines.evaluate', 'ranked + qrels -> nDCG/MRR/Recall per stage'),
    'mine': ('pipelines.mine', 'candidates + labels -> training-pair Parquet per format'),
    'train': ('pipelines.train', 'training pairs -> a fine-tuned CrossEncoder or bi-encoder'),
    'loop': ('pipelines.loop',
             'split -> mine -> train -> rerank (tuned fusion) -> test metrics, one table'),
    'sample-data': ('pipelines.sample_data', 'write the small bilingual sample collection'),
}


class _DropBeamImportNoise(logging.Filter):
  """Beam warns about optional GCP client libraries when it is imported; the
  jobs do not need them unless a gs:// path is used, so the line is only noise."""
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('apitools not found')


USAGE = 'usage: beam-rerank {' + ','.join(JOBS) + '} [options]   (beam-rerank JOB --help)'


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ('-h', '--help'):
    print(USAGE)
    print('\njobs:')
    for name, (_, summary) in JOBS.items():
      print(f'  {name:<12} {summary}')
    print('\nAny Beam pipeline option passes through (--runner, --direct_running_mode, ...).')
    return 0 if argv else 2
  job = argv[0]
  if job not in JOBS:
    print(f"beam-rerank: error: unknown job {job!r}; choose from {', '.join(JOBS)}",
          file=sys.stderr)
    return 2
  # Installed here, by the command, before the job (and Beam) is imported.
  root = logging.getLogger()
  if not any(isinstance(f, _DropBeamImportNoise) for f in root.filters):
    root.addFilter(_DropBeamImportNoise())
  module = importlib.import_module(JOBS[job][0])
  return module.main(argv[1:])


if __name__ == '__main__':
  sys.exit(main())
