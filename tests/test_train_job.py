"""The train job on pairs written by the mine job, with tiny models: the output
loads as a CrossEncoder / SentenceTransformer, works as the rerank job's
--cross-encoder, and carries its training_report.json; user errors exit 2.
"""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from pipelines import mine, rerank, train

pytest.register_assert_rewrite('tests.mine_fixtures')
from tests.mine_fixtures import (  # noqa: E402
  CANDIDATES,
  CORPUS,
  QUERIES,
  quietly,
  read_rows,
  write_candidates,
  write_collection,
)

pytest_plugins = ('tests.mine_fixtures',)


@pytest.fixture(scope='module')
def collection(tmp_path_factory) -> dict[str, str]:
  return write_collection(tmp_path_factory.mktemp('train_inputs'))


@pytest.fixture(scope='module')
def pairs(tmp_path_factory, collection) -> tuple[pathlib.Path, dict]:
  """Mined labeled-pair, pair and triplet folders with a dev split."""
  out = tmp_path_factory.mktemp('train_pairs') / 'pairs'
  quietly(mine.run, [
      '--ranked', collection['ranked'], '--queries', collection['queries'],
      '--corpus', collection['corpus'], '--qrels', collection['qrels'],
      '--output', str(out), '--format', 'labeled-pair,pair,triplet',
      '--num-negatives', '3', '--dev-fraction', '0.4'])
  manifest = json.loads((out / 'manifest.json').read_text())
  rows = {name: info['rows'] for name, info in manifest['outputs'].items()}
  assert rows['labeled-pair/train'] > 0 and rows['labeled-pair/dev'] > 0
  return out, rows


def _train(argv: list[str]) -> dict:
  return quietly(train.run, argv + ['--no-progress'])


@pytest.fixture(scope='module')
def cross_encoder_run(tmp_path_factory, pairs, mine_bi_encoder_dir):
  pairs_dir, rows = pairs
  out = tmp_path_factory.mktemp('train_ce') / 'model'
  out.mkdir()
  (out / 'stale.txt').write_text('from an earlier run')  # replaced at the end
  report = _train([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder',
      '--base-model', mine_bi_encoder_dir, '--output', str(out),
      '--max-steps', '2', '--batch-size', '4'])
  return report, out, rows


def test_cross_encoder_report(cross_encoder_run, mine_bi_encoder_dir):
  report, out, rows = cross_encoder_run
  assert report['kind'] == 'cross-encoder'
  assert report['format'] == 'labeled-pair'
  assert report['base_model'] == mine_bi_encoder_dir
  assert report['train_rows'] == rows['labeled-pair/train']
  assert report['dev_rows'] == rows['labeled-pair/dev']
  assert report['steps'] == 2
  assert math.isfinite(report['train_loss'])
  assert 'eval_loss' in report['dev_metrics']  # the dev split was evaluated
  assert report['settings']['max_steps'] == 2
  assert report['settings']['batch_size'] == 4
  written = json.loads((out / 'training_report.json').read_text())
  assert written == json.loads(json.dumps(report))
  assert not (out / 'stale.txt').exists()


def test_cross_encoder_loads_and_reranks(cross_encoder_run, collection, tmp_path):
  import torch
  from sentence_transformers import CrossEncoder
  _, out, _ = cross_encoder_run
  model = CrossEncoder(str(out), device='cpu')
  assert model.num_labels == 1
  candidates = write_candidates(tmp_path / 'candidates.parquet', with_rank=False)
  ranked = tmp_path / 'ranked'
  quietly(rerank.run, [
      '--queries', collection['queries'], '--corpus', collection['corpus'],
      '--candidates', candidates, '--cross-encoder', str(out), '--output', str(ranked),
      '--top-n', '3', '--device', 'cpu'])
  rows = read_rows(ranked)
  by_query: dict[str, list[dict]] = {}
  for row in rows:
    by_query.setdefault(row['query_id'], []).append(row)
  assert sorted(by_query) == sorted({c[0] for c in CANDIDATES})
  pairs = [(QUERIES[r['query_id']], CORPUS[r['doc_id']]) for r in rows]
  expected = model.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
  np.testing.assert_allclose([r['score'] for r in rows], expected, rtol=1e-4, atol=1e-5)
  for query_rows in by_query.values():
    assert len(query_rows) == min(3, sum(c[0] == query_rows[0]['query_id'] for c in CANDIDATES))
    ordered = sorted(query_rows, key=lambda r: r['rank'])
    scores = [r['score'] for r in ordered]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize('fmt', [None, 'pair'])
def test_bi_encoder(tmp_path, pairs, mine_bi_encoder_dir, fmt):
  from sentence_transformers import SentenceTransformer
  pairs_dir, rows = pairs
  out = tmp_path / 'model'
  report = _train([
      '--pairs', str(pairs_dir), '--kind', 'bi-encoder', '--base-model', mine_bi_encoder_dir,
      '--output', str(out), '--max-steps', '2', '--batch-size', '4']
      + (['--format', fmt] if fmt else []))
  expected_format = fmt or 'triplet'  # triplet when mined, else pair
  assert report['kind'] == 'bi-encoder'
  assert report['format'] == expected_format
  assert report['train_rows'] == rows[f'{expected_format}/train']
  assert report['steps'] == 2
  assert (out / 'training_report.json').is_file()
  model = SentenceTransformer(str(out), device='cpu')
  embeddings = model.encode(['wing pressure', 'как испечь хлеб'], convert_to_numpy=True)
  assert embeddings.shape == (2, 32)
  assert np.isfinite(embeddings).all()
  base = SentenceTransformer(mine_bi_encoder_dir, device='cpu').encode(
      ['wing pressure'], convert_to_numpy=True)
  assert not np.allclose(base[0], embeddings[0])  # it was trained


def test_missing_pairs_folder_exits_2(tmp_path, capsys, mine_bi_encoder_dir):
  code = train.main([
      '--pairs', str(tmp_path / 'nowhere'), '--kind', 'cross-encoder',
      '--base-model', mine_bi_encoder_dir, '--output', str(tmp_path / 'model')])
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('beam-rerank train: error: --pairs')
  assert not (tmp_path / 'model').exists()


def test_pairs_without_the_format_exits_2(tmp_path, capsys, pairs, mine_bi_encoder_dir):
  pairs_dir, _ = pairs
  code = train.main([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--format', 'distill',
      '--base-model', mine_bi_encoder_dir, '--output', str(tmp_path / 'model')])
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith('beam-rerank train: error: ')
  assert 'distill/train' in lines[0]
  assert not (tmp_path / 'model').exists()


# ---------------------------------------------------------------- default cross-encoder
# Only the cache logic: building the real default takes minutes.


def test_default_cross_encoder_recipe_id_and_cache_dir(monkeypatch, tmp_path):
  from pipelines import default_cross_encoder as dce
  rid = dce.recipe_id()
  assert len(rid) == 12 and int(rid, 16) >= 0
  assert dce.recipe_id() == rid
  monkeypatch.setenv('BEAM_RERANK_CACHE', str(tmp_path))
  assert dce.default_cache_dir() == str(tmp_path / f'default-cross-encoder-{rid}')
  monkeypatch.setitem(dce.RECIPE, 'epochs', dce.RECIPE['epochs'] + 1)
  assert dce.recipe_id() != rid  # a changed recipe is a new cache entry
  assert dce.default_cache_dir() != str(tmp_path / f'default-cross-encoder-{rid}')


def test_default_cross_encoder_cached_info(tmp_path, monkeypatch):
  from pipelines import default_cross_encoder as dce
  assert dce.cached_info(str(tmp_path)) is None  # nothing built
  info = {'recipe_id': dce.recipe_id(), 'what': 'a local model', 'held_out_queries': 4,
          'held_out_metrics': {'retrieval': {'nDCG@10': 0.5}, 'final': {'nDCG@10': 0.625}}}
  (tmp_path / dce.INFO_NAME).write_text(json.dumps(info))
  assert dce.cached_info(str(tmp_path)) == info
  # A cached model is used as is: nothing is built.
  monkeypatch.setattr(dce, 'sample_tables', lambda: pytest.fail('rebuilt a cached model'))
  assert dce.ensure_default_cross_encoder(str(tmp_path)) == (
      str(tmp_path), info)
  (tmp_path / dce.INFO_NAME).write_text(json.dumps(dict(info, recipe_id='0' * 12)))
  assert dce.cached_info(str(tmp_path)) is None  # built by another recipe: stale


def test_default_cross_encoder_describe():
  from pipelines import default_cross_encoder as dce
  info = {'what': 'a locally fine-tuned cross-encoder', 'held_out_queries': 7,
          'held_out_metrics': {'retrieval': {'nDCG@10': 0.41234},
                               'final': {'nDCG@10': 0.55555}}}
  assert dce.describe('/cache/ce', info) == (
      'NOTE: no --cross-encoder given: using the default, a locally fine-tuned '
      "cross-encoder, at /cache/ce. On the sample's 7 held-out queries: nDCG@10 "
      '0.556 reranked vs 0.412 dense alone. Pass --cross-encoder for a real one.')
