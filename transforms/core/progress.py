"""Progress lines from the workers while long work runs."""
from __future__ import annotations

import logging
import time

import apache_beam as beam

logger = logging.getLogger(__name__)


class LogProgressFn(beam.DoFn):
  """Passes elements through; every few seconds prints how many went by.

  One log line (INFO) per worker process: ``[encode] 1,024 texts, 25.3 texts/s``.
  """
  def __init__(self, stage: str, unit: str = 'texts', every_seconds: float = 5.0):
    self._stage = stage
    self._unit = unit
    self._every_seconds = every_seconds

  def setup(self):
    self._count = 0
    self._start = None
    self._last = 0.0

  def process(self, element):
    now = time.monotonic()
    if self._start is None:
      self._start = self._last = now
    self._count += 1
    if now - self._last >= self._every_seconds:
      self._last = now
      rate = self._count / max(now - self._start, 1e-9)
      logger.info(
          '[%s] %s %s done, %.1f %s/s', self._stage, f'{self._count:,}', self._unit,
          rate, self._unit)
    yield element
