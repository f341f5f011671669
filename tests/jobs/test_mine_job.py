"""The mine job end to end on small Parquet inputs: every format's columns and
rows, aligned id folders, the train/dev split, the report's counts, pseudo-labels,
user errors; the outputs loaded by ``datasets`` and trained on by the
sentence-transformers trainers unchanged; dense mining equal to
``mine_hard_negatives``.

Job runs are shared across tests (module scope).
"""
from __future__ import annotations

import glob
import json
import math
import pathlib
import shutil

import pyarrow as pa
import pytest

from pipelines import encode as encode_job
from pipelines import mine
from pipelines.steps import mine as mine_steps
from tests.fixtures import read_rows, read_schema, write_parquet
from tests.mine_data import (
  CORPUS,
  QRELS_SCHEMA,
  QUERIES,
  ST_ANCHORS,
  ST_CORPUS,
  ST_POSITIVES,
  ST_RANGE_MAX,
  quietly,
  st_guard_configs,
  st_reference,
  write_candidates,
  write_collection,
)
from transforms.core.splits import split_of
from transforms.training.mining import GUARDS

ALL_FORMATS = ('labeled-pair', 'pair', 'triplet', 'n-tuple', 'distill')
# With --dev-fraction 0.4, q1 (and q4) fall in dev, the others in train.
DEV_FRACTION = 0.4


def drops(**counts: int) -> dict[str, int]:
  return {guard: counts.get(guard, 0) for guard in GUARDS}


def fields(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
  return [(f.name, f.type) for f in schema]


@pytest.fixture(scope='module')
def collection(tmp_path_factory) -> dict[str, str]:
  return write_collection(tmp_path_factory.mktemp('mine_inputs'))


@pytest.fixture(scope='module')
def qrels_run(tmp_path_factory, collection) -> tuple[dict, pathlib.Path]:
  """--ranked + --qrels, every format, 2 negatives, dev split."""
  out = tmp_path_factory.mktemp('mine_qrels') / 'pairs'
  report = quietly(mine.run, [
      '--ranked', collection['ranked'], '--queries', collection['queries'],
      '--corpus', collection['corpus'], '--qrels', collection['qrels'],
      '--output', str(out), '--format', ','.join(ALL_FORMATS),
      '--num-negatives', '2', '--dev-fraction', str(DEV_FRACTION)])
  return report, out


# What the qrels run must write, as id rows per (format, split), in file order
# (query by query, positives first). Text rows follow from the ids.
#   q1: positives d01 (5.0), d03 (3.0); negatives by score d02 (4.5), d04 (2.5);
#       d05, d06 not sampled.               -> dev
#   q2: positive d06 (2.0); negatives d07 (1.5), d05 (0.5); d12 not sampled.
#   q5: positive d10 (3.0); no negative.    q3: no relevant judgment.
#   q6: not judged.                         q4: judged, never retrieved.
EXPECTED_IDS = {
    ('labeled-pair', 'dev'): [('q1', 'd01', 1.0), ('q1', 'd03', 1.0), ('q1', 'd02', 0.0),
                              ('q1', 'd04', 0.0)],
    ('labeled-pair', 'train'): [('q2', 'd06', 1.0), ('q2', 'd07', 0.0), ('q2', 'd05', 0.0),
                                ('q5', 'd10', 1.0)],
    ('pair', 'dev'): [('q1', 'd01'), ('q1', 'd03')],
    ('pair', 'train'): [('q2', 'd06'), ('q5', 'd10')],
    ('triplet', 'dev'): [('q1', 'd01', 'd02'), ('q1', 'd01', 'd04'), ('q1', 'd03', 'd02'),
                         ('q1', 'd03', 'd04')],
    ('triplet', 'train'): [('q2', 'd06', 'd07'), ('q2', 'd06', 'd05')],
    ('n-tuple', 'dev'): [('q1', 'd01', ['d02', 'd04']), ('q1', 'd03', ['d02', 'd04'])],
    ('n-tuple', 'train'): [('q2', 'd06', ['d07', 'd05'])],
    ('distill', 'dev'): [('q1', 'd01', 5.0), ('q1', 'd03', 3.0), ('q1', 'd02', 4.5),
                         ('q1', 'd04', 2.5)],
    ('distill', 'train'): [('q2', 'd06', 2.0), ('q2', 'd07', 1.5), ('q2', 'd05', 0.5),
                           ('q5', 'd10', 3.0)],
}
TEXT_COLUMNS = {
    'labeled-pair': [('sentence_0', pa.string()), ('sentence_1', pa.string()),
                     ('label', pa.float32())],
    'pair': [('sentence_0', pa.string()), ('sentence_1', pa.string())],
    'triplet': [('anchor', pa.string()), ('positive', pa.string()), ('negative', pa.string())],
    'n-tuple': [('anchor', pa.string()), ('positive', pa.string()),
                ('negative_1', pa.string()), ('negative_2', pa.string())],
    'distill': [('query', pa.string()), ('passage', pa.string()), ('score', pa.float32())],
}
ID_COLUMNS = {
    'labeled-pair': [('query_id', pa.string()), ('doc_id', pa.string())],
    'pair': [('query_id', pa.string()), ('doc_id', pa.string())],
    'distill': [('query_id', pa.string()), ('doc_id', pa.string())],
    'triplet': [('query_id', pa.string()), ('positive_id', pa.string()),
                ('negative_id', pa.string())],
    'n-tuple': [('query_id', pa.string()), ('positive_id', pa.string()),
                ('negative_ids', pa.list_(pa.string()))],
}


def expected_rows(fmt: str, split: str) -> tuple[list[dict], list[dict]]:
  """(text rows, id rows) the job must write for ``fmt``/``split``."""
  texts, ids = [], []
  for spec in EXPECTED_IDS[(fmt, split)]:
    query_id, doc_id, extra = spec[0], spec[1], spec[2] if len(spec) > 2 else None
    query = QUERIES[query_id]
    if fmt == 'labeled-pair':
      texts.append({'sentence_0': query, 'sentence_1': CORPUS[doc_id], 'label': extra})
      ids.append({'query_id': query_id, 'doc_id': doc_id})
    elif fmt == 'pair':
      texts.append({'sentence_0': query, 'sentence_1': CORPUS[doc_id]})
      ids.append({'query_id': query_id, 'doc_id': doc_id})
    elif fmt == 'triplet':
      texts.append({'anchor': query, 'positive': CORPUS[doc_id], 'negative': CORPUS[extra]})
      ids.append({'query_id': query_id, 'positive_id': doc_id, 'negative_id': extra})
    elif fmt == 'n-tuple':
      texts.append({'anchor': query, 'positive': CORPUS[doc_id],
                    **{f'negative_{i}': CORPUS[n] for i, n in enumerate(extra, start=1)}})
      ids.append({'query_id': query_id, 'positive_id': doc_id, 'negative_ids': extra})
    else:
      texts.append({'query': query, 'passage': CORPUS[doc_id], 'score': extra})
      ids.append({'query_id': query_id, 'doc_id': doc_id})
  return texts, ids


@pytest.mark.parametrize('fmt', ALL_FORMATS)
def test_every_format_columns_rows_and_aligned_ids(qrels_run, fmt):
  _, out = qrels_run
  for split in ('train', 'dev'):
    texts, ids = expected_rows(fmt, split)
    assert fields(read_schema(out / fmt / split)) == TEXT_COLUMNS[fmt]
    assert fields(read_schema(out / fmt / f'{split}-ids')) == ID_COLUMNS[fmt]
    assert read_rows(out / fmt / split) == texts, (fmt, split)
    assert read_rows(out / fmt / f'{split}-ids') == ids, (fmt, split)


def test_split_follows_split_of_query_id(qrels_run):
  _, out = qrels_run
  for fmt in ALL_FORMATS:
    for split in ('train', 'dev'):
      for row in read_rows(out / fmt / f'{split}-ids'):
        assert split_of(row['query_id'], DEV_FRACTION) == split


def test_report_counts(qrels_run):
  report, out = qrels_run
  assert report['queries_with_candidates'] == 5  # q1 q2 q3 q5 q6
  assert report['queries_with_positives'] == 3  # q1 q2 q5
  assert report['queries_without_positives'] == 2  # q3 q6
  assert report['queries_without_negatives'] == 1  # q5
  assert report['positives'] == 4
  assert report['negatives_kept'] == 4
  assert report['candidates_dropped'] == drops(positive=4, not_sampled=3)
  assert report['pseudo_labels'] is False
  rows = {f'{fmt}/{split}': len(EXPECTED_IDS[(fmt, split)])
          for fmt in ALL_FORMATS for split in ('train', 'dev')}
  assert report['rows'] == {**rows, 'dead_letter': 0}
  assert json.loads((out / 'report.json').read_text()) == report


def test_rerun_writes_identical_files(qrels_run, collection, tmp_path):
  """Same inputs, same output folder: the same bytes (deterministic shards)."""
  _, first = qrels_run
  out = tmp_path / 'pairs'
  shutil.copytree(first, out)  # the shared run's folder stays as it was
  before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*.parquet'))}
  quietly(mine.run, [
      '--ranked', collection['ranked'], '--queries', collection['queries'],
      '--corpus', collection['corpus'], '--qrels', collection['qrels'],
      '--output', str(out), '--format', ','.join(ALL_FORMATS),
      '--num-negatives', '2', '--dev-fraction', str(DEV_FRACTION)])
  after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*.parquet'))}
  assert after == before


def test_manifest(qrels_run):
  _, out = qrels_run
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['kind'] == 'training_pairs'
  assert manifest['formats'] == list(ALL_FORMATS)
  assert manifest['candidate_source'] == 'ranked'
  assert manifest['score_column'] == 'score'
  assert manifest['labels'] == 'qrels'
  assert manifest['pseudo_labels'] is False
  assert manifest['dev_fraction'] == DEV_FRACTION
  assert manifest['mining']['num_negatives'] == 2
  for (fmt, split), ids in EXPECTED_IDS.items():
    assert manifest['outputs'][f'{fmt}/{split}']['rows'] == len(ids)
    assert manifest['outputs'][f'{fmt}/{split}-ids']['rows'] == len(ids)
  # No staging left behind; every text folder has only its part files.
  assert not (out / '.staging').exists()
  for fmt in ALL_FORMATS:
    assert [p.name for p in (out / fmt / 'train').iterdir()] == [
        'part-00000-of-00001.parquet']


def test_supplied_candidates_follow_their_retrieval_rank_with_guards(
    tmp_path, collection):
  """--candidates with ranks: range_max cuts by retrieval_rank (not doc_id);
  each guard's drops are counted in the report."""
  candidates = write_candidates(tmp_path / 'candidates.parquet')
  out = tmp_path / 'pairs'
  report = quietly(mine.run, [
      '--candidates', candidates, '--queries', collection['queries'],
      '--corpus', collection['corpus'], '--qrels', collection['qrels'],
      '--output', str(out), '--format', 'labeled-pair', '--num-negatives', '3',
      '--range-max', '2', '--absolute-margin', '0', '--min-score', '-1.5'])
  # q1: pool = ranks 1-5 (2 + 2 positives + 1): d04 d01 d06 d03 d02, d05 cut;
  #     margin vs weakest positive 3.0 drops d02 (4.5); d04, d06 remain.
  # q2: d05 d06 d07 d12 (2 + 1 + 1); min_score drops d12 (-2.0).
  assert read_rows(out / 'labeled-pair' / 'train-ids') == [
      {'query_id': 'q1', 'doc_id': 'd01'}, {'query_id': 'q1', 'doc_id': 'd03'},
      {'query_id': 'q1', 'doc_id': 'd04'}, {'query_id': 'q1', 'doc_id': 'd06'},
      {'query_id': 'q2', 'doc_id': 'd06'}, {'query_id': 'q2', 'doc_id': 'd07'},
      {'query_id': 'q2', 'doc_id': 'd05'},
      {'query_id': 'q5', 'doc_id': 'd10'}]
  assert [r['label'] for r in read_rows(out / 'labeled-pair' / 'train')] == [
      1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
  assert report['candidates_dropped'] == drops(
      positive=4, range_max=1, absolute_margin=1, min_score=1)
  assert report['negatives_kept'] == 4
  assert report['queries_without_negatives'] == 1
  # No dev split asked: no dev folders at all.
  assert not (out / 'labeled-pair' / 'dev').exists()
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['candidate_source'] == 'candidates'
  assert set(manifest['outputs']) == {
      'labeled-pair/train', 'labeled-pair/train-ids', 'dead_letter'}


def test_pseudo_labels_from_score_thresholds(tmp_path, collection):
  out = tmp_path / 'pairs'
  report = quietly(mine.run, [
      '--ranked', collection['ranked'], '--queries', collection['queries'],
      '--corpus', collection['corpus'], '--positive-threshold', '2.0',
      '--negative-threshold', '1.0', '--output', str(out),
      '--format', 'labeled-pair,distill', '--num-negatives', '3'])
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['pseudo_labels'] is True
  assert manifest['labels'] == (
      'pseudo: cross-encoder score thresholds (positive >= 2.0, negative <= 1.0)')
  assert report['pseudo_labels'] is True
  # q1: positives d01 d02 d03 d04 (>= 2), negatives d05 d06 (<= 1);
  # q2: positive d06, negatives d05 d12 (d07 at 1.5 is neither);
  # q3: nothing >= 2; q5: d10 positive, no negative; q6: d07 / d02.
  assert read_rows(out / 'labeled-pair' / 'train-ids') == [
      {'query_id': q, 'doc_id': d} for q, d in [
          ('q1', 'd01'), ('q1', 'd02'), ('q1', 'd03'), ('q1', 'd04'),
          ('q1', 'd05'), ('q1', 'd06'), ('q2', 'd06'), ('q2', 'd05'), ('q2', 'd12'),
          ('q5', 'd10'), ('q6', 'd07'), ('q6', 'd02')]]
  assert [r['label'] for r in read_rows(out / 'labeled-pair' / 'train')] == [
      1.0] * 4 + [0.0] * 2 + [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
  assert [r['score'] for r in read_rows(out / 'distill' / 'train')] == [
      5.0, 4.5, 3.0, 2.5, 1.0, -1.0, 2.0, 0.5, -2.0, 3.0, 4.0, 0.0]
  assert report['queries_with_positives'] == 4
  assert report['queries_without_positives'] == 1
  assert report['positives'] == 7
  assert report['negatives_kept'] == 5
  assert report['candidates_dropped'] == drops(positive=7)


def test_dev_negatives_are_the_best_ranked_of_each_dev_query(tmp_path, collection):
  """--dev-negatives N: dev queries get their N best negatives (no --range-min,
  no sampling), train queries stay as --num-negatives/--range-min/--sampling say."""
  out = tmp_path / 'pairs'
  quietly(mine.run, [
      '--ranked', collection['ranked'], '--queries', collection['queries'],
      '--corpus', collection['corpus'], '--qrels', collection['qrels'],
      '--output', str(out), '--format', 'labeled-pair', '--num-negatives', '1',
      '--range-min', '1', '--sampling', 'random', '--dev-fraction', str(DEV_FRACTION),
      '--dev-negatives', '3'])
  # q1 (dev): positives d01 d03; negatives by score d02 4.5, d04 2.5, d05 1.0 (d06 -1.0).
  assert [(r['query_id'], r['doc_id']) for r in read_rows(out / 'labeled-pair' / 'dev-ids')] == [
      ('q1', 'd01'), ('q1', 'd03'), ('q1', 'd02'), ('q1', 'd04'), ('q1', 'd05')]
  # q2 (train): d07 (its best negative) skipped by --range-min 1, then one of the rest.
  train = [(r['query_id'], r['doc_id']) for r in read_rows(out / 'labeled-pair' / 'train-ids')]
  q2_negatives = [d for q, d in train if q == 'q2' and d != 'd06']
  assert len(q2_negatives) == 1 and q2_negatives[0] != 'd07'
  assert json.loads((out / 'manifest.json').read_text())['dev_negatives'] == 3


@pytest.mark.parametrize('case', [
    'missing_column', 'two_candidate_sources', 'no_label_source', 'two_label_sources',
    'unknown_format', 'missing_glob', 'ranked_without_manifest', 'dev_negatives_without_dev'])
def test_user_errors_exit_2_with_one_line(tmp_path, collection, capsys, case):
  bad_qrels = write_parquet(tmp_path / 'bad_qrels.parquet', {
      'query_id': ['q1'], 'doc_id': ['d01']})  # no relevance column
  half_committed = tmp_path / 'half'  # a rerank output cut off while committing
  shutil.copytree(collection['ranked'], half_committed)
  (half_committed / 'manifest.json').unlink()
  base = ['--queries', collection['queries'], '--corpus', collection['corpus'],
          '--output', str(tmp_path / 'out')]
  argv, needle = {
      'missing_column': (
          ['--ranked', collection['ranked'], '--qrels', bad_qrels],
          "no column 'relevance'"),
      'two_candidate_sources': (
          ['--ranked', collection['ranked'], '--candidates', collection['corpus'],
           '--qrels', collection['qrels']], 'exactly one candidate source'),
      'no_label_source': (['--ranked', collection['ranked']], 'exactly one label source'),
      'two_label_sources': (
          ['--ranked', collection['ranked'], '--qrels', collection['qrels'],
           '--positive-threshold', '1'], 'exactly one label source'),
      'unknown_format': (
          ['--ranked', collection['ranked'], '--qrels', collection['qrels'],
           '--format', 'pair,quadruplet'], 'unknown --format quadruplet'),
      'missing_glob': (
          ['--ranked', collection['ranked'], '--qrels', str(tmp_path / 'none*.parquet')],
          '--qrels'),
      'ranked_without_manifest': (
          ['--ranked', str(half_committed), '--qrels', collection['qrels']],
          'has no manifest.json: not a complete output of the rerank job'),
      'dev_negatives_without_dev': (
          ['--ranked', collection['ranked'], '--qrels', collection['qrels'],
           '--dev-negatives', '3'], '--dev-negatives mines the dev split'),
  }[case]
  assert mine.main(base + argv) == 2
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert lines[0].startswith('beam-rerank mine: error: ')
  assert needle in lines[0]
  assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------- acceptance


def _load(directory: pathlib.Path, cache: pathlib.Path):
  from datasets import load_dataset
  return load_dataset(
      'parquet', data_files={'train': sorted(glob.glob(str(directory / 'part-*.parquet')))},
      cache_dir=str(cache))['train']


def _trained(model, before: dict) -> bool:
  return any(not (p.detach() == before[n]).all() for n, p in model.named_parameters())


def test_labeled_pairs_train_a_cross_encoder_unchanged(
    qrels_run, tmp_path, mine_bert_dir):
  from sentence_transformers.cross_encoder import (
    CrossEncoder,
    CrossEncoderTrainer,
    CrossEncoderTrainingArguments,
  )
  from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
  _, out = qrels_run
  dataset = _load(out / 'labeled-pair' / 'train', tmp_path / 'cache')
  assert dataset.column_names == ['sentence_0', 'sentence_1', 'label']
  assert dataset.num_rows == len(EXPECTED_IDS[('labeled-pair', 'train')])
  assert dataset.features['label'].dtype == 'float32'
  model = CrossEncoder(mine_bert_dir, num_labels=1, device='cpu')
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  trainer = CrossEncoderTrainer(
      model=model, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model),
      args=CrossEncoderTrainingArguments(
          output_dir=str(tmp_path / 'ce'), max_steps=1, per_device_train_batch_size=4,
          report_to='none', save_strategy='no', use_cpu=True))
  result = trainer.train()
  assert result.global_step == 1
  assert math.isfinite(result.training_loss)
  assert _trained(model, before)


def test_pairs_train_a_bi_encoder_unchanged(qrels_run, tmp_path, mine_bi_encoder_dir):
  from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
  )
  from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
  _, out = qrels_run
  dataset = _load(out / 'pair' / 'train', tmp_path / 'cache')
  assert dataset.column_names == ['sentence_0', 'sentence_1']
  assert dataset.num_rows == len(EXPECTED_IDS[('pair', 'train')])
  model = SentenceTransformer(mine_bi_encoder_dir, device='cpu')
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  trainer = SentenceTransformerTrainer(
      model=model, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model),
      args=SentenceTransformerTrainingArguments(
          output_dir=str(tmp_path / 'bi'), max_steps=1, per_device_train_batch_size=4,
          report_to='none', save_strategy='no', use_cpu=True))
  result = trainer.train()
  assert result.global_step == 1
  assert math.isfinite(result.training_loss)
  assert _trained(model, before)


# ---------------------------------------------------------------- vs sentence-transformers


@pytest.fixture(scope='module')
def dense_inputs(tmp_path_factory, mine_bi_encoder_dir) -> dict[str, str]:
  """The sentence-transformers comparison set as Parquet, encoded by the encode
  job (normalized float32 embeddings)."""
  root = tmp_path_factory.mktemp('dense_inputs')
  query_ids = [f'a{i}' for i in range(len(ST_ANCHORS))]
  doc_ids = [f'c{j:02d}' for j in range(len(ST_CORPUS))]
  paths = {
      'queries': write_parquet(root / 'queries.parquet', {
          'query_id': query_ids, 'text': ST_ANCHORS}),
      'corpus': write_parquet(root / 'corpus.parquet', {
          'doc_id': doc_ids, 'text': ST_CORPUS}),
      'qrels': write_parquet(root / 'qrels.parquet', {
          'query_id': query_ids, 'doc_id': doc_ids[:len(ST_POSITIVES)],
          'relevance': [1] * len(query_ids)}, pa.schema([
              ('query_id', pa.string()), ('doc_id', pa.string()),
              ('relevance', pa.int64())])),
      'emb_queries': str(root / 'emb_queries'),
      'emb_corpus': str(root / 'emb_corpus'),
  }
  quietly(encode_job.run, ['--input', paths['corpus'], '--output', paths['emb_corpus'],
                           '--model', mine_bi_encoder_dir, '--device', 'cpu'])
  quietly(encode_job.run, ['--input', paths['queries'], '--output', paths['emb_queries'],
                           '--model', mine_bi_encoder_dir, '--device', 'cpu',
                           '--id-column', 'query_id'])
  return paths


@pytest.mark.parametrize('name', ['plain', 'relative_margin', 'combined'])
def test_dense_mining_equals_mine_hard_negatives(
    tmp_path, dense_inputs, mine_st_scores, name):
  """encode -> mine --query-embeddings/--corpus-embeddings gives the triplets
  ``mine_hard_negatives`` gives (the guards each drop some candidates)."""
  model, scores = mine_st_scores
  guards = st_guard_configs(scores)[name]
  expected = st_reference(model, 'triplet', guards)
  assert sum(len(v) for v in expected.values()) >= 6
  flags = [arg for key, value in guards.items()
           for arg in ('--' + key.replace('_', '-'), repr(value))]
  out = tmp_path / 'pairs'
  quietly(mine.run, [
      '--query-embeddings', dense_inputs['emb_queries'],
      '--corpus-embeddings', dense_inputs['emb_corpus'],
      # mine_hard_negatives retrieves range_max + max positives (1) + 1.
      '--top-k', str(ST_RANGE_MAX + 2), '--range-max', str(ST_RANGE_MAX),
      '--queries', dense_inputs['queries'], '--corpus', dense_inputs['corpus'],
      '--qrels', dense_inputs['qrels'], '--output', str(out),
      '--format', 'triplet', '--num-negatives', '3', *flags])
  actual: dict[str, list[str]] = {a: [] for a in ST_ANCHORS}
  for row in read_rows(out / 'triplet' / 'train'):
    assert row['positive'] == ST_POSITIVES[ST_ANCHORS.index(row['anchor'])]
    actual[row['anchor']].append(row['negative'])
  assert actual == expected
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['candidate_source'] == 'dense'
  assert manifest['score_column'] == 'retrieval_score'
  assert len(read_rows(out / 'triplet' / 'train-ids')) == sum(map(len, expected.values()))


def test_a_document_whose_text_is_the_query_is_never_mined(tmp_path, collection):
  """A corpus entry with the query's own text (a FAQ whose question is also a
  document, say) is counted, not made a negative; the pool keeps its place."""
  corpus = write_parquet(tmp_path / 'corpus.parquet', {
      'doc_id': ['d01', 'd02', 'd03', 'd04'],
      'text': ['boundary layer at high speed', 'Heat transfer in laminar flow.',
               'Shock waves over a swept wing.', 'Rivers carry sediment.']})
  candidates = write_parquet(tmp_path / 'candidates.parquet', {
      'query_id': ['q1'] * 4, 'doc_id': ['d01', 'd02', 'd03', 'd04'],
      'score': [0.9, 0.8, 0.7, 0.6]}, schema=pa.schema([
          ('query_id', pa.string()), ('doc_id', pa.string()), ('score', pa.float64())]))
  qrels = write_parquet(tmp_path / 'qrels.parquet', {
      'query_id': ['q1'], 'doc_id': ['d03'], 'relevance': [1]}, schema=pa.schema([
          ('query_id', pa.string()), ('doc_id', pa.string()), ('relevance', pa.int32())]))
  out = tmp_path / 'pairs'
  report = quietly(mine.run, [
      '--candidates', candidates, '--queries', collection['queries'], '--corpus', corpus,
      '--qrels', qrels, '--output', str(out), '--format', 'labeled-pair',
      '--num-negatives', '5', '--range-max', '1'])
  # Pool: range_max 1 + 1 positive + 1 = d01..d03; d01 is the query itself.
  assert read_rows(out / 'labeled-pair' / 'train-ids') == [
      {'query_id': 'q1', 'doc_id': 'd03'}, {'query_id': 'q1', 'doc_id': 'd02'}]
  assert report['candidates_dropped']['same_text_as_query'] == 1
  assert report['candidates_dropped']['range_max'] == 1


def test_mined_ids_without_text_are_dead_lettered(tmp_path, collection):
  """A mined negative missing from --corpus and a query missing from --queries
  become dead letters with reasons, not silent gaps in the formats."""
  candidates = write_parquet(tmp_path / 'candidates.parquet', {
      'query_id': ['q1', 'q1', 'q1', 'q2', 'q2', 'q9', 'q9'],
      'doc_id': ['d01', 'd99', 'd02', 'd06', 'd07', 'd01', 'd02'],
      'score': [0.9, 0.8, 0.7, 0.9, 0.1, 0.5, 0.4],
  }, schema=pa.schema([('query_id', pa.string()), ('doc_id', pa.string()),
                       ('score', pa.float64())]))
  qrels = write_parquet(tmp_path / 'qrels.parquet', {
      'query_id': ['q1', 'q2', 'q9'], 'doc_id': ['d01', 'd06', 'd01'],
      'relevance': [1, 1, 1]}, schema=pa.schema([
          ('query_id', pa.string()), ('doc_id', pa.string()), ('relevance', pa.int32())]))
  out = tmp_path / 'pairs'
  report = quietly(mine.run, [
      '--candidates', candidates, '--queries', collection['queries'],
      '--corpus', collection['corpus'], '--qrels', qrels, '--output', str(out),
      '--format', 'labeled-pair', '--num-negatives', '2'])
  assert read_rows(out / 'labeled-pair' / 'train-ids') == [
      {'query_id': 'q1', 'doc_id': 'd01'}, {'query_id': 'q1', 'doc_id': 'd02'},
      {'query_id': 'q2', 'doc_id': 'd06'}, {'query_id': 'q2', 'doc_id': 'd07'}]
  dead = read_rows(out / 'dead_letter')
  assert [(d['stage'], d['record_id'], d['reason'].split(':')[0]) for d in dead] == [
      ('mine/join', 'q1\td99', 'unknown_doc_id'),
      ('mine/join', 'q9', 'unknown_query_id')]
  assert report['mined_ids_without_text'] == 2
  assert report['dead_letters'] == 2


# ---------------------------------------------------------------- BM25 and hybrid pools


def _bm25s_top(queries: list[str], corpus: list[str], k: int,
               stemmer: str | None = None) -> list[list[int]]:
  """bm25s (lucene, k1 1.5, b 0.75) top-k doc indexes per query, positive scores
  only, over the product's tokens (stemmed with ``stemmer``)."""
  import bm25s

  from transforms.retrieval.bm25 import tokenize
  retriever = bm25s.BM25(method='lucene', k1=1.5, b=0.75)
  retriever.index([tokenize(t, stemmer) for t in corpus], show_progress=False)
  out = []
  for text in queries:
    scores = retriever.get_scores(tokenize(text, stemmer))
    order = sorted(range(len(corpus)), key=lambda j: (-scores[j], j))
    out.append([j for j in order[:k] if scores[j] > 0])
  return out


@pytest.mark.parametrize('dense', [False, True])
def test_bm25_and_hybrid_pools(tmp_path, dense_inputs, dense):
  """mine --bm25 draws negatives from BM25's top-k in BM25 order; with dense
  embeddings too, from the union of both top-k lists."""
  k = 4
  out = tmp_path / 'pairs'
  sources = ['--bm25']
  if dense:
    sources += ['--query-embeddings', dense_inputs['emb_queries'],
                '--corpus-embeddings', dense_inputs['emb_corpus']]
  quietly(mine.run, [
      *sources, '--top-k', str(k), '--queries', dense_inputs['queries'],
      '--corpus', dense_inputs['corpus'], '--qrels', dense_inputs['qrels'],
      '--output', str(out), '--format', 'triplet', '--num-negatives', '2'])
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['candidate_source'] == ('hybrid' if dense else 'bm25')
  assert manifest['bm25']['k1'] == 1.5 and manifest['bm25']['top_k'] == k
  assert manifest['bm25']['stemmer'] == 'english'  # --language auto on English texts
  bm25_top = _bm25s_top(ST_ANCHORS, ST_CORPUS, k, 'english')
  mined: dict[str, list[str]] = {}
  for row in read_rows(out / 'triplet' / 'train'):
    mined.setdefault(row['anchor'], []).append(row['negative'])
  assert mined
  for i, anchor in enumerate(ST_ANCHORS):
    pool = [ST_CORPUS[j] for j in bm25_top[i] if ST_CORPUS[j] != ST_POSITIVES[i]]
    negatives = mined.get(anchor, [])
    if not dense:
      assert negatives == pool[:2], anchor  # BM25 order, positives skipped
    else:
      assert len(negatives) == min(2, len(set(negatives)))
      assert ST_POSITIVES[i] not in negatives
  if dense:
    assert manifest['fusion']['weights'] == {'dense': 0.5, 'bm25': 0.5}
    # Some negative came from outside BM25's list: the pool is the union.
    assert any(n not in [ST_CORPUS[j] for j in bm25_top[ST_ANCHORS.index(a)]]
               for a, negs in mined.items() for n in negs)


RU_QUERIES = ['как крылья самолёта создают подъёмную силу', 'симптомы гриппа у детей']
RU_POSITIVES = ['Крылья самолётов создают подъёмную силу: воздух над крылом движется быстрее.',
                'Грипп у детей вызывает жар, кашель и усталость.']
RU_OTHERS = ['Самолёт летит над морем.', 'Крыло птицы покрыто перьями.',
             'Дети играют в саду.', 'Детский врач лечит простуду и грипп.',
             'Силу ветра измеряют в метрах в секунду.', 'Книга о самолётах и птицах.']


def test_the_russian_stemmer_reaches_the_bm25_pools(tmp_path):
  """mine --bm25 on Russian texts: --language auto picks the Russian stemmer,
  and the negatives are bm25s's top-k over the stemmed tokens, in its order."""
  corpus = RU_POSITIVES + RU_OTHERS
  doc_ids = [f'd{i}' for i in range(len(corpus))]
  files = {
      'corpus': write_parquet(tmp_path / 'corpus.parquet', {'doc_id': doc_ids, 'text': corpus}),
      'queries': write_parquet(tmp_path / 'queries.parquet', {
          'query_id': ['q0', 'q1'], 'text': RU_QUERIES}),
      'qrels': write_parquet(tmp_path / 'qrels.parquet', {
          'query_id': ['q0', 'q1'], 'doc_id': ['d0', 'd1'], 'relevance': [1, 1]},
          QRELS_SCHEMA),
  }
  out = tmp_path / 'pairs'
  report = quietly(mine.run, [
      '--bm25', '--top-k', '5', '--queries', files['queries'], '--corpus', files['corpus'],
      '--qrels', files['qrels'], '--output', str(out), '--format', 'triplet',
      '--num-negatives', '3'])
  assert report['language']['language'] == 'russian'
  assert report['language']['cyrillic_share'] == 1.0
  assert json.loads((out / 'manifest.json').read_text())['bm25']['stemmer'] == 'russian'
  top = _bm25s_top(RU_QUERIES, corpus, 5, 'russian')
  assert top != _bm25s_top(RU_QUERIES, corpus, 5)  # the stemmer changes these lists
  mined: dict[str, list[str]] = {}
  for row in read_rows(out / 'triplet' / 'train'):
    mined.setdefault(row['anchor'], []).append(row['negative'])
  for i, query in enumerate(RU_QUERIES):
    pool = [corpus[j] for j in top[i] if corpus[j] != RU_POSITIVES[i]]
    assert mined[query] == pool[:3], query


# ---------------------------------------------------------------- pseudo-queries

# Titles and texts as in Cranfield/CACM (the text begins with its title), one
# Russian document, one title-only document, one without a title.
PSEUDO_DOCS: dict[str, tuple[str | None, str]] = {
    'p01': ('Boundary layer transition on a flat plate',
            'Boundary layer transition on a flat plate\nThe boundary layer on the flat plate '
            'turns turbulent at high speed. Heat transfer to the plate rises after transition.'),
    'p02': ('Heat transfer in laminar flow past a cylinder',
            'Heat transfer in laminar flow past a cylinder . the heated cylinder sits in a '
            'laminar stream . the heat transfer follows the square root of the flow speed .'),
    'p03': ('Shock waves over a swept wing',
            'Shock waves over a swept wing\nShock waves form over the swept wing in supersonic '
            'flow. The boundary layer separates behind the shock on the wing.'),
    'p04': ('Упаковка из крахмала для продуктов',
            'Упаковка из крахмала для продуктов\nУпаковка из крахмала распадается в земле за '
            'месяц! Почему пластик остаётся в земле сотни лет?'),
    'p05': ('Pressure on a delta wing at low speed', 'Pressure on a delta wing at low speed'),
    'p06': (None, 'Rivers carry sediment to the sea. The sediment builds deltas at low speed.'),
    'p07': ('Turbulent flow in a heated pipe',
            'Turbulent flow in a heated pipe\nThe flow in the heated pipe is turbulent. Heat '
            'transfer in the pipe rises with the flow speed.'),
}
PSEUDO_MIN_CHARS = 10


def _pseudo_corpus(root: pathlib.Path) -> str:
  return write_parquet(root / 'pseudo_corpus.parquet', {
      'doc_id': list(PSEUDO_DOCS), 'title': [t for t, _ in PSEUDO_DOCS.values()],
      'text': [x for _, x in PSEUDO_DOCS.values()]})


def _pseudo_records(sources=('title', 'sentence'), per_doc=1, seed=12) -> list[dict]:
  from transforms.training.pseudo_queries import sentence_queries, title_queries
  records = []
  for doc_id, (title, text) in PSEUDO_DOCS.items():
    if 'title' in sources:
      records += title_queries(doc_id, title, text, PSEUDO_MIN_CHARS)
    if 'sentence' in sources:
      records += sentence_queries(doc_id, text, per_doc, PSEUDO_MIN_CHARS, seed, title)
  return records


@pytest.fixture(scope='module')
def pseudo_run(tmp_path_factory) -> tuple[dict, pathlib.Path]:
  """--bm25 --pseudo-queries title,sentence, no --queries/--qrels: hard
  negatives past --range-min 1."""
  root = tmp_path_factory.mktemp('mine_pseudo')
  out = root / 'pairs'
  report = quietly(mine.run, [
      '--bm25', '--top-k', '10', '--corpus', _pseudo_corpus(root),
      '--pseudo-queries', 'title,sentence', '--pseudo-min-chars', str(PSEUDO_MIN_CHARS),
      '--range-min', '1', '--num-negatives', '2', '--output', str(out),
      '--format', 'labeled-pair,triplet,distill'])
  return report, out


def test_pseudo_queries_rows_ids_and_hard_negatives(pseudo_run):
  """Each pseudo-query's positive is its source document without the query
  part; its negatives are BM25's order past the positive and the first one
  (--range-min 1); title queries' negatives are shown without their titles."""
  from transforms.training.pseudo_queries import strip_title
  report, out = pseudo_run
  records = _pseudo_records()
  assert {r['source'] for r in records} == {'title', 'sentence'}
  assert not any(r['doc_id'] == 'p05' and r['source'] == 'title' for r in records)
  doc_ids = list(PSEUDO_DOCS)
  passages = [text for _, text in PSEUDO_DOCS.values()]
  assert report['language']['bm25_stemmer'] == 'english'  # auto: mostly Latin letters
  top = _bm25s_top([r['text'] for r in records], passages, 10, 'english')
  expected_texts, expected_ids = [], []
  for record, hits in sorted(zip(records, top), key=lambda pair: pair[0]['query_id']):
    negatives = [doc_ids[j] for j in hits if doc_ids[j] != record['doc_id']][1:3]
    qid, source = record['query_id'], record['source']
    expected_texts.append(
        {'sentence_0': record['text'], 'sentence_1': record['positive'], 'label': 1.0})
    expected_ids.append({'query_id': qid, 'doc_id': record['doc_id'], 'source': source})
    for doc_id in negatives:
      title, text = PSEUDO_DOCS[doc_id]
      shown = strip_title(text, title) if source == 'title' and title != text else text
      expected_texts.append({'sentence_0': record['text'], 'sentence_1': shown, 'label': 0.0})
      expected_ids.append({'query_id': qid, 'doc_id': doc_id, 'source': source})
  assert read_rows(out / 'labeled-pair' / 'train') == expected_texts
  assert read_rows(out / 'labeled-pair' / 'train-ids') == expected_ids
  assert fields(read_schema(out / 'labeled-pair' / 'train-ids')) == [
      ('query_id', pa.string()), ('doc_id', pa.string()), ('source', pa.string())]
  assert fields(read_schema(out / 'triplet' / 'train-ids'))[-1] == ('source', pa.string())
  for text_row, id_row in zip(read_rows(out / 'triplet' / 'train'),
                              read_rows(out / 'triplet' / 'train-ids')):
    assert id_row['query_id'].startswith(id_row['source'] + ':')
    assert ' '.join(text_row['anchor'].split()) != ' '.join(text_row['positive'].split())
    assert text_row['anchor'] not in text_row['positive']
  # distill: the positive was scored as the whole document, so only negatives.
  for id_row in read_rows(out / 'distill' / 'train-ids'):
    assert id_row['doc_id'] != id_row['query_id'].split(':')[1]
  by_source = {s: sum(r['source'] == s for r in records) for s in ('title', 'sentence')}
  assert report['pseudo_queries'] == {
      'documents': 7, 'documents_without_queries': 1, **by_source}  # p05: a title alone
  assert report['queries_with_positives'] == len(records)
  assert report['dead_letters'] == 0 and report['reconciles'] is True
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['labels'] == 'pseudo-queries (title, sentence)'
  assert manifest['pseudo_queries']['title_column'] == 'title'
  assert manifest['pseudo_queries']['sources'] == ['title', 'sentence']


def test_pseudo_queries_mix_with_judged_queries(tmp_path):
  """With --queries and --qrels the judged queries come too, source 'qrels';
  --pseudo-max-docs keeps a sample of documents; easy negatives by --sampling random."""
  corpus = _pseudo_corpus(tmp_path)
  queries = write_parquet(tmp_path / 'queries.parquet', {
      'query_id': ['q1', 'q2'], 'text': ['heat transfer cylinder', 'swept wing shock']})
  qrels = write_parquet(tmp_path / 'qrels.parquet', {
      'query_id': ['q1', 'q2'], 'doc_id': ['p02', 'p03'], 'relevance': [1, 1]},
      pa.schema([('query_id', pa.string()), ('doc_id', pa.string()),
                 ('relevance', pa.int32())]))
  out = tmp_path / 'pairs'
  report = quietly(mine.run, [
      '--bm25', '--top-k', '10', '--corpus', corpus, '--queries', queries, '--qrels', qrels,
      '--pseudo-queries', 'title', '--pseudo-max-docs', '3', '--sampling', 'random',
      '--num-negatives', '1', '--output', str(out), '--format', 'pair'])
  ids = read_rows(out / 'pair' / 'train-ids')
  judged = [r for r in ids if r['source'] == 'qrels']
  pseudo = [r for r in ids if r['source'] == 'title']
  assert judged == [{'query_id': 'q1', 'doc_id': 'p02', 'source': 'qrels'},
                    {'query_id': 'q2', 'doc_id': 'p03', 'source': 'qrels'}]
  assert len(pseudo) == report['pseudo_queries']['title'] <= 3
  assert report['pseudo_queries']['documents'] == 3
  assert all(r['query_id'] == f"title:{r['doc_id']}" for r in pseudo)
  assert len(ids) == len(judged) + len(pseudo)
  assert json.loads((out / 'manifest.json').read_text())['labels'] == (
      'qrels + pseudo-queries (title)')


@pytest.mark.parametrize('judged', [True, False])
def test_dev_split_holds_judged_queries_only_when_there_are_some(tmp_path, judged):
  """The dev split selects checkpoints on real queries: with --qrels every
  pseudo-query trains; with pseudo-queries alone they split by id hash."""
  from transforms.core.splits import split_of
  corpus = _pseudo_corpus(tmp_path)
  labels = []
  if judged:
    labels = [
        '--queries', write_parquet(tmp_path / 'queries.parquet', {
            'query_id': ['q1', 'q2', 'q3', 'q4'],
            'text': ['heat transfer cylinder', 'swept wing shock', 'boundary layer', 'wing']}),
        '--qrels', write_parquet(tmp_path / 'qrels.parquet', {
            'query_id': ['q1', 'q2', 'q3', 'q4'], 'doc_id': ['p02', 'p03', 'p01', 'p03'],
            'relevance': [1, 1, 1, 1]},
            pa.schema([('query_id', pa.string()), ('doc_id', pa.string()),
                       ('relevance', pa.int32())]))]
  out = tmp_path / 'pairs'
  quietly(mine.run, [
      '--bm25', '--top-k', '10', '--corpus', corpus, *labels, '--dev-fraction', '0.5',
      '--pseudo-queries', 'title,sentence', '--pseudo-min-chars', str(PSEUDO_MIN_CHARS),
      '--sampling', 'random', '--output', str(out), '--format', 'pair'])
  rows = {split: read_rows(out / 'pair' / f'{split}-ids') if (
      out / 'pair' / f'{split}-ids').exists() else [] for split in ('train', 'dev')}
  pseudo = {split: {r['query_id'] for r in split_rows if r['source'] != 'qrels'}
            for split, split_rows in rows.items()}
  judged_rows = {split: {r['query_id'] for r in split_rows if r['source'] == 'qrels'}
                 for split, split_rows in rows.items()}
  if judged:
    assert pseudo['dev'] == set() and pseudo['train']
    assert judged_rows['dev'] == {q for q in ('q1', 'q2', 'q3', 'q4')
                                  if split_of(q, 0.5) == 'dev'} != set()
    manifest = json.loads((out / 'manifest.json').read_text())
    assert 'pseudo-queries train' in manifest['split']
  else:
    every = pseudo['train'] | pseudo['dev']
    assert pseudo['dev'] == {q for q in every if split_of(q, 0.5) == 'dev'} != set()


@pytest.mark.parametrize('case', [
    'no_bm25', 'ranked', 'queries_without_labels', 'threshold', 'no_title_column'])
def test_pseudo_query_user_errors(tmp_path, collection, capsys, case):
  corpus = _pseudo_corpus(tmp_path)
  base = ['--output', str(tmp_path / 'out'), '--pseudo-queries', 'title']
  argv, needle = {
      'no_bm25': (['--corpus', corpus], '--pseudo-queries needs --bm25'),
      'ranked': (['--corpus', corpus, '--ranked', collection['ranked']],
                 '--pseudo-queries needs --bm25'),
      'queries_without_labels': (
          ['--bm25', '--corpus', corpus, '--queries', collection['queries']],
          '--queries and their labels'),
      'threshold': (['--bm25', '--corpus', corpus, '--positive-threshold', '1'],
                    'not --positive-threshold'),
      'no_title_column': (['--bm25', '--corpus', collection['corpus']],
                          'needs a title column'),
  }[case]
  assert mine.main(base + argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0], lines
  assert not (tmp_path / 'out').exists()


def test_queries_still_required_without_pseudo_queries(tmp_path, collection, capsys):
  assert mine.main(['--ranked', collection['ranked'], '--corpus', collection['corpus'],
                    '--qrels', collection['qrels'], '--output', str(tmp_path / 'out')]) == 2
  assert '--queries is required' in capsys.readouterr().err


def test_ranked_score_column_is_the_cross_encoders(tmp_path):
  """mine --ranked guards read ce_score (the ranked score may be a fused one);
  without a cross-encoder, the first stage's score, and model-score rules refuse."""
  import polars as pl

  from transforms.core.errors import UserInputError
  path = tmp_path / 'part.parquet'
  pl.DataFrame({'query_id': ['q'], 'doc_id': ['d'], 'score': [1.0], 'ce_score': [2.0],
                'retrieval_rank': [1], 'retrieval_score': [0.5]}).write_parquet(path)
  old = tmp_path / 'old.parquet'
  pl.DataFrame({'query_id': ['q'], 'doc_id': ['d'], 'score': [1.0]}).write_parquet(old)
  job = mine.MineJobConfig(queries='q', corpus='c', output='o', ranked='r')
  assert mine_steps.ranked_score_column({'cross_encoder': 'ce'}, [str(path)], job) == 'ce_score'
  assert mine_steps.ranked_score_column({'cross_encoder': 'ce'}, [str(old)], job) == 'score'
  assert mine_steps.ranked_score_column({'cross_encoder': None}, [str(path)], job) == (
      'retrieval_score')
  distill = mine.MineJobConfig(queries='q', corpus='c', output='o', ranked='r',
                               format='distill')
  with pytest.raises(UserInputError, match='ranked without a cross-encoder'):
    mine_steps.ranked_score_column({'cross_encoder': None}, [str(path)], distill)
