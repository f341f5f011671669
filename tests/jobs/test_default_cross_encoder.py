"""The default cross-encoder builder, end to end, from a tiny base model."""
from __future__ import annotations

import glob
import os
import tempfile

import polars as pl
import pytest

from pipelines import rerank
from pipelines.jobs import default_cross_encoder as dce


@pytest.mark.slow
def test_builds_a_default_cross_encoder_and_reranks_with_it(
    tiny_model_dir, tmp_path, monkeypatch):
  # A renamed flag, config field or report key breaks this build here, not in
  # a user's first run. One short epoch: what is checked is the wiring.
  work_root = tmp_path / 'tmp'
  work_root.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(work_root))
  recipe = dict(dce.RECIPE, epochs=1, max_length=32)
  path = str(tmp_path / 'default-ce')
  info = dce.build_default_cross_encoder(path, tiny_model_dir, recipe)

  assert info['recipe_id'] == dce.recipe_id(recipe) != dce.recipe_id()
  assert info['training_rows'] > 0
  assert info['warm_start']['steps'] == dce.RECIPE['distill_steps'] > 0
  assert info['warm_start']['teacher'] == tiny_model_dir
  assert set(info['held_out_metrics']) == {'dense', 'retrieval', 'ce', 'final'}
  assert 0 <= info['held_out_metrics']['final']['nDCG@10'] <= 1
  assert os.path.exists(os.path.join(path, dce.INFO_NAME))
  assert not os.path.exists(path + '.building')
  # The work folder (encodings, pairs, held-out ranking) is removed.
  assert glob.glob(str(work_root / 'beam-rerank-default-ce-*')) == []
  assert 'NOTE: no --cross-encoder given' in dce.describe(path, info)

  sample = tmp_path / 'sample'
  from transforms.io.sample_data import write_sample_data
  files = write_sample_data(str(sample))
  result = rerank.execute(rerank.RerankJobConfig(
      queries=files['queries'], corpus=files['corpus'], doc_title_column='title',
      model=tiny_model_dir, cross_encoder=path, top_k=5, top_n=3,
      qrels=files['qrels'], output=str(tmp_path / 'ranked')))
  ranked = pl.read_parquet(glob.glob(str(tmp_path / 'ranked' / 'part-*.parquet')))
  assert result.queries_ranked == ranked['query_id'].n_unique() > 0
  assert ranked.height == result.ranked_rows
  assert result.metrics is not None and 'final' in result.metrics
