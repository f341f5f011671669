"""Progress lines from the workers while long work runs."""
from __future__ import annotations

import sys
import time

import apache_beam as beam


class LogProgressFn(beam.DoFn):
  """Passes elements through; every few seconds prints how many went by.

  One line per worker process, to stderr: ``[encode] 1,024 texts, 25.3 texts/s``.
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
      print(
          f'[{self._stage}] {self._count:,} {self._unit} done, '
          f'{rate:.1f} {self._unit}/s', file=sys.stderr, flush=True)
    yield element
