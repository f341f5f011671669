"""transforms.ranking.stage_fusion: the two fusion stages, their plan, tuning and guard."""
from __future__ import annotations

import random

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.ranking.fusion import FusionDecision, FusionSpec
from transforms.ranking.ranked import ALL_TAG
from transforms.ranking.stage_fusion import FuseStages, plan_stages, rank_query


def _row(doc_id, dense=None, bm25=None, supplied=None, ce=None, query_id='q'):
  return {'query_id': query_id, 'doc_id': doc_id, 'dense_score': dense, 'bm25_score': bm25,
          'supplied_score': supplied, 'ce_score': ce, 'query_text': 'q', 'passage_text': 'p'}


# ------------------------------------------------------------ plan_stages

def test_plan_auto_tunes_each_stage_over_its_signals():
  plan = plan_stages(FusionSpec('linear', 'auto'), ['bm25', 'dense'], cross_encoder=True)
  assert plan.first_signals == ('dense', 'bm25')
  assert plan.final_signals == ('retrieval', 'ce')
  assert plan.first.weights == 'auto' and plan.final.weights == 'auto'
  no_ce = plan_stages(FusionSpec('rrf', 'auto'), ['dense'], cross_encoder=False)
  assert no_ce.final is None and no_ce.final_signals == ()


def test_plan_fixed_weights_split_between_stages():
  spec = FusionSpec('linear', {'dense': 0.5, 'bm25': 0.5, 'ce': 1.0})
  plan = plan_stages(spec, ['dense', 'bm25'], cross_encoder=True)
  assert plan.first.weights == {'dense': 0.5, 'bm25': 0.5}
  assert plan.final.weights == {'dense': 0.5, 'bm25': 0.5, 'ce': 1.0}
  none = plan_stages(FusionSpec('none', {'bm25': 1.0}), ['dense', 'bm25'], cross_encoder=True)
  assert none.first.weights == {'bm25': 1.0} and none.final.weights == {'ce': 1.0}


@pytest.mark.parametrize('spec, sources, ce, message', [
    (FusionSpec('linear', {'bm25': 1.0, 'ce': 1.0}), ['dense'], True, 'names bm25'),
    (FusionSpec('linear', {'dense': 1.0, 'ce': 1.0}), ['dense'], False, 'names ce'),
    (FusionSpec('linear', {'ce': 1.0}), ['dense'], True, 'no first-stage signal'),
    (FusionSpec('rrf', {'dense': 1.0}), ['dense'], True, "needs a weight for 'ce'"),
    (FusionSpec('none', {'ce': 1.0}), ['dense'], True, 'cross-encoder alone'),
])
def test_plan_refuses_weights_that_do_not_fit(spec, sources, ce, message):
  with pytest.raises(ValueError, match=message):
    plan_stages(spec, sources, ce)


def test_plan_first_stage_weights_fix_the_first_stage_and_tune_the_final():
  plan = plan_stages(FusionSpec('linear', 'auto'), ['dense', 'bm25'], cross_encoder=True,
                     first_stage_weights={'dense': 0.55, 'bm25': 0.45})
  assert plan.first.weights == {'dense': 0.55, 'bm25': 0.45}
  assert plan.final.weights == 'auto'
  fell_back = plan_stages(FusionSpec('linear', 'auto'), ['dense', 'bm25'], cross_encoder=False,
                          first_stage_weights={'dense': 1.0, 'bm25': 0.0})
  assert fell_back.first.weights == {'dense': 1.0} and fell_back.final is None


@pytest.mark.parametrize('spec, weights, message', [
    (FusionSpec('linear', {'dense': 1.0, 'ce': 1.0}), {'dense': 1.0}, 'fusion-weights auto'),
    (FusionSpec('linear', 'auto'), {'bm25': 1.0}, 'names bm25'),
    (FusionSpec('linear', 'auto'), {'ce': 1.0}, 'names ce'),
    (FusionSpec('linear', 'auto'), {'dense': 0.0}, 'no signal a positive weight'),
])
def test_plan_refuses_first_stage_weights_that_do_not_fit(spec, weights, message):
  with pytest.raises(ValueError, match=message):
    plan_stages(spec, ['dense'], True, first_stage_weights=weights)


# ------------------------------------------------------------ rank_query

def test_rank_query_fixed_linear_then_cross_encoder_alone():
  first = FusionDecision({'dense': 1.0, 'bm25': 1.0}, 'linear', False, 'fixed')
  final = FusionDecision({'ce': 1.0}, 'none', False, 'fixed')
  rows = [_row('a', dense=0.9, bm25=None, ce=0.1),   # dense 1.0 + bm25 missing 0.0
          _row('b', dense=0.5, bm25=4.0, ce=0.3),    # 0.5 + 1.0
          _row('c', dense=0.4, bm25=2.0, ce=0.3),    # 0.4 + 0.5 (bm25 min-max of 2..4 -> 0)?
          _row('d', dense=None, bm25=2.0, ce=0.9)]   # 0.0 + 0.0
  # dense min-max over 0.4..0.9: a 1.0, b 0.2, c 0.0; missing d -> 0.0.
  # bm25 min-max over 2..4: b 1.0, c 0.0, d 0.0; missing a -> 0.0.
  for seed in range(3):
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    ranked = rank_query('q', shuffled, first, final)
    by_doc = {r['doc_id']: r for r in ranked}
    assert {d: round(r['retrieval_score'], 6) for d, r in by_doc.items()} == {
        'a': 1.0, 'b': 1.2, 'c': 0.0, 'd': 0.0}
    assert {d: r['retrieval_rank'] for d, r in by_doc.items()} == {
        'b': 1, 'a': 2, 'c': 3, 'd': 4}
    # Final: ce alone; b and c tie at 0.3: retrieval score decides (b 1.2 > c 0.0).
    assert [r['doc_id'] for r in ranked] == ['d', 'b', 'c', 'a']
    assert [r['rank'] for r in ranked] == [1, 2, 3, 4]
    assert ranked[0]['score'] == 0.9 and ranked[0]['ce_score'] == 0.9
    assert ranked[0]['dense_score'] is None and ranked[0]['bm25_score'] == 2.0
    assert set(ranked[0]) == {
        'query_id', 'doc_id', 'rank', 'score', 'retrieval_rank', 'retrieval_score',
        'dense_score', 'bm25_score', 'supplied_score', 'ce_score', 'query_text_sha256',
        'passage_text_sha256'}


def test_rank_query_final_linear_of_retrieval_and_ce():
  first = FusionDecision({'dense': 1.0}, 'none', False, 'one signal')
  final = FusionDecision({'retrieval': 0.25, 'ce': 0.75}, 'linear', False, 'fixed')
  rows = [_row('a', dense=3.0, ce=0.0), _row('b', dense=2.0, ce=10.0), _row('c', dense=1.0, ce=5.0)]
  ranked = rank_query('q', rows, first, final)
  # retrieval (dense raw) min-max: a 1, b .5, c 0; ce: a 0, b 1, c .5.
  assert {r['doc_id']: round(r['score'], 6) for r in ranked} == {
      'a': 0.25, 'b': 0.875, 'c': 0.375}
  assert [r['doc_id'] for r in ranked] == ['b', 'c', 'a']
  assert [r['retrieval_rank'] for r in ranked] == [2, 3, 1]


def test_rank_query_without_cross_encoder_ranks_by_first_stage():
  first = FusionDecision({'dense': 1.0, 'bm25': 1.0}, 'rrf', False, 'fixed', rrf_k=60)
  rows = [_row('a', dense=0.9), _row('b', dense=0.5, bm25=1.0), _row('c', bm25=3.0)]
  ranked = rank_query('q', rows, first, None)
  # ranks: dense a1 b2; bm25 c1 b2 -> a 1/61, b 2/62, c 1/61.
  assert [r['doc_id'] for r in ranked] == ['b', 'a', 'c']
  assert ranked[0]['score'] == pytest.approx(2 / 62)
  assert all(r['score'] == r['retrieval_score'] for r in ranked)
  assert [r['rank'] for r in ranked] == [r['retrieval_rank'] for r in ranked]


def test_rank_query_no_first_stage_scores():
  """A supplied run without scores: no retrieval score or rank; score 0, doc_id order."""
  ranked = rank_query('q', [_row('b'), _row('a')], None, None)
  assert [(r['doc_id'], r['rank'], r['score'], r['retrieval_rank']) for r in ranked] == [
      ('a', 1, 0.0, None), ('b', 2, 0.0, None)]


# ------------------------------------------------------------ FuseStages (Beam)

def _query_rows(query_id):
  """Dense puts 'x' first, BM25 'y'; both have the relevant 'r' second: only
  fusion ranks 'r' first. The cross-encoder puts 'r' last."""
  return [
      _row('x', dense=1.0, bm25=0.0, ce=0.9, query_id=query_id),
      _row('r', dense=0.9, bm25=0.9, ce=0.0, query_id=query_id),
      _row('y', dense=0.0, bm25=1.0, ce=0.5, query_id=query_id),
  ]


def test_auto_fusion_kept_where_it_helps_and_guard_keeps_ce_out():
  tuning = [f't{i:02d}' for i in range(30)]
  rows = [row for q in [*tuning, 'held'] for row in _query_rows(q)]
  qrels = {q: {'r': 1} for q in tuning}
  plan = plan_stages(FusionSpec('linear', 'auto'), ['dense', 'bm25'], cross_encoder=True)
  with TestPipeline() as p:
    out = p | beam.Create(rows) | FuseStages(plan, qrels, top_n=2)
    assert_that(out['decisions'], _check(_kept_and_guarded, tuning), label='Decisions')
    held = (out[ALL_TAG] | beam.Filter(lambda r: r['query_id'] == 'held')
            | beam.Map(lambda r: (r['doc_id'], r['rank'], r['retrieval_rank'])))
    # First stage: equal weights put r first; the final stage fell back to it.
    assert_that(held, equal_to([('r', 1, 1), ('x', 2, 2), ('y', 3, 3)]), label='Held')
    assert_that(
        out['top'] | beam.Map(lambda r: r['query_id']) | beam.combiners.Count.PerElement(),
        equal_to([(q, 2) for q in [*tuning, 'held']]), label='TopN')


def _check(check, *args):
  def matcher(actual):
    (decision,) = actual
    check(decision, *args)
  return matcher


def _kept_and_guarded(decision, tuning):
  first, final = decision['first_stage'], decision['final']
  assert (first['method'], first['weights'], first['fell_back']) == (
      'linear', {'dense': 0.5, 'bm25': 0.5}, False)
  assert first['tuning']['queries'] == 30 and first['tuning']['p_value'] < 0.05
  assert (final['method'], final['weights'], final['fell_back']) == (
      'none', {'retrieval': 1.0}, True)
  assert decision['tuning_queries'] == 30
  assert decision['tuning_query_ids'] == sorted(tuning)
  assert 'held' not in decision['tuning_query_ids']


def test_guard_falls_back_with_too_few_tuning_queries():
  tuning = [f't{i}' for i in range(5)]
  rows = [row for q in [*tuning, 'held'] for row in _query_rows(q)]
  plan = plan_stages(FusionSpec('rrf', 'auto'), ['dense', 'bm25'], cross_encoder=False)
  with TestPipeline() as p:
    out = p | beam.Create(rows) | FuseStages(plan, {q: {'r': 1} for q in tuning}, top_n=1)
    assert_that(out['decisions'], _check(_fell_back))


def _fell_back(decision):
  first = decision['first_stage']
  assert first['fell_back'] and first['method'] == 'none'
  assert '5 tuning queries with judgments < 20 needed' in first['reason']
  assert decision['final'] is None


def test_final_keeps_the_first_stage_with_too_few_tuning_queries():
  """On 5 tuning queries the cross-encoder alone ranks the relevant doc first
  and the fused first stage does not, yet 5 are too few to replace the first
  stage: the final ranking is the first stage."""
  tuning = [f't{i}' for i in range(5)]
  rows = [row for q in [*tuning, 'held'] for row in _query_rows(q)]
  qrels = {q: {'x': 1} for q in tuning}  # x: ce 0.9, first; fused first stage: second
  plan = plan_stages(FusionSpec('linear', 'auto'), ['dense', 'bm25'], cross_encoder=True,
                     first_stage_weights={'dense': 0.5, 'bm25': 0.5})
  with TestPipeline() as p:
    out = p | beam.Create(rows) | FuseStages(plan, qrels, top_n=3)
    assert_that(out['decisions'], _check(_first_stage_stays), label='Decisions')
    held = (out[ALL_TAG] | beam.Filter(lambda r: r['query_id'] == 'held')
            | beam.Map(lambda r: (r['doc_id'], r['rank'], r['retrieval_rank'])))
    assert_that(held, equal_to([('r', 1, 1), ('x', 2, 2), ('y', 3, 3)]), label='Held')


def _first_stage_stays(decision):
  final = decision['final']
  assert final['tuning']['best_single'] == 'ce'
  assert (final['method'], final['weights'], final['fell_back']) == (
      'none', {'retrieval': 1.0}, True)
  assert final['reason'].startswith(
      'auto fusion fell back to retrieval: 5 tuning queries with judgments < 20 needed '
      'to replace it')


def test_no_tuning_queries_ranks_by_priority_signal():
  plan = plan_stages(FusionSpec('linear', 'auto'), ['dense', 'bm25'], cross_encoder=True)
  with TestPipeline() as p:
    out = p | beam.Create(_query_rows('q')) | FuseStages(plan, {}, top_n=3)
    assert_that(out['top'] | beam.Map(lambda r: (r['doc_id'], r['rank'], r['retrieval_rank'])),
                equal_to([('x', 1, 1), ('y', 2, 3), ('r', 3, 2)]), label='Top')
    assert_that(out['decisions'], _check(_by_priority), label='Decisions')


def _by_priority(decision):
  assert decision['first_stage']['weights'] == {'dense': 1.0}
  assert decision['final']['weights'] == {'ce': 1.0}
  assert 'without tuning queries' in decision['first_stage']['reason']
  assert decision['tuning_queries'] == 0 and decision['tuning_query_ids'] == []


def test_final_by_first_stage_alone_is_exactly_the_first_stage():
  """A doc lacking the first-stage signal gets the query's lowest score; the
  final ranking by 'retrieval' alone ties it with the lowest doc and must keep
  the first stage's order (not doc_id's)."""
  first = FusionDecision({'dense': 1.0}, 'none', False, 'fell back')
  final = FusionDecision({'retrieval': 1.0}, 'none', True, 'fell back')
  rows = [_row('a', dense=0.9, ce=0.0), _row('z', dense=0.1, ce=1.0),
          _row('b', bm25=3.0, ce=2.0)]
  ranked = rank_query('q', rows, first, final)
  assert [(r['doc_id'], r['rank'], r['retrieval_rank']) for r in ranked] == [
      ('a', 1, 1), ('z', 2, 2), ('b', 3, 3)]
  assert ranked[1]['score'] == ranked[2]['score'] == pytest.approx(0.1)


def test_decisions_count_the_tuning_queries_of_either_stage():
  """One first-stage signal (nothing tuned there) and a tuned final stage: the
  count is the final stage's."""
  tuning = [f't{i:02d}' for i in range(25)]
  rows = [dict(row, bm25_score=None) for q in tuning for row in _query_rows(q)]
  plan = plan_stages(FusionSpec('linear', 'auto'), ['dense'], cross_encoder=True)
  with TestPipeline() as p:
    out = p | beam.Create(rows) | FuseStages(plan, {q: {'r': 1} for q in tuning}, top_n=1)
    assert_that(out['decisions'], _check(_counted, 25))


def _counted(decision, n):
  assert decision['first_stage']['reason'] == 'one signal (dense): nothing to fuse'
  assert decision['final']['tuning']['queries'] == n
  assert decision['tuning_queries'] == n
