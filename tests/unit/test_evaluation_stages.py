"""Metrics per stage of the ranked contract with signal columns (dense, BM25,
supplied, fused first stage, cross-encoder alone, final), and the evaluate job
leaving out the queries fusion weights were tuned on."""
from __future__ import annotations

import json
import math
import pathlib

import ir_measures
import matplotlib.axes
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import evaluate as evaluate_cli
from pipelines.jobs import evaluate as evaluate_job
from transforms.io.parquet_sink import write_json
from transforms.ranking import evaluation

OLD_SCHEMA = pa.schema([
    pa.field('query_id', pa.string(), nullable=False),
    pa.field('doc_id', pa.string(), nullable=False),
    pa.field('rank', pa.int32(), nullable=False),
    pa.field('score', pa.float32(), nullable=False),
    pa.field('retrieval_rank', pa.int32()),
    pa.field('retrieval_score', pa.float32()),
])
SCHEMA = pa.schema(list(OLD_SCHEMA) + [
    pa.field(name, pa.float32()) for name in evaluation.SIGNAL_COLUMNS])

# query_id, doc_id, rank, score, retrieval_rank, dense, bm25, supplied, ce.
# Ties: dense a2 = a4 (0.8) and bm25 a3 = a4 (7.0) go by doc_id ascending.
ROWS = [
    ('qa', 'a1', 3, 0.3, 1, 0.9, None, None, 0.3),
    ('qa', 'a2', 1, 0.9, 2, 0.8, 5.0, None, 0.9),
    ('qa', 'a3', 2, 0.5, 3, None, 7.0, None, 0.5),
    ('qa', 'a4', 4, 0.1, 4, 0.8, 7.0, None, None),
    ('qa', 'a5', 5, 0.05, None, None, None, 0.2, 0.05),
    ('qb', 'b1', 1, 0.7, 2, 0.4, None, 1.0, 0.7),
    ('qb', 'b2', 2, 0.2, 1, 0.6, None, 2.0, 0.2),
]
QRELS = [('qa', 'a4', 2), ('qa', 'a1', 1), ('qb', 'b2', 1), ('qc', 'c9', 1)]
# Each stage's expected order per query.
EXPECTED_ORDER = {
    'dense': {'qa': ['a1', 'a2', 'a4'], 'qb': ['b2', 'b1']},
    'bm25': {'qa': ['a3', 'a4', 'a2']},
    'supplied': {'qa': ['a5'], 'qb': ['b2', 'b1']},
    'retrieval': {'qa': ['a1', 'a2', 'a3', 'a4'], 'qb': ['b2', 'b1']},
    'ce': {'qa': ['a2', 'a3', 'a1', 'a5'], 'qb': ['b1', 'b2']},
    'final': {'qa': ['a2', 'a3', 'a1', 'a4', 'a5'], 'qb': ['b1', 'b2']},
}
MEASURES = ('nDCG@10', 'RR@10', 'R@100')
NAMES = ('nDCG@10', 'MRR@10', 'Recall@100')


def _dicts(rows=ROWS) -> list[dict]:
  return [{
      'query_id': q, 'doc_id': d, 'rank': rank, 'score': score,
      'retrieval_rank': retrieval_rank,
      'retrieval_score': None if retrieval_rank is None else 1 - retrieval_rank / 10,
      'dense_score': dense, 'bm25_score': bm25, 'supplied_score': supplied,
      'ce_score': ce,
  } for q, d, rank, score, retrieval_rank, dense, bm25, supplied, ce in rows]


def _frame(rows=ROWS) -> pl.DataFrame:
  return pl.from_arrow(pa.Table.from_pylist(_dicts(rows), schema=SCHEMA))


def _qrels() -> pl.DataFrame:
  return pl.DataFrame(QRELS, schema={'query_id': pl.String, 'doc_id': pl.String,
                                     'relevance': pl.Int64}, orient='row')


def _direct(order: dict[str, list[str]], measure: str, scope: list[str]) -> float:
  """ir-measures on a run given as an order per query, averaged over ``scope``."""
  run = [ir_measures.ScoredDoc(q, d, -float(i))
         for q, docs in order.items() for i, d in enumerate(docs, start=1)]
  qrels = [ir_measures.Qrel(q, d, r) for q, d, r in QRELS]
  values = {m.query_id: m.value for m in ir_measures.iter_calc(
      [ir_measures.parse_measure(measure)], qrels, run)}
  return sum(values.get(q, 0.0) for q in scope) / len(scope)


def _as_dict(metrics: pl.DataFrame) -> dict:
  return {(s, m): v for s, m, v in metrics.select('stage', 'measure', 'value').iter_rows()}


# ------------------------------------------------------------ stage runs

def test_stage_runs_order_per_stage():
  runs = evaluation.stage_runs(_frame())
  assert list(runs) == ['dense', 'bm25', 'supplied', 'retrieval', 'ce', 'final']
  assert list(runs) == list(evaluation.STAGES)
  for stage, run in runs.items():
    assert run.columns == ['query_id', 'doc_id', 'score']
    got = {}
    for query_id, doc_id, score in run.sort(['query_id', 'score'],
                                            descending=[False, True]).iter_rows():
      got.setdefault(query_id, []).append((doc_id, score))
    assert {q: [d for d, _ in docs] for q, docs in got.items()} == EXPECTED_ORDER[stage], stage
    # Scores are -rank: 1, 2, 3 ... per query, never tied.
    for docs in got.values():
      assert [s for _, s in docs] == [-float(i) for i in range(1, len(docs) + 1)]


def test_stage_runs_leave_out_empty_and_missing_signals():
  rows = [r[:6] + (None, None, None) for r in ROWS]  # bm25, supplied, ce all null
  assert list(evaluation.stage_runs(_frame(rows))) == ['dense', 'retrieval', 'final']
  old = _frame().select(*OLD_SCHEMA.names)
  assert list(evaluation.stage_runs(old)) == ['retrieval', 'final']
  no_retrieval = old.with_columns(retrieval_rank=pl.lit(None, pl.Int32))
  assert list(evaluation.stage_runs(no_retrieval)) == ['final']


def test_stage_runs_treat_nan_as_absent():
  frame = _frame().with_columns(
      dense_score=pl.when(pl.col('doc_id') == 'a1').then(float('nan')).otherwise(
          pl.col('dense_score')))
  dense = evaluation.stage_runs(frame)['dense']
  assert dense.filter(pl.col('query_id') == 'qa').sort('score', descending=True)[
      'doc_id'].to_list() == ['a2', 'a4']


# ------------------------------------------------------------ metrics per stage

def test_evaluate_stages_hand_computed():
  metrics = evaluation.evaluate_stages(
      _frame(), _qrels(), evaluation.parse_measures(MEASURES), ['qa', 'qb'])
  assert metrics['stage'].unique(maintain_order=True).to_list() == list(evaluation.STAGES)
  assert set(metrics['queries'].to_list()) == {2}
  got = _as_dict(metrics)
  expected_mrr = {
      'dense': (1 + 1) / 2,           # a1 first; b2 first
      'bm25': (1 / 2 + 0) / 2,        # a4 second; no BM25 results for qb
      'supplied': (0 + 1) / 2,        # a5 only; b2 first
      'retrieval': (1 + 1) / 2,       # a1 first; b2 first
      'ce': (1 / 3 + 1 / 2) / 2,      # a1 third (a4 not scored); b2 second
      'final': (1 / 3 + 1 / 2) / 2,   # a1 third; b2 second
  }
  expected_recall = {
      'dense': 1.0, 'bm25': (1 / 2 + 0) / 2, 'supplied': (0 + 1) / 2,
      'retrieval': 1.0, 'ce': (1 / 2 + 1) / 2, 'final': 1.0}
  for stage in evaluation.STAGES:
    assert got[(stage, 'MRR@10')] == pytest.approx(expected_mrr[stage]), stage
    assert got[(stage, 'Recall@100')] == pytest.approx(expected_recall[stage]), stage
  # Dense, linear gain: qa is a1 (1), a2 (0), a4 (2) -- the tie a2/a4 by doc_id,
  # not trec_eval's own tie order; qb has b2 first (1.0).
  ideal = 2 + 1 / math.log2(3)
  dense_qa = (1 + 0 + 2 / math.log2(4)) / ideal
  assert got[('dense', 'nDCG@10')] == pytest.approx((dense_qa + 1) / 2, abs=1e-4)
  tied_by_trec_eval = (1 + 2 / math.log2(3)) / ideal
  assert not math.isclose(dense_qa, tied_by_trec_eval, abs_tol=1e-3)


@pytest.mark.parametrize('query_ids, exclude, scope', [
    (None, None, ['qa', 'qb', 'qc']),  # every judged query; qc has no results: 0
    (['qa', 'qb', 'qc', 'qz'], None, ['qa', 'qb', 'qc']),  # qc judged, no results: 0
    (None, ['qb'], ['qa', 'qc']),
    (['qa', 'qb', 'qc'], ['qa', 'qz'], ['qb', 'qc']),
])
def test_evaluate_stages_equal_ir_measures(query_ids, exclude, scope):
  assert evaluation.query_scope(_qrels(), query_ids, exclude) == scope
  metrics = evaluation.evaluate_stages(
      _frame(), _qrels(), evaluation.parse_measures(MEASURES), query_ids, exclude)
  assert set(metrics['queries'].to_list()) == {len(scope)}
  got = _as_dict(metrics)
  for stage, order in EXPECTED_ORDER.items():
    for measure, name in zip(MEASURES, NAMES):
      assert got[(stage, name)] == pytest.approx(
          _direct(order, measure, scope), abs=1e-12), (stage, name)


def test_metrics_table_all_stages():
  metrics = pl.DataFrame(
      [(stage, 'nDCG@10', i / 10, 2) for i, stage in enumerate(reversed(evaluation.STAGES))],
      schema={'stage': pl.String, 'measure': pl.String, 'value': pl.Float64,
              'queries': pl.Int64}, orient='row')
  assert evaluation.metrics_table(metrics).splitlines() == [
      '  metric             dense        BM25    supplied first stage    CE alone       final',
      '  nDCG@10           0.5000      0.4000      0.3000      0.2000      0.1000      0.0000',
  ]
  assert all(len(label) <= 11 for label in evaluation.STAGE_LABELS.values())


@pytest.fixture
def plotted(monkeypatch):
  """The titles and bar labels ``plot_report`` draws."""
  seen = {'titles': [], 'bars': []}
  set_title, bar = matplotlib.axes.Axes.set_title, matplotlib.axes.Axes.bar

  def record_title(self, label, *args, **kwargs):
    seen['titles'].append(label)
    return set_title(self, label, *args, **kwargs)

  def record_bar(self, *args, **kwargs):
    if kwargs.get('label'):  # hist draws unlabeled bars too
      seen['bars'].append(kwargs['label'])
    return bar(self, *args, **kwargs)

  monkeypatch.setattr(matplotlib.axes.Axes, 'set_title', record_title)
  monkeypatch.setattr(matplotlib.axes.Axes, 'bar', record_bar)
  return seen


def test_plot_report_all_stages_and_cross_encoder_scores(plotted):
  metrics = evaluation.evaluate_stages(
      _frame(), _qrels(), evaluation.parse_measures(MEASURES))
  png = evaluation.plot_report(metrics, _frame(), _qrels(), 'title')
  assert png.startswith(b'\x89PNG')
  assert plotted['bars'] == ['dense', 'BM25', 'supplied', 'first stage', 'CE alone', 'final']
  assert plotted['titles'] == ['metrics per stage', 'cross-encoder scores']


def test_plot_report_final_scores_without_cross_encoder(plotted):
  old = _frame().select(*OLD_SCHEMA.names)
  metrics = evaluation.evaluate_stages(old, _qrels(), evaluation.parse_measures(MEASURES))
  evaluation.plot_report(metrics, old, _qrels(), 'title')
  evaluation.plot_report(
      metrics, _frame().with_columns(ce_score=pl.lit(None, pl.Float32)), _qrels(), 'title')
  assert plotted['bars'] == ['first stage', 'final'] * 2
  assert plotted['titles'] == ['metrics per stage', 'final scores'] * 2


# ------------------------------------------------------------ folders

def _write_folder(root: pathlib.Path, rows: list[dict], schema: pa.Schema,
                  fusion: dict | None = None) -> str:
  """A rerank output folder: top-2 ranked rows and every candidate (two files),
  and a manifest, written last, that lists them."""
  root.mkdir(parents=True)
  (root / 'candidates').mkdir()
  top = [r for r in rows if r['rank'] <= 2]
  pq.write_table(pa.Table.from_pylist(top, schema=schema),
                 str(root / 'part-00000-of-00001.parquet'))
  halves = [rows[:4], rows[4:]]
  for i, half in enumerate(halves):
    pq.write_table(pa.Table.from_pylist(half, schema=schema),
                   str(root / 'candidates' / f'part-0000{i}-of-00002.parquet'))
  manifest = {'kind': 'ranked', 'outputs': {
      'ranked': {'directory': '.', 'files': [
          {'path': 'part-00000-of-00001.parquet', 'rows': len(top)}], 'rows': len(top)},
      'candidates': {'directory': 'candidates', 'files': [
          {'path': f'part-0000{i}-of-00002.parquet', 'rows': len(half)}
          for i, half in enumerate(halves)], 'rows': len(rows)},
  }}
  if fusion is not None:
    manifest['fusion'] = fusion
  write_json(manifest, str(root / 'manifest.json'))
  return str(root)


# qc: a third query, judged and ranked, so leaving one out still leaves two.
QC_ROWS = [('qc', 'c9', 1, 0.8, 2, 0.1, 3.0, None, 0.8),
           ('qc', 'c1', 2, 0.4, 1, 0.5, 1.0, None, 0.4)]


@pytest.fixture
def qrels_file(tmp_path) -> str:
  path = tmp_path / 'qrels.parquet'
  pq.write_table(pa.Table.from_pylist(
      [{'query_id': q, 'doc_id': d, 'relevance': r} for q, d, r in QRELS]), str(path))
  return str(path)


def test_read_ranked_returns_signal_columns(tmp_path):
  ranked = _write_folder(tmp_path / 'new', _dicts(), SCHEMA)
  frame, which = evaluation.read_ranked(ranked)
  assert which == 'candidates'
  assert frame.columns == list(SCHEMA.names)
  assert frame.sort('query_id', 'doc_id').equals(_frame().sort('query_id', 'doc_id'))

  old_rows = [{k: r[k] for k in OLD_SCHEMA.names} for r in _dicts()]
  frame, _ = evaluation.read_ranked(_write_folder(tmp_path / 'old', old_rows, OLD_SCHEMA))
  assert frame.columns == list(OLD_SCHEMA.names)


def test_evaluate_job_leaves_out_tuning_queries(tmp_path, qrels_file, capsys):
  rows = _dicts(ROWS + QC_ROWS)
  fusion = {'first_stage': {'method': 'linear'}, 'final': None, 'tuning_queries': 2,
            'tuning_query_ids': ['qb', 'qx']}  # qx: not in this folder
  ranked = _write_folder(tmp_path / 'ranked', rows, SCHEMA, fusion)
  assert evaluate_cli.main(['--ranked', ranked, '--qrels', qrels_file]) == 0
  out = capsys.readouterr().out
  assert ('== metrics (2 held-out queries; 1 tuning queries excluded; 0 with no result, '
          'counted as 0, candidates rows;'
          in out)
  report = json.loads((tmp_path / 'ranked' / 'metrics.json').read_text())
  assert report['queries_evaluated'] == 2
  assert report['tuning_queries_excluded'] == 1
  assert set(report['metrics']) == set(evaluation.STAGES)

  frame, qrels = _frame(ROWS + QC_ROWS), _qrels()
  measures = evaluation.parse_measures(evaluation.DEFAULT_MEASURES)
  held_out = evaluation.evaluate_stages(frame, qrels, measures, ['qa', 'qc'])
  everything = evaluation.evaluate_stages(frame, qrels, measures)
  assert set(everything['queries'].to_list()) == {3}
  assert report['metrics'] == {
      stage: {m: pytest.approx(v) for s, m, v in held_out.select(
          'stage', 'measure', 'value').iter_rows() if s == stage}
      for stage in evaluation.STAGES}
  assert report['metrics'] != {
      stage: {m: pytest.approx(v) for s, m, v in everything.select(
          'stage', 'measure', 'value').iter_rows() if s == stage}
      for stage in evaluation.STAGES}
  assert pl.read_parquet(tmp_path / 'ranked' / 'metrics.parquet').equals(held_out)
  assert evaluation.metrics_table(held_out) in out
  # By hand: supplied MRR@10 is 0 for qa (a5 only) and qc (no supplied docs);
  # it would be 1/3 with qb (b2 first).
  assert report['metrics']['supplied']['MRR@10'] == 0.0
  assert _as_dict(everything)[('supplied', 'MRR@10')] == pytest.approx(1 / 3)


def test_evaluate_ranked_leaves_out_tuning_queries_of_a_given_scope(tmp_path, qrels_file):
  rows = _dicts(ROWS + QC_ROWS)
  ranked = _write_folder(tmp_path / 'ranked', rows, SCHEMA, {'tuning_query_ids': ['qa']})
  report = evaluate_job.evaluate_ranked(
      ranked, qrels_file, ['RR@10'], str(tmp_path), iter(['qa', 'qb', 'qc', 'qz']))
  assert (report['queries_evaluated'], report['tuning_queries_excluded']) == (2, 1)
  expected = evaluation.evaluate_stages(
      _frame(ROWS + QC_ROWS), _qrels(), evaluation.parse_measures(['RR@10']), ['qb', 'qc'])
  assert {s: v['MRR@10'] for s, v in report['metrics'].items()} == {
      s: pytest.approx(v) for s, _, v, _ in expected.rows()}


def test_evaluate_job_on_an_old_folder(tmp_path, qrels_file, capsys):
  old_rows = [{k: r[k] for k in OLD_SCHEMA.names} for r in _dicts()]
  ranked = _write_folder(tmp_path / 'ranked', old_rows, OLD_SCHEMA)
  assert evaluate_cli.main(['--ranked', ranked, '--qrels', qrels_file]) == 0
  out = capsys.readouterr().out
  assert '== metrics (2 judged queries; 0 with no result, counted as 0, candidates rows;' in out
  assert '  metric       first stage       final' in out
  report = json.loads((tmp_path / 'ranked' / 'metrics.json').read_text())
  assert set(report['metrics']) == {'retrieval', 'final'}
  assert (report['queries_evaluated'], report['tuning_queries_excluded']) == (2, 0)
  # An old folder: only its judged queries with results can be known.
  expected = evaluation.evaluate_stages(
      _frame().select(*OLD_SCHEMA.names), _qrels(),
      evaluation.parse_measures(evaluation.DEFAULT_MEASURES), ['qa', 'qb'])
  assert {(s, m): v for s, values in report['metrics'].items() for m, v in values.items()} == {
      k: pytest.approx(v) for k, v in _as_dict(expected).items()}
  assert report['metrics']['final']['MRR@10'] == pytest.approx((1 / 3 + 1 / 2) / 2)
