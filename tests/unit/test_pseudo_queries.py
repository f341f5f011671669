"""Pseudo-queries (``transforms.pseudo_queries``): title stripping, sentence
splitting (English, Russian, ``…``), picking per document, no query equal to its
own positive; the transforms in a TestPipeline."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.core.hashing import stable_hash
from transforms.training.mining import MinedQuery
from transforms.training.pseudo_queries import (
  AttachPseudoTexts,
  CorpusColumns,
  DocBodies,
  PseudoQueries,
  PseudoQuerySettings,
  parse_sources,
  sentence_queries,
  sentence_spans,
  strip_title,
  title_end,
  title_queries,
)

CRANFIELD_TITLE = 'experimental investigation of the aerodynamics of a wing in a slipstream .'
CRANFIELD_TEXT = (
    'experimental investigation of the aerodynamics of a wing in a slipstream . an '
    'experimental study of a wing in a propeller slipstream was made in order to determine '
    'the spanwise distribution of the lift increase due to slipstream . the results were '
    'intended in part as an evaluation basis for different theoretical treatments .')
CACM_TITLE = 'Accelerating Convergence of Iterative Processes'
CACM_TEXT = (
    'Accelerating Convergence of Iterative Processes\nA technique is discussed which '
    'accelerates the rate of convergence. An illustrative example is given.')
RUSSIAN = ('Биоразлагаемая упаковка делается из крахмала. Она распадается за месяц! '
           'Почему это важно для городов? Потому что пластик… остаётся на века.')


def sentences(text: str) -> list[str]:
  return [text[start:end] for start, end in sentence_spans(text)]


def squash(text: str) -> str:
  return ' '.join(text.split()).casefold()


# ---------------------------------------------------------------- titles


def test_title_query_strips_the_leading_title():
  (record,) = title_queries('1', CRANFIELD_TITLE, CRANFIELD_TEXT, 20)
  assert record == {
      'query_id': 'title:1', 'text': CRANFIELD_TITLE, 'doc_id': '1', 'source': 'title',
      'positive': CRANFIELD_TEXT[len(CRANFIELD_TITLE):].strip()}
  (record,) = title_queries('20', CACM_TITLE, CACM_TEXT, 20)
  assert record['positive'] == CACM_TEXT.split('\n', 1)[1]


def test_title_matches_across_whitespace_case_repeats_and_separators():
  assert strip_title('Wing  Flow\nof a plate: the body.', 'wing flow of a plate') == 'the body.'
  # --doc-title-column on a text that already begins with its title: both go.
  assert strip_title('Wing flow\nWing flow. The body.', 'Wing flow') == 'The body.'
  # A title is matched on a word boundary only.
  assert title_end('Introduction to flows.', 'Intro') == 0
  assert strip_title('Introduction to flows.', 'Intro') == 'Introduction to flows.'


def test_text_not_starting_with_its_title_is_the_positive_whole():
  (record,) = title_queries('7', 'Wing pressure at low speed', 'The body says it all here.', 5)
  assert record['positive'] == 'The body says it all here.'
  assert record['text'] == 'Wing pressure at low speed'


@pytest.mark.parametrize('title, text', [
    ('Preliminary Report-International Algebraic Language',  # CACM: text = title
     'Preliminary Report-International Algebraic Language'),
    ('Same words here', 'same   words HERE'),  # equal to its positive
    (None, 'A text with no title at all.'),
    ('   ', 'A text with a blank title.'),
    ('A title long enough', None),
])
def test_no_title_query_without_a_body_or_equal_to_it(title, text):
  assert title_queries('d', title, text, 1) == []


def test_title_min_chars_on_query_and_positive():
  assert title_queries('d', 'Short', 'Short. A body long enough to pass.', 10) == []
  assert title_queries('d', 'A title long enough', 'A title long enough. Tiny.', 10) == []
  assert len(title_queries('d', 'A title long enough', 'A title long enough. Body ok.', 5)) == 1


# ---------------------------------------------------------------- sentences


def test_sentence_split_english_and_russian():
  assert sentences('One is here. Two! Three?  Four…\tFive... Six?! Seven') == [
      'One is here.', 'Two!', 'Three?', 'Four…', 'Five...', 'Six?!', 'Seven']
  assert sentences(RUSSIAN) == [
      'Биоразлагаемая упаковка делается из крахмала.', 'Она распадается за месяц!',
      'Почему это важно для городов?', 'Потому что пластик…', 'остаётся на века.']


def test_sentence_split_keeps_closers_numbers_and_ends_at_line_breaks():
  assert sentences('He said "yes." Then (he left.) Mach 3.5 flow\nTitle line\n\nLast.') == [
      'He said "yes."', 'Then (he left.)', 'Mach 3.5 flow', 'Title line', 'Last.']
  assert sentences('  ') == []
  assert sentences('no end mark') == ['no end mark']


def test_sentence_query_is_one_sentence_positive_is_the_rest():
  text = 'First sentence is here. Second one follows it. Third closes the text.'
  records = sentence_queries('d1', text, 3, 5, 0)
  assert [(r['query_id'], r['text'], r['positive']) for r in records] == [
      ('sentence:d1:0', 'First sentence is here.',
       'Second one follows it. Third closes the text.'),
      ('sentence:d1:1', 'Second one follows it.',
       'First sentence is here. Third closes the text.'),
      ('sentence:d1:2', 'Third closes the text.',
       'First sentence is here. Second one follows it.')]
  assert {r['source'] for r in records} == {'sentence'}
  assert {r['doc_id'] for r in records} == {'d1'}


def test_sentence_queries_in_russian():
  records = sentence_queries('r', RUSSIAN, 5, 15, 3)
  assert [r['text'] for r in records] == [
      'Биоразлагаемая упаковка делается из крахмала.', 'Она распадается за месяц!',
      'Почему это важно для городов?', 'Потому что пластик…', 'остаётся на века.']
  for record in records:
    assert record['text'] not in record['positive']
    assert len(record['positive']) + len(record['text']) + 1 == len(RUSSIAN)


def test_sentence_positive_keeps_the_whitespace_before_the_cut():
  (record,) = [r for r in sentence_queries('d', 'Head line\nBody one is here. Body two.', 3, 5, 0)
               if r['text'] == 'Body one is here.']
  assert record['positive'] == 'Head line\nBody two.'


def test_sentence_queries_skip_the_leading_title():
  records = sentence_queries('1', CRANFIELD_TEXT, 10, 5, 0, title=CRANFIELD_TITLE)
  assert [r['query_id'] for r in records] == ['sentence:1:1', 'sentence:1:2']
  for record in records:
    assert record['positive'].startswith(CRANFIELD_TITLE)
  records = sentence_queries('20', CACM_TEXT, 10, 5, 0, title=CACM_TITLE)
  assert [r['text'] for r in records] == [
      'A technique is discussed which accelerates the rate of convergence.',
      'An illustrative example is given.']
  # Without the title, the title line is a sentence like any other.
  assert sentence_queries('20', CACM_TEXT, 10, 5, 0)[0]['text'] == CACM_TITLE


def test_per_doc_min_chars_and_determinism():
  text = ' '.join(f'Sentence number {i} of this document.' for i in range(10))
  picked = {seed: [r['query_id'] for r in sentence_queries('d', text, 3, 10, seed)]
            for seed in range(8)}
  assert all(len(ids) == 3 for ids in picked.values())
  assert all(ids == sorted(ids, key=lambda i: int(i.rsplit(':', 1)[1]))
             for ids in picked.values())  # document order
  assert len({tuple(ids) for ids in picked.values()}) > 1  # the seed matters
  assert [r['query_id'] for r in sentence_queries('d', text, 3, 10, 5)] == picked[5]
  # min_chars: only the long sentences, and only with enough left.
  mixed = 'Tiny. A much longer sentence than the tiny one. Also small.'
  assert [r['text'] for r in sentence_queries('d', mixed, 5, 15, 0)] == [
      'A much longer sentence than the tiny one.']
  assert sentence_queries('d', mixed, 5, 18, 0) == []  # 'Tiny. Also small.' is left
  assert sentence_queries('d', mixed, 5, 20, 0, title=None) == sentence_queries(
      'd', mixed, 5, 20, 0)
  assert sentence_queries('d', 'Only one sentence here, nothing else.', 5, 1, 0) == []


@pytest.mark.parametrize('text', [
    'Same sentence here. Same sentence here.',
    'Same sentence here\nsame  sentence HERE',
])
def test_no_sentence_query_equals_its_positive(text):
  assert sentence_queries('d', text, 5, 1, 0) == []


def test_no_pseudo_query_ever_equals_its_positive():
  docs = [(CRANFIELD_TITLE, CRANFIELD_TEXT), (CACM_TITLE, CACM_TEXT), (None, RUSSIAN),
          ('Repeat', 'Repeat. Repeat. Repeat.'), ('A b', 'A b\nA b')]
  for i, (title, text) in enumerate(docs):
    records = (title_queries(str(i), title, text, 1) +
               sentence_queries(str(i), text, 10, 1, 0, title=title))
    for record in records:
      assert squash(record['text']) != squash(record['positive']), record
      assert record['positive'].strip()


# ---------------------------------------------------------------- settings


def test_parse_sources_and_settings():
  assert parse_sources('title, sentence,title') == ('title', 'sentence')
  assert parse_sources('') == ()
  with pytest.raises(ValueError, match="unknown pseudo-query source 'ict'"):
    parse_sources('title,ict')
  with pytest.raises(ValueError, match='per_doc'):
    PseudoQuerySettings(sources=('sentence',), per_doc=0)
  with pytest.raises(ValueError, match='unknown pseudo-query source'):
    PseudoQuerySettings(sources=('titles',))


# ---------------------------------------------------------------- transforms

ROWS = [
    {'doc_id': 'd1', 'title': 'Wing flow at low speed',
     'text': 'Wing flow at low speed\nThe wing stalls at high angles. Flow separates early.'},
    {'doc_id': 'd2', 'title': 'Упаковка из крахмала',
     'text': 'Упаковка из крахмала распадается за месяц. Пластик остаётся на века!'},
    {'doc_id': 'd3', 'title': None, 'text': 'No title here. Two sentences though.'},
    {'doc_id': None, 'title': 'Null id', 'text': 'Null id. Never a query.'},
    {'doc_id': 'd5', 'title': 'Blank text', 'text': '   '},
]
SETTINGS = PseudoQuerySettings(
    sources=('title', 'sentence'), per_doc=1, min_chars=5, title_column='title', seed=3)


def expected_records(settings: PseudoQuerySettings, rows=ROWS) -> list[dict]:
  out = []
  for row in rows:
    if row['doc_id'] is None or not row['text'].strip():
      continue
    out += title_queries(row['doc_id'], row['title'], row['text'], settings.min_chars)
    out += sentence_queries(row['doc_id'], row['text'], settings.per_doc, settings.min_chars,
                            settings.seed, row['title'])
  return out


def test_expected_records_cover_both_sources_and_scripts():
  records = expected_records(SETTINGS)
  assert [r['query_id'] for r in records] == [
      'title:d1', f'sentence:d1:{records[1]["query_id"].rsplit(":", 1)[1]}',
      'title:d2', records[3]['query_id'], records[4]['query_id']]
  assert records[2]['positive'] == 'распадается за месяц. Пластик остаётся на века!'
  assert records[1]['query_id'] in ('sentence:d1:1', 'sentence:d1:2')  # not the title line


def test_pseudo_queries_transform():
  with TestPipeline() as p:
    rows = p | beam.Create(ROWS)
    made = rows | 'Made' >> PseudoQueries(SETTINGS)
    assert_that(made, equal_to(expected_records(SETTINGS)), label='Records')
    sentence_only = rows | 'SentenceOnly' >> PseudoQueries(
        PseudoQuerySettings(sources=('sentence',), per_doc=5, min_chars=5, seed=3))
    assert_that(sentence_only | beam.Map(lambda r: r['query_id']), equal_to(
        ['sentence:d1:0', 'sentence:d1:1', 'sentence:d1:2', 'sentence:d2:0', 'sentence:d2:1',
         'sentence:d3:0', 'sentence:d3:1']), label='NoTitleColumn')


def test_pseudo_queries_max_docs_samples_documents():
  """The documents with the smallest hash(seed, doc_id): the same every run."""
  rows = [{'doc_id': f'd{i}', 'text': f'Document {i} first part. Document {i} second part.'}
          for i in range(20)]
  settings = PseudoQuerySettings(sources=('sentence',), min_chars=5, max_docs=4, seed=1)
  chosen = sorted(f'd{i}' for i in sorted(
      range(20), key=lambda i: (stable_hash(f'1\td{i}'), f'd{i}'))[:4])
  with TestPipeline() as p:
    docs = (p | beam.Create(rows) | PseudoQueries(settings)
            | beam.Map(lambda r: r['doc_id']) | beam.combiners.ToList() | beam.Map(sorted))
    assert_that(docs, equal_to([chosen]))


def test_corpus_columns_join_the_title_like_the_corpus():
  columns = CorpusColumns('id', 'body', 'head', ' | ')
  assert columns.doc({'id': 7, 'body': 'Text.', 'head': 'Head'}) == ('7', 'Head | Text.')
  assert columns.doc({'id': 7, 'body': ' ', 'head': 'Head'}) is None
  assert columns.doc({'id': ' ', 'body': 'Text.', 'head': None}) is None


def test_doc_bodies():
  with TestPipeline() as p:
    bodies = p | beam.Create(ROWS) | DocBodies('title')
    assert_that(bodies, equal_to([
        ('d1', 'The wing stalls at high angles. Flow separates early.'),
        ('d2', 'распадается за месяц. Пластик остаётся на века!')]))


def test_attach_pseudo_texts():
  """A pseudo-query's positive is its stripped text (no score); a title query's
  negatives lose their titles; judged queries pass unchanged with their source."""
  full = {'d1': 'Wing flow\nWing body.', 'd2': 'Other title\nOther body.', 'd3': 'Plain.'}
  assembled = [
      (MinedQuery('title:d1', [('d1', 9.0)], [('d2', 3.0), ('d3', 1.0)], {}),
       'Wing flow', dict(full)),
      (MinedQuery('sentence:d2:1', [('d2', 8.0)], [('d1', 2.0)], {}),
       'Other body.', dict(full)),
      (MinedQuery('q1', [('d3', 5.0)], [('d1', 4.0)], {}), 'judged', dict(full)),
  ]
  pseudo = [
      {'query_id': 'title:d1', 'text': 'Wing flow', 'doc_id': 'd1', 'source': 'title',
       'positive': 'Wing body.'},
      {'query_id': 'sentence:d2:1', 'text': 'Other body.', 'doc_id': 'd2',
       'source': 'sentence', 'positive': 'Other title'},
  ]
  bodies = [('d1', 'Wing body.'), ('d2', 'Other body.')]

  def view(item):
    mined, query_text, doc_texts, source = item
    shown = {d: doc_texts[d] for d, _ in mined.positives + mined.negatives}
    return mined.query_id, mined.positives, query_text, shown, source

  with TestPipeline() as p:
    out = {'assembled': p | 'A' >> beam.Create(assembled),
           'pseudo': p | 'P' >> beam.Create(pseudo),
           'bodies': p | 'B' >> beam.Create(bodies)} | AttachPseudoTexts('qrels')
    assert_that(out | beam.Map(view), equal_to([
        ('title:d1', [('d1', None)], 'Wing flow',
         {'d1': 'Wing body.', 'd2': 'Other body.', 'd3': 'Plain.'}, 'title'),
        ('sentence:d2:1', [('d2', None)], 'Other body.',
         {'d2': 'Other title', 'd1': 'Wing flow\nWing body.'}, 'sentence'),
        ('q1', [('d3', 5.0)], 'judged', {'d3': 'Plain.', 'd1': 'Wing flow\nWing body.'},
         'qrels'),
    ]))
