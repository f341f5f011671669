"""rerank --previous: cross-encoder scores reused for unchanged (query, passage) texts."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import pathlib

import pytest

from pipelines import rerank
from tests.fixtures import CORPUS, QUERIES, build_cross_encoder, read_rows, write_parquet


def _inputs(root: pathlib.Path, queries: dict, corpus: dict) -> dict[str, str]:
  root.mkdir(parents=True, exist_ok=True)
  return {
      'queries': write_parquet(root / 'queries.parquet',
                               {'query_id': list(queries), 'text': list(queries.values())}),
      'corpus': write_parquet(root / 'corpus.parquet',
                              {'doc_id': list(corpus), 'text': list(corpus.values())}),
  }


def _run(inputs, cross_encoder, output, *extra) -> dict:
  with contextlib.redirect_stdout(io.StringIO()):
    return rerank.run([
        '--queries', inputs['queries'], '--corpus', inputs['corpus'], '--bm25', '--top-k', '5',
        '--cross-encoder', cross_encoder, '--output', str(output), '--top-n', '3',
        '--device', 'cpu', *map(str, extra)])


def _rows(output) -> dict[tuple[str, str], dict]:
  return {(r['query_id'], r['doc_id']): r for r in read_rows(pathlib.Path(output) / 'candidates')}


def _assert_same_result(got_dir, want_dir):
  got, want = _rows(got_dir), _rows(want_dir)
  assert got.keys() == want.keys()
  for key, row in want.items():
    assert got[key]['rank'] == row['rank'] and got[key]['retrieval_rank'] == row['retrieval_rank']
    assert got[key]['score'] == pytest.approx(row['score'], abs=1e-5), key
    assert got[key]['ce_score'] == pytest.approx(row['ce_score'], abs=1e-5), key
  assert sorted((r['query_id'], r['rank'], r['doc_id']) for r in read_rows(got_dir)) == sorted(
      (r['query_id'], r['rank'], r['doc_id']) for r in read_rows(want_dir))


@pytest.fixture(scope='module')
def base(tmp_path_factory, tiny_cross_encoder_dir):
  root = tmp_path_factory.mktemp('incremental')
  inputs = _inputs(root / 'in', QUERIES, CORPUS)
  report = _run(inputs, tiny_cross_encoder_dir, root / 'full')
  return root, inputs, report


def test_unchanged_inputs_reuse_every_pair(tmp_path, base, tiny_cross_encoder_dir):
  root, inputs, full = base
  assert full['pairs_scored'] > 0 and full['pairs_reused'] == 0
  report = _run(inputs, tiny_cross_encoder_dir, tmp_path / 'again', '--previous', root / 'full')
  assert report['pairs_scored'] == 0
  assert report['pairs_reused'] == full['pairs_scored'] == report['candidates_ranked']
  assert report['scoring_time_saved'] == 1.0
  assert report['previous'] == {'path': str(root / 'full'), 'pairs_reused': full['pairs_scored']}
  manifest = json.loads((tmp_path / 'again' / 'manifest.json').read_text())
  assert manifest['previous'] == report['previous']
  assert _rows(tmp_path / 'again') == _rows(root / 'full')


def test_edits_rescore_exactly_the_changed_pairs_and_equal_a_fresh_run(
    tmp_path, base, tiny_cross_encoder_dir):
  root, _, full = base
  queries = dict(QUERIES, q1=QUERIES['q1'] + ' and heat')          # a changed query
  corpus = {d: t for d, t in CORPUS.items() if d != 'd03'}          # a deleted doc
  corpus['d02'] = CORPUS['d02'] + ' Boundary layer data.'           # a changed passage
  corpus['d14'] = 'A new report on boundary layer heat transfer.'    # an added doc
  edited = _inputs(tmp_path / 'in', queries, corpus)
  report = _run(edited, tiny_cross_encoder_dir, tmp_path / 'inc', '--previous', root / 'full')
  fresh = _run(edited, tiny_cross_encoder_dir, tmp_path / 'fresh')
  _assert_same_result(tmp_path / 'inc', tmp_path / 'fresh')
  rows = _rows(tmp_path / 'fresh')
  old = _rows(root / 'full')
  changed = {k for k in rows if k[0] == 'q1' or k[1] in ('d02', 'd14') or k not in old}
  assert report['pairs_scored'] == len(changed) > 0
  assert report['pairs_reused'] == len(rows) - len(changed) > 0
  assert fresh['pairs_scored'] == len(rows)
  assert all(k[1] != 'd03' for k in _rows(tmp_path / 'inc'))  # deleted docs drop out


def test_another_model_fingerprint_is_not_reused(
    tmp_path, base, tiny_bert_other_dir, caplog):
  root, inputs, full = base
  other = build_cross_encoder(tiny_bert_other_dir, tmp_path / 'other_ce')
  with caplog.at_level(logging.WARNING):
    report = _run(inputs, other, tmp_path / 'out', '--previous', root / 'full')
  assert report['pairs_reused'] == 0 and report['pairs_scored'] == full['pairs_scored']
  assert report['previous']['ignored'].startswith('its scores come from other settings')
  assert 'cross_encoder_fingerprint' in report['previous']['ignored']
  assert sum('is not reused' in r.getMessage() for r in caplog.records) == 1


def test_another_max_length_is_not_reused(tmp_path, base, tiny_cross_encoder_dir):
  root, inputs, full = base
  report = _run(inputs, tiny_cross_encoder_dir, tmp_path / 'out', '--previous', root / 'full',
                '--max-length', '16')
  assert report['pairs_reused'] == 0 and report['pairs_scored'] == full['pairs_scored']
  assert "max_length: previous 512, now 16" in report['previous']['ignored']


def test_cut_off_run_into_the_same_folder_then_rerun_gives_the_fresh_result(
    tmp_path, base, tiny_cross_encoder_dir):
  root, inputs, full = base
  out = tmp_path / 'nightly'
  _run(inputs, tiny_cross_encoder_dir, out)
  # What a kill during the commit leaves: files, no manifest.
  (out / 'manifest.json').unlink()
  report = _run(inputs, tiny_cross_encoder_dir, out, '--previous', out)
  assert report['pairs_reused'] == 0 and report['pairs_scored'] == full['pairs_scored']
  assert 'no manifest.json' in report['previous']['ignored']
  _assert_same_result(out, root / 'full')
  # The next night reuses everything from the same folder.
  again = _run(inputs, tiny_cross_encoder_dir, out, '--previous', out)
  assert again['pairs_reused'] == full['pairs_scored'] and again['pairs_scored'] == 0
  _assert_same_result(out, root / 'full')


def test_previous_that_is_not_an_output_is_one_error_line(
    tmp_path, base, tiny_cross_encoder_dir, capsys):
  _, inputs, _ = base
  code = rerank.main([
      '--queries', inputs['queries'], '--corpus', inputs['corpus'], '--bm25',
      '--cross-encoder', tiny_cross_encoder_dir, '--output', str(tmp_path / 'out'),
      '--previous', str(tmp_path / 'nowhere'), '--device', 'cpu'])
  assert code == 2
  err = [line for line in capsys.readouterr().err.splitlines() if 'error' in line]
  assert err == [f"beam-rerank rerank: error: --previous '{tmp_path / 'nowhere'}' has no "
                 'manifest.json: not a finished rerank output']




@pytest.mark.parametrize('damage', ['manifest', 'candidates', 'missing_file'])
def test_a_damaged_previous_into_the_same_folder_is_ignored_with_a_warning(
    tmp_path, base, tiny_cross_encoder_dir, caplog, damage):
  """The nightly case (--previous = --output) with a previous output that cannot
  be read: one warning naming why, every pair scored, the fresh result."""
  import shutil
  root, inputs, full = base
  out = tmp_path / 'nightly'
  shutil.copytree(root / 'full', out)
  if damage == 'manifest':
    path = out / 'manifest.json'
    path.write_bytes(path.read_bytes()[:40])
  else:
    part = sorted((out / 'candidates').glob('part-*.parquet'))[0]
    if damage == 'candidates':
      part.write_bytes(part.read_bytes()[:100])
    else:
      part.unlink()
  with caplog.at_level(logging.WARNING):
    report = _run(inputs, tiny_cross_encoder_dir, out, '--previous', out)
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
              and 'not reused' in r.getMessage()]
  assert len(warnings) == 1 and 'cannot be read' in warnings[0], warnings
  assert report['pairs_reused'] == 0 and report['pairs_scored'] == full['pairs_scored']
  assert report['previous']['ignored'].startswith('it cannot be read')
  _assert_same_result(out, root / 'full')


def test_a_damaged_previous_elsewhere_is_ignored_too(tmp_path, base, tiny_cross_encoder_dir):
  import shutil
  root, inputs, full = base
  previous = tmp_path / 'previous'
  shutil.copytree(root / 'full', previous)
  (previous / 'manifest.json').write_text('{"kind": "ranked", "outp')
  report = _run(inputs, tiny_cross_encoder_dir, tmp_path / 'out', '--previous', previous)
  assert report['pairs_reused'] == 0 and report['pairs_scored'] == full['pairs_scored']
