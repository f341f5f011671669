"""transforms.core.texts: title joins, hashes, and PrepareTexts with its dead letters."""
from __future__ import annotations

import hashlib
import json

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.core.dead_letters import DEAD_LETTER_TAG, dead_letter, reason_code
from transforms.core.texts import METRICS_NAMESPACE, PrepareTexts, join_title, text_sha256

STAGE = 'encode'


def _record(record_id: str, text: str) -> dict:
  return {'id': record_id, 'text': text,
          'text_sha256': hashlib.sha256(text.encode('utf-8')).hexdigest()}


def _payload(row: dict) -> str:
  return json.dumps(row, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------- join_title

@pytest.mark.parametrize('title, text, expected', [
    ('Title', 'Body', 'Title\nBody'),
    ('Заголовок', 'Текст', 'Заголовок\nТекст'),
    (None, 'Body', 'Body'),
    ('', 'Body', 'Body'),
    ('   ', 'Body', 'Body'),
    (' Title ', 'Body', ' Title \nBody'),  # Kept as written: only blank titles are skipped.
    ('Title', None, None),  # A title alone is not a document.
    ('Title', '', ''),
    ('Title', '  \t', '  \t'),
    (None, None, None),
    (3, 'Body', 'Body'),  # Not a string: skipped.
])
def test_join_title(title, text, expected):
  assert join_title(title, text, '\n') == expected


def test_join_title_uses_the_separator():
  assert join_title('T', 'B', ' | ') == 'T | B'
  assert join_title('T', 'B', '') == 'TB'


# ---------------------------------------------------------------- text_sha256

def test_text_sha256_is_sha256_of_utf8():
  assert text_sha256('') == (
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')
  assert text_sha256('abc') == (
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad')
  assert text_sha256('Привет, мир') == hashlib.sha256(
      'Привет, мир'.encode('utf-8')).hexdigest()


def test_text_sha256_tells_texts_apart():
  assert text_sha256('a') != text_sha256('a ')
  assert text_sha256('е') != text_sha256('ё')
  assert len(text_sha256('x' * 10_000)) == 64


def test_text_sha256_accepts_lone_surrogates():
  # Strings decoded with surrogateescape must not crash the pipeline.
  assert text_sha256('\udcff') == hashlib.sha256(
      '\udcff'.encode('utf-8', 'surrogatepass')).hexdigest()


# ---------------------------------------------------------------- PrepareTexts

def _prepare(pipeline, rows, **kwargs):
  kwargs.setdefault('stage', STAGE)
  kwargs.setdefault('id_column', 'doc_id')
  kwargs.setdefault('text_column', 'text')
  return pipeline | 'CreateRows' >> beam.Create(rows) | PrepareTexts(**kwargs)


def test_prepare_texts_clean_rows():
  rows = [
      {'doc_id': 'a', 'text': 'first text'},
      {'doc_id': 'b', 'text': 'второй текст'},
      {'doc_id': 'c', 'text': '  padded  '},
  ]
  with TestPipeline() as p:
    out = _prepare(p, rows)
    assert_that(out['texts'], equal_to([
        _record('a', 'first text'),
        _record('b', 'второй текст'),
        _record('c', '  padded  '),  # Texts are not stripped.
    ]), label='CheckTexts')
    assert_that(out[DEAD_LETTER_TAG], equal_to([]), label='CheckDeadLetters')


def test_prepare_texts_integer_ids_become_strings():
  rows = [{'doc_id': 7, 'text': 'seven'}, {'doc_id': 0, 'text': 'zero'}]
  with TestPipeline() as p:
    out = _prepare(p, rows)
    assert_that(out['texts'], equal_to([
        _record('7', 'seven'), _record('0', 'zero')]), label='CheckTexts')
    assert_that(out[DEAD_LETTER_TAG], equal_to([]), label='CheckDeadLetters')


def test_prepare_texts_invalid_rows_are_dead_lettered():
  rows = [
      {'doc_id': 'ok', 'text': 'fine'},
      {'doc_id': None, 'text': 'no id'},
      {'doc_id': '', 'text': 'empty id'},
      {'doc_id': '  ', 'text': 'blank id'},
      {'doc_id': 'n', 'text': None},
      {'doc_id': 'e', 'text': ''},
      {'doc_id': 'w', 'text': ' \n\t '},
  ]
  with TestPipeline() as p:
    out = _prepare(p, rows)
    assert_that(out['texts'], equal_to([_record('ok', 'fine')]), label='CheckTexts')
    assert_that(out[DEAD_LETTER_TAG], equal_to([
        {'stage': STAGE, 'record_id': None,
         'reason': "null_id: column 'doc_id' is null",
         'payload': _payload({'doc_id': None, 'text': 'no id'})},
        {'stage': STAGE, 'record_id': '',
         'reason': "empty_id: column 'doc_id' is empty",
         'payload': _payload({'doc_id': '', 'text': 'empty id'})},
        {'stage': STAGE, 'record_id': '  ',
         'reason': "empty_id: column 'doc_id' is empty",
         'payload': _payload({'doc_id': '  ', 'text': 'blank id'})},
        {'stage': STAGE, 'record_id': 'n',
         'reason': "null_text: column 'text' is null",
         'payload': _payload({'doc_id': 'n', 'text': None})},
        {'stage': STAGE, 'record_id': 'e',
         'reason': "empty_text: column 'text' is empty or whitespace",
         'payload': _payload({'doc_id': 'e', 'text': ''})},
        {'stage': STAGE, 'record_id': 'w',
         'reason': "empty_text: column 'text' is empty or whitespace",
         'payload': _payload({'doc_id': 'w', 'text': ' \n\t '})},
    ]), label='CheckDeadLetters')


def test_prepare_texts_duplicate_id_same_text_keeps_one():
  rows = [
      {'doc_id': 'dup', 'text': 'same'},
      {'doc_id': 'dup', 'text': 'same'},
      {'doc_id': 'dup', 'text': 'same'},
      {'doc_id': 'solo', 'text': 'alone'},
  ]
  extra = dead_letter(
      STAGE, 'dup',
      'duplicate_id_same_text: 3 rows share this id and text; one copy was kept',
      _record('dup', 'same'))
  with TestPipeline() as p:
    out = _prepare(p, rows)
    assert_that(out['texts'], equal_to([
        _record('dup', 'same'), _record('solo', 'alone')]), label='CheckTexts')
    assert_that(out[DEAD_LETTER_TAG], equal_to([extra, extra]),
                label='CheckDeadLetters')


def test_prepare_texts_duplicate_id_different_texts_rejects_all():
  rows = [
      {'doc_id': 'dup', 'text': 'version one'},
      {'doc_id': 'dup', 'text': 'версия два'},
      {'doc_id': 'solo', 'text': 'alone'},
  ]
  reason = 'duplicate_id: 2 rows share this id with different texts; none was kept'
  with TestPipeline() as p:
    out = _prepare(p, rows)
    assert_that(out['texts'], equal_to([_record('solo', 'alone')]), label='CheckTexts')
    assert_that(out[DEAD_LETTER_TAG], equal_to([
        {'stage': STAGE, 'record_id': 'dup', 'reason': reason,
         'payload': _payload(_record('dup', 'version one'))},
        {'stage': STAGE, 'record_id': 'dup', 'reason': reason,
         'payload': _payload(_record('dup', 'версия два'))},
    ]), label='CheckDeadLetters')


def test_prepare_texts_duplicates_mixing_same_and_different_texts_reject_all():
  rows = [
      {'doc_id': 'dup', 'text': 'a'},
      {'doc_id': 'dup', 'text': 'a'},
      {'doc_id': 'dup', 'text': 'b'},
  ]
  with TestPipeline() as p:
    out = _prepare(p, rows)
    assert_that(out['texts'], equal_to([]), label='CheckTexts')
    assert_that(
        out[DEAD_LETTER_TAG]
        | beam.Map(lambda d: (d['record_id'], reason_code(d['reason']))),
        equal_to([('dup', 'duplicate_id')] * 3), label='CheckDeadLetters')


def test_prepare_texts_duplicate_check_sees_the_joined_text():
  # Same id and text but different titles: different documents.
  rows = [
      {'doc_id': 'd', 'title': 'One', 'text': 'body'},
      {'doc_id': 'd', 'title': 'Two', 'text': 'body'},
  ]
  with TestPipeline() as p:
    out = _prepare(p, rows, title_column='title')
    assert_that(out['texts'], equal_to([]), label='CheckTexts')
    assert_that(
        out[DEAD_LETTER_TAG] | beam.Map(lambda d: reason_code(d['reason'])),
        equal_to(['duplicate_id', 'duplicate_id']), label='CheckDeadLetters')


def test_prepare_texts_title_column():
  rows = [
      {'doc_id': 'a', 'title': 'Крыло', 'text': 'подъёмная сила'},
      {'doc_id': 'b', 'title': None, 'text': 'no title'},
      {'doc_id': 'c', 'title': '  ', 'text': 'blank title'},
      {'doc_id': 'd', 'title': 'Title only', 'text': ''},
  ]
  with TestPipeline() as p:
    out = _prepare(p, rows, title_column='title', title_separator=' :: ')
    assert_that(out['texts'], equal_to([
        _record('a', 'Крыло :: подъёмная сила'),
        _record('b', 'no title'),
        _record('c', 'blank title'),
    ]), label='CheckTexts')
    assert_that(out[DEAD_LETTER_TAG], equal_to([
        {'stage': STAGE, 'record_id': 'd',
         'reason': "empty_text: column 'text' is empty or whitespace",
         'payload': _payload({'doc_id': 'd', 'title': 'Title only', 'text': ''})},
    ]), label='CheckDeadLetters')


def test_prepare_texts_other_column_names_and_stage():
  rows = [{'query_id': 'q1', 'body': 'what is lift'}, {'query_id': 'q2', 'body': None}]
  with TestPipeline() as p:
    out = _prepare(p, rows, stage='queries', id_column='query_id', text_column='body')
    assert_that(out['texts'], equal_to([_record('q1', 'what is lift')]),
                label='CheckTexts')
    assert_that(out[DEAD_LETTER_TAG], equal_to([
        {'stage': 'queries', 'record_id': 'q2',
         'reason': "null_text: column 'body' is null",
         'payload': _payload({'query_id': 'q2', 'body': None})},
    ]), label='CheckDeadLetters')


def test_prepare_texts_counters():
  rows = [
      {'doc_id': 'a', 'text': 'one'},
      {'doc_id': None, 'text': 'two'},
      {'doc_id': 'c', 'text': ' '},
      {'doc_id': 'd', 'text': 'x'},
      {'doc_id': 'd', 'text': 'y'},
  ]
  p = TestPipeline()
  _ = _prepare(p, rows)
  result = p.run()
  result.wait_until_finish()
  counters = {
      c.key.metric.name: c.committed
      for c in result.metrics().query(
          MetricsFilter().with_namespace(METRICS_NAMESPACE))['counters']}
  assert counters == {
      f'{STAGE}/rows_in': 5,
      f'{STAGE}/rows_rejected': 2,
      f'{STAGE}/rows_duplicate_id': 2,
  }
