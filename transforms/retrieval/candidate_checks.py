"""Checks every candidate row goes through, in any job that reads candidates.

One place for what makes a ``(query_id, doc_id[, score])`` row unusable (a
blank id; a NaN, infinite or beyond-float32 score), for one copy per
``(query, doc)`` (the others dead-lettered as ``duplicate_pair``), for
candidates whose id has no text (``unknown_doc_id`` / ``unknown_query_id``),
and for the order candidates are taken in (retrieval rank, then score).
The rerank and mine jobs differ only in what they keep of a row and in their
stage names; the reason codes are the same.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.dead_letters import DEAD_LETTER_TAG, bad_score_reason, dead_letter
from transforms.core.metrics import METRICS_NAMESPACE


def is_blank(value: Any) -> bool:
  """A missing id: None, or only whitespace."""
  return value is None or str(value).strip() == ''


def candidate_problem(
    query_id: Any, doc_id: Any, score: Any, what: str = 'candidate') -> Optional[str]:
  """The dead-letter reason of an unusable row, or None for a usable one."""
  if is_blank(query_id):
    return f'null_query_id: {what} has no query_id'
  if is_blank(doc_id):
    return f'null_doc_id: {what} has no doc_id'
  return bad_score_reason(score)


def retrieval_order(row: dict, score_field: str = 'score') -> tuple:
  """Retrieval rank; rows without one follow in score order (desc), then doc_id."""
  rank, score = row.get('retrieval_rank'), row.get(score_field)
  return (math.inf if rank is None else rank,
          math.inf if score is None else -score, row['doc_id'])


def duplicate_pair_reason(which_copy_kept: str) -> str:
  """The reason of a second copy of a (query_id, doc_id) pair."""
  return f'duplicate_pair: the same (query_id, doc_id) again; {which_copy_kept} was kept'


def first_per_doc(ordered_rows: Iterable[dict]) -> Iterator[tuple[dict, bool]]:
  """``(row, is_duplicate)`` for rows of one query in their order: the first
  row of each doc_id is kept, later ones are duplicates."""
  seen: set[str] = set()
  for row in ordered_rows:
    duplicate = row['doc_id'] in seen
    seen.add(row['doc_id'])
    yield row, duplicate


def unknown_id_reason(id_field: str, record_id: str, detail: str) -> str:
  """``unknown_doc_id`` / ``unknown_query_id``: the id has no text in the input."""
  return f'unknown_{id_field}: {id_field} {record_id!r} {detail}'


class CheckCandidateFn(beam.DoFn):
  """A candidate row -> ``to_candidate(row, query_id, doc_id, score)``, or a
  dead letter with the row's reason (see ``candidate_problem``).

  Args:
    stage: the job's counter and dead-letter prefix (``'rerank'``, ``'mine'``).
    score_field: the row's score column, if it has one.
    to_candidate: what the job keeps of a good row.
    rows_in_counter: counts every row in (under ``stage/``).
    rejected_counter: counts dead-lettered rows, if given.
  """
  def __init__(
      self, stage: str, score_field: Optional[str],
      to_candidate: Callable[[dict, str, str, Optional[float]], dict],
      rows_in_counter: str, rejected_counter: Optional[str] = None):
    self._stage = stage
    self._score_field = score_field
    self._to_candidate = to_candidate
    self._rows_in = Metrics.counter(METRICS_NAMESPACE, f'{stage}/{rows_in_counter}')
    self._rejected = (Metrics.counter(METRICS_NAMESPACE, f'{stage}/{rejected_counter}')
                      if rejected_counter else None)

  def process(self, row: dict):
    self._rows_in.inc()
    query_id, doc_id = row.get('query_id'), row.get('doc_id')
    score = row.get(self._score_field) if self._score_field else None
    reason = candidate_problem(query_id, doc_id, score)
    if reason is not None:
      if self._rejected is not None:
        self._rejected.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
          f'{self._stage}/candidates', None if query_id is None else f'{query_id}\t{doc_id}',
          reason, row))
      return
    yield self._to_candidate(
        row, str(query_id), str(doc_id), None if score is None else float(score))
