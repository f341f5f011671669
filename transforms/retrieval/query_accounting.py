"""Every query a rerank run reads is accounted for: ranked, dead-lettered, or
without candidates, with what each candidate source said about it.

Per accepted query (one that passed the text checks) and per source that the
run uses, the source's status:

- ``dense``: ``with_candidates`` or ``no_embedding`` (the query has no vector
  in ``--query-embeddings``);
- ``bm25``: ``with_candidates``, ``no_tokens`` (punctuation, emoji, control
  characters: nothing to match) or ``no_match`` (no query word is in the
  corpus);
- ``supplied``: ``with_candidates``, ``not_in_run`` or ``all_rows_dead_lettered``.

A query with no ranked row is written to the ``no_candidates`` output with
those statuses and one overall reason: ``no_source_returned_candidates``, or
``all_candidates_dead_lettered`` when a source returned some but every one was
dead-lettered further on (unknown doc ids, scoring failures). Counters give the
same figures for the report: queries in = ranked + dead-lettered + no
candidates.
"""
from __future__ import annotations

from typing import Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from transforms.core.metrics import METRICS_NAMESPACE
from transforms.retrieval.bm25 import tokenize

STAGE = 'rerank'
# The rerank output listing the queries that got no ranked row, and why.
SOURCES = ('dense', 'bm25', 'supplied')
WITH_CANDIDATES = 'with_candidates'
SOURCE_STATUSES = {
    'dense': (WITH_CANDIDATES, 'no_embedding'),
    'bm25': (WITH_CANDIDATES, 'no_tokens', 'no_match'),
    'supplied': (WITH_CANDIDATES, 'not_in_run', 'all_rows_dead_lettered'),
}
NO_SOURCE = 'no_source_returned_candidates'
ALL_DEAD = 'all_candidates_dead_lettered'
REASONS = (NO_SOURCE, ALL_DEAD)
NO_CANDIDATES_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('reason', pa.string()),
    *((source, pa.string()) for source in SOURCES)])


def source_counter_name(source: str, status: str) -> str:
  """The counter (in ``rerank/``) of queries with ``status`` from ``source``."""
  return f'queries_{source}_{status}'


def no_candidates_counter_name(reason: str) -> str:
  return f'queries_no_candidates_{reason}'


def source_status(source: str, candidates: int, text: str, stemmer: Optional[str],
                  supplied_rows: int = 0) -> str:
  """What ``source`` said about one query (see the module doc)."""
  if candidates:
    return WITH_CANDIDATES
  if source == 'dense':
    return 'no_embedding'
  if source == 'bm25':
    return 'no_tokens' if not tokenize(text, stemmer) else 'no_match'
  return 'all_rows_dead_lettered' if supplied_rows else 'not_in_run'


class _AccountQueryFn(beam.DoFn):
  """``(query_id, {'text', <source counts>, 'supplied_rows', 'ranked'})`` ->
  nothing for a ranked query, a ``no_candidates`` row for the others."""
  def __init__(self, sources: Sequence[str], stemmer: Optional[str]):
    self._sources = tuple(sources)
    self._stemmer = stemmer
    self._by_source = {
        (source, status): Metrics.counter(
            METRICS_NAMESPACE, f'{STAGE}/{source_counter_name(source, status)}')
        for source in self._sources for status in SOURCE_STATUSES[source]}
    self._no_candidates = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/queries_no_candidates')
    self._by_reason = {
        reason: Metrics.counter(
            METRICS_NAMESPACE, f'{STAGE}/{no_candidates_counter_name(reason)}')
        for reason in REASONS}

  def process(self, joined):
    query_id, groups = joined
    texts = list(groups['text'])
    # A query id without an accepted text is not a query of the run: its
    # candidates are dead-lettered at the join.
    row = self._account(query_id, texts[0], groups) if texts else None
    if row is not None:
      yield row

  def _account(self, query_id: str, text: str, groups) -> Optional[dict]:
    supplied_rows = sum(groups.get('supplied_rows', ()))
    statuses, returned = {}, False
    for source in self._sources:
      candidates = sum(groups[source])
      returned = returned or candidates > 0
      statuses[source] = source_status(source, candidates, text, self._stemmer, supplied_rows)
      self._by_source[(source, statuses[source])].inc()
    if sum(groups['ranked']):
      return None
    reason = ALL_DEAD if returned or supplied_rows else NO_SOURCE
    self._no_candidates.inc()
    self._by_reason[reason].inc()
    return {'query_id': query_id, 'reason': reason,
            **{source: statuses.get(source) for source in SOURCES}}


def _count_per_query(rows, label: str):
  return (rows
          | f'{label}QueryIds' >> beam.Map(lambda row: (str(row['query_id']), 1))
          | f'{label}CountPerQuery' >> beam.CombinePerKey(sum))


class AccountQueries(beam.PTransform):
  """``{'queries': accepted query records, 'ranked': ranked rows, <source>:
  that source's candidate rows, ['supplied_rows': the supplied file's rows
  before their checks]}`` -> the ``no_candidates`` rows (``NO_CANDIDATES_SCHEMA``).

  Per-query counts are combined before the join, so memory is one query's
  few integers.
  """
  def __init__(self, sources: Sequence[str], stemmer: Optional[str] = None):
    super().__init__()
    unknown = set(sources) - set(SOURCES)
    if unknown:
      raise ValueError(f'unknown candidate source(s) {sorted(unknown)}')
    self._sources = tuple(s for s in SOURCES if s in sources)
    self._stemmer = stemmer

  def expand(self, pcolls):
    grouped = {
        'text': pcolls['queries'] | 'QueryTexts' >> beam.Map(lambda r: (r['id'], r['text'])),
        'ranked': _count_per_query(pcolls['ranked'], 'Ranked'),
    }
    for source in self._sources:
      grouped[source] = _count_per_query(pcolls[source], source.title())
    if 'supplied_rows' in pcolls:
      grouped['supplied_rows'] = _count_per_query(
          pcolls['supplied_rows'] | 'SuppliedRowsWithIds' >> beam.Filter(
              lambda row: row.get('query_id') is not None), 'SuppliedRows')
    return (grouped
            | 'JoinPerQuery' >> beam.CoGroupByKey()
            | 'AccountPerQuery' >> beam.ParDo(_AccountQueryFn(self._sources, self._stemmer)))


def summarize(counts: dict, sources: Sequence[str], queries_in: int, dead_lettered: int,
              ranked: int) -> dict:
  """The report's ``queries`` block from the job's counters (``rerank/`` names
  stripped): in, ranked, dead-lettered, no candidates by reason, each source's
  statuses, and whether they add up."""
  no_candidates = counts.get('queries_no_candidates', 0)
  return {
      'in': queries_in,
      'ranked': ranked,
      'dead_lettered': dead_lettered,
      'no_candidates': no_candidates,
      'no_candidates_by_reason': {
          reason: counts.get(no_candidates_counter_name(reason), 0) for reason in REASONS},
      'by_source': {
          source: {status: counts.get(source_counter_name(source, status), 0)
                   for status in SOURCE_STATUSES[source]}
          for source in SOURCES if source in sources},
      'reconciles': queries_in == ranked + dead_lettered + no_candidates,
  }
