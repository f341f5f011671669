"""Candidate pairs: supplied runs checked and deduplicated, joined with texts.

Candidates come from dense retrieval, BM25, a supplied Parquet run
(``query_id, doc_id[, score]``), or any of them together (their union, one row
per pair with each source's score). Every candidate ends as a ranked pair or a
dead letter with a reason.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.dead_letters import DEAD_LETTER_TAG, dead_letter
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.retrieval.candidate_checks import (
  CheckCandidateFn,
  duplicate_pair_reason,
  first_per_doc,
  unknown_id_reason,
)

STAGE = 'rerank'
SOURCE_DENSE = 'dense'
SOURCE_BM25 = 'bm25'
SOURCE_SUPPLIED = 'supplied'
SOURCES = (SOURCE_DENSE, SOURCE_BM25, SOURCE_SUPPLIED)


def source_row(row: dict, source: str) -> dict:
  """A retrieved row (dense or BM25 top-k) as a candidate of ``source`` for
  ``MergeCandidates``."""
  return {'query_id': row['query_id'], 'doc_id': row['doc_id'],
          'retrieval_rank': row['retrieval_rank'], 'retrieval_score': row['retrieval_score'],
          'source': source}


def _supplied_candidate(
    row: dict, query_id: str, doc_id: str, score: Optional[float]) -> dict:
  return {
      'query_id': query_id,
      'doc_id': doc_id,
      'retrieval_score': score,
      'source': SOURCE_SUPPLIED,
  }


def _score_order(candidate: dict) -> tuple:
  score = candidate['retrieval_score']
  return (-(score if score is not None else -math.inf), candidate['doc_id'])


class _MergeCandidatesFn(beam.DoFn):
  """One query's candidates (any sources) -> one row per doc with every source's score.

  A source row is ``query_id, doc_id, retrieval_score, source``; the merged
  row has ``<source>_score`` for each source (None where that source did not
  return the doc). Duplicates within a source keep the copy with the best
  score and dead-letter the rest; a doc found by more than one source is one
  row (each extra source row counted as union overlap).
  """
  def __init__(self):
    self._duplicates = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/duplicate_pairs')
    self._overlap = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/union_overlap')

  def process(self, keyed: tuple[str, Iterable[dict]]):
    query_id, candidates = keyed
    by_source: dict[str, list[dict]] = {}
    for candidate in candidates:
      by_source.setdefault(candidate['source'], []).append(candidate)
    merged: dict[str, dict] = {}
    for source in sorted(by_source, key=SOURCES.index):
      for row, duplicate in first_per_doc(sorted(by_source[source], key=_score_order)):
        if duplicate:
          self._duplicates.inc()
          yield beam.pvalue.TaggedOutput(
              DEAD_LETTER_TAG,
              dead_letter(
                  f'{STAGE}/candidates', f'{query_id}\t{row["doc_id"]}',
                  duplicate_pair_reason('the copy with the best score'), row))
          continue
        doc_id = row['doc_id']
        if doc_id in merged:
          self._overlap.inc()
        else:
          merged[doc_id] = {'query_id': query_id, 'doc_id': doc_id,
                            **{f'{s}_score': None for s in SOURCES}}
        merged[doc_id][f'{source}_score'] = row['retrieval_score']
    yield from merged.values()


class SuppliedCandidates(beam.PTransform):
  """Supplied candidate rows -> validated candidate dicts + dead letters."""
  def __init__(self, score_column: str | None):
    super().__init__()
    self._score_column = score_column

  def expand(self, rows):
    checked = rows | 'ValidateCandidates' >> beam.ParDo(
        CheckCandidateFn(
            STAGE, self._score_column, _supplied_candidate,
            rows_in_counter='supplied_candidates_in')).with_outputs(
            DEAD_LETTER_TAG, main='candidates')
    return {'candidates': checked.candidates, DEAD_LETTER_TAG: checked[DEAD_LETTER_TAG]}


class MergeCandidates(beam.PTransform):
  """All candidates (any sources) -> one row per (query, doc) + dead letters."""
  def expand(self, candidates):
    merged = (
        candidates
        | 'KeyByQuery' >> beam.WithKeys(lambda c: c['query_id'])
        | 'GroupByQuery' >> beam.GroupByKey()
        | 'MergePerQuery' >> beam.ParDo(_MergeCandidatesFn()).with_outputs(
            DEAD_LETTER_TAG, main='candidates'))
    return {'candidates': merged.candidates, DEAD_LETTER_TAG: merged[DEAD_LETTER_TAG]}


class _AttachTextFn(beam.DoFn):
  """``(id, {'texts': [(text, sha256)], 'candidates': [...]})`` -> candidates with
  the text and its hash (``<text_field>_sha256``)."""
  def __init__(self, id_field: str, text_field: str):
    self._id_field = id_field
    self._text_field = text_field
    self._unknown = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/unknown_{id_field}')

  def process(self, joined: tuple[str, Mapping[str, Iterable[Any]]]):
    record_id, groups = joined
    texts = list(groups['texts'])
    for candidate in groups['candidates']:
      if not texts:
        self._unknown.inc()
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER_TAG,
            dead_letter(
                f'{STAGE}/join', f'{candidate["query_id"]}\t{candidate["doc_id"]}',
                unknown_id_reason(
                    self._id_field, record_id,
                    'is not in the input (or was dead-lettered there)'), candidate))
        continue
      text, sha256 = texts[0]
      joined_candidate = dict(candidate)
      joined_candidate[self._text_field] = text
      joined_candidate[f'{self._text_field}_sha256'] = sha256
      yield joined_candidate


class JoinTexts(beam.PTransform):
  """Candidates + query texts + passage texts -> pairs ready to score (with
  ``query_text``/``passage_text`` and their ``*_sha256``).

  Two ``CoGroupByKey`` joins (by doc_id, then by query_id); a candidate whose
  id has no text is dead-lettered as ``unknown_doc_id``/``unknown_query_id``.
  """
  def expand(self, pcolls):
    with_passages = (
        {
            'texts': pcolls['corpus'] | 'CorpusTextsById' >> beam.Map(
                lambda r: (r['id'], (r['text'], r['text_sha256']))),
            'candidates': pcolls['candidates'] | 'CandidatesByDoc' >> beam.WithKeys(
                lambda c: c['doc_id']),
        }
        | 'JoinPassages' >> beam.CoGroupByKey()
        | 'AttachPassages' >> beam.ParDo(
            _AttachTextFn('doc_id', 'passage_text')).with_outputs(
                DEAD_LETTER_TAG, main='pairs'))
    with_queries = (
        {
            'texts': pcolls['queries'] | 'QueryTextsById' >> beam.Map(
                lambda r: (r['id'], (r['text'], r['text_sha256']))),
            'candidates': with_passages.pairs | 'PairsByQuery' >> beam.WithKeys(
                lambda c: c['query_id']),
        }
        | 'JoinQueries' >> beam.CoGroupByKey()
        | 'AttachQueries' >> beam.ParDo(
            _AttachTextFn('query_id', 'query_text')).with_outputs(
                DEAD_LETTER_TAG, main='pairs'))
    dead = ((with_passages[DEAD_LETTER_TAG], with_queries[DEAD_LETTER_TAG])
            | 'FlattenJoinDeadLetters' >> beam.Flatten())
    return {'pairs': with_queries.pairs, DEAD_LETTER_TAG: dead}
