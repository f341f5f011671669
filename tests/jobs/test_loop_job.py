"""The loop job: judged queries split by id hash into train/dev/test without
leakage; mine -> train (cross-encoder and bi-encoder) -> rerank with tuned
fusion -> test metrics, end to end on the sample collection with a tiny model.
"""
from __future__ import annotations

import contextlib
import io
import json
import pathlib

import polars as pl
import pytest

from pipelines import cli, loop
from pipelines.jobs import loop as loop_job
from pipelines.steps import loop as loop_steps
from transforms.core.splits import split_of
from transforms.io.sample_data import write_sample_data
from transforms.models import model_info
from transforms.training import splits as loop_splits
from transforms.training.trainer import TrainingSettings


def _ids(path: pathlib.Path) -> set[str]:
  return set(pl.read_parquet(path)['query_id'].cast(pl.String).to_list())


def _mined_ids(pairs: pathlib.Path, split: str) -> set[str]:
  ids: set[str] = set()
  for folder in pairs.glob(f'*/{split}-ids'):
    for path in folder.glob('part-*.parquet'):
      ids |= set(pl.read_parquet(path)['query_id'].to_list())
  return ids


# ---------------------------------------------------------------- splits

def test_splits_are_disjoint_cover_and_match_the_mine_jobs_dev_split():
  ids = [f'query-{i}' for i in range(2000)]
  splits = loop_splits.split_query_ids(ids + ids[:10], test_fraction=0.4, dev_fraction=0.25)
  sets = {name: set(v) for name, v in splits.items()}
  assert sets['train'] | sets['dev'] | sets['test'] == set(ids)
  assert sum(len(v) for v in splits.values()) == len(ids)
  assert not (sets['train'] & sets['dev'] or sets['train'] & sets['test']
              or sets['dev'] & sets['test'])
  assert 0.35 < len(sets['test']) / len(ids) < 0.45
  assert 0.2 < len(sets['dev']) / (len(ids) - len(sets['test'])) < 0.3
  # The mine job, given train+dev queries and the derived fraction, puts
  # exactly the loop's dev queries in its dev split.
  fraction = loop_splits.mine_dev_fraction(0.4, 0.25)
  for query_id in sets['train'] | sets['dev']:
    assert (split_of(query_id, fraction) == 'dev') == (query_id in sets['dev'])
  # Stable: the same ids split the same way in any order.
  assert loop_splits.split_query_ids(list(reversed(ids)), 0.4, 0.25) == splits


def test_no_dev_fraction_means_no_dev_split():
  splits = loop_splits.split_query_ids([f'q{i}' for i in range(200)], 0.5, 0.0)
  assert splits['dev'] == [] and splits['train'] and splits['test']


def test_explicit_test_queries_replace_the_hash_test_split():
  ids = [f'query-{i}' for i in range(1000)]
  held_out = ids[::2] + ['never-judged']
  splits = loop_splits.split_query_ids(ids, 0.5, 0.25, test_ids=held_out)
  assert splits['test'] == sorted(ids[::2])
  rest = set(ids[1::2])
  assert set(splits['train']) | set(splits['dev']) == rest
  assert not set(splits['train']) & set(splits['dev'])
  # Dev is the hash split of the rest at --dev-fraction itself, which is what
  # the mine job does with the fraction the loop gives it.
  fraction = loop_splits.mine_dev_fraction(0.5, 0.25, explicit_test=True)
  assert fraction == 0.25
  for query_id in rest:
    assert (split_of(query_id, fraction) == 'dev') == (query_id in splits['dev'])
  assert 0.2 < len(splits['dev']) / len(rest) < 0.3


@pytest.mark.parametrize('judged, explicit_test, dev', [
    (120, True, loop_splits.MIN_DEV_QUERIES),   # 60 not test: ~12 by hash, raised to 20
    (60, False, loop_splits.MIN_DEV_QUERIES),   # ~48 not test (test by hash)
    (70, True, None),                    # 35 not test: fewer than twice 20, left as hashed
])
def test_dev_split_takes_enough_queries_for_the_guard(judged, explicit_test, dev):
  ids = [f'q{i}' for i in range(judged)]
  held_out = ids[::2] if explicit_test else None
  requested = loop_splits.mine_dev_fraction(0.2, 0.2, explicit_test)
  share = loop_splits.loop_dev_share(ids, 0.2, 0.2, held_out)
  splits = loop_splits.split_query_ids(ids, 0.2, 0.2, held_out)
  rest = set(splits['train']) | set(splits['dev'])
  hashed = sum(split_of(q, requested) == 'dev' for q in rest)
  assert hashed < loop_splits.MIN_DEV_QUERIES  # the case: the hash alone gives too few
  assert len(splits['dev']) == (dev if dev is not None else hashed)
  assert (share > requested) == (dev is not None)
  assert len(splits['train']) >= len(splits['dev'])
  # The mine job, given the raised fraction, still puts exactly these in dev.
  for query_id in rest:
    assert (split_of(query_id, share) == 'dev') == (query_id in splits['dev'])


def test_no_dev_fraction_is_never_raised():
  ids = [f'q{i}' for i in range(120)]
  assert loop_splits.loop_dev_share(ids, 0.2, 0.0, ids[::2]) == 0.0


def test_check_disjoint_refuses_a_shared_id():
  with pytest.raises(AssertionError, match='train and test share 1 ids'):
    loop_splits.check_disjoint({'train': ['a', 'b'], 'dev': [], 'test': ['b']})


# ---------------------------------------------------------------- command line

def test_listed_in_the_command():
  assert cli.JOBS['loop'][0] == 'pipelines.loop'


@pytest.mark.parametrize('extra, message', [
    (['--pseudo-queries', 'title', '--no-bm25'], '--pseudo-queries needs BM25'),
    (['--test-fraction', '0'], '--test-fraction must be between 0 and 1'),
    (['--metrics', 'nDCG@10,bogus'], "unknown metric 'bogus'"),
])
def test_user_errors_exit_2(tmp_path, capsys, extra, message):
  argv = ['--queries', 'q', '--corpus', 'c', '--qrels', 'r',
          '--output', str(tmp_path / 'out')] + extra
  assert loop.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('beam-rerank loop: error: ') and message in err
  assert not (tmp_path / 'out').exists()


def test_test_queries_without_the_id_column_is_a_user_error(tmp_path, capsys):
  data = write_sample_data(str(tmp_path / 'data'))
  pl.DataFrame({'id': ['1']}).write_parquet(tmp_path / 'test.parquet')
  assert loop.main([
      '--queries', data['queries'], '--corpus', data['corpus'], '--qrels', data['qrels'],
      '--test-queries', str(tmp_path / 'test.parquet'),
      '--output', str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('beam-rerank loop: error: ') and '--test-queries' in err
  assert 'query_id' in err


def test_too_few_judged_queries_for_a_test_split(tmp_path, capsys):
  data = write_sample_data(str(tmp_path / 'data'))
  qrels = pl.read_parquet(data['qrels'])
  one = qrels.filter(pl.col('query_id') == qrels['query_id'][0])
  one.write_parquet(tmp_path / 'one.parquet')
  assert loop.main([
      '--queries', data['queries'], '--corpus', data['corpus'],
      '--qrels', str(tmp_path / 'one.parquet'), '--output', str(tmp_path / 'out')]) == 2
  assert 'split (1 judged queries' in capsys.readouterr().err


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope='module')
def loop_run(tmp_path_factory, mine_bi_encoder_dir):
  """The command on the sample collection: both kinds from one tiny model,
  title pseudo-queries mixed in; two training steps each."""
  root = tmp_path_factory.mktemp('loop')
  data = write_sample_data(str(root / 'data'))
  out = root / 'out'
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    code = cli.main([
        'loop', '--queries', data['queries'], '--corpus', data['corpus'],
        '--qrels', data['qrels'], '--output', str(out),
        '--base-model', mine_bi_encoder_dir, '--kind', 'both',
        '--doc-title-column', 'title', '--pseudo-queries', 'title',
        '--top-k', '10', '--max-steps', '2', '--distill-steps', '2', '--batch-size', '4',
        '--teacher-bm25-weight', 'auto', '--no-progress', '--device', 'cpu'])
  assert code == 0
  report = json.loads((out / loop_job.REPORT_NAME).read_text())
  return out, data, report, stdout.getvalue()


def test_report_structure(loop_run):
  out, _, report, _ = loop_run
  assert report['job'] == 'loop' and report['kind'] == 'both'
  assert set(report['splits']) >= {'train', 'dev', 'test', 'rule', 'files'}
  splits = report['splits']
  assert splits['train'] + splits['dev'] + splits['test'] == 36  # the sample's judged queries
  steps = report['steps']
  assert set(steps['train']) == {'cross-encoder', 'bi-encoder'}
  assert set(steps['rerank']) == {'cross-encoder', 'base', 'bi-encoder'}
  assert steps['rerank']['base'].endswith('rerank/first-stage')
  assert set(steps['embeddings']) == {'base', 'bi-encoder'}
  for folder in [steps['mine'], *steps['train'].values(), *steps['rerank'].values()]:
    assert pathlib.Path(folder).is_dir(), folder
  assert (pathlib.Path(steps['train']['cross-encoder']) / 'training_report.json').exists()
  assert report['training']['cross-encoder']['steps'] == 2
  assert report['training']['bi-encoder']['steps'] == 2
  # The cross-encoder's warm start learned the first stage's similarities: the
  # bi-encoder's and BM25's, blended as the first stage chose on the train and
  # dev queries; the base run ranks with exactly those weights.
  warm = report['training']['cross-encoder']['warm_start']
  weights = report['first_stage_tuning']['first_stage']['weights']
  assert report['fusion']['base']['first_stage']['weights'] == {
      s: w for s, w in weights.items() if w > 0}
  share = weights.get('bm25', 0) / (weights.get('dense', 0) + weights.get('bm25', 0))
  assert warm['steps'] == 2 and warm['teacher_bm25_weight'] == pytest.approx(share)
  assert warm['teacher'] == (model_info.packaged_minilm_path() if share < 1 else None)
  assert report['training']['bi-encoder']['warm_start'] is None
  assert report['mined']['rows']['labeled-pair/train'] > 0
  assert report['mined']['rows']['triplet/train'] > 0
  assert report['mined']['queries']['pseudo_train'] > 0  # title pseudo-queries mixed in
  mine_manifest = json.loads((pathlib.Path(steps['mine']) / 'manifest.json').read_text())
  assert mine_manifest['mining']['sampling_strategy'] == 'random'  # --negatives default
  assert mine_manifest['mining']['num_negatives'] == 4
  assert set(report['table']) == set(loop_steps.TABLE_ROWS)
  for values in report['table'].values():
    assert set(values) == {'nDCG@10', 'MRR@10', 'Recall@100'}
    assert all(0 <= v <= 1 for v in values.values())
  # Every metric is on the test queries, all of them.
  assert report['test_queries_evaluated'] == report['splits']['test']
  # Only the dev (fusion tuning) and test queries are reranked.
  ranked = pl.read_parquet(pathlib.Path(steps['rerank']['cross-encoder']) / 'part-*.parquet')
  splits = {name: _ids(out / 'splits' / f'{name}.parquet') for name in ('dev', 'test')}
  assert set(ranked['query_id'].to_list()) == splits['dev'] | splits['test']
  for name, folder in steps['rerank'].items():
    metrics = json.loads((pathlib.Path(folder) / 'metrics.json').read_text())
    assert metrics['queries_evaluated'] == report['splits']['test'], name
  # The bi-encoder's run retrieved with the fine-tuned model's embeddings.
  fingerprints = {
      name: json.loads((pathlib.Path(folder) / 'manifest.json').read_text())[
          'retrieval_model_fingerprint'] for name, folder in steps['rerank'].items()}
  assert fingerprints['bi-encoder'] != fingerprints['base']
  assert fingerprints['cross-encoder'] == fingerprints['bi-encoder']
  stages = {name: json.loads((pathlib.Path(folder) / 'metrics.json').read_text())['metrics']
            for name, folder in steps['rerank'].items()}
  assert report['table']['dense'] == stages['base']['dense']
  assert report['table']['cross_encoder'] == stages['cross-encoder']['ce']
  assert report['table']['bi_encoder_dense'] == stages['bi-encoder']['dense']
  assert report['table']['bi_encoder_first_stage'] == stages['cross-encoder']['retrieval']


def test_splits_are_disjoint_and_cover_the_judged_queries(loop_run):
  out, data, report, _ = loop_run
  splits = {name: _ids(out / 'splits' / f'{name}.parquet')
            for name in ('train', 'dev', 'test', 'tune')}
  assert not (splits['train'] & splits['dev'] or splits['train'] & splits['test']
              or splits['dev'] & splits['test'])
  assert splits['train'] | splits['dev'] | splits['test'] == _ids(pathlib.Path(data['qrels']))
  assert splits['tune'] == splits['train'] | splits['dev']
  assert _ids(out / 'splits' / 'queries_tune.parquet') == splits['tune']
  assert all(splits[name] for name in ('train', 'dev', 'test'))
  assert {name: len(splits[name]) for name in ('train', 'dev', 'test')} == {
      name: report['splits'][name] for name in ('train', 'dev', 'test')}
  # Each split keeps all the judgments of its queries.
  qrels = pl.read_parquet(data['qrels'])
  assert pl.read_parquet(out / 'splits' / 'test.parquet').height == qrels.filter(
      pl.col('query_id').is_in(list(splits['test']))).height


def test_test_queries_are_never_mined_nor_tuned_on(loop_run):
  out, _, report, _ = loop_run
  test = _ids(out / 'splits' / 'test.parquet')
  dev = _ids(out / 'splits' / 'dev.parquet')
  train = _ids(out / 'splits' / 'train.parquet')
  pairs = out / 'pairs'
  mined_train, mined_dev = _mined_ids(pairs, 'train'), _mined_ids(pairs, 'dev')
  assert mined_train and mined_dev
  assert not (mined_train | mined_dev) & test
  # The mined dev split holds exactly the dev queries (and pseudo-queries).
  judged = train | dev | test
  assert mined_dev & judged == dev
  assert mined_train & judged == train
  assert all(q.startswith('title:') for q in (mined_train | mined_dev) - judged)
  for folder in report['steps']['rerank'].values():
    manifest = json.loads((pathlib.Path(folder) / 'manifest.json').read_text())
    tuned = set(manifest['fusion']['tuning_query_ids'])
    # Fusion is tuned on dev alone: the models trained on train's judgments.
    assert tuned == dev
    assert not tuned & test
    assert manifest['tune_qrels'].endswith('dev.parquet')
  # The base first stage (no model trained in the loop) is tuned on train + dev,
  # never on test; only those queries are ranked there, and nothing is evaluated.
  folder = pathlib.Path(report['steps']['first_stage_tuning'])
  manifest = json.loads((folder / 'manifest.json').read_text())
  assert set(manifest['fusion']['tuning_query_ids']) == train | dev
  assert manifest['tune_qrels'].endswith('tune.parquet')
  assert set(pl.read_parquet(folder / 'part-*.parquet')['query_id'].to_list()) <= train | dev
  assert not (folder / 'metrics.json').exists()


def test_dev_queries_keep_their_best_ranked_candidates_as_negatives(loop_run):
  """Checkpoints are chosen on the hard lists a rerank sees: each dev query's
  negatives are its best-ranked candidates, up to --rerank-top-k (20), while
  training draws --num-negatives (4)."""
  out, _, _, _ = loop_run
  pairs = out / 'pairs'
  assert json.loads((pairs / 'manifest.json').read_text())['dev_negatives'] == 20
  dev = _ids(out / 'splits' / 'dev.parquet')
  ids = pl.read_parquet(pairs / 'labeled-pair' / 'dev-ids' / '*.parquet')
  rows = pl.read_parquet(pairs / 'labeled-pair' / 'dev' / '*.parquet')
  negatives = (pl.concat([ids, rows.select('label')], how='horizontal')
               .filter(pl.col('label') == 0.0).group_by('query_id').len())
  assert set(negatives['query_id'].to_list()) == dev
  assert negatives['len'].max() > 4


def test_printed_table_has_the_rows(loop_run):
  _, _, report, printed = loop_run
  table = printed[printed.index('== loop:'):]
  assert f"{report['splits']['test']} test queries" in table
  labels = [report['table_labels'][row] for row in loop_steps.TABLE_ROWS]
  rows = table.splitlines()[2:2 + len(labels)]
  assert [line[:line.index('  ', 2)].strip() for line in rows] == labels  # in this order
  # Both trained: the cross-encoder reranks the fine-tuned bi-encoder's first stage.
  assert report['table_labels']['final'] == 'final (fine-tuned dense + BM25 + CE)'
  for header in ('nDCG@10', 'MRR@10', 'Recall@100'):
    assert header in table.splitlines()[1]
  first_stage = next(line for line in table.splitlines() if 'first stage (dense + BM25)' in line)
  value = report['table']['first_stage']['nDCG@10']
  assert f'{value:.4f}' in first_stage
  # Each fusion decision in one line: where it was tuned and what it chose.
  reason = report['first_stage_tuning']['first_stage']['reason']
  assert f'  first stage (train + dev queries): {reason}' in printed
  final = report['fusion']['cross-encoder']['final']['reason']
  assert f'  final, cross-encoder (dev queries): {final}' in printed
  assert 'final, bi-encoder' not in printed  # no cross-encoder there: no final fusion
  assert ('  Recall@100: over the reranked candidates only (the dense and BM25 top 20); '
          '--rerank-top-k for deeper lists') in printed


@pytest.mark.parametrize('measures, top_k, bm25, note', [
    (['nDCG@10', 'RR@10', 'R@100'], 20, True,
     'Recall@100: over the reranked candidates only (the dense and BM25 top 20); '
     '--rerank-top-k for deeper lists'),
    (['nDCG@10', 'R@100', 'P@50', 'R@100'], 30, False,
     'Recall@100, P@50: over the reranked candidates only (the dense top 30); '
     '--rerank-top-k for deeper lists'),
    (['nDCG@10', 'RR@10', 'R@100', 'MAP'], 100, True, None),
])
def test_candidate_depth_note(measures, top_k, bm25, note):
  assert loop_steps.candidate_depth_note(measures, top_k, bm25) == note


def test_bi_encoder_alone_without_bm25_or_dev(tmp_path, mine_bi_encoder_dir, capsys):
  # The base first stage gets its own run (no cross-encoder); dense alone
  # is the first stage; no dev split: training keeps its last step.
  # A test set of the user's own replaces the hash split.
  data = write_sample_data(str(tmp_path / 'data'))
  judged = sorted(_ids(pathlib.Path(data['qrels'])))
  pl.DataFrame({'query_id': judged[:8] + ['not-judged']}).write_parquet(tmp_path / 'test.parquet')
  result = loop.execute(loop.parse_config([
      '--queries', data['queries'], '--corpus', data['corpus'], '--qrels', data['qrels'],
      '--test-queries', str(tmp_path / 'test.parquet'),
      '--output', str(tmp_path / 'out'), '--bi-encoder', mine_bi_encoder_dir,
      '--kind', 'bi-encoder', '--no-bm25', '--dev-fraction', '0', '--bi-encoder-format',
      'pair', '--top-k', '10', '--max-steps', '1', '--batch-size', '4', '--no-progress',
      '--device', 'cpu']))
  assert result.splits == {'train': len(judged) - 8, 'dev': 0, 'test': 8}
  assert result.report['splits']['rule'] == loop_splits.EXPLICIT_TEST_RULE
  assert result.report['splits']['test_fraction'] is None
  assert _ids(tmp_path / 'out' / 'splits' / 'test.parquet') == set(judged[:8])
  assert result.report['test_queries_evaluated'] == 8
  assert list(result.table) == ['first_stage', 'dense', 'bi_encoder_dense']
  assert result.table['first_stage'] == result.table['dense']
  assert set(result.report['steps']['rerank']) == {'base', 'bi-encoder'}
  assert result.report['steps']['rerank']['base'].endswith('rerank/first-stage')
  assert result.report['training']['bi-encoder']['dev_rows'] == 0
  assert result.report['mined']['rows'].keys() >= {'pair/train'}
  assert 'pair/dev' not in result.report['mined']['rows']
  printed = capsys.readouterr().out
  assert 'first stage (dense)' in printed and 'BM25' not in printed.split('== loop:')[1]
  # One signal, nothing to fuse: no first-stage tuning run.
  assert result.report['first_stage_tuning'] is None
  assert result.report['steps']['first_stage_tuning'] is None


def test_cross_encoder_alone_reranks_the_first_stage_tuned_on_train_and_dev(
    tmp_path, mine_bi_encoder_dir):
  """The cross-encoder reranks the base first stage with the weights chosen on
  the train + dev queries (fixed there); its final stage is tuned on dev."""
  data = write_sample_data(str(tmp_path / 'data'))
  result = loop.execute(loop.parse_config([
      '--queries', data['queries'], '--corpus', data['corpus'], '--qrels', data['qrels'],
      '--output', str(tmp_path / 'out'), '--base-model', mine_bi_encoder_dir,
      '--kind', 'cross-encoder', '--distill-steps', '0', '--top-k', '10',
      '--max-steps', '1', '--batch-size', '4', '--no-progress', '--device', 'cpu']))
  report = result.report
  tuning = report['first_stage_tuning']
  tuned_on = set(tuning['tuning_query_ids'])
  assert tuned_on == (_ids(tmp_path / 'out' / 'splits' / 'train.parquet')
                      | _ids(tmp_path / 'out' / 'splits' / 'dev.parquet'))
  chosen = {s: w for s, w in tuning['first_stage']['weights'].items() if w > 0}
  ce_run = report['fusion']['cross-encoder']
  assert ce_run['first_stage']['weights'] == chosen and not ce_run['first_stage']['fell_back']
  assert ce_run['tuning_query_ids'] == sorted(_ids(tmp_path / 'out' / 'splits' / 'dev.parquet'))
  assert report['steps']['rerank'] == {
      'cross-encoder': str(tmp_path / 'out' / 'rerank' / 'cross-encoder'),
      'base': str(tmp_path / 'out' / 'rerank' / 'cross-encoder')}
  assert result.table['first_stage'] == report['table']['first_stage']


def test_warm_start_teacher(mine_bi_encoder_dir, mine_cross_encoder_dir):
  """The cross-encoder warms up on the first-stage bi-encoder, unless there is
  nothing to warm up (a cross-encoder base, no cross-encoder, 0 steps)."""
  from transforms.core.errors import UserInputError
  job = loop_job.LoopJobConfig(queries='q', corpus='c', qrels='r', output='o',
                           base_model=mine_bi_encoder_dir)
  assert job.training.distill_steps == loop_job.DEFAULT_DISTILL_STEPS > 0
  assert loop_job.warm_start_teacher(job) == model_info.packaged_minilm_path()
  chosen = loop_job.LoopJobConfig(queries='q', corpus='c', qrels='r', output='o',
                              bi_encoder=mine_bi_encoder_dir)
  assert loop_job.warm_start_teacher(chosen) == mine_bi_encoder_dir
  no_warm_start = TrainingSettings(distill_steps=0)
  for off in [dict(base_model=mine_cross_encoder_dir), dict(training=no_warm_start),
              dict(kind='bi-encoder')]:
    assert loop_job.warm_start_teacher(
        loop_job.LoopJobConfig(queries='q', corpus='c', qrels='r', output='o', **off)) is None, off
  wrong = loop_job.LoopJobConfig(queries='q', corpus='c', qrels='r', output='o',
                             bi_encoder=mine_cross_encoder_dir)
  with pytest.raises(UserInputError, match='--distill-steps 0'):
    loop_job.warm_start_teacher(wrong)


@pytest.mark.parametrize('weights, share', [
    ({'dense': 0.55, 'bm25': 0.45}, 0.45),
    ({'dense': 1.0}, 0.0),   # fell back to dense
    ({'bm25': 1.0}, 1.0),    # fell back to BM25
    (None, 0.0),             # no fusion decision
])
def test_first_stage_bm25_share(weights, share):
  fusion = {'first_stage': {'weights': weights}} if weights else None
  assert loop_steps.first_stage_bm25_share({'fusion': fusion}) == pytest.approx(share)


@pytest.mark.parametrize('value, parsed', [('auto', 'auto'), ('0.3', 0.3), ('1', 1.0)])
def test_teacher_bm25_weight_option(value, parsed):
  assert loop_job.bm25_weight(value) == parsed
  required = ['--queries', 'q', '--corpus', 'c', '--qrels', 'r', '--output', 'o']
  assert loop.parse_config(required).teacher_bm25_weight == 0.0  # dense alone, measured
  assert loop.parse_config(required + ['--teacher-bm25-weight', value]).teacher_bm25_weight \
      == parsed


def test_teacher_bm25_weight_out_of_range_exits_2(capsys):
  with pytest.raises(SystemExit) as exited:
    loop.parse_config(['--queries', 'q', '--corpus', 'c', '--qrels', 'r', '--output', 'o',
                       '--teacher-bm25-weight', '1.5'])
  assert exited.value.code == 2
  assert 'must be between 0 and 1' in capsys.readouterr().err


def test_the_language_is_resolved_once_and_reaches_every_bm25_step(loop_run):
  """--language auto on the bilingual sample: the loop reads the corpus once and
  its mine and rerank steps stem BM25 with what it picked."""
  _, _, report, _ = loop_run
  language = report['language']
  assert language['requested'] == 'auto' and language['texts'] == 36
  stemmer = language['bm25_stemmer']
  assert stemmer in ('english', 'russian')
  mined = json.loads((pathlib.Path(report['steps']['mine']) / 'manifest.json').read_text())
  assert mined['bm25']['stemmer'] == stemmer
  for folder in report['steps']['rerank'].values():
    manifest = json.loads((pathlib.Path(folder) / 'manifest.json').read_text())
    assert manifest['bm25']['stemmer'] == stemmer, folder
