"""--max-dead-letter-fraction: a run with too many dead letters commits nothing,
exits 3 with one line, and leaves the previous outputs as they were."""
from __future__ import annotations

import contextlib
import io
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import encode as encode_job
from pipelines import mine as mine_job
from pipelines import rerank as rerank_job
from tests.fixtures import CORPUS, QUERIES, write_parquet


def main(job, argv) -> tuple[int, str]:
  err = io.StringIO()
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    code = job.main([str(a) for a in argv])
  return code, err.getvalue()


def corpus_with_bad_rows(path: pathlib.Path, good: int, bad: int) -> str:
  ids = [f'd{i}' for i in range(good)] + [None] * bad
  texts = [f'text number {i}' for i in range(good)] + ['x'] * bad
  return write_parquet(path, {'doc_id': ids, 'text': texts})


def snapshot(directory: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob('*')) if p.is_file() and '.staging' not in p.parts}


def test_encode_over_the_limit_commits_nothing(tmp_path, tiny_model_dir):
  out = tmp_path / 'emb'
  first = corpus_with_bad_rows(tmp_path / 'a.parquet', good=6, bad=4)  # 40% dead
  code, err = main(encode_job, ['--input', first, '--output', out, '--model', tiny_model_dir,
                                '--max-dead-letter-fraction', '0.5'])
  assert (code, err.count('error')) == (0, 0)
  before = snapshot(out)
  assert 'manifest.json' in before

  second = corpus_with_bad_rows(tmp_path / 'b.parquet', good=4, bad=6)  # 60% dead
  code, err = main(encode_job, ['--input', second, '--output', out, '--model', tiny_model_dir,
                                '--max-dead-letter-fraction', '0.5'])
  assert code == 3
  lines = [line for line in err.splitlines() if 'error:' in line]
  assert lines == [
      'beam-rerank encode: error: 6 of 10 input rows (60.0%) were dead-lettered, more '
      'than --max-dead-letter-fraction 0.5; outputs were not committed (the dead letters '
      f'are in {out}/.staging/dead_letter/)']
  assert snapshot(out) == before  # The previous outputs, untouched.
  staged = list((out / '.staging' / 'dead_letter').glob('part-*.parquet'))
  assert sum(pq.read_metadata(str(p)).num_rows for p in staged) == 6

  # The default (1.0) never refuses; the same run commits and cleans up.
  code, _ = main(encode_job, ['--input', second, '--output', out, '--model', tiny_model_dir])
  assert code == 0
  assert not (out / '.staging').exists()
  assert len(pq.read_table(str(out / 'dead_letter')).to_pylist()) == 6


def test_encode_limit_is_inclusive_and_zero_means_none(tmp_path, tiny_model_dir):
  source = corpus_with_bad_rows(tmp_path / 'a.parquet', good=5, bad=5)
  code, _ = main(encode_job, ['--input', source, '--output', tmp_path / 'ok',
                              '--model', tiny_model_dir, '--max-dead-letter-fraction', '0.5'])
  assert code == 0  # 5 of 10 is not more than half.
  code, err = main(encode_job, ['--input', source, '--output', tmp_path / 'zero',
                                '--model', tiny_model_dir, '--max-dead-letter-fraction', '0'])
  assert code == 3 and '5 of 10 input rows (50.0%)' in err
  assert not (tmp_path / 'zero' / 'manifest.json').exists()


@pytest.mark.parametrize('value', ['1.5', '-0.1', 'half'])
def test_fraction_must_be_between_0_and_1(tmp_path, value, capsys):
  with pytest.raises(SystemExit) as exit_info:
    encode_job.main(
        ['--input', 'x', '--output', str(tmp_path), '--max-dead-letter-fraction', value])
  assert exit_info.value.code == 2
  assert '--max-dead-letter-fraction' in capsys.readouterr().err


def _texts(tmp_path):
  queries = write_parquet(
      tmp_path / 'q.parquet', {'query_id': list(QUERIES), 'text': list(QUERIES.values())})
  corpus = write_parquet(
      tmp_path / 'c.parquet', {'doc_id': list(CORPUS), 'text': list(CORPUS.values())})
  return queries, corpus


def test_rerank_over_the_limit_commits_nothing(tmp_path, tiny_cross_encoder_dir):
  queries, corpus = _texts(tmp_path)  # 4 queries, 13 docs (one blank: dead).
  # 3 good candidates, 20 pointing at unknown docs: 21 dead of 4 + 13 + 23 rows.
  rows = [('q1', 'd01'), ('q1', 'd02'), ('q2', 'd05')] + [('q1', f'nope{i}') for i in range(20)]
  candidates = write_parquet(tmp_path / 'cand.parquet', {
      'query_id': [r[0] for r in rows], 'doc_id': [r[1] for r in rows]})
  out = tmp_path / 'ranked'
  argv = ['--queries', queries, '--corpus', corpus, '--candidates', candidates,
          '--cross-encoder', tiny_cross_encoder_dir, '--output', out]
  code, err = main(rerank_job, argv + ['--max-dead-letter-fraction', '0.5'])
  assert code == 3
  assert '21 of 40 input rows (52.5%) were dead-lettered' in err
  assert not (out / 'manifest.json').exists() and not list(out.glob('part-*.parquet'))
  code, _ = main(rerank_job, argv + ['--max-dead-letter-fraction', '0.6'])
  assert code == 0 and (out / 'manifest.json').exists()


def test_mine_over_the_limit_commits_nothing(tmp_path):
  queries, corpus = _texts(tmp_path)
  candidates = write_parquet(tmp_path / 'cand.parquet', {
      'query_id': ['q1', 'q1', None, None, None, None, None, None],
      'doc_id': ['d01', 'd02', 'd03', 'd04', 'd05', 'd06', 'd07', 'd08']})
  qrels = write_parquet(tmp_path / 'qrels.parquet', {
      'query_id': ['q1'], 'doc_id': ['d01'], 'relevance': [1]}, pa.schema([
          ('query_id', pa.string()), ('doc_id', pa.string()), ('relevance', pa.int32())]))
  out = tmp_path / 'pairs'
  argv = ['--candidates', candidates, '--qrels', qrels, '--queries', queries,
          '--corpus', corpus, '--output', out]
  # 6 null query ids + 1 blank doc text = 7 dead of 4 + 13 + 8 + 1 = 26 rows.
  code, err = main(mine_job, argv + ['--max-dead-letter-fraction', '0.2'])
  assert code == 3 and '7 of 26 input rows (26.9%)' in err
  assert not (out / 'manifest.json').exists()
  code, _ = main(mine_job, argv + ['--max-dead-letter-fraction', '0.3'])
  assert code == 0 and (out / 'manifest.json').exists()
