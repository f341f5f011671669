"""Incremental encoding: reuse embeddings whose text did not change."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.metrics import METRICS_NAMESPACE

REUSED_TAG = 'reused'

# The settings that decide an embedding besides its text: previous embeddings
# are reused only when all of them match.
EMBEDDING_SETTINGS = (
    'model_fingerprint', 'dim', 'normalized', 'precision', 'max_seq_length',
    'prompt', 'backend')
# Values of settings that manifests written before the setting existed lack.
_SETTING_DEFAULTS = {'backend': 'torch'}


def settings_mismatch(
    previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """The embedding settings on which two manifests disagree, as readable lines."""
  return [
      f'{key}: previous {previous.get(key, _SETTING_DEFAULTS.get(key))!r}, '
      f'now {current.get(key, _SETTING_DEFAULTS.get(key))!r}'
      for key in EMBEDDING_SETTINGS
      if previous.get(key, _SETTING_DEFAULTS.get(key)) !=
      current.get(key, _SETTING_DEFAULTS.get(key))
  ]


class _SplitByPreviousFn(beam.DoFn):
  def __init__(self, stage: str):
    self._new = Metrics.counter(METRICS_NAMESPACE, f'{stage}/texts_new')
    self._changed = Metrics.counter(METRICS_NAMESPACE, f'{stage}/texts_changed')
    self._reused = Metrics.counter(METRICS_NAMESPACE, f'{stage}/embeddings_reused')
    self._deleted = Metrics.counter(
        METRICS_NAMESPACE, f'{stage}/embeddings_deleted')

  def process(self, joined: tuple[str, Mapping[str, Iterable[dict]]]):
    unused_id, groups = joined
    current = list(groups['current'])
    previous = list(groups['previous'])
    if not current:
      self._deleted.inc()
      return
    record = current[0]  # Ids are unique after PrepareTexts.
    match = next(
        (p for p in previous if p['text_sha256'] == record['text_sha256']), None)
    if match is not None:
      self._reused.inc()
      yield beam.pvalue.TaggedOutput(REUSED_TAG, match)
    else:
      (self._changed if previous else self._new).inc()
      yield record


class ReuseUnchanged(beam.PTransform):
  """``{'current': texts, 'previous': embeddings}`` -> texts to encode + reused.

  Joins by id (``CoGroupByKey``): an id whose text hash equals the previous
  run's keeps its embedding; new and changed texts go on to be encoded; ids
  that are gone are dropped and counted.
  """
  def __init__(self, stage: str):
    super().__init__()
    self._stage = stage

  def expand(self, pcolls):
    keyed = {
        'current': pcolls['current'] | 'KeyCurrent' >> beam.WithKeys(
            lambda r: r['id']),
        'previous': pcolls['previous'] | 'KeyPrevious' >> beam.WithKeys(
            lambda r: r['id']),
    }
    split = (
        keyed
        | 'JoinById' >> beam.CoGroupByKey()
        | 'SplitByTextHash' >> beam.ParDo(
            _SplitByPreviousFn(self._stage)).with_outputs(
                REUSED_TAG, main='to_encode'))
    return {'to_encode': split.to_encode, REUSED_TAG: split[REUSED_TAG]}
