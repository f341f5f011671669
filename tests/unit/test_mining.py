"""Hard-negative mining per query (``transforms.mining``): each guard alone with
exact negatives and drop counts, sampling, pseudo-labels, the train/dev split,
and equality with ``sentence_transformers.util.mine_hard_negatives``.
"""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.mine_data import (
  ST_ANCHORS,
  ST_CORPUS,
  ST_RANGE_MAX,
  st_guard_configs,
  st_reference,
  st_scores,
)
from transforms.core.hashing import stable_hash
from transforms.core.splits import split_of
from transforms.training.mining import (
  GUARDS,
  Candidate,
  MineNegatives,
  NegativeMiningSettings,
  mine_query,
  pseudo_label,
)


def C(doc_id: str, score, rank: int) -> Candidate:  # noqa: N802 (a short maker)
  return Candidate(doc_id=doc_id, score=score, retrieval_rank=rank)


def drops(**counts: int) -> dict[str, int]:
  """The full ``dropped`` dict: every guard 0 unless given."""
  assert set(counts) <= set(GUARDS), counts
  return {guard: counts.get(guard, 0) for guard in GUARDS}


def mine(candidates, positives, query_id='q', **config):
  return mine_query(query_id, candidates, positives, NegativeMiningSettings(**config))


# ---------------------------------------------------------------- each guard


def test_no_guards_takes_best_by_score_and_counts_the_rest():
  candidates = [C('a', 0.25, 1), C('b', 0.75, 2), C('c', 0.5, 3), C('d', 0.125, 4),
                C('e', 1.0, 5)]
  mined = mine(candidates, ['e'], num_negatives=3)
  assert mined.negatives == [('b', 0.75), ('c', 0.5), ('a', 0.25)]
  assert mined.positives == [('e', 1.0)]
  assert mined.dropped == drops(positive=1, not_sampled=1)


def test_positives_are_removed_and_reported_with_their_scores():
  candidates = [C('d1', 0.9, 1), C('d2', 0.8, 2), C('d3', 0.7, 3), C('d4', 0.6, 4)]
  mined = mine(candidates, ['d2', 'd4', 'x9', 'd2'], num_negatives=10)
  assert mined.negatives == [('d1', 0.9), ('d3', 0.7)]
  # Sorted, deduplicated; a positive that was never retrieved has no score.
  assert mined.positives == [('d2', 0.8), ('d4', 0.6), ('x9', None)]
  assert mined.dropped == drops(positive=2)


def test_range_max_pool_is_first_n_plus_positives_plus_one_in_retrieval_order():
  # Given out of order: the pool follows retrieval_rank, not list order or score.
  candidates = [C('d4', 0.95, 4), C('d1', 0.1, 1), C('d5', 0.3, 5), C('d3', 0.5, 3),
                C('d2', 0.9, 2), C('d6', 0.99, 6)]
  mined = mine(candidates, ['d3'], num_negatives=10, range_max=2)
  # Pool: first 2 + 1 positive + 1 (the place sentence-transformers keeps for
  # a text equal to the query) = d1..d4; d5 and d6 (best score) are out.
  assert mined.negatives == [('d4', 0.95), ('d2', 0.9), ('d1', 0.1)]
  assert mined.dropped == drops(positive=1, range_max=2)


def test_range_max_grows_with_each_positive():
  candidates = [C(f'd{i}', 1.0 - i / 16, i) for i in range(1, 8)]
  mined = mine(candidates, ['d1', 'd2'], num_negatives=10, range_max=2)
  # Pool: first 2 + 2 positives + 1 = d1..d5; negatives d3, d4, d5.
  assert [d for d, _ in mined.negatives] == ['d3', 'd4', 'd5']
  assert mined.dropped == drops(positive=2, range_max=2)


def test_a_candidate_whose_text_is_the_query_is_never_a_negative():
  candidates = [C('d1', 0.99, 1), C('d2', 0.9, 2), C('d3', 0.8, 3), C('d4', 0.7, 4)]
  candidates[0].same_text_as_query = True
  mined = mine(candidates, ['d2'], num_negatives=10, range_max=1)
  # Pool: first 1 + 1 positive + 1 = d1..d3; d1 is the query's own text.
  assert mined.negatives == [('d3', 0.8)]
  assert mined.dropped == drops(positive=1, same_text_as_query=1, range_max=1)
  # Without range_max, and with no positive among the candidates, too.
  assert [d for d, _ in mine(candidates, ['x'], num_negatives=10).negatives] == [
      'd2', 'd3', 'd4']


def test_range_min_skips_best_after_other_guards_in_score_order():
  # Retrieval order is the reverse of score order.
  candidates = [C('a', 0.125, 1), C('b', 0.25, 2), C('c', 0.375, 3), C('d', 0.5, 4),
                C('e', 0.625, 5), C('f', 0.875, 6)]
  mined = mine(candidates, ['p'], num_negatives=10, range_min=2, max_score=0.75)
  # max_score drops f; the best two left (e, d) are skipped.
  assert mined.negatives == [('c', 0.375), ('b', 0.25), ('a', 0.125)]
  assert mined.dropped == drops(max_score=1, range_min=2)


def test_range_min_alone_skips_best_n():
  candidates = [C('a', 0.5, 1), C('b', 0.25, 2), C('c', 0.75, 3)]
  mined = mine(candidates, [], num_negatives=10, range_min=1)
  assert mined.negatives == [('a', 0.5), ('b', 0.25)]
  assert mined.dropped == drops(range_min=1)


def test_absolute_margin_against_weakest_positive():
  candidates = [C('p1', 1.0, 1), C('p2', 0.75, 2), C('n1', 0.625, 3), C('n2', 0.5, 4),
                C('n3', 1.25, 5), C('n4', 0.25, 6)]
  mined = mine(candidates, ['p1', 'p2'], num_negatives=10, absolute_margin=0.25)
  # Weakest positive 0.75: drop if score + 0.25 > 0.75; n2 is exactly on the
  # boundary (0.5 + 0.25 == 0.75) and stays.
  assert mined.negatives == [('n2', 0.5), ('n4', 0.25)]
  assert mined.dropped == drops(positive=2, absolute_margin=2)


def test_absolute_margin_zero_keeps_equal_scores():
  candidates = [C('p', 0.5, 1), C('n1', 0.5, 2), C('n2', 0.5 + 2 ** -20, 3)]
  mined = mine(candidates, ['p'], num_negatives=10, absolute_margin=0.0)
  assert mined.negatives == [('n1', 0.5)]
  assert mined.dropped == drops(positive=1, absolute_margin=1)


def test_relative_margin_positive_score():
  candidates = [C('p', 0.5, 1), C('n1', 0.375, 2), C('n2', 0.25, 3), C('n3', 0.0, 4)]
  mined = mine(candidates, ['p'], num_negatives=10, relative_margin=0.5)
  # Threshold 0.5 - 0.5 * 0.5 = 0.25: n1 dropped, n2 on the boundary kept.
  assert mined.negatives == [('n2', 0.25), ('n3', 0.0)]
  assert mined.dropped == drops(positive=1, relative_margin=1)


def test_relative_margin_negative_positive_score_subtracts_abs():
  # p = -0.5, margin 0.5: threshold p - |p| * m = -0.75 (not p * (1 - m) = -0.25,
  # which would keep n1: sentence-transformers #3819).
  candidates = [C('p', -0.5, 1), C('n1', -0.625, 2), C('n2', -0.75, 3), C('n3', -1.0, 4),
                C('n4', -0.375, 5)]
  mined = mine(candidates, ['p'], num_negatives=10, relative_margin=0.5)
  assert mined.negatives == [('n2', -0.75), ('n3', -1.0)]
  assert mined.dropped == drops(positive=1, relative_margin=2)


def test_margin_uses_the_weakest_positive_only_known_scores():
  # p2 was never retrieved (no score): the margin is against p1 alone.
  candidates = [C('p1', 0.5, 1), C('n1', 0.375, 2), C('n2', 0.125, 3)]
  mined = mine(candidates, ['p1', 'p2'], num_negatives=10, absolute_margin=0.25)
  assert mined.negatives == [('n2', 0.125)]
  assert mined.dropped == drops(positive=1, absolute_margin=1)


def test_max_score():
  candidates = [C('a', 0.5, 1), C('b', 0.75, 2), C('c', 0.25, 3)]
  mined = mine(candidates, [], num_negatives=10, max_score=0.5)
  assert mined.negatives == [('a', 0.5), ('c', 0.25)]
  assert mined.dropped == drops(max_score=1)


def test_min_score():
  candidates = [C('a', 0.25, 1), C('b', 0.125, 2), C('c', 0.5, 3), C('d', -1.0, 4)]
  mined = mine(candidates, [], num_negatives=10, min_score=0.25)
  assert mined.negatives == [('c', 0.5), ('a', 0.25)]
  assert mined.dropped == drops(min_score=2)


def test_margin_without_a_known_positive_score_drops_everything():
  candidates = [C('a', 0.25, 1), C('b', 0.125, 2), C('c', 0.5, 3)]
  mined = mine(candidates, ['x'], num_negatives=10, absolute_margin=0.1)
  assert mined.negatives == []
  assert mined.positives == [('x', None)]
  assert mined.dropped == drops(positive_score_unknown=3)
  # A positive retrieved without a score is unknown too.
  candidates = [C('p', None, 1), C('a', 0.25, 2)]
  mined = mine(candidates, ['p'], num_negatives=10, relative_margin=0.1)
  assert mined.negatives == []
  assert mined.dropped == drops(positive=1, positive_score_unknown=1)


@pytest.mark.parametrize('guard,value', [
    ('absolute_margin', 0.0), ('relative_margin', 0.0), ('max_score', 1.0),
    ('min_score', -1.0)])
def test_candidate_without_score_fails_each_score_guard(guard, value):
  candidates = [C('p', 0.75, 1), C('a', None, 2), C('b', 0.5, 3)]
  mined = mine(candidates, ['p'], num_negatives=10, **{guard: value})
  assert mined.negatives == [('b', 0.5)]
  assert mined.dropped == drops(positive=1, **{guard: 1})


def test_candidate_without_score_without_score_guards_ranks_last():
  candidates = [C('a', None, 1), C('b', 0.5, 2), C('c', -0.5, 3)]
  mined = mine(candidates, [], num_negatives=10)
  assert mined.negatives == [('b', 0.5), ('c', -0.5), ('a', None)]


def test_guards_count_only_what_each_drops_in_order():
  # range_max, then positive, margins, max_score, min_score, range_min, sampling.
  candidates = [C('p', 0.75, 1), C('a', 0.625, 2), C('b', 0.5, 3), C('c', 0.375, 4),
                C('d', 0.25, 5), C('e', 0.125, 6), C('f', -0.5, 7), C('g', 0.3, 8)]
  mined = mine(candidates, ['p'], num_negatives=1, range_max=5, absolute_margin=0.25,
               max_score=0.45, min_score=0.0, range_min=1)
  # Pool p..f (g out); a dropped by the margin (0.625 + 0.25 > 0.75; b is on
  # the boundary), b by max_score, f by min_score; c skipped by range_min; d
  # taken, e not sampled.
  assert mined.negatives == [('d', 0.25)]
  assert mined.dropped == drops(
      range_max=1, positive=1, absolute_margin=1, max_score=1, min_score=1,
      range_min=1, not_sampled=1)


# ---------------------------------------------------------------- sampling


def test_top_sampling_score_desc_then_doc_id():
  candidates = [C('dB', 0.5, 1), C('dA', 0.5, 2), C('dC', 0.75, 3), C('dD', 0.25, 4),
                C('dE', 0.5, 5)]
  mined = mine(candidates, [], num_negatives=3)
  assert mined.negatives == [('dC', 0.75), ('dA', 0.5), ('dB', 0.5)]
  assert mined.dropped == drops(not_sampled=2)


def _random_candidates(n: int = 12) -> list[Candidate]:
  return [C(f'd{i:02d}', (n - i) / n, i + 1) for i in range(n)]


def test_random_sampling_is_deterministic_per_seed_and_query():
  candidates = _random_candidates()

  def pick(query_id, seed, items=candidates):
    return [d for d, _ in mine(items, [], query_id, num_negatives=4,
                               sampling_strategy='random', seed=seed).negatives]
  # Same seed and query: same pick, whatever order the candidates arrive in.
  assert pick('q7', 3) == pick('q7', 3, list(reversed(candidates)))
  assert len({tuple(pick('q7', seed)) for seed in range(6)}) > 1
  assert len({tuple(pick(f'q{i}', 3)) for i in range(6)}) > 1
  # The documented recipe: random.Random(stable_hash(f'{seed}\t{query_id}')).
  import random
  expected = sorted(random.Random(stable_hash('3\tq8')).sample(range(12), 4))
  assert pick('q8', 3) == [f'd{i:02d}' for i in expected]


def test_random_sampling_seeds_differ():
  candidates = _random_candidates()
  a = mine(candidates, [], 'q1', num_negatives=4, sampling_strategy='random', seed=12)
  b = mine(candidates, [], 'q1', num_negatives=4, sampling_strategy='random', seed=13)
  assert a.negatives != b.negatives


@pytest.mark.parametrize('seed', range(8))
def test_random_sampling_picks_only_eligible_in_score_order(seed):
  candidates = _random_candidates() + [C('p', 0.99, 13)]
  mined = mine(candidates, ['p'], 'q1', num_negatives=3, sampling_strategy='random',
               seed=seed, max_score=0.9, min_score=0.2)
  eligible = {c.doc_id for c in candidates
              if c.doc_id != 'p' and 0.2 <= c.score <= 0.9}
  ids = [d for d, _ in mined.negatives]
  assert len(ids) == 3 and len(set(ids)) == 3
  assert set(ids) <= eligible
  scores = [s for _, s in mined.negatives]
  assert scores == sorted(scores, reverse=True)
  assert mined.dropped['not_sampled'] == len(eligible) - 3
  assert mined.dropped['positive'] == 1


def test_random_sampling_with_too_few_takes_all():
  candidates = [C('a', 0.5, 1), C('b', 0.25, 2)]
  mined = mine(candidates, [], num_negatives=3, sampling_strategy='random')
  assert mined.negatives == [('a', 0.5), ('b', 0.25)]
  assert mined.dropped == drops()


# ---------------------------------------------------------------- pseudo-labels


def test_pseudo_label_thresholds():
  candidates = [C('a', 0.75, 1), C('b', 0.5, 2), C('c', 0.375, 3), C('d', 0.25, 4),
                C('e', None, 5), C('f', -1.0, 6)]
  config = NegativeMiningSettings(positive_threshold=0.5, negative_threshold=0.25)
  positives, pool = pseudo_label(candidates, config)
  assert positives == ['a', 'b']  # >= 0.5
  # Positives stay in the pool (removed later); c is in the uncertain zone,
  # e has no score: neither may become a negative.
  assert [c.doc_id for c in pool] == ['a', 'b', 'd', 'f']
  mined = mine_query('q', pool, positives, config)
  assert mined.negatives == [('d', 0.25), ('f', -1.0)]
  assert mined.positives == [('a', 0.75), ('b', 0.5)]


def test_pseudo_label_without_negative_threshold_keeps_all():
  candidates = [C('a', 0.75, 1), C('c', 0.375, 2), C('e', None, 3)]
  positives, pool = pseudo_label(candidates, NegativeMiningSettings(positive_threshold=0.75))
  assert positives == ['a']
  assert pool == candidates


# ---------------------------------------------------------------- split


def test_split_of_is_a_stable_hash_of_the_query_id():
  assert {split_of(f'q{i}', 0.0) for i in range(100)} == {'train'}
  ids = [f'query-{i}' for i in range(2000)]
  for fraction in (0.1, 0.25, 0.5):
    dev = [q for q in ids if split_of(q, fraction) == 'dev']
    assert dev == [q for q in ids if stable_hash(q) % 1_000_000 < fraction * 1_000_000]
    assert abs(len(dev) / len(ids) - fraction) < 0.04
  # Monotone: a dev query stays dev when the fraction grows.
  assert {q for q in ids if split_of(q, 0.1) == 'dev'} <= {
      q for q in ids if split_of(q, 0.25) == 'dev'}


# ---------------------------------------------------------------- in a pipeline


def test_mine_negatives_transform_renumbers_ranks_and_skips_unlabelled():
  candidates = [
      # q1: ranks given; d3 (best score) is outside range_max 1 + 1 positive + 1.
      {'query_id': 'q1', 'doc_id': 'd1', 'retrieval_rank': 2, 'score': 0.25},
      {'query_id': 'q1', 'doc_id': 'd2', 'retrieval_rank': 1, 'score': 0.5},
      {'query_id': 'q1', 'doc_id': 'd3', 'retrieval_rank': 7, 'score': 0.75},
      {'query_id': 'q1', 'doc_id': 'd4', 'retrieval_rank': 3, 'score': 0.125},
      # q2: no ranks (a candidates file without them): score order decides.
      {'query_id': 'q2', 'doc_id': 'd1', 'retrieval_rank': None, 'score': 0.25},
      {'query_id': 'q2', 'doc_id': 'd2', 'retrieval_rank': None, 'score': 0.5},
      {'query_id': 'q2', 'doc_id': 'd3', 'retrieval_rank': None, 'score': 0.75},
      {'query_id': 'q2', 'doc_id': 'd4', 'retrieval_rank': None, 'score': 0.125},
      # q3: no relevant judgment.
      {'query_id': 'q3', 'doc_id': 'd1', 'retrieval_rank': 1, 'score': 0.5},
  ]
  qrels = [
      {'query_id': 'q1', 'doc_id': 'd2', 'relevance': 1},
      {'query_id': 'q2', 'doc_id': 'd3', 'relevance': 2},
      {'query_id': 'q3', 'doc_id': 'd1', 'relevance': 0},
      {'query_id': 'q4', 'doc_id': 'd1', 'relevance': 1},  # never retrieved
  ]
  config = NegativeMiningSettings(num_negatives=5, range_max=1)
  with TestPipeline() as p:
    mined = ({'candidates': p | 'C' >> beam.Create(candidates),
              'qrels': p | 'Q' >> beam.Create(qrels)}
             | MineNegatives(config, 'score'))
    assert_that(
        mined | beam.Map(lambda m: (m.query_id, m.positives, m.negatives,
                                    m.dropped['range_max'])),
        equal_to([
            ('q1', [('d2', 0.5)], [('d1', 0.25), ('d4', 0.125)], 1),
            ('q2', [('d3', 0.75)], [('d2', 0.5), ('d1', 0.25)], 1),
        ]))


def test_dev_queries_are_mined_with_the_dev_settings_pseudo_queries_train():
  """With ``dev_config``, a judged query of the dev split gets its best-ranked
  negatives; train queries, and pseudo-queries (which train), keep theirs."""
  fraction = 0.5
  ids = [f'q{i}' for i in range(40)]
  dev_id = next(q for q in ids if split_of(q, fraction) == 'dev')
  train_id = next(q for q in ids if split_of(q, fraction) == 'train')
  pseudo_id = next(q for q in ids if split_of(q, fraction) == 'dev' and q != dev_id)
  scores = {'d1': 0.9, 'd2': 0.8, 'd3': 0.7, 'd4': 0.6, 'd5': 0.5}
  candidates = [
      {'query_id': q, 'doc_id': d, 'retrieval_rank': None, 'score': score}
      for q in (dev_id, train_id, pseudo_id) for d, score in scores.items()]
  qrels = [{'query_id': dev_id, 'doc_id': 'd5', 'relevance': 1},
           {'query_id': train_id, 'doc_id': 'd5', 'relevance': 1},
           {'query_id': pseudo_id, 'doc_id': 'd5', 'relevance': 1, 'pseudo': True}]
  train_config = NegativeMiningSettings(num_negatives=1, range_min=2)
  dev_config = NegativeMiningSettings(num_negatives=3)

  for pseudo_in_dev, pseudo_negatives in ((False, ['d3']), (True, ['d1', 'd2', 'd3'])):
    with TestPipeline() as p:
      mined = ({'candidates': p | 'C' >> beam.Create(candidates),
                'qrels': p | 'Q' >> beam.Create(qrels)}
               | MineNegatives(train_config, 'score', dev_config, fraction, pseudo_in_dev))
      assert_that(
          mined | beam.Map(lambda m: (m.query_id, [d for d, _ in m.negatives])),
          equal_to([(dev_id, ['d1', 'd2', 'd3']), (train_id, ['d3']),
                    (pseudo_id, pseudo_negatives)]))


# ---------------------------------------------------------------- sentence-transformers


def ours(scores, guards: dict, corpus: list[str] = ST_CORPUS,
         ) -> tuple[dict[str, list[str]], dict[str, int]]:
  """``mine_query`` on every corpus doc ranked by the same scores (its
  ``range_max`` makes the pool), marking the docs whose text is the anchor."""
  config = NegativeMiningSettings(num_negatives=3, range_max=ST_RANGE_MAX, **guards)
  negatives, dropped = {}, {g: 0 for g in GUARDS}
  for i, anchor in enumerate(ST_ANCHORS):
    order = sorted(range(len(corpus)), key=lambda j: -float(scores[i, j]))
    candidates = [Candidate(f'c{j}', float(scores[i, j]), rank,
                            same_text_as_query=corpus[j] == anchor)
                  for rank, j in enumerate(order, start=1)]
    mined = mine_query(f'a{i}', candidates, [f'c{i}'], config)
    negatives[anchor] = [corpus[int(d[1:])] for d, _ in mined.negatives]
    for guard, n in mined.dropped.items():
      dropped[guard] += n
  return negatives, dropped


@pytest.mark.parametrize('output_format', ['triplet', 'labeled-pair'])
@pytest.mark.parametrize(
    'name', ['plain', 'absolute_margin', 'relative_margin', 'max_score', 'range_min',
             'combined'])
def test_equals_sentence_transformers_mine_hard_negatives(
    mine_st_scores, output_format, name):
  model, scores = mine_st_scores
  guards = st_guard_configs(scores)[name]
  expected = st_reference(model, output_format, guards)
  actual, dropped = ours(scores, guards)
  assert actual == expected
  if name != 'plain':  # Each guard actually bites on this data.
    guard = 'range_min' if name == 'range_min' else next(
        g for g in ('absolute_margin', 'relative_margin', 'max_score') if g in guards)
    assert dropped[guard] > 0, dropped
  if name in ('absolute_margin', 'relative_margin', 'max_score'):
    # ...and leaves some anchors short of 3 negatives, so that case is compared too.
    assert any(len(v) < 3 for v in actual.values()), actual


@pytest.mark.parametrize('name', ['plain', 'range_min'])
def test_equals_mine_hard_negatives_when_the_corpus_holds_the_queries(mine_st_scores, name):
  """A corpus entry whose text is the anchor itself (sentence-transformers >= 6.3
  never returns it; it scores highest, so it is in every pool) is no negative."""
  model, _ = mine_st_scores
  corpus = ST_CORPUS + [ST_ANCHORS[0], ST_ANCHORS[3]]
  guards = st_guard_configs(st_scores(model, ST_CORPUS))[name]
  expected = st_reference(model, 'triplet', guards, corpus)
  actual, dropped = ours(st_scores(model, corpus), guards, corpus)
  assert actual == expected
  assert dropped['same_text_as_query'] == 2
  assert all(anchor not in negatives for anchor, negatives in actual.items())
