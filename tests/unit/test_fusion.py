"""transforms.ranking.fusion: per-query score fusion, nDCG@10, tuning and its guard."""
from __future__ import annotations

import json
import math

import ir_measures
import numpy as np
import pytest

from transforms.ranking import fusion
from transforms.ranking.fusion import Candidate, FusionSpec


def _c(doc_id: str, **scores) -> Candidate:
  return Candidate(doc_id, scores)


HAND = [
    _c('a', dense=1.0, bm25=10.0),
    _c('b', dense=3.0, bm25=None),  # found by dense only
    _c('c', dense=2.0, bm25=20.0),
]


# --- normalisation and fusion arithmetic -----------------------------------


def test_normalise_minmax_keeps_missing_and_all_equal_is_one():
  assert fusion.normalise([2.0, None, 4.0, 3.0]) == [0.0, None, 1.0, 0.5]
  assert fusion.normalise([5.0, 5.0, None]) == [1.0, 1.0, None]
  assert fusion.normalise([float('nan'), None]) == [None, None]
  z = fusion.normalise([1.0, 3.0], 'zscore')
  assert z == pytest.approx([-1.0, 1.0])
  with pytest.raises(ValueError, match='unknown normalisation'):
    fusion.normalise([1.0], 'rank')


def test_linear_minmax_missing_counts_as_zero():
  # dense -> a 0, b 1, c 0.5; bm25 -> a 0, c 1, b missing -> 0.
  ranked = fusion.fuse_linear(HAND, {'dense': 0.5, 'bm25': 0.5})
  assert ranked == [('c', 0.75), ('b', 0.5), ('a', 0.0)]
  ranked = fusion.fuse_linear(HAND, {'dense': 0.2, 'bm25': 0.8})
  assert [d for d, _ in ranked] == ['c', 'b', 'a']
  assert [s for _, s in ranked] == pytest.approx([0.9, 0.2, 0.0])
  # A zero weight drops the signal; signal order in the mapping is irrelevant.
  assert fusion.fuse_linear(HAND, {'bm25': 0.0, 'dense': 1.0}) == [
      ('b', 1.0), ('c', 0.5), ('a', 0.0)]


def test_linear_zscore_missing_counts_as_lowest():
  ranked = fusion.fuse_linear(HAND, {'bm25': 1.0}, normalisation='zscore')
  assert ranked == [('c', 1.0), ('a', -1.0), ('b', -1.0)]  # tie -> doc_id asc


def test_rrf_weighted_with_k_and_missing_contributes_nothing():
  # dense ranks: b 1, c 2, a 3; bm25 ranks: c 1, a 2 (b missing).
  ranked = fusion.fuse_rrf(HAND, {'dense': 1.0, 'bm25': 1.0}, k=60)
  expected = {'a': 1 / 63 + 1 / 62, 'b': 1 / 61, 'c': 1 / 62 + 1 / 61}
  assert [d for d, _ in ranked] == ['c', 'a', 'b']
  assert dict(ranked) == pytest.approx(expected)
  ranked = fusion.fuse_rrf(HAND, {'dense': 2.0, 'bm25': 0.5}, k=0)
  expected = {'a': 2 / 3 + 0.5 / 2, 'b': 2 / 1, 'c': 2 / 2 + 0.5 / 1}
  assert [d for d, _ in ranked] == ['b', 'c', 'a']
  assert dict(ranked) == pytest.approx(expected)


def test_rrf_rank_ties_by_doc_id():
  cands = [_c('z', dense=1.0), _c('y', dense=1.0), _c('x', dense=0.5)]
  ranked = fusion.fuse_rrf(cands, {'dense': 1.0}, k=10)
  assert ranked == [('y', 1 / 11), ('z', 1 / 12), ('x', 1 / 13)]


def test_final_order_ties_by_doc_id_and_is_input_order_free():
  cands = [_c('d3', dense=1.0, bm25=0.0), _c('d1', dense=0.0, bm25=1.0),
           _c('d2', dense=0.5, bm25=0.5)]
  ranked = fusion.fuse_linear(cands, {'dense': 1.0, 'bm25': 1.0})
  assert ranked == [('d1', 1.0), ('d2', 1.0), ('d3', 1.0)]
  assert fusion.fuse_linear(cands[::-1], {'dense': 1.0, 'bm25': 1.0}) == ranked


def test_rank_single_puts_missing_last_at_the_floor():
  ranked = fusion.rank_single(HAND, 'bm25')
  assert ranked == [('c', 20.0), ('a', 10.0), ('b', 10.0)]
  assert fusion.rank_single(HAND, 'ce') == [('a', 0.0), ('b', 0.0), ('c', 0.0)]


def test_duplicate_doc_ids_are_rejected():
  with pytest.raises(ValueError, match='duplicate doc_id'):
    fusion.fuse_linear([_c('a', dense=1.0), _c('a', dense=2.0)], {'dense': 1.0})


# --- parsing and specs -----------------------------------------------------


def test_parse_fusion_weights():
  assert fusion.parse_fusion_weights(' dense=0.5, bm25 = 0.5,ce=1 ') == {
      'dense': 0.5, 'bm25': 0.5, 'ce': 1.0}
  assert fusion.parse_fusion_weights('AUTO') == 'auto'
  assert fusion.parse_fusion_weights('dense=0,ce=2') == {'dense': 0.0, 'ce': 2.0}


@pytest.mark.parametrize('text, message', [
    ('', 'empty fusion weights'),
    ('dense', 'is not signal=weight'),
    ('dense=', 'is not signal=weight'),
    ('colbert=1', "unknown fusion signal 'colbert'"),
    ('dense=abc', "fusion weight for 'dense' is not a number: 'abc'"),
    ('dense=nan', 'must be finite'),
    ('bm25=-0.5', "fusion weight for 'bm25' must be >= 0"),
    ('dense=1,dense=2', 'given twice'),
    ('dense=0,bm25=0.0', 'all zero'),
])
def test_parse_fusion_weights_errors(text, message):
  with pytest.raises(ValueError, match=message):
    fusion.parse_fusion_weights(text)


def test_fusion_spec_validation_and_json():
  spec = FusionSpec('linear', {'bm25': 1, 'dense': 0.5})
  assert list(spec.weights) == ['dense', 'bm25']  # canonical signal order
  assert json.loads(json.dumps(spec.as_dict()))['weights'] == {'dense': 0.5, 'bm25': 1.0}
  assert hash(spec) == hash(FusionSpec('linear', {'dense': 2.0}))
  with pytest.raises(ValueError, match='unknown fusion method'):
    FusionSpec('borda', 'auto')
  with pytest.raises(ValueError, match='one signal'):
    FusionSpec('none', {'dense': 1.0, 'bm25': 1.0})
  with pytest.raises(ValueError, match='all zero'):
    FusionSpec('rrf', {'dense': 0.0})
  with pytest.raises(ValueError, match='rrf k'):
    FusionSpec('rrf', 'auto', rrf_k=-1)


# --- nDCG@10 ---------------------------------------------------------------


def test_ndcg_at_10_equals_ir_measures():
  rng = np.random.default_rng(7)
  qrels, run, rankings = [], [], {}
  for q in range(60):
    query_id = f'q{q}'
    docs = [f'd{i}' for i in range(int(rng.integers(1, 30)))]
    judged = rng.choice(docs, size=int(rng.integers(1, len(docs) + 1)), replace=False)
    for doc_id in judged:
      qrels.append(ir_measures.Qrel(query_id, str(doc_id), int(rng.integers(-1, 4))))
    qrels.append(ir_measures.Qrel(query_id, 'unretrieved', int(rng.integers(0, 3))))
    ranking = list(rng.permutation(docs))
    rankings[query_id] = [str(d) for d in ranking]
    run += [ir_measures.ScoredDoc(query_id, str(d), -float(r))
            for r, d in enumerate(ranking, start=1)]
  expected = {m.query_id: m.value
              for m in ir_measures.iter_calc([ir_measures.nDCG @ 10], qrels, run)}
  by_query: dict = {}
  for qrel in qrels:
    by_query.setdefault(qrel.query_id, {})[qrel.doc_id] = qrel.relevance
  for query_id, ranking in rankings.items():
    got = fusion.ndcg_at_10(ranking, by_query[query_id])
    assert got == pytest.approx(expected[query_id], abs=1e-12), query_id
  assert fusion.ndcg_at_10(['a'], {'a': 0}) == 0.0
  assert fusion.ndcg_at_10([], {'a': 1}) == 0.0


# --- tuning ----------------------------------------------------------------


def test_weight_grids():
  pair = fusion.weight_grid(['dense', 'bm25'])
  assert len(pair) == 21 and {'dense': 0.65, 'bm25': 0.35} in pair
  for signals, size in ((['dense', 'bm25', 'ce'], 66), (['dense', 'bm25', 'supplied', 'ce'], 286)):
    grid = fusion.weight_grid(signals)
    assert len(grid) == size
    assert all(math.isclose(sum(w.values()), 1.0) for w in grid)


def _window_case(queries: int, seed: int = 0) -> tuple[dict, dict]:
  """Fusion with dense weight w puts the relevant doc first only for w = 0.65.

  Per query (min-max anchors A/B make raw = normalised): rel (0.8, 0.5) beats
  A (1, 0) for w < 0.71, B (0, 1) for w > 0.38, C (0.9, 0.3) for w < 0.67 and
  D (0.724, 0.624) for w > 0.62. Alone, each signal ranks rel third.
  """
  rng = np.random.default_rng(seed)
  cands, qrels = {}, {}
  for q in range(queries):
    query_id = f'q{q:03d}'
    points = {'rel': (0.8, 0.5), 'a': (1.0, 0.0), 'b': (0.0, 1.0), 'c': (0.9, 0.3),
              'd': (0.724, 0.624)}
    points.update({f'f{i}': tuple(rng.uniform(0.0, 0.3, 2)) for i in range(10)})
    cands[query_id] = [_c(f'{query_id}-{n}', dense=float(x), bm25=float(y))
                       for n, (x, y) in points.items()]
    qrels[query_id] = {f'{query_id}-rel': 1, f'{query_id}-c': 0}
  return cands, qrels


def test_tune_weights_finds_the_window():
  cands, qrels = _window_case(35)
  weights, mean = fusion.tune_weights(cands, qrels, ['bm25', 'dense'], 'linear')
  assert weights == {'dense': 0.65, 'bm25': 0.35}
  assert mean == 1.0
  for ranking in (fusion.fuse_linear(c, weights) for c in cands.values()):
    assert ranking[0][0].endswith('-rel')


def test_tune_weights_agrees_with_fuse_and_ndcg():
  """The vectorised grid ranks exactly as fuse_linear/fuse_rrf + ndcg_at_10."""
  rng = np.random.default_rng(3)
  cands, qrels = {}, {}
  for q in range(12):
    rows = []
    for i in range(15):
      scores = {s: (None if rng.random() < 0.3 else float(rng.integers(0, 4)))
                for s in ('dense', 'bm25', 'ce')}
      rows.append(Candidate(f'd{i:02d}', scores))
    cands[f'q{q}'] = rows
    qrels[f'q{q}'] = {f'd{i:02d}': int(rng.integers(0, 3)) for i in range(0, 15, 2)}
  signals = ['dense', 'bm25', 'ce']
  for method in ('linear', 'rrf'):
    weights, mean = fusion.tune_weights(cands, qrels, signals, method, rrf_k=5)
    means = []
    for grid_weights in fusion.weight_grid(signals):
      values = []
      for query_id, rows in cands.items():
        if not any(r > 0 for r in qrels[query_id].values()):
          continue
        if method == 'linear':
          ranked = fusion.fuse_linear(rows, {s: w for s, w in grid_weights.items() if w})
        else:
          ranked = fusion.fuse_rrf(rows, {s: w for s, w in grid_weights.items() if w}, k=5)
        values.append(fusion.ndcg_at_10([d for d, _ in ranked], qrels[query_id]))
      means.append(np.mean(values))
    assert mean == pytest.approx(max(means), abs=1e-12)


def test_tune_weights_ties_prefer_even_then_earlier_signal():
  # Every weighting ranks the same: the most even one wins.
  cands = {'q': [_c('a', dense=2.0, bm25=2.0), _c('b', dense=1.0, bm25=1.0)]}
  qrels = {'q': {'a': 1}}
  assert fusion.tune_weights(cands, qrels, ['dense', 'bm25'])[0] == {
      'dense': 0.5, 'bm25': 0.5}
  # Best: w > 0.62 (a, c, b) or w < 0.38 (b, c, a). The most even of each are
  # 0.65 and 0.35, equally even: the lexicographically larger (dense first) wins.
  cands = {'q': [_c('a', dense=1.0, bm25=0.0), _c('b', dense=0.0, bm25=1.0),
                 _c('c', dense=0.62, bm25=0.62)]}
  qrels = {'q': {'a': 1, 'b': 1}}
  weights, mean = fusion.tune_weights(cands, qrels, ['bm25', 'dense'])
  assert weights == {'dense': 0.65, 'bm25': 0.35}
  assert mean == pytest.approx(fusion.ndcg_at_10(['a', 'c', 'b'], qrels['q']))


# --- the guard -------------------------------------------------------------


def test_choose_fusion_keeps_clearly_better_fusion():
  cands, qrels = _window_case(35)
  decision = fusion.choose_fusion(cands, qrels, FusionSpec('linear', 'auto'))
  assert not decision.fell_back
  assert decision.method == 'linear'
  assert decision.weights == {'dense': 0.65, 'bm25': 0.35}
  tuning = decision.tuning
  assert tuning['queries'] == 35
  assert tuning['single_ndcg@10'] == pytest.approx({'dense': 0.5, 'bm25': 0.5})
  assert tuning['fused_ndcg@10'] == 1.0 and tuning['gain'] == pytest.approx(0.5)
  assert tuning['p_value'] < 0.001
  assert decision.reason.startswith('auto fusion kept: dense 0.50, bm25 0.50 -> fused 1.00')
  assert '35 tuning queries' in decision.reason
  assert json.loads(json.dumps(decision.as_dict()))['tuning']['queries'] == 35
  again = fusion.choose_fusion(cands, qrels, FusionSpec('linear', 'auto'))
  assert again.as_dict() == decision.as_dict()


def test_choose_fusion_falls_back_on_too_few_queries():
  cands, qrels = _window_case(35)
  few = {q: cands[q] for q in sorted(cands)[:10]}
  qrels['unlisted'] = {'x': 1}  # judged but not among the candidates: not counted
  decision = fusion.choose_fusion(few, qrels, FusionSpec('linear', 'auto'))
  assert decision.fell_back and decision.method == 'none'
  assert decision.weights == {'dense': 1.0}  # dense/bm25 tie -> priority
  assert decision.tuning['queries'] == 10 and decision.tuning['p_value'] is None
  assert decision.tuning['tuned_weights'] == {'dense': 0.65, 'bm25': 0.35}
  assert decision.reason.startswith('auto fusion fell back to dense: 10 tuning queries')


def test_too_few_queries_fall_back_to_the_given_signal():
  cands, qrels = _window_case(10)
  decision = fusion.choose_fusion(cands, qrels, FusionSpec('linear', 'auto'),
                                  few_queries_fallback='bm25')
  assert decision.fell_back and decision.weights == {'bm25': 1.0}
  assert decision.tuning['best_single'] == 'dense'  # the tie goes to dense by priority
  assert decision.reason.startswith(
      'auto fusion fell back to bm25: 10 tuning queries with judgments < 20 needed')
  # Enough queries: the guard decides as ever (here it keeps the tuned weights).
  cands, qrels = _window_case(35)
  kept = fusion.choose_fusion(cands, qrels, FusionSpec('linear', 'auto'),
                              few_queries_fallback='bm25')
  assert not kept.fell_back and kept.weights == {'dense': 0.65, 'bm25': 0.35}


def _noise_case(seed: int, queries: int = 40, docs: int = 20) -> tuple[dict, dict]:
  """dense is weakly informative, bm25 is noise: any tuned gain is overfitting."""
  rng = np.random.default_rng(seed)
  cands, qrels = {}, {}
  for q in range(queries):
    query_id = f'q{q:03d}'
    relevant = set(rng.choice(docs, 3, replace=False).tolist())
    qrels[query_id] = {f'd{i:02d}': int(rng.integers(1, 3)) for i in relevant}
    cands[query_id] = [
        _c(f'd{i:02d}', dense=float(rng.normal() + 0.5 * (i in relevant)),
           bm25=float(rng.normal()))
        for i in range(docs)]
  return cands, qrels


def test_choose_fusion_falls_back_on_overfit_noise():
  # One draw; test_guard_rarely_keeps_noise checks the rate over many.
  cands, qrels = _noise_case(seed=0)
  decision = fusion.choose_fusion(cands, qrels, FusionSpec('linear', 'auto'))
  tuning = decision.tuning
  assert decision.fell_back and decision.method == 'none'
  assert decision.weights == {tuning['best_single']: 1.0}
  assert tuning['gain'] > 0  # tuned on these queries: a small, spurious gain ...
  assert tuning['p_value'] >= 0.05  # ... that the test does not support
  assert tuning['queries'] == 40
  assert 'not supported (p=' in decision.reason and 'on 40 tuning queries' in decision.reason


@pytest.mark.parametrize('method, folds, most, most_in', [
    # In-sample tuning is optimistic: ~10% (linear) / ~5% (rrf) kept over 200 seeds.
    ('linear', 0, 6, 6), ('rrf', 0, 6, 8),
    # Cross-validated gains: ~3.5% / ~2% over 200 seeds.
    ('linear', 5, 3, 5), ('rrf', 5, 3, 6),
])
def test_guard_rarely_keeps_noise(method, folds, most, most_in):
  """Tuned weights for a pure-noise signal are rarely kept; with the equal-weight
  fallback the noise gets in somewhat more often (here 4/40 and 5/40 with 5 folds),
  only where equal weights scored above the best single signal on the tuning queries."""
  decisions = [fusion.choose_fusion(*_noise_case(seed), FusionSpec(method, 'auto'),
                                    flips=2000, folds=folds) for seed in range(40)]
  assert sum(not d.fell_back for d in decisions) <= most
  admitted = [d for d in decisions if d.weights.get('bm25')]
  assert len(admitted) <= most_in
  for d in admitted:
    if d.fell_back:
      assert d.tuning['equal_weights_ndcg@10'] > max(d.tuning['single_ndcg@10'].values())


def test_unsupported_tuning_falls_back_to_equal_weights_that_beat_the_best_single():
  """In the window case equal weights rank rel second (each signal alone: third).
  A test nothing passes (alpha 0) leaves equal weights, which beat both singles."""
  cands, qrels = _window_case(35)
  decision = fusion.choose_fusion(cands, qrels, FusionSpec('linear', 'auto'), alpha=0.0)
  assert decision.fell_back and decision.method == 'linear'
  assert decision.weights == {'dense': 0.5, 'bm25': 0.5}
  expected = fusion.ndcg_at_10(['d', 'rel'], {'rel': 1})
  assert decision.tuning['equal_weights_ndcg@10'] == pytest.approx(expected)
  assert decision.reason.startswith('auto fusion fell back to equal weights: tuned gain +0.500')
  assert 'dense=0.5, bm25=0.5 scores 0.631 there, above dense 0.500' in decision.reason
  ranked = fusion.fuse(cands['q000'], decision)
  assert ranked[1][0] == 'q000-rel'


def test_cross_validated_guard_keeps_real_gains():
  cands, qrels = _window_case(35)
  decision = fusion.choose_fusion(cands, qrels, FusionSpec('linear', 'auto'), folds=5)
  assert not decision.fell_back and decision.weights == {'dense': 0.65, 'bm25': 0.35}
  assert decision.tuning['heldout_fused_ndcg@10'] == 1.0
  assert '(5-fold held out)' in decision.reason
  with pytest.raises(ValueError, match='folds'):
    fusion.choose_fusion(cands, qrels, FusionSpec('linear', 'auto'), folds=1)


def test_fallback_picks_the_best_single_signal():
  rng = np.random.default_rng(5)
  cands, qrels = {}, {}
  for q in range(30):
    relevant = {f'd{i}' for i in rng.choice(10, 2, replace=False)}
    qrels[f'q{q}'] = {d: 1 for d in relevant}
    cands[f'q{q}'] = [
        _c(f'd{i}', dense=float(rng.normal()), bm25=float(f'd{i}' in relevant),
           ce=float(rng.normal()))
        for i in range(10)]
  decision = fusion.choose_fusion(cands, qrels, FusionSpec('rrf', 'auto'))
  assert decision.fell_back
  assert decision.tuning['best_single'] == 'bm25'
  assert decision.tuning['single_ndcg@10']['bm25'] == 1.0
  assert decision.weights == {'bm25': 1.0} and decision.method == 'none'
  assert decision.tuning['gain'] <= 0
  # Equal weights let the noise in: below bm25 alone, so not a fallback either.
  assert decision.tuning['equal_weights_ndcg@10'] < 1.0
  ranked = fusion.fuse(cands['q0'], decision)
  assert {d for d, _ in ranked[:2]} == set(qrels['q0'])


def test_choose_fusion_fixed_weights_and_none():
  cands, qrels = _window_case(5)
  spec = FusionSpec('rrf', {'dense': 1.0, 'bm25': 2.0}, rrf_k=10)
  decision = fusion.choose_fusion(cands, qrels, spec)
  assert not decision.fell_back and decision.tuning == {}
  assert (decision.method, decision.weights, decision.rrf_k) == ('rrf', spec.weights, 10)
  decision = fusion.choose_fusion(cands, qrels, FusionSpec('none', 'auto'))
  assert not decision.fell_back and decision.weights == {'dense': 1.0}
  only_dense = {q: [_c(c.doc_id, dense=c.scores['dense']) for c in rows]
                for q, rows in cands.items()}
  decision = fusion.choose_fusion(only_dense, qrels, FusionSpec('linear', 'auto'))
  assert decision.fell_back and 'only one signal' in decision.reason
  with pytest.raises(ValueError, match='no signal scores'):
    fusion.choose_fusion({'q': [_c('a')]}, {}, FusionSpec('linear', 'auto'))


def test_paired_sign_flip_p():
  assert fusion.paired_sign_flip_p([]) == 1.0
  assert fusion.paired_sign_flip_p([0.0, 0.0]) == 1.0
  assert fusion.paired_sign_flip_p([0.1] * 30) == pytest.approx(1 / 10_001)
  p = fusion.paired_sign_flip_p([0.1, -0.1, 0.05, -0.02])
  assert 0.2 < p < 0.8
  assert fusion.paired_sign_flip_p([0.1, -0.1, 0.05, -0.02]) == p


# --- Beam ------------------------------------------------------------------


ROWS = [
    {'query_id': 'q1', 'doc_id': 'a', 'dense_score': 1.0, 'bm25_score': 10.0,
     'supplied_score': None, 'ce_score': None},
    {'query_id': 'q1', 'doc_id': 'b', 'dense_score': 3.0, 'bm25_score': None,
     'supplied_score': None, 'ce_score': None},
    {'query_id': 'q1', 'doc_id': 'c', 'dense_score': 2.0, 'bm25_score': 20.0,
     'supplied_score': None, 'ce_score': float('nan')},
]


def test_signals_present_and_candidates_from_rows():
  assert fusion.signals_present(ROWS) == ['dense', 'bm25']
  assert fusion.candidates_from_rows(ROWS) == [
      Candidate('a', {'dense': 1.0, 'bm25': 10.0, 'supplied': None, 'retrieval': None, 'ce': None}),
      Candidate('b', {'dense': 3.0, 'bm25': None, 'supplied': None, 'retrieval': None, 'ce': None}),
      Candidate('c', {'dense': 2.0, 'bm25': 20.0, 'supplied': None, 'retrieval': None, 'ce': None})]

