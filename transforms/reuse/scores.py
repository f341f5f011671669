"""Incremental reranking: reuse cross-encoder scores of unchanged (query, passage) pairs.

A previous rerank output's candidates carry, per pair, the SHA-256 of the query
text and of the passage text the cross-encoder saw. A pair of this run whose
two hashes match a previous pair takes that pair's ``ce_score``; every other
pair is scored. Reuse is keyed by texts, not ids: a renamed document keeps its
scores, an edited one is scored again. The caller checks that the previous
scores come from the same cross-encoder identity (``SCORE_SETTINGS``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.metrics import METRICS_NAMESPACE

REUSED_TAG = 'reused'
TO_SCORE_TAG = 'to_score'
QUERY_HASH = 'query_text_sha256'
PASSAGE_HASH = 'passage_text_sha256'
# What decides a cross-encoder score besides the two texts: previous scores are
# reused only when every one of these matches (manifest keys of a rerank output).
SCORE_SETTINGS = ('cross_encoder_fingerprint', 'max_length', 'activation', 'backend')


def score_settings_mismatch(
    previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """The scoring settings on which two rerank manifests disagree, as readable lines."""
  return [f'{key}: previous {previous.get(key)!r}, now {current.get(key)!r}'
          for key in SCORE_SETTINGS if previous.get(key) != current.get(key)]


def _pair_key(row: Mapping[str, Any]) -> tuple[str, str]:
  return row[QUERY_HASH], row[PASSAGE_HASH]


def _previous_score(row: Mapping[str, Any]) -> Iterable[tuple[tuple[str, str], float]]:
  if row.get(QUERY_HASH) and row.get(PASSAGE_HASH) and row.get('ce_score') is not None:
    yield _pair_key(row), float(row['ce_score'])


class _SplitByCacheFn(beam.DoFn):
  """``(hashes, {'pairs': [...], 'previous': [score, ...]})`` -> reused rows or pairs to score."""

  def __init__(self):
    self._reused = Metrics.counter(METRICS_NAMESPACE, 'rerank/pairs_reused')

  def process(self, joined: tuple[tuple[str, str], Mapping[str, Iterable]]):
    _, groups = joined
    scores = sorted(groups['previous'])
    for pair in groups['pairs']:
      if scores:
        self._reused.inc()
        # The same two texts always got the same score from the same model;
        # the smallest of the copies keeps the choice deterministic.
        yield beam.pvalue.TaggedOutput(REUSED_TAG, dict(pair, score=scores[0]))
      else:
        yield beam.pvalue.TaggedOutput(TO_SCORE_TAG, pair)


class ReuseScores(beam.PTransform):
  """Pairs -> ``{'reused': pairs with a previous ``score``, 'to_score': the rest}``.

  ``previous_files``: a previous rerank output's candidates files (from its
  manifest), read for their two hash columns and ``ce_score`` only.
  """

  def __init__(self, previous_files: Sequence[str]):
    super().__init__()
    self._files = list(previous_files)

  def expand(self, pairs):
    previous = (
        pairs.pipeline
        | 'PreviousFiles' >> beam.Create(self._files)
        | 'ReadPreviousScores' >> beam.io.ReadAllFromParquet(
            columns=[QUERY_HASH, PASSAGE_HASH, 'ce_score'])
        | 'KeyPreviousScores' >> beam.FlatMap(_previous_score))
    split = (
        {'pairs': pairs | 'KeyPairsByTexts' >> beam.WithKeys(_pair_key),
         'previous': previous}
        | 'JoinPreviousScores' >> beam.CoGroupByKey()
        | 'SplitByCache' >> beam.ParDo(_SplitByCacheFn()).with_outputs(
            REUSED_TAG, TO_SCORE_TAG))
    return {REUSED_TAG: split[REUSED_TAG], TO_SCORE_TAG: split[TO_SCORE_TAG]}


def reusable_previous(
    previous: Optional[Mapping[str, Any]], current: Mapping[str, Any],
    has_hashes: bool) -> Optional[str]:
  """Why a previous rerank output cannot lend its scores (None: it can)."""
  if previous is None:
    return 'it has no manifest.json (an earlier run did not finish)'
  if previous.get('kind') != 'ranked':
    return f"it is not a rerank output (kind {previous.get('kind')!r})"
  if not previous.get('cross_encoder'):
    return 'it was ranked without a cross-encoder'
  mismatch = score_settings_mismatch(previous, current)
  if mismatch:
    return 'its scores come from other settings (' + '; '.join(mismatch) + ')'
  if not has_hashes:
    return 'its candidates have no text hashes (written by an older version)'
  return None
