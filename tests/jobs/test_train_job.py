"""The train job on pairs written by the mine job, with tiny models: the output
loads as a CrossEncoder / SentenceTransformer, works as the rerank job's
--cross-encoder, and carries its training_report.json and training_curve.png;
the dev split selects the checkpoint (a scripted evaluator checks which one is
kept, early stopping and curriculum phases); user errors exit 2.
"""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from pipelines import mine, rerank, train
from tests.fixtures import read_rows
from tests.mine_data import CANDIDATES, CORPUS, QUERIES, quietly, write_candidates, write_collection
from transforms.training import trainer as training


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
  assert 'eval_dev_ndcg@10' in report['dev_metrics']  # the dev split was ranked
  # The ranking chooses the checkpoint: no second pass over dev for a loss nobody reads.
  assert 'eval_loss' not in report['dev_metrics']
  assert report['settings']['max_steps'] == 2
  assert report['settings']['batch_size'] == 4
  written = json.loads((out / 'training_report.json').read_text())
  assert written == json.loads(json.dumps(report))
  assert not (out / 'stale.txt').exists()


def test_cross_encoder_dev_selection_report(cross_encoder_run):
  """By default the dev split is scored once per epoch with the
  sentence-transformers reranking evaluator, and the best score is kept."""
  report, out, rows = cross_encoder_run
  assert report['dev_metric'] == 'nDCG@10'
  assert report['dev_queries'] >= 1
  assert 0 <= report['dev_metrics']['eval_dev_ndcg@10'] <= 1
  curve = report['dev_curve']
  assert curve and all(0 <= point['nDCG@10'] <= 1 for point in curve)
  assert report['best_dev_score'] == max(point['nDCG@10'] for point in curve)
  assert report['best_step'] in [point['step'] for point in curve]
  assert report['dev_metrics']['eval_dev_ndcg@10'] == report['best_dev_score']
  assert report['loss_curve'] and report['loss_curve'][-1]['step'] <= report['steps']
  assert report['early_stopped'] is False
  assert [p['format'] for p in report['phases']] == ['labeled-pair']
  assert report['wall_seconds'] >= report['train_seconds'] > 0
  assert (out / 'training_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


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
      '--output', str(out), '--max-steps', '2', '--batch-size', '4', '--warmup-ratio', '0']
      + (['--format', fmt] if fmt else []))
  expected_format = fmt or 'triplet'  # triplet when mined, else pair
  assert report['kind'] == 'bi-encoder'
  assert report['format'] == expected_format
  assert report['train_rows'] == rows[f'{expected_format}/train']
  assert report['steps'] == 2
  assert (out / 'training_report.json').is_file()
  # InformationRetrievalEvaluator on the dev queries, once per epoch (1 step each here).
  assert report['dev_metric'] == 'nDCG@10'
  assert 0 <= report['dev_metrics']['eval_dev_cosine_ndcg@10'] <= 1
  assert [point['step'] for point in report['dev_curve']] == [1, 2]
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
  from pipelines.jobs import default_cross_encoder as dce
  rid = dce.recipe_id()
  assert len(rid) == 12 and int(rid, 16) >= 0
  assert dce.recipe_id() == rid
  monkeypatch.setenv('BEAM_RERANK_CACHE', str(tmp_path))
  assert dce.default_cache_dir() == str(tmp_path / f'default-cross-encoder-{rid}')
  monkeypatch.setitem(dce.RECIPE, 'epochs', dce.RECIPE['epochs'] + 1)
  assert dce.recipe_id() != rid  # a changed recipe is a new cache entry
  assert dce.default_cache_dir() != str(tmp_path / f'default-cross-encoder-{rid}')


def test_default_cross_encoder_precision_auto_is_bf16_only_where_native(monkeypatch):
  import torch

  from pipelines.jobs import default_cross_encoder as dce
  assert dce.RECIPE['precision'] == 'auto'
  monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
  monkeypatch.setattr(dce, 'cpu_supports_bf16', lambda: True)
  assert dce.training_precision('auto') == 'bf16'
  monkeypatch.setattr(dce, 'cpu_supports_bf16', lambda: False)
  assert dce.training_precision('auto') == 'fp32'
  assert dce.training_precision('fp32') == 'fp32'


def test_default_cross_encoder_cached_info(tmp_path, monkeypatch):
  from pipelines.jobs import default_cross_encoder as dce
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
  from pipelines.jobs import default_cross_encoder as dce
  info = {'what': 'a locally fine-tuned cross-encoder', 'held_out_queries': 7,
          'held_out_metrics': {'retrieval': {'nDCG@10': 0.41234},
                               'final': {'nDCG@10': 0.55555}}}
  assert dce.describe('/cache/ce', info) == (
      'NOTE: no --cross-encoder given: using the default, a locally fine-tuned '
      "cross-encoder, at /cache/ce. On the sample's 7 held-out queries: nDCG@10 "
      '0.556 reranked vs 0.412 dense alone. Pass --cross-encoder for a real one.')


# ---------------------------------------------------------------- checkpoint selection


def _scripted_evaluator(scores: list[float]):
  """A sentence-transformers evaluator returning ``scores`` in turn as dev
  nDCG@10 and keeping the model's weights at each call."""
  from sentence_transformers.base.evaluation import BaseEvaluator

  class Scripted(BaseEvaluator):
    def __init__(self):
      super().__init__()
      self.primary_metric = 'dev_ndcg@10'
      self.weights: list[dict] = []
      self.steps: list[int] = []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
      self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
      self.steps.append(steps)
      return {'dev_ndcg@10': scores[len(self.weights) - 1]}

  return Scripted()


def _same_weights(model, weights: dict) -> bool:
  import torch
  state = model.state_dict()
  assert sorted(state) == sorted(weights)
  return all(torch.equal(state[k].cpu(), weights[k].cpu()) for k in state)


@pytest.fixture
def scripted(monkeypatch):
  """Replaces the dev evaluator factory with a scripted score sequence."""
  def install(scores: list[float]):
    evaluator = _scripted_evaluator(scores)
    seen = []

    def factory(kind, model, samples, batch_size):
      seen.append(samples)
      return evaluator, 'dev_ndcg@10'

    monkeypatch.setattr(training, 'dev_evaluator', factory)
    return evaluator, seen
  return install


def test_checkpoint_selection_keeps_best_dev_score(tmp_path, pairs, mine_bi_encoder_dir, scripted):
  from sentence_transformers import CrossEncoder
  pairs_dir, _ = pairs
  evaluator, seen = scripted([0.2, 0.5, 0.4, 0.3, 0.9, 0.9, 0.9, 0.9])
  out = tmp_path / 'model'
  report = _train([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--base-model', mine_bi_encoder_dir,
      '--output', str(out), '--max-steps', '8', '--batch-size', '2', '--warmup-ratio', '0',
      '--learning-rate', '1e-3', '--eval-steps', '1', '--early-stopping-patience', '2'])
  # One ranking sample per dev query: its positives and negatives.
  assert seen[0] and all(s['positive'] and s['query'] for s in seen[0])
  # Patience 2: 0.4 and 0.3 do not beat 0.5, so training stops after the 4th evaluation.
  assert evaluator.steps == [1, 2, 3, 4]
  assert report['early_stopped'] is True
  assert report['steps'] == 4
  assert [(p['step'], p['nDCG@10']) for p in report['dev_curve']] == [
      (1, 0.2), (2, 0.5), (3, 0.4), (4, 0.3)]
  assert report['best_step'] == 2 and report['best_dev_score'] == 0.5
  assert report['best_phase'] == 1
  assert report['dev_metrics']['eval_dev_ndcg@10'] == 0.5
  assert 'eval_loss' not in report['dev_metrics']
  assert [p['step'] for p in report['loss_curve']] == [1, 2, 3, 4]
  # The saved model is the checkpoint of step 2, not the last one.
  model = CrossEncoder(str(out), device='cpu')
  assert _same_weights(model, evaluator.weights[1])
  assert not _same_weights(model, evaluator.weights[3])
  assert not _same_weights(model, evaluator.weights[2])
  saved = json.loads((out / 'training_report.json').read_text())
  assert saved['best_step'] == 2 and saved['early_stopped'] is True
  assert (out / 'training_curve.png').read_bytes()[:4] == b'\x89PNG'
  assert not any(path.name.startswith('checkpoint-') for path in out.iterdir())


@pytest.mark.parametrize('scores, best_step, best_phase', [
    ([0.2, 0.6, 0.4, 0.5], 2, 1),  # the hard phase never beats the easy one: phase 1 kept
    ([0.2, 0.6, 0.4, 0.7], 4, 2),
])
def test_curriculum_keeps_best_over_phases(
    tmp_path, pairs, mine_bi_encoder_dir, scripted, scores, best_step, best_phase):
  from sentence_transformers import CrossEncoder
  pairs_dir, rows = pairs
  evaluator, seen = scripted(scores)
  out = tmp_path / 'model'
  report = _train([
      '--pairs', str(pairs_dir), '--then-pairs', str(pairs_dir), '--kind', 'cross-encoder',
      '--base-model', mine_bi_encoder_dir, '--output', str(out), '--max-steps', '2',
      '--batch-size', '2', '--warmup-ratio', '0', '--learning-rate', '1e-3',
      '--eval-steps', '1'])
  assert len(seen) == 1  # one evaluator for all phases: their scores compare
  assert [(p['first_step'], p['last_step']) for p in report['phases']] == [(1, 2), (3, 4)]
  assert report['steps'] == 4
  assert report['train_rows'] == 2 * rows['labeled-pair/train']
  assert [(p['step'], p['phase']) for p in report['dev_curve']] == [
      (1, 1), (2, 1), (3, 2), (4, 2)]
  assert report['best_step'] == best_step and report['best_phase'] == best_phase
  assert report['best_dev_score'] == max(scores)
  assert report['early_stopped'] is False
  model = CrossEncoder(str(out), device='cpu')
  assert _same_weights(model, evaluator.weights[best_step - 1])
  assert not _same_weights(model, evaluator.weights[3 if best_step == 2 else 1])


def test_no_dev_trains_to_the_last_step(tmp_path, pairs, mine_bi_encoder_dir, scripted):
  from sentence_transformers import CrossEncoder
  pairs_dir, _ = pairs
  evaluator, seen = scripted([])
  out = tmp_path / 'model'
  report = _train([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--base-model', mine_bi_encoder_dir,
      '--output', str(out), '--max-steps', '2', '--batch-size', '2', '--no-dev'])
  assert seen == [] and evaluator.weights == []
  assert report['dev_metric'] is None and report['dev_curve'] == []
  assert report['best_step'] is None and report['dev_metrics'] == {}
  assert report['dev_rows'] == 0 and report['steps'] == 2
  assert (out / 'training_curve.png').is_file()
  CrossEncoder(str(out), device='cpu')


def test_dev_samples_group_by_query():
  from datasets import Dataset
  labeled = Dataset.from_dict({
      'sentence_0': ['q1', 'q1', 'q1', 'q2', 'q3'],
      'sentence_1': ['a', 'b', 'a', 'c', 'd'],
      'label': [1.0, 0.0, 1.0, 0.0, 1.0]})
  triplets = Dataset.from_dict({
      'anchor': ['q1', 'q1'], 'positive': ['a', 'e'], 'negative': ['b', 'a']})
  assert training.dev_samples([labeled, triplets]) == [
      {'query': 'q1', 'positive': ['a', 'e'], 'negative': ['b']},
      {'query': 'q2', 'positive': [], 'negative': ['c']},
      {'query': 'q3', 'positive': ['d'], 'negative': []}]


@pytest.mark.parametrize('precision', ['fp16', 'bf16'])
def test_mixed_precision_without_gpu_exits_2(
    tmp_path, capsys, monkeypatch, pairs, mine_bi_encoder_dir, precision):
  import torch
  monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
  monkeypatch.setattr(training, 'cpu_supports_bf16', lambda: False)
  pairs_dir, _ = pairs
  code = train.main([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--precision', precision,
      '--base-model', mine_bi_encoder_dir, '--output', str(tmp_path / 'model')])
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1
  assert lines[0].startswith(f'beam-rerank train: error: --precision {precision} needs a CUDA GPU')
  assert not (tmp_path / 'model').exists()


def test_bf16_on_a_cpu_with_native_bfloat16(tmp_path, pairs, mine_bi_encoder_dir):
  """bf16 autocast trains on a CPU that computes in bfloat16 (twice the fp32
  speed there); the model is saved in float32 and the report says bf16."""
  import torch
  if torch.cuda.is_available() or not training.cpu_supports_bf16():
    pytest.skip('needs a CPU with native bfloat16 and no GPU')
  pairs_dir, _ = pairs
  out = tmp_path / 'model'
  report = _train([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--precision', 'bf16',
      '--base-model', mine_bi_encoder_dir, '--output', str(out),
      '--max-steps', '2', '--batch-size', '4', '--no-dev'])
  assert report['settings']['precision'] == 'bf16'
  assert report['steps'] == 2 and math.isfinite(report['train_loss'])
  from sentence_transformers import CrossEncoder
  model = CrossEncoder(str(out), device='cpu')
  assert {p.dtype for p in model.model.parameters()} == {torch.float32}


@pytest.mark.parametrize('extra', [
    ['--no-dev', '--early-stopping-patience', '2'],
    ['--no-dev', '--eval-steps', '5'],
])
def test_dev_options_without_dev_exit_2(tmp_path, capsys, pairs, mine_bi_encoder_dir, extra):
  pairs_dir, _ = pairs
  code = train.main([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder',
      '--base-model', mine_bi_encoder_dir, '--output', str(tmp_path / 'model')] + extra)
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and '--no-dev' in lines[0]
  assert not (tmp_path / 'model').exists()


@pytest.fixture
def pairs_without_dev(tmp_path, pairs) -> pathlib.Path:
  """The mined folder as mined without --dev-fraction: no dev outputs in its manifest."""
  import shutil
  pairs_dir, _ = pairs
  out = tmp_path / 'pairs_no_dev'
  shutil.copytree(pairs_dir, out)
  manifest = json.loads((out / 'manifest.json').read_text())
  manifest['outputs'] = {name: info for name, info in manifest['outputs'].items()
                         if not name.endswith(('/dev', '/dev-ids'))}
  (out / 'manifest.json').write_text(json.dumps(manifest))
  return out


def test_pairs_without_dev_train_without_selection(tmp_path, pairs_without_dev,
                                                   mine_bi_encoder_dir):
  report = _train([
      '--pairs', str(pairs_without_dev), '--kind', 'cross-encoder',
      '--base-model', mine_bi_encoder_dir, '--output', str(tmp_path / 'model'),
      '--max-steps', '2', '--batch-size', '4'])
  assert report['dev_rows'] == 0 and report['dev_metric'] is None
  assert report['dev_curve'] == [] and report['best_step'] is None
  assert report['steps'] == 2 and report['loss_curve']


def test_early_stopping_without_dev_split_exits_2(tmp_path, capsys, pairs_without_dev,
                                                  mine_bi_encoder_dir):
  code = train.main([
      '--pairs', str(pairs_without_dev), '--kind', 'cross-encoder',
      '--base-model', mine_bi_encoder_dir, '--output', str(tmp_path / 'model'),
      '--early-stopping-patience', '2'])
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and 'need a dev split' in lines[0] and '--dev-fraction' in lines[0]
  assert not (tmp_path / 'model').exists()


# ---------------------------------------------------------------- warm start (distillation)


def test_teacher_similarities_are_standardised_cosines(mine_bi_encoder_dir):
  from sentence_transformers import SentenceTransformer
  first = ['what is lift', 'what is lift', 'boundary layers', 'drag of a cone']
  second = ['lift of a wing', 'a cone in flow', 'lift of a wing', 'boundary layers']
  got = training.teacher_similarities(mine_bi_encoder_dir, first, second, batch_size=2)
  model = SentenceTransformer(mine_bi_encoder_dir, device='cpu')
  a = model.encode(first, normalize_embeddings=True)
  b = model.encode(second, normalize_embeddings=True)
  cosine = (a * b).sum(axis=1)
  want = (cosine - cosine.mean()) / cosine.std()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert abs(np.mean(got)) < 1e-6 and abs(np.std(got) - 1) < 1e-5


def test_teacher_encodes_each_distinct_text_once(monkeypatch, mine_bi_encoder_dir):
  from sentence_transformers import SentenceTransformer
  seen = []
  encode = SentenceTransformer.encode

  def spy(self, texts, *args, **kwargs):
    seen.append(list(texts))
    return encode(self, texts, *args, **kwargs)

  monkeypatch.setattr(SentenceTransformer, 'encode', spy)
  got = training.teacher_similarities(
      mine_bi_encoder_dir, ['a b', 'a b', 'c d'], ['c d', 'e f', 'e f'])
  assert seen == [['a b', 'c d', 'e f']]
  assert got[1] != got[0] and len(got) == 3


def test_lexical_similarities_are_bm25_over_the_idf_mass():
  """A reference computed by hand: Lucene idf over the distinct documents,
  bm25s's term frequency part (k1 1.5, b 0.75), divided by the query's idf sum."""
  first = ['wing flutter', 'wing flutter', 'cone drag', 'wing']
  second = ['flutter of a wing wing', 'drag of a cone', 'drag of a cone', 'a plate']
  got = training.lexical_similarities(first, second)
  docs = list(dict.fromkeys(second))
  tokens = [d.split() for d in docs]
  average = sum(map(len, tokens)) / len(tokens)

  def idf(term):
    df = sum(term in t for t in tokens)
    return np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))

  want = []
  for query, doc in zip(first, second):
    words = doc.split()
    score = sum(idf(t) * words.count(t) / (
        1.5 * (0.25 + 0.75 * len(words) / average) + words.count(t)) for t in query.split())
    want.append(score / sum(idf(t) for t in query.split()))
  np.testing.assert_allclose(got, want, rtol=1e-9)
  assert got[1] == 0 and got[3] == 0 and 0 < got[2] < 1


def test_warm_start_targets_blend_standardised_scores(monkeypatch, mine_bi_encoder_dir):
  first = ['wing flutter', 'wing flutter', 'cone drag', 'wing']
  second = ['flutter of a wing wing', 'drag of a cone', 'drag of a cone', 'a plate']

  def standardised(values):
    values = np.asarray(values, dtype=np.float64)
    return (values - values.mean()) / values.std()

  dense = standardised(training.teacher_similarities(mine_bi_encoder_dir, first, second))
  lexical = standardised(training.lexical_similarities(first, second))
  np.testing.assert_allclose(
      training.warm_start_targets(mine_bi_encoder_dir, first, second, bm25_weight=0.0), dense)
  np.testing.assert_allclose(
      training.warm_start_targets(mine_bi_encoder_dir, first, second, bm25_weight=0.4),
      standardised(0.6 * dense + 0.4 * lexical))
  # BM25 alone loads no model at all.
  monkeypatch.setattr(training, 'teacher_similarities', None)
  np.testing.assert_allclose(
      training.warm_start_targets(None, first, second, bm25_weight=1.0), lexical)


def test_warm_start_on_bm25_alone(tmp_path, pairs, mine_bi_encoder_dir):
  pairs_dir, _ = pairs
  report = _train([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--base-model', mine_bi_encoder_dir,
      '--output', str(tmp_path / 'model'), '--max-steps', '1', '--batch-size', '2', '--no-dev',
      '--distill-steps', '2', '--teacher-bm25-weight', '1'])
  warm = report['warm_start']
  assert warm['teacher'] is None and warm['teacher_bm25_weight'] == 1.0 and warm['steps'] == 2


@pytest.mark.parametrize('scores, best_step', [
    ([0.7, 0.5, 0.6], 0),  # no label step beats the warm start: it is the model
    ([0.5, 0.7, 0.6], 1),
])
def test_warm_start_then_labels(tmp_path, pairs, mine_bi_encoder_dir, scripted, scores,
                                best_step):
  """--distill-steps: MSE steps on the teacher's similarities, evaluated as a
  candidate (step 0, phase 0), then the label phase; the best of all is kept."""
  from sentence_transformers import CrossEncoder
  pairs_dir, rows = pairs
  evaluator, _ = scripted(scores)
  out = tmp_path / 'model'
  report = _train([
      '--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--base-model', mine_bi_encoder_dir,
      '--output', str(out), '--max-steps', '2', '--batch-size', '2', '--warmup-ratio', '0',
      '--learning-rate', '1e-3', '--eval-steps', '1', '--distill-steps', '3'])
  warm = report['warm_start']
  assert warm['teacher'] == mine_bi_encoder_dir
  # Fewer rows than 3 steps x 2 could reach: every training pair is a target.
  assert warm['steps'] == 3 and warm['pairs'] == min(6, rows['labeled-pair/train'])
  assert warm['loss'] > 0 and warm['dev_score'] == scores[0]
  assert report['settings']['distill_steps'] == 3
  # The warm start's evaluation is step 0; the label steps count from 1.
  assert [(p['step'], p['phase']) for p in report['dev_curve']] == [(0, 0), (1, 1), (2, 1)]
  assert report['steps'] == 2
  assert report['best_step'] == best_step and report['best_phase'] == min(best_step, 1)
  assert report['best_dev_score'] == 0.7
  model = CrossEncoder(str(out), device='cpu')
  assert _same_weights(model, evaluator.weights[best_step])
  assert not _same_weights(model, evaluator.weights[2])


def test_warm_start_changes_the_model(tmp_path, pairs, mine_bi_encoder_dir):
  """Without a dev split the last label step is kept; warm-started or not from
  the same seed, the models differ (the warm start trained the head)."""
  from sentence_transformers import CrossEncoder
  pairs_dir, _ = pairs
  common = ['--pairs', str(pairs_dir), '--kind', 'cross-encoder',
            '--base-model', mine_bi_encoder_dir, '--max-steps', '1', '--batch-size', '2',
            '--no-dev', '--learning-rate', '1e-3', '--warmup-ratio', '0']
  plain = _train(common + ['--output', str(tmp_path / 'plain')])
  warm = _train(common + ['--output', str(tmp_path / 'warm'), '--distill-steps', '2'])
  assert plain['warm_start'] is None and warm['warm_start']['steps'] == 2
  assert 'dev_score' not in warm['warm_start']
  a = CrossEncoder(str(tmp_path / 'plain'), device='cpu')
  b = CrossEncoder(str(tmp_path / 'warm'), device='cpu')
  assert not _same_weights(a, b.state_dict())


@pytest.mark.parametrize('extra, message', [
    (['--kind', 'bi-encoder', '--distill-steps', '2'], 'warms up a cross-encoder'),
    (['--kind', 'cross-encoder', '--teacher', 'TEACHER'], 'add --distill-steps'),
    (['--kind', 'bi-encoder', '--teacher', 'TEACHER'], 'warms up a cross-encoder'),
    (['--kind', 'cross-encoder', '--distill-steps', '2', '--teacher', 'CROSS'],
     'is not a bi-encoder'),
    (['--kind', 'cross-encoder', '--distill-steps', '2', '--base-model', 'CROSS'],
     'the teacher defaults to --base-model'),
    (['--kind', 'cross-encoder', '--teacher-bm25-weight', '0.5'], 'add --distill-steps'),
    (['--kind', 'cross-encoder', '--distill-steps', '2', '--teacher', 'TEACHER',
      '--teacher-bm25-weight', '1'], 'drop --teacher'),
])
def test_warm_start_user_errors_exit_2(tmp_path, capsys, pairs, mine_bi_encoder_dir,
                                       mine_cross_encoder_dir, extra, message):
  pairs_dir, _ = pairs
  extra = [{'TEACHER': mine_bi_encoder_dir, 'CROSS': mine_cross_encoder_dir}.get(a, a)
           for a in extra]
  if '--base-model' not in extra:
    extra += ['--base-model', mine_bi_encoder_dir]
  code = train.main(['--pairs', str(pairs_dir), '--output', str(tmp_path / 'model')] + extra)
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], lines
  assert not (tmp_path / 'model').exists()


def test_negative_distill_steps_exit_2(tmp_path, capsys, pairs, mine_bi_encoder_dir):
  pairs_dir, _ = pairs
  with pytest.raises(SystemExit) as exited:
    train.main([
        '--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--base-model',
        mine_bi_encoder_dir, '--output', str(tmp_path / 'model'), '--distill-steps', '-1'])
  assert exited.value.code == 2
  assert 'must be at least 0' in capsys.readouterr().err


def test_is_cross_encoder(mine_bi_encoder_dir, mine_cross_encoder_dir, tmp_path):
  assert training.is_cross_encoder(mine_cross_encoder_dir)
  assert not training.is_cross_encoder(mine_bi_encoder_dir)
  assert not training.is_cross_encoder(str(tmp_path))  # no config at all


@pytest.mark.parametrize('ratio, warmup_of_ten_steps', [(0.0, 0), (0.25, 3), (1.0, 10)])
def test_warmup_ratio_reaches_the_trainer_as_a_share_of_the_steps(
    tmp_path, caplog, mine_bi_encoder_dir, ratio, warmup_of_ten_steps):
  """transformers 5 takes the ratio as a float ``warmup_steps``: no deprecation
  warning, and 1.0 is all the steps, not one step."""
  import logging

  from datasets import Dataset
  from sentence_transformers import CrossEncoder
  from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
  model = CrossEncoder(mine_bi_encoder_dir, num_labels=1, device='cpu')
  rows = Dataset.from_dict({'sentence_0': ['wing', 'хлеб'], 'sentence_1': ['lift', 'мука'],
                            'label': [1.0, 0.0]})
  config = training.TrainConfig(
      pairs_dir='', kind='cross-encoder', base_model='', output_dir=str(tmp_path),
      warmup_ratio=ratio, dev=False)
  with caplog.at_level(logging.WARNING):
    trainer, _ = training._trainer(config, model, BinaryCrossEntropyLoss(model),
                                   {'train': rows}, None, None, str(tmp_path))
  assert trainer.args.get_warmup_steps(10) == warmup_of_ten_steps
  assert 'warmup_ratio' not in caplog.text


@pytest.mark.parametrize('ratio', ['-0.1', '1.5', 'x'])
def test_warmup_ratio_outside_zero_one_exits_2(tmp_path, capsys, pairs, mine_bi_encoder_dir,
                                              ratio):
  pairs_dir, _ = pairs
  with pytest.raises(SystemExit) as exited:
    train.main(['--pairs', str(pairs_dir), '--kind', 'cross-encoder', '--base-model',
                mine_bi_encoder_dir, '--output', str(tmp_path / 'model'),
                '--warmup-ratio', ratio])
  assert exited.value.code == 2
  assert '--warmup-ratio' in capsys.readouterr().err
  assert not (tmp_path / 'model').exists()
