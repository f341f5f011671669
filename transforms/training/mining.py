"""Hard-negative mining per query, with the guards of
``sentence_transformers.util.mine_hard_negatives``, as small Beam transforms.

For one query: the candidate pool is its best ``range_max + #positives + 1``
candidates in retrieval order (one place for a document whose text equals the
query's, as sentence-transformers 6.3 keeps); positives and any candidate whose
text equals the query's are removed; margin guards (against
the query's *weakest* positive, as sentence-transformers does), ``max_score``
and ``min_score`` drop candidates (one without a score fails every score
guard); the rest are ordered by score (desc, then doc_id), the first
``range_min`` skipped, and ``num_negatives`` taken from the top or sampled
(seeded by query id, so runs are deterministic).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import random
from typing import Iterable, Literal, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.dead_letters import DEAD_LETTER_TAG, dead_letter
from transforms.core.hashing import stable_hash
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.core.settings import positive_int, setting
from transforms.core.splits import split_of
from transforms.retrieval.candidate_checks import (
  CheckCandidateFn,
  candidate_problem,
  duplicate_pair_reason,
  first_per_doc,
  retrieval_order,
  unknown_id_reason,
)

STAGE = 'mine'
GUARDS = ('positive', 'same_text_as_query', 'range_max', 'absolute_margin', 'relative_margin',
          'max_score', 'min_score', 'positive_score_unknown', 'range_min',
          'not_sampled')


@dataclasses.dataclass(frozen=True)
class NegativeMiningSettings:
  """The guards and sampling of hard-negative mining (sentence-transformers' names)."""
  num_negatives: int = setting(
      3, '(default: %(default)s)', type=positive_int,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  range_min: int = setting(
      0, 'Skip the best N candidates (after the other guards) (default: %(default)s).', type=int,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  range_max: Optional[int] = setting(
      None, 'Consider only the first N candidates in retrieval order (plus one per positive).',
      type=positive_int,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  max_score: Optional[float] = setting(
      None, 'Drop candidates scoring above this.', type=float,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  min_score: Optional[float] = setting(
      None, 'Drop candidates scoring below this.', type=float,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  absolute_margin: Optional[float] = setting(
      None, 'Keep a negative only if score + margin <= weakest positive score.', type=float,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  relative_margin: Optional[float] = setting(
      None, 'Keep a negative only if score <= p - |p| * margin (p: weakest positive score).',
      type=float, group='negatives (sentence-transformers mine_hard_negatives semantics)')
  sampling_strategy: Literal['top', 'random'] = setting(
      'top', '(default: %(default)s)', flag='--sampling', choices=['top', 'random'],
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  seed: int = setting(
      12, 'For --sampling random, and the sentences and documents --pseudo-queries '
      'picks (default: %(default)s).', type=int,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  min_relevance: int = setting(
      1, '(default: %(default)s)', type=int, group='labels')
  # Pseudo-labels (no qrels): positive at/above, negative candidates at/below.
  positive_threshold: Optional[float] = setting(
      None, 'No qrels: candidates scoring >= this are pseudo-positives (marked as such in the '
      'manifest).', type=float, group='labels')
  negative_threshold: Optional[float] = setting(
      None, 'No qrels: only candidates scoring <= this may be negatives.', type=float,
      group='labels')

  def best_ranked(self, num_negatives: int) -> NegativeMiningSettings:
    """These guards, taking the ``num_negatives`` best-ranked negatives they
    leave (no range_min, no sampling): how ``--dev-negatives`` mines dev queries."""
    return dataclasses.replace(
        self, num_negatives=num_negatives, range_min=0, sampling_strategy='top')


@dataclasses.dataclass
class Candidate:
  doc_id: str
  score: Optional[float]
  retrieval_rank: int
  # The document's text is the query's own text: never a negative.
  same_text_as_query: bool = False


@dataclasses.dataclass
class MinedQuery:
  """One query's result: positives and negatives as ``(doc_id, score)``."""
  query_id: str
  positives: list[tuple[str, Optional[float]]]
  negatives: list[tuple[str, Optional[float]]]
  dropped: dict[str, int]


def _score_order(candidate: Candidate) -> tuple:
  score = -math.inf if candidate.score is None else candidate.score
  return (-score, candidate.doc_id)


def mine_query(
    query_id: str,
    candidates: Sequence[Candidate],
    positive_ids: Sequence[str],
    config: NegativeMiningSettings,
) -> MinedQuery:
  """Mines one query's negatives from its candidates (see the module doc)."""
  dropped = {guard: 0 for guard in GUARDS}
  by_doc = {c.doc_id: c for c in candidates}
  positives = sorted(set(positive_ids))
  positive_scores = [by_doc[p].score for p in positives
                     if p in by_doc and by_doc[p].score is not None]
  pool = sorted(candidates, key=lambda c: (c.retrieval_rank, c.doc_id))
  if config.range_max is not None:
    limit = config.range_max + len(positives) + 1
    dropped['range_max'] = max(0, len(pool) - limit)
    pool = pool[:limit]
  positive_set = set(positives)
  kept = []
  for candidate in pool:
    if candidate.doc_id in positive_set:
      dropped['positive'] += 1
    elif candidate.same_text_as_query:
      dropped['same_text_as_query'] += 1
    else:
      kept.append(candidate)
  needs_margin = config.absolute_margin is not None or config.relative_margin is not None
  if needs_margin:
    if not positive_scores:
      dropped['positive_score_unknown'] += len(kept)
      kept = []
    else:
      weakest = min(positive_scores)
      if config.absolute_margin is not None:
        before = len(kept)
        kept = [c for c in kept
                if not (c.score is None or c.score + config.absolute_margin > weakest)]
        dropped['absolute_margin'] += before - len(kept)
      if config.relative_margin is not None:
        threshold = weakest - abs(weakest) * config.relative_margin
        before = len(kept)
        kept = [c for c in kept if not (c.score is None or c.score > threshold)]
        dropped['relative_margin'] += before - len(kept)
  if config.max_score is not None:
    before = len(kept)
    kept = [c for c in kept if not (c.score is None or c.score > config.max_score)]
    dropped['max_score'] += before - len(kept)
  if config.min_score is not None:
    before = len(kept)
    kept = [c for c in kept if not (c.score is None or c.score < config.min_score)]
    dropped['min_score'] += before - len(kept)
  kept.sort(key=_score_order)
  skipped = kept[:config.range_min]
  dropped['range_min'] += len(skipped)
  kept = kept[config.range_min:]
  if config.sampling_strategy == 'random' and len(kept) > config.num_negatives:
    rng = random.Random(stable_hash(f'{config.seed}\t{query_id}'))
    chosen = sorted(rng.sample(range(len(kept)), config.num_negatives))
    negatives = [kept[i] for i in chosen]
  else:
    negatives = kept[:config.num_negatives]
  dropped['not_sampled'] += len(kept) - len(negatives)
  return MinedQuery(
      query_id=query_id,
      positives=[(p, by_doc[p].score if p in by_doc else None) for p in positives],
      negatives=[(c.doc_id, c.score) for c in negatives],
      dropped=dropped)


def pseudo_label(
    candidates: Sequence[Candidate],
    config: NegativeMiningSettings) -> tuple[list[str], list[Candidate]]:
  """Without qrels: positives are candidates scoring >= positive_threshold;
  only candidates scoring <= negative_threshold may become negatives."""
  positives = [c.doc_id for c in candidates
               if c.score is not None and c.score >= config.positive_threshold]
  pool = [c for c in candidates
          if c.doc_id in positives or config.negative_threshold is None or
          (c.score is not None and c.score <= config.negative_threshold)]
  return positives, pool


class _MineQueryFn(beam.DoFn):
  """``(query_id, {'candidates': rows, 'qrels': rows})`` -> ``MinedQuery``; the
  queries of the dev split are mined with ``dev_config`` when given (see
  ``MineNegatives``)."""
  def __init__(self, config: NegativeMiningSettings, score_field: str,
               dev_config: Optional[NegativeMiningSettings] = None,
               dev_fraction: float = 0.0, pseudo_in_dev: bool = True):
    self._config = config
    self._score_field = score_field
    self._dev_config = dev_config
    self._dev_fraction = dev_fraction
    self._pseudo_in_dev = pseudo_in_dev
    self._queries = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/queries')
    self._with_positives = Metrics.counter(
        METRICS_NAMESPACE, f'{STAGE}/queries_with_positives')
    self._without_positives = Metrics.counter(
        METRICS_NAMESPACE, f'{STAGE}/queries_without_positives')
    self._without_negatives = Metrics.counter(
        METRICS_NAMESPACE, f'{STAGE}/queries_without_negatives')
    self._positives = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/positives')
    self._negatives = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/negatives_kept')
    self._dropped = {
        guard: Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/dropped_{guard}')
        for guard in GUARDS}

    self._without_positives_rows = Metrics.counter(
        METRICS_NAMESPACE, f'{STAGE}/candidates_without_positives')
    self._qrels_without_candidates = Metrics.counter(
        METRICS_NAMESPACE, f'{STAGE}/qrels_without_candidates')
    self._dropped_negative_threshold = Metrics.counter(
        METRICS_NAMESPACE, f'{STAGE}/dropped_negative_threshold')

  def process(self, joined):
    mined = self._mine(*joined)
    if mined is not None:
      yield mined

  def _mine(self, query_id, groups) -> Optional[MinedQuery]:
    rows = list(groups['candidates'])
    if not rows:
      # Judged, but never retrieved (or an unknown query): nothing to mine from.
      self._qrels_without_candidates.inc(len(list(groups['qrels'])))
      return None
    self._queries.inc()
    candidates = []
    for index, row in enumerate(sorted(
        rows, key=functools.partial(retrieval_order, score_field=self._score_field))):
      score = row.get(self._score_field)
      candidates.append(Candidate(
          doc_id=row['doc_id'], score=None if score is None else float(score),
          retrieval_rank=index + 1,
          same_text_as_query=bool(row.get('same_text_as_query'))))
    if self._config.positive_threshold is not None:
      before = len(candidates)
      positive_ids, candidates = pseudo_label(candidates, self._config)
      self._dropped_negative_threshold.inc(before - len(candidates))
    else:
      positive_ids = [
          q['doc_id'] for q in groups['qrels']
          if q['relevance'] is not None and q['relevance'] >= self._config.min_relevance]
    if not positive_ids:
      self._without_positives.inc()
      self._without_positives_rows.inc(len(candidates))
      return None
    self._with_positives.inc()
    config = self._config
    if self._dev_config is not None and query_split(
        query_id, self._dev_fraction, any(q.get('pseudo') for q in groups['qrels']),
        self._pseudo_in_dev) == 'dev':
      config = self._dev_config
    mined = mine_query(query_id, candidates, positive_ids, config)
    self._positives.inc(len(mined.positives))
    self._negatives.inc(len(mined.negatives))
    if not mined.negatives:
      self._without_negatives.inc()
    for guard, count in mined.dropped.items():
      if count:
        self._dropped[guard].inc(count)
    return mined


def _mined_candidate(
    row: dict, query_id: str, doc_id: str, score: Optional[float]) -> dict:
  return {'query_id': query_id, 'doc_id': doc_id,
          'retrieval_rank': row.get('retrieval_rank'), 'score': score}


def check_candidates(score_field: Optional[str]) -> CheckCandidateFn:
  """The mine job's candidate check: ``{query_id, doc_id, retrieval_rank,
  score}`` rows, or dead letters (see ``candidate_checks``)."""
  return CheckCandidateFn(
      STAGE, score_field, _mined_candidate, rows_in_counter='candidates_in',
      rejected_counter='candidates_rejected')


class CheckQrelFn(beam.DoFn):
  """A qrels (or positives) row -> ``{query_id, doc_id, relevance}``, or a
  dead letter: a null/blank id or (qrels) a null relevance. A positives table
  has no relevance column: every row is relevant (1)."""
  def __init__(self, has_relevance: bool):
    self._has_relevance = has_relevance
    self._rows_in = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/qrels_in')
    self._rejected = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/qrels_rejected')

  def process(self, row: dict):
    self._rows_in.inc()
    query_id, doc_id = row.get('query_id'), row.get('doc_id')
    relevance = row.get('relevance') if self._has_relevance else 1
    reason = candidate_problem(query_id, doc_id, None, what='judgment')
    if reason is None and relevance is None:
      reason = 'null_relevance: judgment has no relevance'
    if reason is not None:
      self._rejected.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
          f'{STAGE}/qrels', None if query_id is None else f'{query_id}\t{doc_id}',
          reason, row))
      return
    yield {'query_id': str(query_id), 'doc_id': str(doc_id), 'relevance': int(relevance)}


class _KnownDocFn(beam.DoFn):
  """``(doc_id, {'texts', 'candidates'})`` -> the candidates with the hash of
  the document's text (``doc_text_sha256``), or (no text) one
  ``unknown_doc_id`` dead letter each. Streams: one doc's candidates are
  never held together."""
  def __init__(self):
    self._rejected = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/candidates_rejected')
    self._missing = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/mined_ids_without_text')

  def process(self, joined):
    doc_id, groups = joined
    text_hash = next(iter(groups['texts']), None)
    for candidate in groups['candidates']:
      if text_hash is not None:
        yield dict(candidate, doc_text_sha256=text_hash)
        continue
      self._rejected.inc()
      self._missing.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
          f'{STAGE}/join', f'{candidate["query_id"]}\t{doc_id}',
          unknown_id_reason(
              'doc_id', doc_id,
              'has no text in --corpus (or was dead-lettered there); not a candidate'),
          candidate))


class _KnownQueryFn(beam.DoFn):
  """``(query_id, {'texts', 'candidates'})`` -> the query's candidates, one per
  doc (the first in retrieval order; ``duplicate_pair`` dead letters for the
  other copies), each with ``same_text_as_query`` (its text is the query's),
  or (no text) one ``unknown_query_id`` dead letter for the query naming its
  candidates."""
  def __init__(self):
    self._rejected = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/candidates_rejected')
    self._missing = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/mined_ids_without_text')
    self._duplicates = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/duplicate_pairs')

  def process(self, joined):
    query_id, groups = joined
    candidates = sorted(groups['candidates'], key=retrieval_order)
    if not candidates:
      return
    query_hash = next(iter(groups['texts']), None)
    if query_hash is None:
      self._rejected.inc(len(candidates))
      self._missing.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
          f'{STAGE}/join', query_id,
          'unknown_query_id: the query has candidates but no text in --queries (or '
          'was dead-lettered there); nothing mined for it',
          {'query_id': query_id, 'candidates': len(candidates),
           'doc_ids': [c['doc_id'] for c in candidates]}))
      return
    for candidate, duplicate in first_per_doc(candidates):
      candidate = dict(candidate)
      doc_hash = candidate.pop('doc_text_sha256', None)
      if duplicate:
        self._rejected.inc()
        self._duplicates.inc()
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
            f'{STAGE}/candidates', f'{query_id}\t{candidate["doc_id"]}',
            duplicate_pair_reason('the copy first in retrieval order'), candidate))
        continue
      candidate['same_text_as_query'] = doc_hash == query_hash
      yield candidate


class KnownCandidates(beam.PTransform):
  """``{'candidates', 'queries', 'corpus'}`` (checked candidates, text records
  of ``texts.PrepareTexts``, with their ``text_sha256``)
  -> ``{'candidates', 'dead_letter'}``: only candidates whose doc and query have
  a text, once per (query, doc), marked ``same_text_as_query`` where the two
  texts are equal. Negatives are mined from these, so a missing text never
  takes a negative's place."""
  def expand(self, pcolls):
    known_docs = (
        {'texts': pcolls['corpus'] | 'CorpusIds' >> beam.Map(
            lambda r: (r['id'], r['text_sha256'])),
         'candidates': pcolls['candidates'] | 'CandidatesByDoc' >> beam.WithKeys(
             lambda c: c['doc_id'])}
        | 'JoinDocIds' >> beam.CoGroupByKey()
        | 'KnownDocs' >> beam.ParDo(_KnownDocFn()).with_outputs(
            DEAD_LETTER_TAG, main='candidates'))
    known = (
        {'texts': pcolls['queries'] | 'QueryIds' >> beam.Map(
            lambda r: (r['id'], r['text_sha256'])),
         'candidates': known_docs.candidates | 'CandidatesByQuery' >> beam.WithKeys(
             lambda c: c['query_id'])}
        | 'JoinQueryIds' >> beam.CoGroupByKey()
        | 'KnownQueries' >> beam.ParDo(_KnownQueryFn()).with_outputs(
            DEAD_LETTER_TAG, main='candidates'))
    dead = ((known_docs[DEAD_LETTER_TAG], known[DEAD_LETTER_TAG])
            | 'FlattenDeadLetters' >> beam.Flatten())
    return {'candidates': known.candidates, DEAD_LETTER_TAG: dead}


class MineNegatives(beam.PTransform):
  """``{'candidates': rows, 'qrels': rows}`` -> one ``MinedQuery`` per query.

  Grouped per query (``CoGroupByKey``): memory is one query's candidates. With
  ``dev_config``, the queries that fall in the dev split (``split_of(query_id,
  dev_fraction)``; a pseudo-query's qrels carry ``pseudo``, and those queries
  train unless ``pseudo_in_dev``) are mined with it instead.
  """
  def __init__(self, config: NegativeMiningSettings, score_field: str,
               dev_config: Optional[NegativeMiningSettings] = None,
               dev_fraction: float = 0.0, pseudo_in_dev: bool = True):
    super().__init__()
    self._config = config
    self._score_field = score_field
    self._dev = (dev_config, dev_fraction, pseudo_in_dev)

  def expand(self, pcolls):
    keyed = {
        'candidates': pcolls['candidates'] | 'CandidatesByQuery' >> beam.WithKeys(
            lambda r: r['query_id']),
        'qrels': pcolls['qrels'] | 'QrelsByQuery' >> beam.WithKeys(
            lambda r: r['query_id']),
    }
    return (
        keyed
        | 'GroupPerQuery' >> beam.CoGroupByKey()
        | 'MinePerQuery' >> beam.ParDo(_MineQueryFn(self._config, self._score_field, *self._dev)))


class AttachMinedTexts(beam.PTransform):
  """``MinedQuery`` + query texts + passage texts -> outputs ``assembled``:
  ``(MinedQuery, query_text, {doc_id: text})``, and ``dead_letter``; only the
  documents a query needs travel to it."""
  def expand(self, pcolls):
    mined = pcolls['mined']
    wanted = mined | 'DocsNeeded' >> beam.FlatMap(
        lambda m: [(doc_id, m.query_id) for doc_id, _ in m.positives + m.negatives])
    doc_texts_per_query = (
        {'texts': pcolls['corpus'] | 'CorpusById' >> beam.Map(lambda r: (r['id'], r['text'])),
         'queries': wanted}
        | 'JoinDocTexts' >> beam.CoGroupByKey()
        | 'TextsToQueries' >> beam.FlatMap(_texts_to_queries))
    return (
        {
            'mined': mined | 'MinedById' >> beam.WithKeys(lambda m: m.query_id),
            'query_text': pcolls['queries'] | 'QueriesById' >> beam.Map(
                lambda r: (r['id'], r['text'])),
            'doc_texts': doc_texts_per_query,
        }
        | 'JoinPerQuery' >> beam.CoGroupByKey()
        | 'AssembleQuery' >> beam.ParDo(_AssembleQueryFn()).with_outputs(
            DEAD_LETTER_TAG, main='assembled'))


def _texts_to_queries(joined):
  doc_id, groups = joined
  texts = list(groups['texts'])
  for query_id in set(groups['queries']):
    yield query_id, (doc_id, texts[0] if texts else None)


class _AssembleQueryFn(beam.DoFn):
  """One query's mined ids + its texts -> ``(MinedQuery, query_text, doc_texts)``.

  A mined id with no text (not in the input, or dead-lettered there) goes to
  a dead letter instead of silently vanishing from the formats.
  """
  def __init__(self):
    self._missing = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/mined_ids_without_text')

  def process(self, joined):
    query_id, groups = joined
    mined = list(groups['mined'])
    if not mined:
      return
    mined = mined[0]
    query_texts = list(groups['query_text'])
    doc_texts = {d: t for d, t in groups['doc_texts'] if t is not None}
    if not query_texts:
      self._missing.inc()
      yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
          f'{STAGE}/join', query_id,
          'unknown_query_id: the query has candidates and labels but no text in '
          '--queries (or was dead-lettered there); nothing mined for it',
          {'query_id': query_id}))
      return
    for role, ids in (('positive', mined.positives), ('negative', mined.negatives)):
      for doc_id, score in ids:
        if doc_id not in doc_texts:
          self._missing.inc()
          yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
              f'{STAGE}/join', f'{query_id}\t{doc_id}',
              f'unknown_doc_id: the mined {role} has no text in --corpus (or was '
              'dead-lettered there); left out of every format',
              {'query_id': query_id, 'doc_id': doc_id, 'role': role, 'score': score}))
    yield mined, query_texts[0], doc_texts


def query_split(query_id: str, dev_fraction: float, pseudo: bool = False,
                pseudo_in_dev: bool = True) -> str:
  """The split of one mined query: ``split_of``, except that pseudo-queries
  train unless ``pseudo_in_dev`` (no judged queries to select on)."""
  if pseudo and not pseudo_in_dev:
    return 'train'
  return split_of(query_id, dev_fraction)


def format_rows(
    fmt: str, mined: MinedQuery, query_text: str, doc_texts: dict,
    num_negatives: int) -> Iterable[tuple[dict, dict]]:
  """``(text row, id row)`` pairs of one training format for one query.

  Text rows have exactly the columns the sentence-transformers trainers take;
  id rows, aligned one to one, keep the ids for traceability.
  """
  positives = [(d, s) for d, s in mined.positives if doc_texts.get(d)]
  negatives = [(d, s) for d, s in mined.negatives if doc_texts.get(d)]
  qid = mined.query_id
  if fmt == 'labeled-pair':
    for doc_id, _ in positives:
      yield ({'sentence_0': query_text, 'sentence_1': doc_texts[doc_id], 'label': 1.0},
             {'query_id': qid, 'doc_id': doc_id})
    for doc_id, _ in negatives:
      yield ({'sentence_0': query_text, 'sentence_1': doc_texts[doc_id], 'label': 0.0},
             {'query_id': qid, 'doc_id': doc_id})
  elif fmt == 'pair':
    for doc_id, _ in positives:
      yield ({'sentence_0': query_text, 'sentence_1': doc_texts[doc_id]},
             {'query_id': qid, 'doc_id': doc_id})
  elif fmt == 'triplet':
    for positive_id, _ in positives:
      for negative_id, _ in negatives:
        yield ({'anchor': query_text, 'positive': doc_texts[positive_id],
                'negative': doc_texts[negative_id]},
               {'query_id': qid, 'positive_id': positive_id, 'negative_id': negative_id})
  elif fmt == 'n-tuple':
    if len(negatives) < num_negatives:
      return
    for positive_id, _ in positives:
      row = {'anchor': query_text, 'positive': doc_texts[positive_id]}
      for i, (negative_id, _) in enumerate(negatives[:num_negatives], start=1):
        row[f'negative_{i}'] = doc_texts[negative_id]
      yield (row, {'query_id': qid, 'positive_id': positive_id,
                   'negative_ids': [n for n, _ in negatives[:num_negatives]]})
  elif fmt == 'distill':
    for doc_id, score in positives + negatives:
      if score is not None:
        yield ({'query': query_text, 'passage': doc_texts[doc_id], 'score': float(score)},
               {'query_id': qid, 'doc_id': doc_id})
  else:
    raise ValueError(fmt)


FORMATS = ('labeled-pair', 'pair', 'triplet', 'n-tuple', 'distill')
