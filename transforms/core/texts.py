"""From input rows to clean ``(id, text, text_sha256)`` records, with dead letters.

Rows with a null id, or a null, empty or whitespace-only text, and every copy
of an id that occurs more than once, go to a tagged dead-letter output with a
reason; nothing is dropped silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.dead_letters import DEAD_LETTER_TAG, dead_letter
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.core.settings import setting


@dataclasses.dataclass(frozen=True)
class TextColumns:
  """Which input columns hold the query and passage ids and texts (the
  data contracts' names are the defaults)."""
  query_id: str = setting('query_id', 'Query id column (default: %(default)s).',
                          flag='--query-id-column')
  query_text: str = setting('text', 'Query text column (default: %(default)s).',
                            flag='--query-text-column')
  doc_id: str = setting('doc_id', 'Passage id column (default: %(default)s).',
                        flag='--doc-id-column')
  doc_text: str = setting('text', 'Passage text column (default: %(default)s).',
                          flag='--doc-text-column')
  doc_title: Optional[str] = setting(
      None, 'Optional title column put in front of passage texts (default: none).',
      flag='--doc-title-column')
  title_separator: str = setting(
      '\n', 'What joins title and text (default: newline).', flag='--title-separator')


def text_sha256(text: str) -> str:
  """The hash that incremental runs compare: SHA-256 of the UTF-8 text."""
  return hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()


def join_title(title: Any, text: Any, separator: str) -> Any:
  """Title and text joined by ``separator``; a missing/blank title is skipped."""
  if isinstance(title, str) and title.strip():
    if isinstance(text, str) and text.strip():
      return f'{title}{separator}{text}'
    return text  # A title alone is not a document: let validation reject it.
  return text


class _ValidateRowFn(beam.DoFn):
  """One input row -> a text record, or a dead letter with the reason."""
  def __init__(
      self, stage: str, id_column: str, text_column: str,
      title_column: str | None, title_separator: str):
    self._stage = stage
    self._id_column = id_column
    self._text_column = text_column
    self._title_column = title_column
    self._title_separator = title_separator
    self._rows_in = Metrics.counter(METRICS_NAMESPACE, f'{stage}/rows_in')
    self._rejected = Metrics.counter(METRICS_NAMESPACE, f'{stage}/rows_rejected')

  def process(self, row: dict) -> Iterable[Any]:
    self._rows_in.inc()
    record_id = row.get(self._id_column)
    text = row.get(self._text_column)
    if self._title_column is not None:
      text = join_title(row.get(self._title_column), text, self._title_separator)
    reason = None
    if record_id is None:
      reason = f'null_id: column {self._id_column!r} is null'
    elif isinstance(record_id, str) and not record_id.strip():
      reason = f'empty_id: column {self._id_column!r} is empty'
    elif text is None:
      reason = f'null_text: column {self._text_column!r} is null'
    elif not text.strip():
      reason = f'empty_text: column {self._text_column!r} is empty or whitespace'
    if reason is not None:
      self._rejected.inc()
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER_TAG, dead_letter(self._stage, record_id, reason, row))
      return
    yield {'id': str(record_id), 'text': text, 'text_sha256': text_sha256(text)}


class _RejectDuplicateIdsFn(beam.DoFn):
  """Keeps ids that occur once; dead-letters every copy of an id that doesn't.

  Copies with identical text are harmless: one is kept, the others are
  dead-lettered as ``duplicate_id_same_text``. Copies that disagree cannot be
  resolved without guessing, so all of them are dead-lettered.
  """
  def __init__(self, stage: str):
    self._stage = stage
    self._duplicates = Metrics.counter(
        METRICS_NAMESPACE, f'{stage}/rows_duplicate_id')

  def process(self, keyed: tuple[str, Iterable[dict]]) -> Iterable[Any]:
    record_id, records = keyed
    records = sorted(records, key=lambda r: r['text_sha256'])
    if len(records) == 1:
      yield records[0]
      return
    self._duplicates.inc(len(records))
    if len({r['text_sha256'] for r in records}) == 1:
      yield records[0]
      for extra in records[1:]:
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER_TAG,
            dead_letter(
                self._stage, record_id,
                f'duplicate_id_same_text: {len(records)} rows share this id '
                'and text; one copy was kept', extra))
      return
    for record in records:
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER_TAG,
          dead_letter(
              self._stage, record_id,
              f'duplicate_id: {len(records)} rows share this id with different '
              'texts; none was kept', record))


class PrepareTexts(beam.PTransform):
  """Rows -> unique ``{'id', 'text', 'text_sha256'}`` records + dead letters.

  Returns a ``DoOutputsTuple``-like dict with ``'texts'`` and ``'dead_letter'``.
  """
  def __init__(
      self,
      stage: str,
      id_column: str,
      text_column: str,
      title_column: str | None = None,
      title_separator: str = '\n'):
    super().__init__()
    self._stage = stage
    self._id_column = id_column
    self._text_column = text_column
    self._title_column = title_column
    self._title_separator = title_separator

  def expand(self, rows):
    validated = rows | 'ValidateRows' >> beam.ParDo(
        _ValidateRowFn(
            self._stage, self._id_column, self._text_column,
            self._title_column, self._title_separator)).with_outputs(
                DEAD_LETTER_TAG, main='texts')
    unique = (
        validated.texts
        | 'KeyById' >> beam.WithKeys(lambda record: record['id'])
        | 'GroupById' >> beam.GroupByKey()
        | 'RejectDuplicateIds' >> beam.ParDo(
            _RejectDuplicateIdsFn(self._stage)).with_outputs(
                DEAD_LETTER_TAG, main='texts'))
    dead = ((validated[DEAD_LETTER_TAG], unique[DEAD_LETTER_TAG])
            | 'FlattenDeadLetters' >> beam.Flatten())
    return {'texts': unique.texts, DEAD_LETTER_TAG: dead}


class ReadTexts(beam.PTransform):
  """Pipeline -> Parquet rows -> ``PrepareTexts`` (same outputs), reading only
  the id, text and title columns."""
  def __init__(
      self,
      pattern: str,
      stage: str,
      id_column: str,
      text_column: str,
      title_column: str | None = None,
      title_separator: str = '\n'):
    super().__init__()
    self._pattern = pattern
    self._prepare = PrepareTexts(
        stage=stage, id_column=id_column, text_column=text_column,
        title_column=title_column, title_separator=title_separator)
    self._columns = [id_column, text_column] + ([title_column] if title_column else [])

  def expand(self, pbegin):
    return (
        pbegin
        | 'ReadParquet' >> beam.io.ReadFromParquet(self._pattern, columns=self._columns)
        | 'PrepareTexts' >> self._prepare)
