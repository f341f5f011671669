"""transforms.ranking.evaluation and the evaluate job: metrics per stage, from ir-measures."""
from __future__ import annotations

import json
import math
import re

import ir_measures
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import evaluate as evaluate_job
from transforms.core.errors import UserInputError
from transforms.ranking import evaluation
from transforms.ranking.ranked import RANKED_SCHEMA

# Rerank order per query, with each row's (doc_id, retrieval_rank).
RANKED_LISTS = {
    'q1': [('d02', 2), ('d01', 1), ('d03', 3)],
    'q2': [('d04', 2), ('d06', 1)],
    'q5': [('d01', 1)],  # ranked, never judged
}
QRELS = [
    ('q1', 'd01', 2), ('q1', 'd03', 1), ('q1', 'd05', 0),
    ('q2', 'd06', 1), ('q2', 'd05', 1),
    ('q3', 'd08', 1),  # judged, never ranked
]
MEASURES = ('nDCG@10', 'RR@10', 'R@100')


def _ranked_rows() -> list[dict]:
  rows = []
  for query_id, docs in RANKED_LISTS.items():
    for rank, (doc_id, retrieval_rank) in enumerate(docs, start=1):
      rows.append({'query_id': query_id, 'doc_id': doc_id, 'rank': rank,
                   'score': 10.0 - rank, 'retrieval_rank': retrieval_rank,
                   'retrieval_score': 1.0 - retrieval_rank / 10})
  return rows


def _ranked_frame() -> pl.DataFrame:
  return pl.from_arrow(pa.Table.from_pylist(_ranked_rows(), schema=RANKED_SCHEMA))


def _qrels_frame() -> pl.DataFrame:
  return pl.DataFrame(QRELS, schema={'query_id': pl.String, 'doc_id': pl.String,
                                     'relevance': pl.Int64}, orient='row')


def _direct(stage: str, measure: str, scope: list[str]) -> float:
  """The mean over ``scope`` of ir-measures' per-query values (0 when absent)."""
  rank_column = 'rank' if stage == 'final' else 'retrieval_rank'
  run = [ir_measures.ScoredDoc(r['query_id'], r['doc_id'], -float(r[rank_column]))
         for r in _ranked_rows()]
  qrels = [ir_measures.Qrel(q, d, r) for q, d, r in QRELS]
  parsed = ir_measures.parse_measure(measure)
  values = {m.query_id: m.value for m in ir_measures.iter_calc([parsed], qrels, run)}
  return sum(values.get(q, 0.0) for q in scope) / len(scope)


def _as_dict(metrics: pl.DataFrame) -> dict:
  return {(s, m): v for s, m, v in metrics.select('stage', 'measure', 'value').iter_rows()}


@pytest.mark.parametrize('query_ids, scope', [
    (None, ['q1', 'q2', 'q3']),                   # every judged query (trec_eval -c)
    (['q1', 'q2', 'q3', 'q4', 'q5'], ['q1', 'q2', 'q3']),  # q3: judged, no results: 0
    (['q2'], ['q2']),
])
def test_evaluate_stages_equals_ir_measures(query_ids, scope):
  measures = evaluation.parse_measures(MEASURES)
  metrics = evaluation.evaluate_stages(_ranked_frame(), _qrels_frame(), measures, query_ids)
  assert metrics.columns == ['stage', 'measure', 'value', 'queries']
  assert metrics.select('stage', 'measure').rows() == [
      (stage, name) for stage in ('retrieval', 'final')
      for name in ('nDCG@10', 'MRR@10', 'Recall@100')]
  assert set(metrics['queries'].to_list()) == {len(scope)}
  got = _as_dict(metrics)
  for stage in ('retrieval', 'final'):
    for measure, name in zip(MEASURES, ('nDCG@10', 'MRR@10', 'Recall@100')):
      assert got[(stage, name)] == pytest.approx(_direct(stage, measure, scope), abs=1e-12)


def test_evaluate_stages_hand_computed():
  measures = evaluation.parse_measures(MEASURES)
  all_queries = evaluation.evaluate_stages(
      _ranked_frame(), _qrels_frame(), measures, ['q1', 'q2', 'q3'])
  got = _as_dict(all_queries)
  # Final: the first relevant doc is 2nd for q1 (d01) and 2nd for q2 (d06);
  # q3 has no results and counts 0.
  assert got[('final', 'MRR@10')] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
  # Retrieval: first for both.
  assert got[('retrieval', 'MRR@10')] == pytest.approx((1 + 1 + 0) / 3)
  # Recall@100: q1 finds both relevant docs, q2 one of two (d05 never found).
  assert got[('final', 'Recall@100')] == pytest.approx((1 + 0.5 + 0) / 3)
  # Linear-gain nDCG@10 for q1 alone, final order d02 (0), d01 (2), d03 (1).
  only_q1 = _as_dict(evaluation.evaluate_stages(
      _ranked_frame(), _qrels_frame(), measures, ['q1']))
  dcg = 0 + 2 / math.log2(3) + 1 / math.log2(4)
  ideal = 2 + 1 / math.log2(3)
  assert only_q1[('final', 'nDCG@10')] == pytest.approx(dcg / ideal, abs=1e-4)
  assert only_q1[('retrieval', 'nDCG@10')] == pytest.approx(
      (2 + 0 + 1 / 2) / ideal, abs=1e-4)


def test_evaluate_stages_without_retrieval_ranks_has_final_only():
  ranked = _ranked_frame().with_columns(retrieval_rank=pl.lit(None, pl.Int32))
  metrics = evaluation.evaluate_stages(
      ranked, _qrels_frame(), evaluation.parse_measures(['RR@10']))
  # q3 is judged but has no results: it counts, as 0.
  assert metrics.rows() == [('final', 'MRR@10', 1 / 3, 3)]


def test_evaluate_stages_no_judged_queries():
  metrics = evaluation.evaluate_stages(
      _ranked_frame(), _qrels_frame(), evaluation.parse_measures(['RR@10']), ['q9'])
  assert metrics.rows() == [('retrieval', 'MRR@10', 0.0, 0), ('final', 'MRR@10', 0.0, 0)]


@pytest.mark.parametrize('name, display', [
    ('RR@10', 'MRR@10'), ('R@100', 'Recall@100'), ('nDCG@10', 'nDCG@10'),
    ('RR', 'MRR'), ('P@5', 'P@5'), ('AP', 'AP')])
def test_display_name(name, display):
  assert evaluation.display_name(name) == display


def test_parse_measures_accepts_aliases():
  parsed = evaluation.parse_measures(
      ['nDCG@10', 'MRR@10', 'Recall@100', ' P@5 ', 'RR@10', 'NDCG@3', 'MAP'])
  assert [str(m) for m in parsed] == ['nDCG@10', 'RR@10', 'R@100', 'P@5', 'RR@10',
                                      'nDCG@3', 'AP']


@pytest.mark.parametrize('junk', ['bogus@3', 'nDCG@x', '', 'Recall@', 'nDCG@10@5'])
def test_parse_measures_rejects_junk(junk):
  with pytest.raises(UserInputError, match=re.escape(f'unknown metric {junk!r}')):
    evaluation.parse_measures(['nDCG@10', junk])


def test_metrics_table():
  metrics = pl.DataFrame(
      [('retrieval', 'nDCG@10', 0.5, 2), ('retrieval', 'MRR@10', 1.0, 2),
       ('final', 'nDCG@10', 0.25, 2), ('final', 'MRR@10', 1 / 3, 2)],
      schema={'stage': pl.String, 'measure': pl.String, 'value': pl.Float64,
              'queries': pl.Int64}, orient='row')
  assert evaluation.metrics_table(metrics).splitlines() == [
      '  metric       first stage       final',
      '  nDCG@10           0.5000      0.2500',
      '  MRR@10            1.0000      0.3333',
  ]


def test_read_qrels_casts_ids_and_drops_nulls(tmp_path):
  path = tmp_path / 'qrels.parquet'
  pq.write_table(pa.table({
      'query_id': pa.array([1, 2, None], pa.int64()),
      'doc_id': pa.array([10, 20, 30], pa.int32()),
      'relevance': pa.array([1, 0, 2], pa.int8()),
      'extra': ['a', 'b', 'c']}), str(path))
  frame = evaluation.read_qrels([str(path)])
  assert frame.schema == pl.Schema(
      {'query_id': pl.String, 'doc_id': pl.String, 'relevance': pl.Int64})
  assert frame.rows() == [('1', '10', 1), ('2', '20', 0)]


# ------------------------------------------------------------ the evaluate job

def _write_ranked_dir(root, with_candidates=True, top_n=2):
  root.mkdir(parents=True, exist_ok=True)
  rows = _ranked_rows()
  pq.write_table(pa.Table.from_pylist(
      [r for r in rows if r['rank'] <= top_n], schema=RANKED_SCHEMA),
      str(root / 'part-00000-of-00001.parquet'))
  if with_candidates:
    (root / 'candidates').mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:4], schema=RANKED_SCHEMA),
                   str(root / 'candidates' / 'part-00000-of-00002.parquet'))
    pq.write_table(pa.Table.from_pylist(rows[4:], schema=RANKED_SCHEMA),
                   str(root / 'candidates' / 'part-00001-of-00002.parquet'))
  outputs = {'ranked': {'directory': '.', 'files': [
      {'path': 'part-00000-of-00001.parquet', 'rows': top_n}]}}
  if with_candidates:
    outputs['candidates'] = {'directory': 'candidates', 'files': [
        {'path': 'part-00000-of-00002.parquet', 'rows': 4},
        {'path': 'part-00001-of-00002.parquet', 'rows': len(rows) - 4}]}
  # Written last by rerank; readers take the file list from it.
  (root / 'manifest.json').write_text(json.dumps({'kind': 'ranked', 'outputs': outputs}))
  return str(root)


@pytest.fixture
def qrels_file(tmp_path):
  path = tmp_path / 'qrels.parquet'
  pq.write_table(pa.Table.from_pylist(
      [{'query_id': q, 'doc_id': d, 'relevance': r} for q, d, r in QRELS]), str(path))
  return str(path)


def test_evaluate_job_prints_and_writes(tmp_path, qrels_file, capsys):
  ranked = _write_ranked_dir(tmp_path / 'ranked')
  assert evaluate_job.main(['--ranked', ranked, '--qrels', qrels_file]) == 0
  captured = capsys.readouterr()
  out = captured.out
  # A folder written before rerank recorded its queries without candidates:
  # only the judged queries with results can be averaged over, and it says so.
  expected = evaluation.evaluate_stages(
      _ranked_frame(), _qrels_frame(), evaluation.parse_measures(MEASURES), ['q1', 'q2'])
  table = evaluation.metrics_table(expected)
  assert table in out
  assert '== metrics (2 judged queries; 0 with no result, counted as 0, candidates rows;' in out
  assert 'cannot be counted (as 0)' in captured.err
  assert table.splitlines()[0] == '  metric       first stage       final'

  report = json.loads((tmp_path / 'ranked' / 'metrics.json').read_text())
  assert report['rows_evaluated'] == 'candidates'
  assert report['queries_evaluated'] == 2
  assert report['metrics'] == {
      stage: {m: pytest.approx(v) for s, m, v in expected.select(
          'stage', 'measure', 'value').iter_rows() if s == stage}
      for stage in ('retrieval', 'final')}
  written = pl.read_parquet(tmp_path / 'ranked' / 'metrics.parquet')
  assert written.equals(expected)
  png = (tmp_path / 'ranked' / 'metrics.png').read_bytes()
  assert png.startswith(b'\x89PNG\r\n\x1a\n') and len(png) > 5000


def test_evaluate_job_top_n_only_and_output_dir(tmp_path, qrels_file, capsys):
  ranked = _write_ranked_dir(tmp_path / 'ranked', with_candidates=False, top_n=2)
  out_dir = tmp_path / 'metrics'
  assert evaluate_job.main([
      '--ranked', ranked, '--qrels', qrels_file, '--output', str(out_dir),
      '--metrics', 'MRR@10,P@1']) == 0
  assert sorted(p.name for p in out_dir.iterdir()) == [
      'metrics.json', 'metrics.parquet', 'metrics.png']
  assert not (tmp_path / 'ranked' / 'metrics.json').exists()
  report = json.loads((out_dir / 'metrics.json').read_text())
  assert report['rows_evaluated'] == 'ranked'
  # The top 2 of q1 are d02, d01 and of q2 d04, d06: the relevant doc is 2nd
  # after reranking and 1st by retrieval rank in both.
  assert report['metrics']['final'] == {'MRR@10': 0.5, 'P@1': 0.0}
  assert report['metrics']['retrieval'] == {'MRR@10': 1.0, 'P@1': 1.0}
  assert 'P@1' in capsys.readouterr().out


@pytest.mark.parametrize('args, message', [
    (['--qrels', '{tmp}/nope.parquet'],
     "--qrels '{tmp}/nope.parquet' matches no files"),
    (['--qrels', '{qrels}', '--metrics', 'nDCG@10,bogus'], "unknown metric 'bogus'"),
    (['--qrels', '{bad_qrels}'], "has no column 'relevance'"),
])
def test_evaluate_job_user_errors(tmp_path, qrels_file, capsys, args, message):
  ranked = _write_ranked_dir(tmp_path / 'ranked')
  bad_qrels = tmp_path / 'bad_qrels.parquet'
  pq.write_table(pa.table({'query_id': ['q1'], 'doc_id': ['d1']}), str(bad_qrels))
  fill = {'tmp': str(tmp_path), 'qrels': qrels_file, 'bad_qrels': str(bad_qrels)}
  code = evaluate_job.main(['--ranked', ranked] + [a.format(**fill) for a in args])
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1
  assert err[0].startswith('beam-rerank evaluate: error: ')
  assert message.format(**fill) in err[0]
  assert not (tmp_path / 'ranked' / 'metrics.json').exists()


def test_evaluate_job_missing_ranked_folder(tmp_path, qrels_file, capsys):
  assert evaluate_job.main(['--ranked', str(tmp_path / 'none'), '--qrels', qrels_file]) == 2
  err = capsys.readouterr().err
  assert err.startswith('beam-rerank evaluate: error: --ranked ')
  assert 'has no manifest.json: not a complete output of the rerank job' in err


def test_evaluate_job_refuses_a_folder_of_another_job(tmp_path, qrels_file, capsys):
  ranked = _write_ranked_dir(tmp_path / 'ranked')
  (tmp_path / 'ranked' / 'manifest.json').write_text('{"kind": "embeddings"}')
  assert evaluate_job.main(['--ranked', ranked, '--qrels', qrels_file]) == 2
  assert "is not an output of the rerank job (its manifest says kind 'embeddings')" in (
      capsys.readouterr().err)
