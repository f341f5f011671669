"""Every query a rerank run reads is ranked, dead-lettered, or counted (and
listed) as having no candidates, with each source's reason; ``evaluate``
averages over the same queries as ``rerank --qrels``, a judged query with no
result counting as 0.
"""
from __future__ import annotations

import contextlib
import io
import json
import pathlib

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import evaluate, rerank
from pipelines.steps import loop as loop_steps
from tests.fixtures import read_rows, write_parquet
from transforms.retrieval.query_accounting import AccountQueries, summarize

QRELS_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('doc_id', pa.string()), ('relevance', pa.int32())])
CORPUS = {
    'd1': 'Boundary layer transition on a flat plate.',
    'd2': 'Heat transfer in hypersonic flow over blunt bodies.',
    'd3': 'Sourdough bread rises because of wild yeast.',
}


def _quietly(fn, argv):
  with contextlib.redirect_stdout(io.StringIO()) as out:
    report = fn(argv)
  return report, out.getvalue()


def _corpus(root: pathlib.Path) -> str:
  return write_parquet(root / 'corpus.parquet', {
      'doc_id': list(CORPUS), 'text': list(CORPUS.values())})


def _read(folder: pathlib.Path) -> list[dict]:
  return sorted(read_rows(folder), key=lambda row: row['query_id'])


def test_evaluate_counts_a_judged_query_without_candidates_as_zero(tmp_path):
  """The reproducer: three judged queries, the third punctuation only (no BM25
  candidate). rerank --qrels and evaluate both report 2/3, not 1.0."""
  queries = write_parquet(tmp_path / 'queries.parquet', {
      'query_id': ['q1', 'q2', 'q3'],
      'text': ['boundary layer transition', 'sourdough bread yeast', '?!?... ---']})
  qrels = write_parquet(tmp_path / 'qrels.parquet', {
      'query_id': ['q1', 'q2', 'q3'], 'doc_id': ['d1', 'd3', 'd2'],
      'relevance': [1, 1, 1]}, QRELS_SCHEMA)
  out = tmp_path / 'ranked'
  report, _ = _quietly(rerank.run, [
      '--queries', queries, '--corpus', _corpus(tmp_path), '--bm25',
      '--cross-encoder', 'none', '--qrels', qrels, '--output', str(out)])
  assert report['evaluation']['metrics']['final']['nDCG@10'] == pytest.approx(2 / 3)
  assert report['evaluation']['queries_evaluated'] == 3
  assert report['evaluation']['queries_without_results'] == 1
  evaluated, printed = _quietly(evaluate.run, ['--ranked', str(out), '--qrels', qrels])
  assert evaluated['metrics'] == report['evaluation']['metrics']
  assert evaluated['queries_evaluated'] == 3
  assert evaluated['query_ids_without_results'] == ['q3']
  assert '3 judged queries; 1 with no result, counted as 0' in printed


def test_every_query_in_is_ranked_dead_lettered_or_without_candidates(tmp_path):
  """Punctuation, emoji, a NUL, words not in the corpus, a query whose only
  supplied candidate names an unknown doc, and bad rows: none disappears."""
  texts = {
      'ok1': 'boundary layer', 'ok2': 'hypersonic heat',
      'punct': '?!... ---', 'emoji': '🙂🙂 🚀', 'nul': '\x00', 'unknown': 'zebra xylophone',
      'deadmatch': 'zebra', 'supplied_only': 'quasar',
      'empty': '   ', 'null': None,
  }
  queries = write_parquet(tmp_path / 'queries.parquet', {
      'query_id': list(texts) + ['dup', 'dup'],
      'text': list(texts.values()) + ['first copy', 'second copy']})
  supplied = write_parquet(tmp_path / 'supplied.parquet', {
      'query_id': ['deadmatch', 'supplied_only', 'supplied_only'],
      'doc_id': ['d99', 'd2', None]})
  out = tmp_path / 'ranked'
  report, printed = _quietly(rerank.run, [
      '--queries', queries, '--corpus', _corpus(tmp_path), '--bm25',
      '--candidates', supplied, '--cross-encoder', 'none', '--output', str(out)])
  accounts = report['queries']
  assert accounts['in'] == 12
  assert accounts['ranked'] == 3  # ok1, ok2 (BM25), supplied_only (supplied d2)
  assert accounts['dead_lettered'] == 4  # empty, null, both copies of dup
  assert accounts['no_candidates'] == 5
  assert accounts['reconciles'] is True
  assert accounts['no_candidates_by_reason'] == {
      'no_source_returned_candidates': 4, 'all_candidates_dead_lettered': 1}
  assert accounts['by_source'] == {
      'bm25': {'with_candidates': 2, 'no_tokens': 3, 'no_match': 3},
      'supplied': {'with_candidates': 2, 'not_in_run': 6, 'all_rows_dead_lettered': 0},
  }
  assert _read(out / 'no_candidates') == [
      {'query_id': 'deadmatch', 'reason': 'all_candidates_dead_lettered', 'dense': None,
       'bm25': 'no_match', 'supplied': 'with_candidates'},
      {'query_id': 'emoji', 'reason': 'no_source_returned_candidates', 'dense': None,
       'bm25': 'no_tokens', 'supplied': 'not_in_run'},
      {'query_id': 'nul', 'reason': 'no_source_returned_candidates', 'dense': None,
       'bm25': 'no_tokens', 'supplied': 'not_in_run'},
      {'query_id': 'punct', 'reason': 'no_source_returned_candidates', 'dense': None,
       'bm25': 'no_tokens', 'supplied': 'not_in_run'},
      {'query_id': 'unknown', 'reason': 'no_source_returned_candidates', 'dense': None,
       'bm25': 'no_match', 'supplied': 'not_in_run'},
  ]
  assert 'in = ranked + dead + none' in printed
  assert 'BM25: queries with candidates' in printed
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['outputs']['no_candidates']['rows'] == 5


def test_a_source_that_returns_nothing_for_every_query_is_warned_about(tmp_path, capsys):
  """--bm25-k1 1e300 used to round every score to 0: no candidate, exit 0, no
  word. The value is refused now; a source silent on every query warns."""
  queries = write_parquet(tmp_path / 'queries.parquet', {
      'query_id': ['q1', 'q2'], 'text': ['zebra', 'xylophone']})
  report, _ = _quietly(rerank.run, [
      '--queries', queries, '--corpus', _corpus(tmp_path), '--bm25',
      '--cross-encoder', 'none', '--output', str(tmp_path / 'ranked')])
  assert report['queries']['no_candidates'] == 2
  warnings = _warnings(capsys)
  assert any('BM25 returned no candidate for any of the 2 queries' in w for w in warnings)


def test_account_queries_transform():
  queries = [{'id': q, 'text': t} for q, t in (
      ('a', 'alpha beta'), ('b', '...'), ('c', 'gamma'), ('d', 'delta'))]
  dense = [{'query_id': 'a'}, {'query_id': 'a'}, {'query_id': 'c'}, {'query_id': 'x'}]
  bm25 = [{'query_id': 'a'}]
  ranked = [{'query_id': 'a'}]
  with TestPipeline() as p:
    rows = {
        'queries': p | 'Q' >> beam.Create(queries), 'dense': p | 'D' >> beam.Create(dense),
        'bm25': p | 'B' >> beam.Create(bm25), 'ranked': p | 'R' >> beam.Create(ranked),
    } | AccountQueries(['dense', 'bm25'])
    assert_that(rows, equal_to([
        {'query_id': 'b', 'reason': 'no_source_returned_candidates', 'dense': 'no_embedding',
         'bm25': 'no_tokens', 'supplied': None},
        {'query_id': 'c', 'reason': 'all_candidates_dead_lettered', 'dense': 'with_candidates',
         'bm25': 'no_match', 'supplied': None},
        {'query_id': 'd', 'reason': 'no_source_returned_candidates', 'dense': 'no_embedding',
         'bm25': 'no_match', 'supplied': None},
    ]))


def test_summarize_reconciles_only_when_the_counts_add_up():
  counts = {'queries_no_candidates': 2, 'queries_no_candidates_no_source_returned_candidates': 2,
            'queries_bm25_with_candidates': 3, 'queries_bm25_no_tokens': 2}
  good = summarize(counts, ['bm25'], queries_in=6, dead_lettered=1, ranked=3)
  assert good['reconciles'] is True
  assert good['by_source'] == {'bm25': {'with_candidates': 3, 'no_tokens': 2, 'no_match': 0}}
  assert summarize(counts, ['bm25'], queries_in=7, dead_lettered=1, ranked=3)[
      'reconciles'] is False


# ---------------------------------------------------------------- --tune-qrels


def _warnings(capsys) -> list[str]:
  """The warning lines the jobs printed on stderr so far."""
  return [line for line in capsys.readouterr().err.splitlines() if ': warning: ' in line]


def test_tune_qrels_problems_are_counted_and_the_counts_agree(tmp_path, capsys):
  """Unknown query ids, a duplicate row, a negative relevance and a query with
  no relevant doc: one warning each, and the header, the decision and
  report.json all give the same number of tuning queries."""
  ids = [f'q{i}' for i in range(6)]
  queries = write_parquet(tmp_path / 'queries.parquet', {
      'query_id': ids, 'text': ['boundary layer', 'hypersonic heat', 'sourdough bread',
                                'flat plate', 'blunt bodies', 'wild yeast']})
  tune = write_parquet(tmp_path / 'tune.parquet', {
      'query_id': ['q0', 'q0', 'q1', 'q2', 'q3', 'zz1', 'zz2'],
      'doc_id': ['d1', 'd1', 'd2', 'd3', 'd2', 'd1', 'd1'],
      'relevance': [1, 1, 1, -1, 0, 1, 1]}, QRELS_SCHEMA)
  supplied = write_parquet(tmp_path / 'supplied.parquet', {
      'query_id': ['q0', 'q1', 'q2'], 'doc_id': ['d2', 'd1', 'd1'],
      'score': [0.5, 0.25, 0.125]}, pa.schema([
          ('query_id', pa.string()), ('doc_id', pa.string()), ('score', pa.float64())]))
  report, printed = _quietly(rerank.run, [
      '--queries', queries, '--corpus', _corpus(tmp_path), '--bm25', '--candidates', supplied,
      '--cross-encoder', 'none', '--tune-qrels', tune, '--output', str(tmp_path / 'r')])
  stderr = capsys.readouterr().err
  check = report['tune_qrels_check']
  assert check == {
      'rows': 7, 'null_rows': 0, 'duplicate_rows': 1, 'negative_relevance_rows': 1,
      'judged_queries': 6, 'unknown_query_ids': 2, 'queries_without_relevant': 2,
      'tuning_queries': 2}
  warnings = [line for line in stderr.splitlines() if ': warning: ' in line]
  for what in ('1 duplicate (query, doc) rows', '1 rows with a negative relevance',
               '2 query ids that are not in --queries',
               '2 judged queries without a relevant doc'):
    assert sum(what in w for w in warnings) == 1, (what, warnings)
  assert report['fusion']['tuning_queries'] == 2
  assert report['fusion']['tuning_query_ids'] == ['q0', 'q1']
  first_stage = report['fusion']['first_stage']
  assert first_stage['tuning']['queries'] == 2
  assert '2 tuning queries' in first_stage['reason']
  assert 'tuned on 2 judged queries' in stderr
  assert '2 of 6 judged' in printed


def test_tuning_query_without_candidates_counts_as_zero(tmp_path):
  """A tuning query BM25 finds nothing for is one of the tuning queries (at
  nDCG@10 0 for every choice), not a silent drop."""
  queries = write_parquet(tmp_path / 'queries.parquet', {
      'query_id': ['q0', 'q1'], 'text': ['boundary layer', '?!?']})
  tune = write_parquet(tmp_path / 'tune.parquet', {
      'query_id': ['q0', 'q1'], 'doc_id': ['d1', 'd2'], 'relevance': [1, 1]}, QRELS_SCHEMA)
  report, _ = _quietly(rerank.run, [
      '--queries', queries, '--corpus', _corpus(tmp_path), '--bm25',
      '--cross-encoder', 'none', '--tune-qrels', tune, '--output', str(tmp_path / 'r')])
  assert report['fusion']['tuning_queries'] == 2
  assert report['queries']['no_candidates'] == 1


def test_an_empty_tune_qrels_is_warned_about(tmp_path, capsys):
  queries = write_parquet(tmp_path / 'queries.parquet', {
      'query_id': ['q0'], 'text': ['boundary layer']})
  tune = write_parquet(tmp_path / 'tune.parquet', {
      'query_id': [], 'doc_id': [], 'relevance': []}, QRELS_SCHEMA)
  report, _ = _quietly(rerank.run, [
      '--queries', queries, '--corpus', _corpus(tmp_path), '--bm25',
      '--cross-encoder', 'none', '--tune-qrels', tune, '--output', str(tmp_path / 'r')])
  assert report['tune_qrels_check']['rows'] == 0
  assert sum('has no rows: fusion cannot be tuned' in w for w in _warnings(capsys)) == 1


def test_bm25_k1_beyond_a_sane_range_is_refused(tmp_path, capsys):
  queries = write_parquet(tmp_path / 'queries.parquet', {'query_id': ['q0'], 'text': ['x']})
  with pytest.raises(SystemExit) as exited:
    rerank.main(['--queries', queries, '--corpus', _corpus(tmp_path), '--bm25',
                 '--bm25-k1', '1e300', '--cross-encoder', 'none', '--output',
                 str(tmp_path / 'r')])
  assert exited.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].endswith("argument --bm25-k1: '1e300' is above 100: the usual values are "
                          '0.5 to 3 (beyond 100, rounding flattens every score)')


# ---------------------------------------------------------------- loop --test-queries


def test_loop_test_queries_not_in_the_queries_are_warned_about(tmp_path, capsys):
  from pipelines import loop
  ids = [f'q{i}' for i in range(8)]
  queries = write_parquet(tmp_path / 'queries.parquet', {
      'query_id': ids, 'text': [f'text {i}' for i in range(8)]})
  qrels = write_parquet(tmp_path / 'qrels.parquet', {
      'query_id': ids, 'doc_id': ['d1'] * 8, 'relevance': [1] * 8}, QRELS_SCHEMA)
  test = write_parquet(tmp_path / 'test.parquet', {'query_id': ['q0', 'q1', 'nope1', 'nope2']})
  job = loop.parse_config([
      '--queries', queries, '--corpus', _corpus(tmp_path), '--qrels', qrels,
      '--output', str(tmp_path / 'loop'), '--test-queries', test])
  from pipelines import common
  common.configure_logging()
  info, splits = loop_steps.write_splits(job, str(tmp_path / 'splits'))
  assert splits['test'] == ['q0', 'q1']
  assert info['test_queries_check'] == {'given': 4, 'not_in_queries': 2, 'not_judged': 2}
  warnings = _warnings(capsys)
  assert sum('2 of the 4 --test-queries ids are not in --queries' in w for w in warnings) == 1
  assert sum('2 of the 4 --test-queries ids have no judgment' in w for w in warnings) == 1
