"""Pickle-only model weights are refused unless explicitly allowed; remote-code
models fail to load unless --trust-remote-code (transformers' own check)."""
from __future__ import annotations

import json
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import encode, rerank, train
from tests.fixtures import build_bi_encoder, build_cross_encoder, build_tiny_bert
from transforms.core.errors import UserInputError
from transforms.models.model_info import check_weights_format


@pytest.fixture(scope='module')
def pickle_models(tmp_path_factory) -> dict[str, str]:
  """A tiny bi-encoder and cross-encoder saved with pickle (.bin) weights only."""
  import torch
  from safetensors.torch import load_file
  root = tmp_path_factory.mktemp('pickle_models')
  bert = build_tiny_bert(root / 'bert', seed=0, max_positions=512)
  bi = pathlib.Path(build_bi_encoder(bert, root / 'bi', max_seq_length=32))
  ce = pathlib.Path(build_cross_encoder(bert, root / 'ce'))
  for directory in (bi, ce):
    # The libraries now always save safetensors: rewrite them as a pickle.
    for path in pathlib.Path(directory).rglob('*.safetensors'):
      torch.save(load_file(str(path)), path.with_name('pytorch_model.bin'))
      path.unlink()
  for directory in (bi, ce):
    names = [n for _, _, files in os.walk(directory) for n in files]
    assert not any(n.endswith('.safetensors') for n in names), names
    assert any(n.endswith('.bin') for n in names), names
  return {'bi': str(bi), 'ce': str(ce)}


def test_check_weights_format(pickle_models, tmp_path):
  with pytest.raises(UserInputError, match=r"has only pickle weights \(pytorch_model\.bin\)"):
    check_weights_format(pickle_models['bi'], 'bi', allow_pickle=False)
  check_weights_format(pickle_models['bi'], 'bi', allow_pickle=True)
  (tmp_path / 'model.safetensors').write_bytes(b'')
  (tmp_path / 'pytorch_model.bin').write_bytes(b'')
  check_weights_format(str(tmp_path), 'both', allow_pickle=False)  # safetensors win


def _corpus(tmp_path: pathlib.Path) -> str:
  path = tmp_path / 'corpus.parquet'
  pq.write_table(pa.table({'doc_id': ['a', 'b'], 'text': ['first text', 'второй текст']}), path)
  return str(path)


def test_encode_refuses_pickle_weights_unless_allowed(pickle_models, tmp_path, capsys):
  corpus = _corpus(tmp_path)
  out = tmp_path / 'emb'
  assert encode.main(['--input', corpus, '--output', str(out), '--model', pickle_models['bi']]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('beam-rerank encode: error: model ')
  assert 'only pickle weights' in lines[0] and '--allow-pickle-weights' in lines[0]
  assert not out.exists()
  report = encode.run(['--input', corpus, '--output', str(out), '--model', pickle_models['bi'],
                       '--allow-pickle-weights'])
  assert report['embeddings_written'] == 2


def test_rerank_refuses_pickle_cross_encoder(pickle_models, tmp_path, capsys):
  corpus = _corpus(tmp_path)
  queries = tmp_path / 'queries.parquet'
  pq.write_table(pa.table({'query_id': ['q'], 'text': ['text']}), queries)
  candidates = tmp_path / 'candidates.parquet'
  pq.write_table(pa.table({'query_id': ['q', 'q'], 'doc_id': ['a', 'b']}), candidates)
  args = ['--queries', str(queries), '--corpus', corpus, '--candidates', str(candidates),
          '--cross-encoder', pickle_models['ce'], '--output', str(tmp_path / 'ranked')]
  assert rerank.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'only pickle weights' in err[0]
  report = rerank.run(args + ['--allow-pickle-weights'])
  assert report['pairs_scored'] == 2


def test_train_refuses_pickle_base_model(pickle_models, tmp_path, capsys):
  pairs = tmp_path / 'pairs' / 'labeled-pair' / 'train'
  pairs.mkdir(parents=True)
  pq.write_table(pa.table({'sentence_0': ['a'], 'sentence_1': ['b'],
                           'label': pa.array([1.0], pa.float32())}),
                 pairs / 'part-00000-of-00001.parquet')
  assert train.main(['--pairs', str(tmp_path / 'pairs'), '--kind', 'cross-encoder',
                     '--base-model', pickle_models['bi'], '--output', str(tmp_path / 'm')]) == 2
  assert 'only pickle weights' in capsys.readouterr().err


def test_remote_code_model_refused_without_flag(tmp_path, capsys):
  """A config that needs custom code is refused (transformers' own check) with one line."""
  model = tmp_path / 'remote'
  model.mkdir()
  (model / 'config.json').write_text(json.dumps({
      'model_type': 'custom-remote', 'architectures': ['CustomModel'],
      'auto_map': {'AutoConfig': 'configuration_custom.CustomConfig',
                   'AutoModel': 'modeling_custom.CustomModel'}}))
  (model / 'configuration_custom.py').write_text('raise SystemExit("remote code ran")\n')
  (model / 'model.safetensors').write_bytes(b'')
  corpus = _corpus(tmp_path)
  assert encode.main(['--input', corpus, '--output', str(tmp_path / 'emb'),
                      '--model', str(model)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('beam-rerank encode: error: cannot load')
  assert 'remote code ran' not in err[0]
