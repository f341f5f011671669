"""The rerank job end to end on small Parquet inputs, with tiny real models.

Embeddings are made by the encode job with a tiny bi-encoder; scores come from
a tiny 1-label cross-encoder. Job runs are shared across tests (module scope).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import pathlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import encode as encode_job
from pipelines import evaluate as evaluate_job
from pipelines import rerank
from tests.fixtures import (
  CORPUS,
  QRELS,
  QUERIES,
  brute_force_top_k,
  predict,
  read_embedding_shards,
  read_rows,
  write_parquet,
)
from transforms.ranking import evaluation
from transforms.ranking.ranked import ranking_key

TOP_K, TOP_N = 5, 3
KNOWN_DOCS = sorted(d for d, t in CORPUS.items() if t.strip())  # d13 is blank
CANDIDATES_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('doc_id', pa.string()), ('score', pa.float64())])


def _run(argv: list[str]) -> tuple[dict, str]:
  """``rerank.run(argv)``; returns the report and what it printed on stdout."""
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    report = rerank.run(argv + ['--device', 'cpu'])
  return report, stdout.getvalue()


def _files(directory: pathlib.Path) -> dict[str, bytes]:
  """Every Parquet part file under ``directory`` (relative path -> bytes)."""
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob('part-*.parquet'))}


@pytest.fixture(scope='module')
def embeddings(tmp_path_factory, rerank_inputs, tiny_bi_encoder_dir,
               tiny_bi_encoder_other_dir) -> dict[str, str]:
  root = tmp_path_factory.mktemp('embeddings')
  dirs = {'corpus': str(root / 'corpus'), 'queries': str(root / 'queries'),
          'queries_other_model': str(root / 'queries_other')}
  with contextlib.redirect_stdout(io.StringIO()):
    encode_job.run(['--input', rerank_inputs['corpus'], '--output', dirs['corpus'],
                    '--model', tiny_bi_encoder_dir, '--device', 'cpu'])
    encode_job.run(['--input', rerank_inputs['queries'], '--output', dirs['queries'],
                    '--model', tiny_bi_encoder_dir, '--id-column', 'query_id',
                    '--device', 'cpu'])
    encode_job.run(['--input', rerank_inputs['queries'], '--output',
                    dirs['queries_other_model'], '--model', tiny_bi_encoder_other_dir,
                    '--id-column', 'query_id', '--device', 'cpu'])
  return dirs


@pytest.fixture(scope='module')
def brute_force(embeddings) -> list[dict]:
  """Exact top-k over the embedding shards the encode job wrote."""
  query_ids, queries = read_embedding_shards(embeddings['queries'])
  doc_ids, docs = read_embedding_shards(embeddings['corpus'])
  assert sorted(doc_ids) == KNOWN_DOCS and sorted(query_ids) == sorted(QUERIES)
  return brute_force_top_k(query_ids, queries, doc_ids, docs, TOP_K)


def _dense_args(rerank_inputs, embeddings, cross_encoder, output) -> list[str]:
  return [
      '--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
      '--query-embeddings', embeddings['queries'],
      '--corpus-embeddings', embeddings['corpus'],
      '--cross-encoder', cross_encoder, '--output', str(output),
      '--top-k', str(TOP_K), '--top-n', str(TOP_N)]


@pytest.fixture(scope='module')
def dense_run(tmp_path_factory, rerank_inputs, embeddings, tiny_cross_encoder_dir):
  output = tmp_path_factory.mktemp('dense') / 'ranked'
  report, stdout = _run(
      _dense_args(rerank_inputs, embeddings, tiny_cross_encoder_dir, output) + [
          '--corpus-block-size', '4', '--query-block-size', '3',
          '--qrels', rerank_inputs['qrels'], '--trec'])
  return output, report, stdout


# ------------------------------------------------------------ dense candidates

def test_ranked_schema(dense_run):
  output, _, _ = dense_run
  expected = [('query_id', pa.string()), ('doc_id', pa.string()), ('rank', pa.int32()),
              ('score', pa.float32()), ('retrieval_rank', pa.int32()),
              ('retrieval_score', pa.float32()), ('dense_score', pa.float32()),
              ('bm25_score', pa.float32()), ('supplied_score', pa.float32()),
              ('ce_score', pa.float32()), ('query_text_sha256', pa.string()),
              ('passage_text_sha256', pa.string())]
  files = sorted(output.glob('part-*.parquet')) + sorted(
      (output / 'candidates').glob('part-*.parquet'))
  assert len(files) == 2
  for path in files:
    schema = pq.read_schema(path)
    assert [(f.name, f.type) for f in schema] == expected, path


def test_candidates_equal_brute_force(dense_run, brute_force):
  output, _, _ = dense_run
  rows = read_rows(output / 'candidates')
  assert len(rows) == TOP_K * len(QUERIES)
  got = sorted(({k: r[k] for k in ('query_id', 'doc_id', 'retrieval_rank',
                                   'retrieval_score')} for r in rows),
               key=lambda r: (r['query_id'], r['retrieval_rank']))
  assert got == brute_force


def test_scores_equal_cross_encoder_predict(dense_run, tiny_cross_encoder_dir):
  output, _, _ = dense_run
  rows = read_rows(output / 'candidates')
  expected = predict(tiny_cross_encoder_dir,
                     [(QUERIES[r['query_id']], CORPUS[r['doc_id']]) for r in rows])
  np.testing.assert_allclose([r['score'] for r in rows], expected, atol=1e-4, rtol=0)


def test_top_n_ranked_rows_per_query(dense_run):
  output, _, _ = dense_run
  candidates = read_rows(output / 'candidates')
  ranked = read_rows(output)
  assert len(ranked) == TOP_N * len(QUERIES)
  for query_id in QUERIES:
    everything = [r for r in candidates if r['query_id'] == query_id]
    by_rank = sorted(everything, key=lambda r: r['rank'])
    assert [r['rank'] for r in by_rank] == list(range(1, TOP_K + 1))
    assert by_rank == sorted(everything, key=ranking_key)
    top = sorted((r for r in ranked if r['query_id'] == query_id), key=lambda r: r['rank'])
    assert top == by_rank[:TOP_N]
  # Files are sorted by (query_id, rank).
  assert ranked == sorted(ranked, key=lambda r: (r['query_id'], r['rank']))


def test_report_manifest_and_dead_letters(dense_run, embeddings):
  output, report, stdout = dense_run
  assert json.loads((output / 'report.json').read_text()) == json.loads(
      json.dumps(report))
  n = TOP_K * len(QUERIES)
  assert {k: report[k] for k in (
      'queries_ranked', 'candidates_in', 'dense_candidates', 'supplied_candidates',
      'union_overlap', 'pairs_scored', 'candidate_dead_letters', 'reconciles',
      'dead_letters', 'dead_letters_by_reason', 'ranked_rows')} == {
          'queries_ranked': 4, 'candidates_in': n, 'dense_candidates': n,
          'supplied_candidates': 0, 'union_overlap': 0, 'pairs_scored': n,
          'candidate_dead_letters': 0, 'reconciles': True, 'dead_letters': 1,
          'dead_letters_by_reason': {'rerank/corpus empty_text': 1},
          'ranked_rows': TOP_N * len(QUERIES)}
  assert re.search(r'in = ranked \+ dead \+ overlap\s+yes', stdout)
  manifest = json.loads((output / 'manifest.json').read_text())
  corpus_manifest = json.loads((pathlib.Path(embeddings['corpus']) / 'manifest.json').read_text())
  assert manifest['kind'] == 'ranked'
  assert manifest['candidate_sources'] == ['dense']
  assert (manifest['top_k'], manifest['top_n'], manifest['row_count']) == (TOP_K, TOP_N, 12)
  assert manifest['retrieval_model_fingerprint'] == corpus_manifest['model_fingerprint']
  assert manifest['outputs']['candidates']['rows'] == TOP_K * len(QUERIES)
  dead = read_rows(output / 'dead_letter')
  assert [(d['stage'], d['record_id'], d['reason'].split(':')[0]) for d in dead] == [
      ('rerank/corpus', 'd13', 'empty_text')]
  assert not (output / '.staging').exists()


def test_qrels_writes_metrics(dense_run, rerank_inputs):
  output, report, stdout = dense_run
  png = (output / 'metrics.png').read_bytes()
  assert png.startswith(b'\x89PNG')
  metrics = json.loads((output / 'metrics.json').read_text())
  assert report['evaluation'] == metrics
  assert metrics['rows_evaluated'] == 'candidates'
  assert metrics['queries_evaluated'] == len({q for q, _, _ in QRELS})
  candidates, _ = evaluation.read_ranked(str(output))
  qrels = evaluation.read_qrels([rerank_inputs['qrels']])
  expected = evaluation.evaluate_stages(
      candidates, qrels, evaluation.parse_measures(evaluation.DEFAULT_MEASURES),
      list(QUERIES))
  assert {(s, m): v for s, m, v in expected.select('stage', 'measure', 'value').iter_rows()} == {
      (s, m): pytest.approx(v) for s, values in metrics['metrics'].items()
      for m, v in values.items()}
  import polars as pl
  assert pl.read_parquet(output / 'metrics.parquet').equals(expected)
  assert evaluation.metrics_table(expected) in stdout


def test_trec_run_file(dense_run):
  output, report, _ = dense_run
  assert report['trec_run'] == str(output / 'run.trec')
  lines = (output / 'run.trec').read_text().splitlines()
  ranked = sorted(read_rows(output), key=lambda r: (r['query_id'], r['rank']))
  assert len(lines) == len(ranked)
  for line, row in zip(lines, ranked):
    match = re.fullmatch(r'(\S+) Q0 (\S+) (\d+) (\S+) beam-rerank', line)
    assert match, line
    assert match.group(1, 2, 3) == (row['query_id'], row['doc_id'], str(row['rank']))
    assert np.float32(float(match.group(4))) == np.float32(row['score'])


def test_two_runs_byte_identical(tmp_path, dense_run, rerank_inputs, embeddings,
                                 tiny_cross_encoder_dir):
  """Same inputs, same bytes, even with other retrieval block sizes and the
  queries split into groups (one query per side input)."""
  first, _, _ = dense_run
  second = tmp_path / 'ranked'
  _run(_dense_args(rerank_inputs, embeddings, tiny_cross_encoder_dir, second) + [
      '--corpus-block-size', '1', '--query-block-size', '1',
      '--max-queries-in-memory', '1'])
  files = _files(first)
  assert sorted(files) == [
      'candidates/part-00000-of-00001.parquet', 'dead_letter/part-00000-of-00001.parquet',
      'no_candidates/part-00000-of-00001.parquet', 'part-00000-of-00001.parquet']
  assert _files(second) == files
  assert json.loads((second / 'manifest.json').read_text()) == json.loads(
      (first / 'manifest.json').read_text())


def test_model_option_encodes_first(tmp_path, dense_run, rerank_inputs,
                                    tiny_bi_encoder_dir, tiny_cross_encoder_dir):
  output = tmp_path / 'ranked'
  report, _ = _run([
      '--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
      '--model', tiny_bi_encoder_dir, '--cross-encoder', tiny_cross_encoder_dir,
      '--output', str(output), '--top-k', str(TOP_K), '--top-n', str(TOP_N)])
  assert (output / 'embeddings' / 'queries' / 'manifest.json').exists()
  assert (output / 'embeddings' / 'corpus' / 'manifest.json').exists()
  assert report['pairs_scored'] == TOP_K * len(QUERIES)
  first, _, _ = dense_run
  assert read_rows(output / 'candidates') == read_rows(first / 'candidates')


def test_evaluate_job_on_rerank_output(tmp_path, dense_run, rerank_inputs, capsys):
  output, _, _ = dense_run
  assert evaluate_job.main([
      '--ranked', str(output), '--qrels', rerank_inputs['qrels'],
      '--output', str(tmp_path)]) == 0
  assert json.loads((tmp_path / 'metrics.json').read_text())['metrics'] == json.loads(
      (output / 'metrics.json').read_text())['metrics']
  assert 'MRR@10' in capsys.readouterr().out


# ------------------------------------------------------------ supplied candidates

# (query_id, doc_id, score) and what becomes of each row.
SUPPLIED = [
    ('q1', 'd01', 3.0),            # kept, rank 1
    ('q1', 'd02', 2.0),            # kept, rank 2 (tie with d03: doc_id)
    ('q1', 'd03', 2.0),            # kept, rank 3
    ('q1', 'd01', 1.0),            # duplicate_pair
    ('q1', 'dXX', 1.5),            # unknown_doc_id
    ('qXX', 'd01', 1.0),           # unknown_query_id
    (None, 'd02', 1.0),            # null_query_id
    ('q2', None, 1.0),             # null_doc_id
    ('q2', 'd04', float('nan')),   # bad_score
    ('q2', 'd05', float('inf')),   # bad_score
    ('q2', 'd06', 0.5),            # kept, rank 1
    ('q2', 'd07', None),           # kept, no score, no rank
    ('q3', 'd08', 0.1),            # kept, rank 1
    ('q3', 'd13', 0.2),            # unknown_doc_id (its text was dead-lettered)
]


def _write_candidates(path, rows) -> str:
  return write_parquet(path, {
      'query_id': [r[0] for r in rows], 'doc_id': [r[1] for r in rows],
      'score': [r[2] for r in rows]}, schema=CANDIDATES_SCHEMA)


@pytest.fixture(scope='module')
def supplied_run(tmp_path_factory, rerank_inputs, tiny_cross_encoder_dir):
  root = tmp_path_factory.mktemp('supplied')
  candidates = _write_candidates(root / 'candidates.parquet', SUPPLIED)
  output = root / 'ranked'
  report, stdout = _run([
      '--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
      '--candidates', candidates, '--cross-encoder', tiny_cross_encoder_dir,
      '--output', str(output), '--top-n', '2'])
  return output, report, stdout


def test_supplied_candidates_report_reconciles(supplied_run):
  output, report, stdout = supplied_run
  assert {k: report[k] for k in (
      'candidates_in', 'dense_candidates', 'supplied_candidates', 'union_overlap',
      'pairs_scored', 'candidate_dead_letters', 'reconciles', 'dead_letters',
      'dead_letters_by_reason', 'ranked_rows', 'queries_ranked')} == {
          'candidates_in': 14, 'dense_candidates': 0, 'supplied_candidates': 14,
          'union_overlap': 0, 'pairs_scored': 6, 'candidate_dead_letters': 8,
          'reconciles': True, 'dead_letters': 9,
          'dead_letters_by_reason': {
              'rerank/candidates bad_score': 2,
              'rerank/candidates duplicate_pair': 1,
              'rerank/candidates null_doc_id': 1,
              'rerank/candidates null_query_id': 1,
              'rerank/corpus empty_text': 1,
              'rerank/join unknown_doc_id': 2,
              'rerank/join unknown_query_id': 1},
          'ranked_rows': 5, 'queries_ranked': 3}
  assert report['candidates_in'] == (
      report['pairs_scored'] + report['candidate_dead_letters'] + report['union_overlap'])
  assert re.search(r'in = ranked \+ dead \+ overlap\s+yes', stdout)
  manifest = json.loads((output / 'manifest.json').read_text())
  assert manifest['candidate_sources'] == ['supplied'] and manifest['top_k'] is None


def test_supplied_candidates_dead_letters(supplied_run):
  output, _, _ = supplied_run
  dead = [(d['stage'], d['record_id'], d['reason'].split(':')[0])
          for d in read_rows(output / 'dead_letter')]
  # The files are sorted by (stage, record_id or '', reason, payload).
  assert dead == sorted([
      ('rerank/candidates', None, 'null_query_id'),
      ('rerank/candidates', 'q1\td01', 'duplicate_pair'),
      ('rerank/candidates', 'q2\tNone', 'null_doc_id'),
      ('rerank/candidates', 'q2\td04', 'bad_score'),
      ('rerank/candidates', 'q2\td05', 'bad_score'),
      ('rerank/corpus', 'd13', 'empty_text'),
      ('rerank/join', 'q1\tdXX', 'unknown_doc_id'),
      ('rerank/join', 'q3\td13', 'unknown_doc_id'),
      ('rerank/join', 'qXX\td01', 'unknown_query_id'),
  ], key=lambda t: (t[0], t[1] or '', t[2]))
  duplicate = [d for d in read_rows(output / 'dead_letter')
               if d['reason'].startswith('duplicate_pair')][0]
  assert json.loads(duplicate['payload'])['retrieval_score'] == 1.0  # the worse copy


def test_supplied_candidates_ranked_by_score(supplied_run):
  output, _, _ = supplied_run
  got = {(r['query_id'], r['doc_id']): (
      r['retrieval_rank'], r['retrieval_score'], r['supplied_score'], r['dense_score'])
      for r in read_rows(output / 'candidates')}
  # The first stage is the supplied score alone (one signal); a candidate
  # without a score ranks last with the query's lowest score (its own
  # supplied_score stays null). Ranks are among the candidates ranked: d13
  # (0.2, dead-lettered: empty text) no longer counts for q3.
  assert got == {
      ('q1', 'd01'): (1, 3.0, 3.0, None), ('q1', 'd02'): (2, 2.0, 2.0, None),
      ('q1', 'd03'): (3, 2.0, 2.0, None),
      ('q2', 'd06'): (1, 0.5, 0.5, None), ('q2', 'd07'): (2, 0.5, None, None),
      ('q3', 'd08'): (1, float(np.float32(0.1)), float(np.float32(0.1)), None)}
  ranked = read_rows(output)
  assert sorted((r['query_id'], r['rank']) for r in ranked) == [
      ('q1', 1), ('q1', 2), ('q2', 1), ('q2', 2), ('q3', 1)]


def test_no_candidate_survives(tmp_path, rerank_inputs, tiny_cross_encoder_dir):
  """Every candidate unknown: empty ranked files, an empty TREC run, zero metrics."""
  candidates = _write_candidates(
      tmp_path / 'candidates.parquet', [('q1', 'nope', 1.0), ('qX', 'd01', 2.0)])
  output = tmp_path / 'ranked'
  report, _ = _run([
      '--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
      '--candidates', candidates, '--cross-encoder', tiny_cross_encoder_dir,
      '--output', str(output), '--qrels', rerank_inputs['qrels'], '--trec'])
  assert (report['candidates_in'], report['pairs_scored'], report['candidate_dead_letters'],
          report['reconciles'], report['ranked_rows'], report['queries_ranked']) == (
              2, 0, 2, True, 0, 0)
  assert read_rows(output) == [] and read_rows(output / 'candidates') == []
  assert [(f.name, f.type) for f in pq.read_schema(
      output / 'part-00000-of-00001.parquet')] == [
          (f.name, f.type) for f in pq.read_schema(
              next((output / 'candidates').glob('part-*.parquet')))]
  assert (output / 'run.trec').read_bytes() == b''
  assert report['evaluation']['queries_evaluated'] == len({q for q, _, _ in QRELS})
  assert set(report['evaluation']['metrics']['final'].values()) == {0.0}


@pytest.fixture(scope='module')
def union_run(tmp_path_factory, rerank_inputs, embeddings, brute_force,
              tiny_cross_encoder_dir):
  """Dense top-k plus a supplied run: per query, the dense top-1 (overlap), a
  doc outside the dense top-k, and an unknown doc."""
  rows = []
  for query_id in sorted(QUERIES):
    dense_docs = [r['doc_id'] for r in brute_force if r['query_id'] == query_id]
    outside = [d for d in KNOWN_DOCS if d not in dense_docs][0]
    rows += [(query_id, dense_docs[0], 9.0), (query_id, outside, 1.0),
             (query_id, 'nope', 0.5)]
  root = tmp_path_factory.mktemp('union')
  candidates = _write_candidates(root / 'candidates.parquet', rows)
  output = root / 'ranked'
  report, _ = _run(_dense_args(
      rerank_inputs, embeddings, tiny_cross_encoder_dir, output) + [
          '--candidates', candidates])
  return output, report, rows


def test_union_keeps_dense_rows_and_reconciles(union_run, brute_force):
  output, report, supplied = union_run
  dense = TOP_K * len(QUERIES)
  assert {k: report[k] for k in (
      'candidates_in', 'dense_candidates', 'supplied_candidates', 'union_overlap',
      'pairs_scored', 'candidate_dead_letters', 'reconciles')} == {
          'candidates_in': dense + 12, 'dense_candidates': dense,
          'supplied_candidates': 12, 'union_overlap': 4, 'pairs_scored': dense + 4,
          'candidate_dead_letters': 4, 'reconciles': True}
  assert report['dead_letters_by_reason'] == {
      'rerank/corpus empty_text': 1, 'rerank/join unknown_doc_id': 4}
  rows = {(r['query_id'], r['doc_id']): r for r in read_rows(output / 'candidates')}
  for expected in brute_force:  # Dense rows kept as they were, overlap included.
    row = rows[(expected['query_id'], expected['doc_id'])]
    assert (row['retrieval_rank'], row['retrieval_score']) == (
        expected['retrieval_rank'], expected['retrieval_score'])
  manifest = json.loads((output / 'manifest.json').read_text())
  assert manifest['candidate_sources'] == ['dense', 'supplied']


# ------------------------------------------------------------ user errors

def _error_lines(capsys) -> list[str]:
  return [line for line in capsys.readouterr().err.splitlines()
          if line.startswith('beam-rerank rerank:')]


def test_embeddings_from_different_models_exit_2(
    tmp_path, capsys, rerank_inputs, embeddings, tiny_cross_encoder_dir):
  output = tmp_path / 'ranked'
  code = rerank.main([
      '--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
      '--query-embeddings', embeddings['queries_other_model'],
      '--corpus-embeddings', embeddings['corpus'],
      '--cross-encoder', tiny_cross_encoder_dir, '--output', str(output)])
  assert code == 2
  lines = _error_lines(capsys)
  assert len(lines) == 1
  assert lines[0].startswith(
      'beam-rerank rerank: error: query and corpus embeddings were not made alike')
  assert 'model_fingerprint' in lines[0]
  assert not output.exists()


@pytest.mark.parametrize('extra, message', [
    ([], 'no candidates: give --query-embeddings and --corpus-embeddings, --model, '
         '--bm25 or --candidates'),
    (['--bm25', '--fusion-weights', 'dense=1,ce=1'],
     '--fusion-weights names dense, which this run does not have (signals here: bm25, ce, '
     'retrieval)'),
    (['--bm25', '--fusion-weights', 'bm25=1'],
     "with a cross-encoder, --fusion-weights needs a weight for 'ce'"),
    (['--bm25', '--fusion-weights', 'bm25=x'], "fusion weight for 'bm25' is not a number"),
    (['--bm25', '--fusion', 'none', '--fusion-weights', 'ce=1'],
     '--fusion none ranks the final list by the cross-encoder alone'),
    (['--bm25', '--tune-qrels', '{tmp}/none-*.parquet'],
     "--tune-qrels '{tmp}/none-*.parquet' matches no files"),
    (['--query-embeddings', '{queries}'],
     '--query-embeddings and --corpus-embeddings go together'),
    (['--candidates', '{tmp}/none-*.parquet'],
     "--candidates '{tmp}/none-*.parquet' matches no files"),
    (['--candidates', '{queries_file}'], "has no column 'doc_id'"),
    (['--query-embeddings', '{tmp}', '--corpus-embeddings', '{corpus}'],
     'has no manifest.json'),
    (['--candidates', '{queries_file}', '--top-k', '0'], None),
])
def test_user_errors_exit_2(tmp_path, capsys, rerank_inputs, embeddings,
                            tiny_cross_encoder_dir, extra, message):
  fill = {'tmp': str(tmp_path), 'queries': embeddings['queries'],
          'corpus': embeddings['corpus'], 'queries_file': rerank_inputs['queries']}
  argv = ['--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
          '--cross-encoder', tiny_cross_encoder_dir, '--output', str(tmp_path / 'out')]
  argv += [a.format(**fill) for a in extra]
  if message is None:  # argparse's own error: exit 2 through SystemExit.
    with pytest.raises(SystemExit) as raised:
      rerank.main(argv)
    assert raised.value.code == 2
    assert "argument --top-k: '0' must be at least 1" in capsys.readouterr().err
    return
  assert rerank.main(argv) == 2
  lines = _error_lines(capsys)
  assert len(lines) == 1
  assert lines[0].startswith('beam-rerank rerank: error: ')
  assert message.format(**fill) in lines[0]
  assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------ a real model

def test_rerank_job_with_minilm_cross_encoder_equals_predict(
    minilm_cross_encoder_dir, rerank_inputs, tmp_path):
  """End to end on the real MiniLM under a 1-label head: 24 supplied pairs."""
  docs = ['d01', 'd02', 'd04', 'd06', 'd08', 'd11']
  pairs = list(itertools.product(sorted(QUERIES), docs))
  candidates = write_parquet(
      tmp_path / 'candidates.parquet',
      {'query_id': [q for q, _ in pairs], 'doc_id': [d for _, d in pairs],
       'score': [float(i % 5) for i in range(len(pairs))]},
      schema=pa.schema([('query_id', pa.string()), ('doc_id', pa.string()),
                        ('score', pa.float64())]))
  out = tmp_path / 'ranked'
  report = rerank.run([
      '--queries', rerank_inputs['queries'], '--corpus', rerank_inputs['corpus'],
      '--candidates', candidates, '--cross-encoder', minilm_cross_encoder_dir,
      '--output', str(out), '--top-n', '2', '--device', 'cpu'])
  assert report['pairs_scored'] == len(pairs) and report['reconciles']
  rows = read_rows(out / 'candidates')
  reference = predict(minilm_cross_encoder_dir, [(QUERIES[q], CORPUS[d]) for q, d in pairs])
  expected = {pair: float(s) for pair, s in zip(pairs, reference)}
  assert len(rows) == len(pairs)
  for row in rows:
    assert row['score'] == pytest.approx(expected[(row['query_id'], row['doc_id'])], abs=1e-4)
  assert len(read_rows(out)) == 2 * len(QUERIES)
