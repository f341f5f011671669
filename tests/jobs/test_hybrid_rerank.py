"""The rerank job with hybrid candidates (dense + BM25) and fusion, end to end."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from pipelines import encode as encode_job
from pipelines import rerank
from tests.fixtures import (
    CORPUS,
    QUERIES,
    brute_force_top_k,
    predict,
    read_embedding_shards,
    read_rows,
)

TOP_K = 4
KNOWN_DOCS = sorted(d for d, t in CORPUS.items() if t.strip())  # d13 is blank


def _run(argv: list[str]) -> tuple[dict, str]:
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    report = rerank.run(argv + ['--device', 'cpu'])
  return report, stdout.getvalue()


@pytest.fixture(scope='module')
def embeddings(tmp_path_factory, rerank_inputs, tiny_bi_encoder_dir) -> dict[str, str]:
  root = tmp_path_factory.mktemp('hybrid_embeddings')
  dirs = {'corpus': str(root / 'corpus'), 'queries': str(root / 'queries')}
  with contextlib.redirect_stdout(io.StringIO()):
    encode_job.run(['--input', rerank_inputs['corpus'], '--output', dirs['corpus'],
                    '--model', tiny_bi_encoder_dir, '--device', 'cpu'])
    encode_job.run(['--input', rerank_inputs['queries'], '--output', dirs['queries'],
                    '--model', tiny_bi_encoder_dir, '--id-column', 'query_id',
                    '--device', 'cpu'])
  return dirs


def _args(rerank_inputs, embeddings, output, cross_encoder='none') -> list[str]:
  return ['--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
          '--query-embeddings', embeddings['queries'],
          '--corpus-embeddings', embeddings['corpus'], '--bm25',
          '--cross-encoder', cross_encoder, '--output', str(output),
          '--top-k', str(TOP_K), '--top-n', '3']


def _bm25s_scores() -> dict[tuple[str, str], float]:
  """Every positive (query, doc) BM25 score by bm25s (lucene, k1 1.5, b 0.75)."""
  import bm25s

  from transforms.retrieval.bm25 import tokenize
  retriever = bm25s.BM25(method='lucene', k1=1.5, b=0.75)
  retriever.index([tokenize(CORPUS[d]) for d in KNOWN_DOCS], show_progress=False)
  out = {}
  for query_id, text in QUERIES.items():
    scores = retriever.get_scores(tokenize(text))
    for doc_id, score in zip(KNOWN_DOCS, scores):
      if score > 0:
        out[(query_id, doc_id)] = float(score)
  return out


def _minmax(values: dict[str, float]) -> dict[str, float]:
  if not values:
    return {}
  low, high = min(values.values()), max(values.values())
  return {k: 1.0 if high == low else (v - low) / (high - low) for k, v in values.items()}


def test_hybrid_without_cross_encoder_fixed_equal_weights(
    tmp_path, rerank_inputs, embeddings):
  output = tmp_path / 'ranked'
  report, stdout = _run(_args(rerank_inputs, embeddings, output) + [
      '--fusion-weights', 'dense=0.5,bm25=0.5'])
  rows = read_rows(output / 'candidates')
  # Each source's candidates: dense = brute force top-k; BM25 = bm25s's positive top-k.
  query_ids, queries = read_embedding_shards(embeddings['queries'])
  doc_ids, docs = read_embedding_shards(embeddings['corpus'])
  dense = {(r['query_id'], r['doc_id']): r['retrieval_score']
           for r in brute_force_top_k(query_ids, queries, doc_ids, docs, TOP_K)}
  bm25_all = _bm25s_scores()
  bm25 = {}
  for query_id in QUERIES:
    hits = sorted(((-s, d) for (q, d), s in bm25_all.items() if q == query_id))[:TOP_K]
    bm25.update({(query_id, d): -s for s, d in hits})
  assert {(r['query_id'], r['doc_id']) for r in rows} == set(dense) | set(bm25)
  assert report['union_overlap'] == len(set(dense) & set(bm25))
  for row in rows:
    key = (row['query_id'], row['doc_id'])
    assert row['dense_score'] == (pytest.approx(dense[key], abs=1e-6) if key in dense else None)
    assert row['bm25_score'] == (pytest.approx(bm25[key], abs=1e-5) if key in bm25 else None)
    assert row['ce_score'] is None and row['supplied_score'] is None
  # The first stage: 0.5 * min-max(dense) + 0.5 * min-max(bm25) per query, a
  # missing signal counting 0; with no cross-encoder it is also the final ranking.
  for query_id in QUERIES:
    mine = sorted((r for r in rows if r['query_id'] == query_id), key=lambda r: r['rank'])
    d = _minmax({r['doc_id']: r['dense_score'] for r in mine if r['dense_score'] is not None})
    b = _minmax({r['doc_id']: r['bm25_score'] for r in mine if r['bm25_score'] is not None})
    expected = {r['doc_id']: 0.5 * d.get(r['doc_id'], 0.0) + 0.5 * b.get(r['doc_id'], 0.0)
                for r in mine}
    order = sorted(expected, key=lambda doc: (-round(expected[doc], 5), doc))
    assert [r['doc_id'] for r in mine] == order, query_id
    for r in mine:
      assert r['retrieval_score'] == pytest.approx(expected[r['doc_id']], abs=1e-5)
      assert r['score'] == r['retrieval_score'] and r['rank'] == r['retrieval_rank']
  manifest = json.loads((output / 'manifest.json').read_text())
  assert manifest['candidate_sources'] == ['dense', 'bm25']
  assert manifest['cross_encoder'] is None
  assert manifest['fusion']['first_stage']['weights'] == {'dense': 0.5, 'bm25': 0.5}
  assert manifest['fusion']['final'] is None
  assert report['fusion'] == manifest['fusion']
  assert report['pairs_scored'] == 0 and report['reconciles']
  assert 'fusion, first stage' in stdout and 'linear dense=0.5, bm25=0.5' in stdout


def test_hybrid_with_cross_encoder_and_tuning_queries(
    tmp_path, rerank_inputs, embeddings, tiny_cross_encoder_dir):
  import polars as pl
  tune = tmp_path / 'tune.parquet'
  qrels = pl.read_parquet(rerank_inputs['qrels'])
  qrels.filter(pl.col('query_id').is_in(['q1', 'q2'])).write_parquet(tune)
  output = tmp_path / 'ranked'
  report, stdout = _run(_args(rerank_inputs, embeddings, output, tiny_cross_encoder_dir) + [
      '--tune-qrels', str(tune), '--qrels', rerank_inputs['qrels']])
  rows = read_rows(output / 'candidates')
  pairs = [(QUERIES[r['query_id']], CORPUS[r['doc_id']]) for r in rows]
  np.testing.assert_allclose(
      [r['ce_score'] for r in rows], predict(tiny_cross_encoder_dir, pairs), atol=1e-5)
  fusion = report['fusion']
  assert fusion['tuning_query_ids'] == ['q1', 'q2'] and fusion['tuning_queries'] == 2
  # Two tuning queries are too few: each stage falls back to its best single signal.
  for stage in ('first_stage', 'final'):
    assert fusion[stage]['fell_back'] and fusion[stage]['method'] == 'none'
    assert '2 tuning queries with judgments < 20 needed' in fusion[stage]['reason']
  # Metrics leave the tuning queries out: q3 and q4 only.
  assert report['evaluation']['queries_evaluated'] == 2
  assert 'tuning queries excluded' in stdout


def test_first_stage_weights_fixed_while_the_final_is_tuned(
    tmp_path, rerank_inputs, embeddings, tiny_cross_encoder_dir):
  """--first-stage-weights: retrieval_score is the fusion with exactly those
  weights, whatever the tuning queries say; the final stage is still tuned."""
  import polars as pl

  from transforms.ranking.fusion import candidates_from_rows, fuse_linear
  tune = tmp_path / 'tune.parquet'
  qrels = pl.read_parquet(rerank_inputs['qrels'])
  qrels.filter(pl.col('query_id').is_in(['q1', 'q2'])).write_parquet(tune)
  output = tmp_path / 'ranked'
  report, _ = _run(_args(rerank_inputs, embeddings, output, tiny_cross_encoder_dir) + [
      '--tune-qrels', str(tune), '--first-stage-weights', 'dense=0.3,bm25=0.7'])
  fusion = report['fusion']
  assert fusion['first_stage']['weights'] == {'dense': 0.3, 'bm25': 0.7}
  assert not fusion['first_stage']['fell_back']
  assert fusion['final']['fell_back']  # tuned: 2 queries are too few
  assert '2 tuning queries' in fusion['final']['reason']
  rows = read_rows(output / 'candidates')
  by_query: dict = {}
  for row in rows:
    by_query.setdefault(row['query_id'], []).append(row)
  for query_rows in by_query.values():
    expected = dict(fuse_linear(candidates_from_rows(query_rows), {'dense': 0.3, 'bm25': 0.7}))
    for row in query_rows:
      assert row['retrieval_score'] == pytest.approx(expected[row['doc_id']], abs=1e-6)


@pytest.mark.parametrize('extra, message', [
    (['--fusion-weights', 'dense=1,ce=1', '--first-stage-weights', 'dense=1'],
     'give --first-stage-weights with --fusion-weights auto'),
    (['--first-stage-weights', 'auto'], "not 'auto'"),
    (['--first-stage-weights', 'ce=1'], 'names ce'),
    (['--first-stage-weights', 'dense=x'], 'not a number'),
    (['--fusion', 'none', '--first-stage-weights', 'dense=1,bm25=1'], 'ranks by one signal'),
])
def test_first_stage_weights_user_errors_exit_2(
    tmp_path, rerank_inputs, embeddings, tiny_cross_encoder_dir, capsys, extra, message):
  code = rerank.main(
      _args(rerank_inputs, embeddings, tmp_path / 'out', tiny_cross_encoder_dir) + extra)
  assert code == 2
  errors = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
  assert len(errors) == 1 and message in errors[0]
  assert not (tmp_path / 'out').exists()


def test_no_cross_encoder_needs_scored_candidates(tmp_path, rerank_inputs, capsys):
  import polars as pl
  candidates = tmp_path / 'run.parquet'
  pl.DataFrame({'query_id': ['q1'], 'doc_id': ['d01']}).write_parquet(candidates)
  code = rerank.main([
      '--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
      '--candidates', str(candidates), '--cross-encoder', 'none',
      '--output', str(tmp_path / 'out')])
  assert code == 2
  errors = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
  assert len(errors) == 1 and 'has no \'score\' column and no dense or BM25' in errors[0]
