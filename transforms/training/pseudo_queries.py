"""Pseudo-queries made from the corpus itself, for mining without judgments.

Two sources, each giving a query, its source document (the positive) and the
positive's text with the query part removed, so a model cannot match by copy:

* ``title``: the document's title -> the text with the title cut from its start
  (Cranfield and CACM texts begin with their title). Id ``title:DOC_ID``.
* ``sentence``: one sentence -> the rest of its document (the inverse cloze
  task of Lee et al., ACL 2019). Id ``sentence:DOC_ID:N``, ``N`` the sentence's
  0-based index in the document. A leading title is never a sentence query.

Sentences end at ``.``, ``!``, ``?`` or ``…`` (repeats and closing quotes or
brackets included) followed by whitespace, or at a line break; any script
(Unicode ``\\s``). Abbreviations (``e.g. this``) are not recognised.

A query equal to its positive text (case and runs of whitespace aside), or one
whose query or positive is shorter than ``min_chars``, is not made.

For title queries the negatives must not differ from the positive by form: a
positive without its title next to negatives that begin with theirs would teach
"a leading title means not relevant". ``AttachPseudoTexts`` therefore shows title
queries' negatives without their titles too (``DocBodies``).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import re
from typing import Any, Iterable, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.hashing import stable_digest, stable_hash
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.core.settings import positive_int, setting
from transforms.core.texts import join_title

logger = logging.getLogger(__name__)

STAGE = 'mine'
TITLE = 'title'
SENTENCE = 'sentence'
PSEUDO_SOURCES = (TITLE, SENTENCE)
TITLE_QUERIES_TAG = 'title_queries'
# A sentence ends at terminal punctuation (with closing quotes/brackets) before
# whitespace or the end, or at a line break.
_SENTENCE_END = re.compile(r'[.!?…]+["\'”’»)\]]*(?=\s|$)|\n')
# What may separate a leading title from the body.
_AFTER_TITLE = ' \t\r\n:;,.|-–—'


def pseudo_sources(value: str) -> tuple[str, ...]:
  """argparse type: ``title,sentence`` -> ``('title', 'sentence')``."""
  try:
    return parse_sources(value)
  except ValueError as error:
    raise argparse.ArgumentTypeError(str(error)) from None


@dataclasses.dataclass(frozen=True)
class PseudoQuerySettings:
  """Which pseudo-queries to make, and how many.

  Args:
    sources: of ``PSEUDO_SOURCES``; empty: none.
    per_doc: sentence queries per document (at most).
    min_chars: the least characters of a query and of its positive text.
    max_docs: make queries from at most this many documents (a sample by
      ``seed``); None: every document.
    title_column: the corpus column with the title (title queries need it;
      sentence queries use it, when given, to skip a leading title).
    seed: picks the sentences and the sampled documents.
  """
  sources: tuple[str, ...] = setting(
      (), f'Comma-separated, of {",".join(PSEUDO_SOURCES)} (default: none).',
      flag='--pseudo-queries', type=pseudo_sources, metavar='SOURCES',
      group='pseudo-queries (no judgments needed)')
  per_doc: int = setting(
      1, 'Sentence queries per document, at most (default: %(default)s).', flag='--pseudo-per-doc',
      type=positive_int, metavar='N', group='pseudo-queries (no judgments needed)')
  min_chars: int = setting(
      20, 'The least characters of a pseudo-query and of its positive text '
      '(default: %(default)s).', flag='--pseudo-min-chars', type=positive_int, metavar='N',
      group='pseudo-queries (no judgments needed)')
  max_docs: Optional[int] = setting(
      None, 'Make pseudo-queries from at most N documents, a sample by --seed '
      '(default: all).', flag='--pseudo-max-docs', type=positive_int, metavar='N',
      group='pseudo-queries (no judgments needed)')
  title_column: Optional[str] = setting(
      None, "The corpus's title column (default: --doc-title-column, else 'title' when "
      'the corpus has it). Title queries need it; sentence queries use it to never '
      'take the leading title for a sentence.', flag='--pseudo-title-column', metavar='COLUMN',
      group='pseudo-queries (no judgments needed)')
  # The mine job's --seed (declared with the negatives' sampling).
  seed: int = setting(12, flag='--seed', type=int)

  def __post_init__(self):
    unknown = [s for s in self.sources if s not in PSEUDO_SOURCES]
    if unknown:
      raise ValueError(
          f'unknown pseudo-query source {", ".join(unknown)}; choose from '
          f'{", ".join(PSEUDO_SOURCES)}')
    if self.per_doc < 1:
      raise ValueError(f'per_doc must be >= 1, got {self.per_doc}')
    if self.min_chars < 1:
      raise ValueError(f'min_chars must be >= 1, got {self.min_chars}')
    if self.max_docs is not None and self.max_docs < 1:
      raise ValueError(f'max_docs must be >= 1, got {self.max_docs}')


def parse_sources(text: str) -> tuple[str, ...]:
  """``'title,sentence'`` -> ``('title', 'sentence')`` (order kept, repeats
  dropped); ``''`` -> ``()``.

  Raises:
    ValueError: a source not in ``PSEUDO_SOURCES``.
  """
  sources: list[str] = []
  for name in (part.strip() for part in text.split(',')):
    if not name:
      continue
    if name not in PSEUDO_SOURCES:
      raise ValueError(
          f'unknown pseudo-query source {name!r}; choose from {", ".join(PSEUDO_SOURCES)}')
    if name not in sources:
      sources.append(name)
  return tuple(sources)


def _squash(text: str) -> str:
  """Runs of whitespace -> one space, ends stripped."""
  return ' '.join(text.split())


def _same(a: str, b: str) -> bool:
  return _squash(a).casefold() == _squash(b).casefold()


def title_end(text: str, title: Any) -> int:
  """Where ``text`` continues after its leading title (0 if it does not begin
  with it): the title matched case-insensitively, any whitespace for its
  spaces, on a word boundary, repeats and separators (``:``, ``-``, ...) included."""
  if not isinstance(title, str) or not title.split() or not isinstance(text, str):
    return 0
  pattern = re.compile(
      r'\s*' + r'\s+'.join(re.escape(word) for word in title.split()) + r'(?!\w)',
      re.IGNORECASE)
  end = 0
  while True:
    match = pattern.match(text, end)
    if match is None:
      return end
    end = match.end()
    while end < len(text) and text[end] in _AFTER_TITLE:
      end += 1


def strip_title(text: str, title: Any) -> str:
  """``text`` without its leading title (unchanged when it does not begin with it)."""
  return text[title_end(text, title):].strip()


def title_queries(doc_id: str, title: Any, text: Any, min_chars: int) -> list[dict]:
  """A document's title query: ``[]`` or one record ``{'query_id': 'title:DOC_ID',
  'text': title, 'doc_id', 'source': 'title', 'positive': text without the title}``.

  Nothing for a blank title or text, a body (the text without the title)
  that is empty, equal to the title, or shorter than ``min_chars``, or a title
  shorter than ``min_chars``.
  """
  if not isinstance(title, str) or not isinstance(text, str):
    return []
  query = _squash(title)
  positive = strip_title(text, title)
  if (not query or not positive or len(query) < min_chars or len(positive) < min_chars
      or _same(query, positive)):
    return []
  return [{'query_id': f'{TITLE}:{doc_id}', 'text': query, 'doc_id': doc_id,
           'source': TITLE, 'positive': positive}]


def sentence_spans(text: str) -> list[tuple[int, int]]:
  """``(start, end)`` of each sentence of ``text`` (whitespace trimmed), in order."""
  spans: list[tuple[int, int]] = []

  def add(start: int, end: int) -> None:
    piece = text[start:end]
    left = start + len(piece) - len(piece.lstrip())
    right = end - (len(piece) - len(piece.rstrip()))
    if left < right:
      spans.append((left, right))

  start = 0
  for match in _SENTENCE_END.finditer(text):
    add(start, match.start() if match.group() == '\n' else match.end())
    start = match.end()
  add(start, len(text))
  return spans


def _without(text: str, start: int, end: int) -> str:
  """``text`` with ``[start, end)`` cut out; the neighbours keep the whitespace
  that preceded the cut."""
  left, right = text[:start].rstrip(), text[end:].lstrip()
  if left and right:
    return left + (text[len(left):start] or ' ') + right
  return (left or right).strip()


def sentence_queries(
    doc_id: str, text: Any, per_doc: int, min_chars: int, seed: int,
    title: Any = None) -> list[dict]:
  """Up to ``per_doc`` inverse-cloze queries of one document: records
  ``{'query_id': 'sentence:DOC_ID:N', 'text': the sentence, 'doc_id',
  'source': 'sentence', 'positive': the document without it}``, in document order.

  Eligible sentences: not part of the leading ``title``, at least ``min_chars``
  long, leaving at least ``min_chars`` and not equal to what they leave. Which
  are picked depends only on ``seed`` and ``doc_id``.
  """
  if not isinstance(text, str) or not text.strip():
    return []
  skip = title_end(text, title)
  eligible = []
  for index, (start, end) in enumerate(sentence_spans(text)):
    if start < skip:
      continue
    query = _squash(text[start:end])
    positive = _without(text, start, end)
    if len(query) >= min_chars and len(positive) >= min_chars and not _same(query, positive):
      eligible.append((index, query, positive))
  rng = random.Random(stable_hash(f'{seed}\t{doc_id}'))
  chosen = sorted(rng.sample(range(len(eligible)), min(per_doc, len(eligible))))
  return [{'query_id': f'{SENTENCE}:{doc_id}:{index}', 'text': query, 'doc_id': doc_id,
           'source': SENTENCE, 'positive': positive}
          for index, query, positive in (eligible[i] for i in chosen)]


@dataclasses.dataclass(frozen=True)
class CorpusColumns:
  """How corpus rows are read: as the corpus's passages are (title joined when
  ``doc_title_column``)."""
  id_column: str = 'doc_id'
  text_column: str = 'text'
  doc_title_column: Optional[str] = None
  title_separator: str = '\n'

  def doc(self, row: dict) -> Optional[tuple[str, str]]:
    """``(doc_id, passage)``, or None for a row the corpus dead-letters (a
    null or blank id or text)."""
    doc_id = row.get(self.id_column)
    text = row.get(self.text_column)
    if self.doc_title_column is not None:
      text = join_title(row.get(self.doc_title_column), text, self.title_separator)
    if doc_id is None or not str(doc_id).strip() or not isinstance(text, str) or not text.strip():
      return None
    return str(doc_id), text


class _PseudoQueriesFn(beam.DoFn):
  """One corpus row -> its pseudo-query records."""
  def __init__(self, settings: PseudoQuerySettings, columns: CorpusColumns):
    self._settings = settings
    self._columns = columns
    self._docs = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/pseudo_query_docs')
    self._without = Metrics.counter(
        METRICS_NAMESPACE, f'{STAGE}/pseudo_query_docs_without_queries')
    self._made = {source: Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/pseudo_queries_{source}')
                  for source in PSEUDO_SOURCES}

  def process(self, row: dict, sample: Optional[Iterable[str]] = None):
    doc = self._columns.doc(row)
    if doc is None or (sample is not None and doc[0] not in sample):
      return
    doc_id, passage = doc
    settings = self._settings
    title = row.get(settings.title_column) if settings.title_column else None
    records = []
    if TITLE in settings.sources:
      records += title_queries(doc_id, title, passage, settings.min_chars)
    if SENTENCE in settings.sources:
      records += sentence_queries(
          doc_id, passage, settings.per_doc, settings.min_chars, settings.seed, title)
    self._docs.inc()
    if not records:
      self._without.inc()
    for record in records:
      self._made[record['source']].inc()
      yield record


def _sample_key(row: dict, columns: CorpusColumns, seed: int) -> Iterable[tuple[bytes, str]]:
  """``(digest of (seed, doc_id), doc_id)``: bytes, which sort as the unsigned
  hash does and travel through any Beam coder."""
  doc = columns.doc(row)
  if doc is not None:
    yield stable_digest(f'{seed}\t{doc[0]}'), doc[0]


class PseudoQueries(beam.PTransform):
  """Corpus rows (as read from Parquet) -> pseudo-query records ``{'query_id',
  'text', 'doc_id', 'source', 'positive'}`` (see ``title_queries`` and
  ``sentence_queries``).

  Rows the corpus dead-letters (null or blank id or text) make none. With
  ``max_docs``, the documents whose ``hash(seed, doc_id)`` are the smallest.
  """
  def __init__(self, settings: PseudoQuerySettings, columns: CorpusColumns = CorpusColumns()):
    super().__init__()
    self._settings = settings
    self._columns = columns

  def expand(self, rows):
    fn = _PseudoQueriesFn(self._settings, self._columns)
    if self._settings.max_docs is None:
      return rows | 'MakePseudoQueries' >> beam.ParDo(fn)
    sample = (
        rows
        | 'SampleKeys' >> beam.FlatMap(_sample_key, self._columns, self._settings.seed)
        | 'SampleDocs' >> beam.combiners.Top.Smallest(self._settings.max_docs)
        | 'SampledIds' >> beam.Map(lambda keys: frozenset(doc_id for _, doc_id in keys)))
    return rows | 'MakePseudoQueries' >> beam.ParDo(
        fn, sample=beam.pvalue.AsSingleton(sample))


def _body(row: dict, columns: CorpusColumns, title_column: str) -> Iterable[tuple[str, str]]:
  doc = columns.doc(row)
  if doc is None:
    return
  doc_id, passage = doc
  body = strip_title(passage, row.get(title_column))
  if body and body != passage:
    yield doc_id, body


class DocBodies(beam.PTransform):
  """Corpus rows -> ``(doc_id, body)`` for the documents whose passage begins
  with their title: the passage without it (others are their passage)."""
  def __init__(self, title_column: str, columns: CorpusColumns = CorpusColumns()):
    super().__init__()
    self._title_column = title_column
    self._columns = columns

  def expand(self, rows):
    return rows | 'StripTitles' >> beam.FlatMap(_body, self._columns, self._title_column)


class _ApplyPseudoFn(beam.DoFn):
  """``(query_id, {'assembled', 'pseudo'})`` -> ``(MinedQuery, query_text,
  doc_texts, source)``: a pseudo-query's positive shown as its text without the
  query part (with no score: it was scored as the whole document); title
  queries to ``TITLE_QUERIES_TAG`` for their negatives' bodies."""
  def __init__(self, given_source: str, with_bodies: bool):
    self._given_source = given_source
    self._with_bodies = with_bodies

  def process(self, joined):
    _, groups = joined
    pseudo = sorted(set(groups['pseudo']))
    for mined, query_text, doc_texts in groups['assembled']:
      if not pseudo:
        yield mined, query_text, doc_texts, self._given_source
        continue
      positives = {doc_id: text for doc_id, text, _ in pseudo}
      doc_texts = dict(doc_texts)
      for doc_id in positives:
        if doc_id in doc_texts:
          doc_texts[doc_id] = positives[doc_id]
      mined = dataclasses.replace(mined, positives=[
          (doc_id, None if doc_id in positives else score)
          for doc_id, score in mined.positives])
      source = pseudo[0][2]
      item = (mined, query_text, doc_texts, source)
      if source == TITLE and self._with_bodies:
        yield beam.pvalue.TaggedOutput(TITLE_QUERIES_TAG, item)
      else:
        yield item


def _bodies_to_queries(joined):
  doc_id, groups = joined
  bodies = list(groups['bodies'])
  if bodies:
    for query_id in set(groups['queries']):
      yield query_id, (doc_id, bodies[0])


def _with_bodies(joined):
  _, groups = joined
  bodies = dict(groups['bodies'])
  for mined, query_text, doc_texts, source in groups['item']:
    negatives = {doc_id for doc_id, _ in mined.negatives}
    yield mined, query_text, {
        doc_id: bodies[doc_id] if doc_id in negatives and doc_id in bodies else text
        for doc_id, text in doc_texts.items()}, source


class AttachPseudoTexts(beam.PTransform):
  """The mine job's assembled queries ``(MinedQuery, query_text, doc_texts)`` +
  pseudo-query records (+ ``DocBodies``) -> ``(..., source)``.

  Inputs ``{'assembled', 'pseudo'[, 'bodies']}``. A pseudo-query's positive is
  shown as its ``positive`` text; a title query's negatives, with ``bodies``,
  without their titles; other queries are unchanged, with ``given_source``.
  """
  def __init__(self, given_source: str):
    super().__init__()
    self._given_source = given_source

  def expand(self, pcolls):
    bodies = pcolls.get('bodies')
    applied = (
        {'assembled': pcolls['assembled'] | 'AssembledById' >> beam.WithKeys(
            lambda item: item[0].query_id),
         'pseudo': pcolls['pseudo'] | 'PseudoById' >> beam.Map(
             lambda r: (r['query_id'], (r['doc_id'], r['positive'], r['source'])))}
        | 'JoinPseudoQueries' >> beam.CoGroupByKey()
        | 'ApplyPseudoPositives' >> beam.ParDo(
            _ApplyPseudoFn(self._given_source, bodies is not None)).with_outputs(
                TITLE_QUERIES_TAG, main='done'))
    if bodies is None:
      return applied.done
    titled = applied[TITLE_QUERIES_TAG]
    needed = titled | 'NegativesNeeded' >> beam.FlatMap(
        lambda item: [(doc_id, item[0].query_id) for doc_id, _ in item[0].negatives])
    bodies_per_query = (
        {'bodies': bodies, 'queries': needed}
        | 'JoinBodies' >> beam.CoGroupByKey()
        | 'BodiesToQueries' >> beam.FlatMap(_bodies_to_queries))
    swapped = (
        {'item': titled | 'TitledById' >> beam.WithKeys(lambda item: item[0].query_id),
         'bodies': bodies_per_query}
        | 'JoinTitledBodies' >> beam.CoGroupByKey()
        | 'NegativesWithoutTitles' >> beam.FlatMap(_with_bodies))
    return (applied.done, swapped) | 'FlattenPseudoTexts' >> beam.Flatten()
