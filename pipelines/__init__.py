"""Runnable beam-rerank jobs: one thin module per job."""
import logging


class _DropBeamImportNoise(logging.Filter):
  """Beam warns about optional GCP client libraries on import; the jobs do not
  need them unless a gs:// path is used, so the line is only noise."""
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('apitools not found')


logging.getLogger().addFilter(_DropBeamImportNoise())
