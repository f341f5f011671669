"""The encode job end to end: tiny Parquet corpora through ``pipelines.encode``.

Each Beam run costs a few seconds, so runs are module-scoped fixtures shared by
the tests that check different things about the same output.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import shutil

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import encode
from tests.fixtures import write_parquet
from transforms.core.dead_letters import reason_code
from transforms.models.model_info import fingerprint_model_dir

ERROR_PREFIX = 'beam-rerank encode: error:'
METADATA_KEY = b'beam_rerank.embeddings'


def _encode(*args) -> tuple[dict, str, str]:
  """Runs the job in this process; returns (report, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    report = encode.run([str(a) for a in args])
  return report, out.getvalue(), err.getvalue()


def _main(*args) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = encode.main([str(a) for a in args])
  return code, out.getvalue(), err.getvalue()


def _sha(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def _read(output_dir) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
  frame = pl.read_parquet(os.path.join(str(output_dir), 'part-*.parquet')).sort('id')
  matrix = np.asarray(frame['embedding'].to_numpy())
  return frame, dict(zip(frame['id'].to_list(), matrix))


def _dead_letters(output_dir) -> pl.DataFrame:
  return pl.read_parquet(
      os.path.join(str(output_dir), 'dead_letter', 'part-*.parquet'))


def _manifest(output_dir) -> dict:
  return json.loads((pathlib.Path(output_dir) / 'manifest.json').read_text())


def _files(output_dir) -> dict[str, bytes]:
  """Every part file and the manifest of an output, by relative path."""
  root = pathlib.Path(output_dir)
  paths = sorted(root.glob('part-*.parquet')) + sorted(
      root.glob('dead_letter/part-*.parquet')) + [root / 'manifest.json']
  return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def _assert_matches_direct(vectors: dict, texts: dict, direct, atol=1e-6):
  ids = sorted(texts)
  assert sorted(vectors) == ids
  got = np.stack([vectors[i] for i in ids]).astype(np.float32)
  want = np.asarray(direct, dtype=np.float32)
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)
  cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
  assert cosine.min() >= 0.9999


def _count_truncated(tokenizer, texts, max_seq_length, prompt=''):
  return sum(len(tokenizer(prompt + t)['input_ids']) > max_seq_length for t in texts)


# ============================================================ the main run

BAD_ROWS_A = [
    {'doc_id': None, 'text': 'orphan text without an id'},
    {'doc_id': '', 'text': 'a text with an empty id'},
    {'doc_id': 'bad-null', 'text': None},
    {'doc_id': 'dup-same', 'text': 'repeated text'},
    {'doc_id': 'dup-diff', 'text': 'first version'},
]
BAD_ROWS_B = [
    {'doc_id': 'bad-empty', 'text': ''},
    {'doc_id': 'bad-space', 'text': '   \n\t'},
    {'doc_id': 'dup-same', 'text': 'repeated text'},
    {'doc_id': 'dup-diff', 'text': 'вторая версия'},
]
EXPECTED_DEAD = sorted([
    (None, 'null_id'), ('', 'empty_id'), ('bad-null', 'null_text'),
    ('bad-empty', 'empty_text'), ('bad-space', 'empty_text'),
    ('dup-same', 'duplicate_id_same_text'),
    ('dup-diff', 'duplicate_id'), ('dup-diff', 'duplicate_id'),
], key=lambda t: (t[0] or '', t[1]))


@pytest.fixture(scope='module')
def main_corpus(tmp_path_factory, corpus_writer, sample_texts):
  """Two files: the sample texts plus every kind of bad row."""
  folder = tmp_path_factory.mktemp('main_corpus')
  ids = sorted(sample_texts)
  first = {k: sample_texts[k] for k in ids[:6]}
  second = {k: sample_texts[k] for k in ids[6:]}
  corpus_writer(folder / 'a.parquet', first, BAD_ROWS_A)
  corpus_writer(folder / 'b.parquet', second, BAD_ROWS_B)
  good = dict(sample_texts, **{'dup-same': 'repeated text'})
  return {'pattern': str(folder / '*.parquet'), 'good': good,
          'rows': len(sample_texts) + len(BAD_ROWS_A) + len(BAD_ROWS_B)}


@pytest.fixture(scope='module')
def main_args(main_corpus, tiny_model_dir):
  return ['--input', main_corpus['pattern'], '--model', tiny_model_dir,
          '--rows-per-shard', '5']


@pytest.fixture(scope='module')
def main_run(tmp_path_factory, main_args):
  out = tmp_path_factory.mktemp('main_run') / 'out'
  report, stdout, stderr = _encode(*main_args, '--output', out)
  return {'out': out, 'report': report, 'stdout': stdout, 'stderr': stderr}


def test_report_counts(main_run, main_corpus, tiny_model_dir, tokenizer_of,
                       tiny_max_seq_length):
  report = main_run['report']
  good = main_corpus['good']
  assert report['rows_in'] == main_corpus['rows'] == 21
  assert report['embeddings_written'] == len(good) == 13
  assert report['texts_encoded'] == 13
  assert report['embeddings_reused'] == 0
  assert report['previous_ids_dropped'] == 0
  assert report['dead_letters'] == len(EXPECTED_DEAD) == 8
  assert report['rows_in'] == report['embeddings_written'] + report['dead_letters']
  assert report['dead_letters_by_reason'] == {
      'duplicate_id': 2, 'duplicate_id_same_text': 1, 'empty_id': 1,
      'empty_text': 2, 'null_id': 1, 'null_text': 1}
  expected_truncated = _count_truncated(
      tokenizer_of(tiny_model_dir), good.values(), tiny_max_seq_length)
  assert report['texts_truncated'] == expected_truncated == 2
  assert report['batches'] >= 1
  assert 0.0 <= report['padding_fraction'] < 1.0
  assert report['output'] == str(main_run['out'])
  on_disk = json.loads((main_run['out'] / 'report.json').read_text())
  assert on_disk == report


def test_summary_is_printed(main_run):
  stdout = main_run['stdout']
  assert '== encode summary' in stdout
  assert 'embeddings written           13' in stdout
  assert 'truncated at max_seq_length  2' in stdout
  assert '[encode] 21 rows in 2 file(s)' in main_run['stderr']


def test_output_layout(main_run):
  out = main_run['out']
  assert sorted(p.name for p in out.iterdir()) == [
      'dead_letter', 'manifest.json', 'part-00000-of-00003.parquet',
      'part-00001-of-00003.parquet', 'part-00002-of-00003.parquet', 'report.json']
  assert sorted(p.name for p in (out / 'dead_letter').iterdir()) == [
      'part-00000-of-00002.parquet', 'part-00001-of-00002.parquet']


def test_shard_schema_and_metadata(main_run):
  manifest = _manifest(main_run['out'])
  for path in sorted(main_run['out'].glob('part-*.parquet')):
    schema = pq.read_schema(path)
    assert schema.names == ['id', 'embedding', 'text_sha256']
    assert schema.field('id').type == pa.string()
    assert schema.field('embedding').type == pa.list_(pa.float32(), 32)
    assert str(schema.field('embedding').type) == 'fixed_size_list<element: float>[32]'
    assert schema.field('text_sha256').type == pa.string()
    assert not any(schema.field(n).nullable for n in schema.names)
    settings = json.loads(schema.metadata[METADATA_KEY])
    assert settings == {k: v for k, v in manifest.items()
                        if k not in ('outputs', 'row_count')}


def test_manifest(main_run, main_corpus, tiny_model_dir):
  manifest = _manifest(main_run['out'])
  assert manifest['kind'] == 'embeddings'
  assert manifest['model'] == tiny_model_dir
  assert manifest['model_fingerprint'] == fingerprint_model_dir(tiny_model_dir)
  assert manifest['model_fingerprint'].startswith('sha256:')
  assert manifest['dim'] == 32
  assert manifest['normalized'] is True
  assert manifest['similarity'] == 'cosine'
  assert manifest['precision'] == 'float32'
  assert manifest['max_seq_length'] == 64
  assert manifest['prompt'] == ''
  assert manifest['row_count'] == 13
  assert manifest['source'] == {
      'input': main_corpus['pattern'], 'id_column': 'doc_id', 'text_column': 'text',
      'title_column': None, 'title_separator': '\n'}
  embeddings = manifest['outputs']['embeddings']
  assert embeddings['directory'] == '.'
  assert embeddings['rows'] == 13
  for entry in embeddings['files']:
    table = pq.read_table(main_run['out'] / entry['path'])
    assert table.num_rows == entry['rows']
  dead = manifest['outputs']['dead_letter']
  assert dead['directory'] == 'dead_letter'
  assert dead['rows'] == 8
  assert sum(f['rows'] for f in dead['files']) == 8


def test_embeddings_equal_direct_encode(main_run, main_corpus, tiny_model_dir,
                                        direct_encode):
  frame, vectors = _read(main_run['out'])
  good = main_corpus['good']
  ids = sorted(good)
  assert frame['id'].to_list() == ids
  assert frame['text_sha256'].to_list() == [_sha(good[i]) for i in ids]
  direct = direct_encode(tiny_model_dir, [good[i] for i in ids], normalize=True)
  _assert_matches_direct(vectors, good, direct)
  norms = np.linalg.norm(np.stack(list(vectors.values())), axis=1)
  np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_rows_sorted_within_shards(main_run):
  for path in sorted(main_run['out'].glob('part-*.parquet')):
    ids = pq.read_table(path).column('id').to_pylist()
    assert ids == sorted(ids)


def test_dead_letters(main_run):
  dead = _dead_letters(main_run['out'])
  assert dead.schema == pl.Schema({
      'stage': pl.String, 'record_id': pl.String, 'reason': pl.String,
      'payload': pl.String})
  assert set(dead['stage'].to_list()) == {'encode'}
  got = sorted(zip(dead['record_id'].to_list(),
                   [reason_code(r) for r in dead['reason'].to_list()]),
               key=lambda t: (t[0] or '', t[1]))
  assert got == EXPECTED_DEAD
  payloads = {(row['record_id'], reason_code(row['reason'])): json.loads(row['payload'])
              for row in dead.iter_rows(named=True)}
  assert payloads[(None, 'null_id')] == {'doc_id': None, 'text': 'orphan text without an id'}
  assert payloads[('bad-null', 'null_text')] == {'doc_id': 'bad-null', 'text': None}
  assert payloads[('bad-space', 'empty_text')] == {'doc_id': 'bad-space', 'text': '   \n\t'}
  assert payloads[('dup-same', 'duplicate_id_same_text')]['text'] == 'repeated text'
  dup_texts = sorted(json.loads(row['payload'])['text'] for row in dead.iter_rows(named=True)
                     if row['record_id'] == 'dup-diff')
  assert dup_texts == ['first version', 'вторая версия']


def test_no_staging_left(main_run):
  assert not (main_run['out'] / '.staging').exists()
  assert not list(main_run['out'].rglob('*.tmp'))


def test_two_runs_give_identical_bytes(main_run, main_args, tmp_path_factory):
  out = tmp_path_factory.mktemp('determinism') / 'out'
  _encode(*main_args, '--output', out)
  first, second = _files(main_run['out']), _files(out)
  assert list(first) == list(second)
  assert len(first) == 3 + 2 + 1
  for name in first:
    assert first[name] == second[name], name


def test_rerun_into_the_same_folder_replaces_it(main_args, tmp_path_factory, main_run):
  out = tmp_path_factory.mktemp('rerun') / 'out'
  shutil.copytree(main_run['out'], out)
  # A stale shard from an earlier run with another shard count.
  shutil.copy(out / 'part-00000-of-00003.parquet', out / 'part-00007-of-00009.parquet')
  report, _, _ = _encode(*main_args, '--output', out)
  assert report['embeddings_written'] == 13
  assert _files(out) == _files(main_run['out'])
  assert not (out / 'part-00007-of-00009.parquet').exists()


def test_multi_processing_gives_the_same_embeddings(main_run, main_args, tmp_path_factory):
  out = tmp_path_factory.mktemp('multi') / 'out'
  report, _, _ = _encode(
      *main_args, '--output', out,
      '--direct_running_mode', 'multi_processing', '--direct_num_workers', '2')
  _, expected = _read(main_run['out'])
  frame, vectors = _read(out)
  assert sorted(vectors) == sorted(expected)
  for key, vector in expected.items():
    np.testing.assert_allclose(vectors[key], vector, rtol=0, atol=1e-6)
  assert frame['text_sha256'].to_list() == _read(main_run['out'])[0]['text_sha256'].to_list()
  for key in ['rows_in', 'embeddings_written', 'texts_encoded', 'dead_letters',
              'dead_letters_by_reason', 'texts_truncated']:
    assert report[key] == main_run['report'][key], key
  assert _dead_letters(out).sort(['record_id', 'reason']).equals(
      _dead_letters(main_run['out']).sort(['record_id', 'reason']))


# ============================================================ option variants

@pytest.fixture(scope='module')
def clean_corpus(tmp_path_factory, corpus_writer, sample_texts):
  path = tmp_path_factory.mktemp('clean') / 'corpus.parquet'
  return corpus_writer(path, sample_texts)


@pytest.fixture(scope='module')
def float16_run(tmp_path_factory, clean_corpus, tiny_model_dir):
  out = tmp_path_factory.mktemp('float16') / 'out'
  report, _, _ = _encode('--input', clean_corpus, '--output', out,
                         '--model', tiny_model_dir, '--precision', 'float16')
  return {'out': out, 'report': report}


def test_float16_output(float16_run, sample_texts, tiny_model_dir, direct_encode):
  out = float16_run['out']
  schema = pq.read_schema(next(out.glob('part-*.parquet')))
  assert schema.field('embedding').type == pa.list_(pa.float16(), 32)
  assert str(schema.field('embedding').type) == 'fixed_size_list<element: halffloat>[32]'
  assert _manifest(out)['precision'] == 'float16'
  frame, vectors = _read(out)
  assert all(v.dtype == np.float16 for v in vectors.values())
  ids = sorted(sample_texts)
  direct = direct_encode(tiny_model_dir, [sample_texts[i] for i in ids])
  _assert_matches_direct(vectors, sample_texts, direct, atol=2e-3)
  # What float16 storage must give: the float32 vectors rounded to float16.
  got = np.stack([vectors[i] for i in ids]).astype(np.float32)
  assert np.abs(got - direct.astype(np.float16).astype(np.float32)).max() <= 1e-3


@pytest.fixture(scope='module')
def prompt_run(tmp_path_factory, clean_corpus, tiny_model_dir):
  out = tmp_path_factory.mktemp('prompt') / 'out'
  report, _, _ = _encode('--input', clean_corpus, '--output', out,
                         '--model', tiny_model_dir, '--prompt', 'query: ')
  return {'out': out, 'report': report}


def test_prompt_matches_direct_encode_with_prompt(
    prompt_run, sample_texts, tiny_model_dir, direct_encode):
  _, vectors = _read(prompt_run['out'])
  ids = sorted(sample_texts)
  direct = direct_encode(tiny_model_dir, [sample_texts[i] for i in ids], prompt='query: ')
  _assert_matches_direct(vectors, sample_texts, direct)
  assert _manifest(prompt_run['out'])['prompt'] == 'query: '


def test_prompt_changes_embeddings(prompt_run, float16_run, main_run, sample_texts):
  _, with_prompt = _read(prompt_run['out'])
  _, without = _read(main_run['out'])
  for key in sample_texts:
    assert np.abs(with_prompt[key] - without[key]).max() > 1e-3, key


def test_prompt_is_not_part_of_the_text_hash(prompt_run, sample_texts):
  frame, _ = _read(prompt_run['out'])
  assert dict(zip(frame['id'], frame['text_sha256'])) == {
      k: _sha(v) for k, v in sample_texts.items()}


def test_prompt_counts_towards_truncation(prompt_run, sample_texts, tiny_model_dir,
                                          tokenizer_of, tiny_max_seq_length):
  expected = _count_truncated(tokenizer_of(tiny_model_dir), sample_texts.values(),
                              tiny_max_seq_length, prompt='query: ')
  assert prompt_run['report']['texts_truncated'] == expected


@pytest.fixture(scope='module')
def short_unnormalized_run(tmp_path_factory, clean_corpus, tiny_model_dir):
  out = tmp_path_factory.mktemp('short') / 'out'
  report, _, _ = _encode('--input', clean_corpus, '--output', out,
                         '--model', tiny_model_dir, '--max-seq-length', '8',
                         '--no-normalize', '--max-tokens-per-batch', '16')
  return {'out': out, 'report': report}


def test_max_seq_length_truncates_like_the_model(
    short_unnormalized_run, sample_texts, tiny_model_dir, direct_encode, tokenizer_of):
  run = short_unnormalized_run
  expected = _count_truncated(tokenizer_of(tiny_model_dir), sample_texts.values(), 8)
  assert run['report']['texts_truncated'] == expected
  assert expected == sum(1 for t in sample_texts.values()
                         if len(tokenizer_of(tiny_model_dir)(t)['input_ids']) > 8)
  assert 3 <= expected < len(sample_texts)
  manifest = _manifest(run['out'])
  assert manifest['max_seq_length'] == 8
  assert manifest['normalized'] is False
  _, vectors = _read(run['out'])
  ids = sorted(sample_texts)
  direct = direct_encode(tiny_model_dir, [sample_texts[i] for i in ids],
                         normalize=False, max_seq_length=8)
  _assert_matches_direct(vectors, sample_texts, direct, atol=1e-5)
  norms = np.linalg.norm(np.stack([vectors[i] for i in ids]), axis=1)
  assert np.abs(norms - 1).max() > 0.1  # Really not normalized.
  # 12 texts of <= 8 tokens under a 16-token budget: at least 6 batches.
  assert run['report']['batches'] >= 6


@pytest.fixture(scope='module')
def title_run(tmp_path_factory, parquet_writer, tiny_model_dir):
  texts = {
      't1': ('Крыло', 'Подъёмная сила крыла при малых скоростях.'),
      't2': ('Wings', 'Lift at low speed.'),
      't3': (None, 'No title here.'),
      't4': ('   ', 'Blank title.'),
      't5': ('Title only', ''),
  }
  folder = tmp_path_factory.mktemp('title_corpus')
  parquet_writer(folder / 'c.parquet', {
      'doc_id': list(texts), 'title': [v[0] for v in texts.values()],
      'text': [v[1] for v in texts.values()]})
  out = tmp_path_factory.mktemp('title') / 'out'
  # A folder as --input: the Parquet files in it.
  report, _, _ = _encode('--input', folder, '--output', out, '--model', tiny_model_dir,
                         '--title-column', 'title', '--title-separator', '. ')
  joined = {
      't1': 'Крыло. Подъёмная сила крыла при малых скоростях.',
      't2': 'Wings. Lift at low speed.',
      't3': 'No title here.',
      't4': 'Blank title.',
  }
  return {'out': out, 'report': report, 'joined': joined, 'folder': folder}


def test_title_column_is_joined(title_run, tiny_model_dir, direct_encode):
  joined = title_run['joined']
  frame, vectors = _read(title_run['out'])
  assert dict(zip(frame['id'], frame['text_sha256'])) == {
      k: _sha(v) for k, v in joined.items()}
  ids = sorted(joined)
  _assert_matches_direct(
      vectors, joined, direct_encode(tiny_model_dir, [joined[i] for i in ids]))
  source = _manifest(title_run['out'])['source']
  assert source['input'] == os.path.join(str(title_run['folder']), '*.parquet')
  assert source['title_column'] == 'title'
  assert source['title_separator'] == '. '


def test_title_without_text_is_dead_lettered(title_run):
  report = title_run['report']
  assert (report['rows_in'], report['embeddings_written'], report['dead_letters']) == (5, 4, 1)
  dead = _dead_letters(title_run['out'])
  assert dead['record_id'].to_list() == ['t5']
  assert reason_code(dead['reason'][0]) == 'empty_text'
  assert json.loads(dead['payload'][0]) == {'doc_id': 't5', 'title': 'Title only', 'text': ''}


@pytest.fixture(scope='module')
def wide_run(tmp_path_factory, parquet_writer, tiny_1024_model_dir, sample_texts):
  ids = sorted(sample_texts)[:6]
  path = parquet_writer(
      tmp_path_factory.mktemp('wide') / 'c.parquet',
      {'doc_id': list(range(100, 106)), 'text': [sample_texts[i] for i in ids]},
      pa.schema([('doc_id', pa.int64()), ('text', pa.string())]))
  out = tmp_path_factory.mktemp('wide') / 'out'
  report, _, _ = _encode('--input', path, '--output', out, '--model', tiny_1024_model_dir)
  texts = {str(100 + n): sample_texts[i] for n, i in enumerate(ids)}
  return {'out': out, 'report': report, 'texts': texts}


def test_1024_dimensional_embeddings(wide_run, tiny_1024_model_dir, direct_encode):
  out, texts = wide_run['out'], wide_run['texts']
  schema = pq.read_schema(next(out.glob('part-*.parquet')))
  assert schema.field('embedding').type == pa.list_(pa.float32(), 1024)
  manifest = _manifest(out)
  assert (manifest['dim'], manifest['normalized'], manifest['row_count']) == (1024, True, 6)
  frame, vectors = _read(out)
  assert np.asarray(frame['embedding'].to_numpy()).shape == (6, 1024)
  ids = sorted(texts)
  _assert_matches_direct(
      vectors, texts, direct_encode(tiny_1024_model_dir, [texts[i] for i in ids]))


def test_integer_ids_become_strings(wide_run):
  frame, _ = _read(wide_run['out'])
  assert frame.schema['id'] == pl.String
  assert frame['id'].to_list() == [str(n) for n in range(100, 106)]


def test_all_rows_rejected(tmp_path, parquet_writer, tiny_model_dir):
  path = parquet_writer(tmp_path / 'c.parquet', {
      'doc_id': ['a', 'b', None], 'text': [None, ' ', 'x']})
  out = tmp_path / 'out'
  report, _, _ = _encode('--input', path, '--output', out, '--model', tiny_model_dir)
  assert (report['rows_in'], report['embeddings_written'], report['texts_encoded'],
          report['dead_letters']) == (3, 0, 0, 3)
  assert report['dead_letters_by_reason'] == {'empty_text': 1, 'null_id': 1, 'null_text': 1}
  parts = sorted(out.glob('part-*.parquet'))
  assert [p.name for p in parts] == ['part-00000-of-00001.parquet']
  table = pq.read_table(parts[0])
  assert table.num_rows == 0
  assert table.schema.field('embedding').type == pa.list_(pa.float32(), 32)
  assert _manifest(out)['row_count'] == 0


# ============================================================ incremental

V2_CHANGES = {'changed': 'd03', 'deleted': 'd05', 'added': 'd13'}


@pytest.fixture(scope='module')
def versions(sample_texts):
  v1 = dict(sample_texts)
  v2 = dict(sample_texts)
  v2['d03'] = 'Heat transfer in turbulent flow past a heated sphere.'
  del v2['d05']
  v2['d13'] = 'Новый документ о сверхзвуковом обтекании конуса.'
  return v1, v2


@pytest.fixture(scope='module')
def incremental(tmp_path_factory, corpus_writer, tiny_model_dir, versions):
  root = tmp_path_factory.mktemp('incremental')
  v1, v2 = versions
  v1_path = corpus_writer(root / 'v1.parquet', v1)
  v2_path = corpus_writer(root / 'v2.parquet', v2)
  model = ['--model', tiny_model_dir, '--rows-per-shard', '5']
  _encode('--input', v1_path, '--output', root / 'v1', *model)
  # A copy of v1 whose embeddings are negated: whatever comes out of a run
  # over it with the same values was carried over, not encoded again.
  tampered = root / 'v1_tampered'
  shutil.copytree(root / 'v1', tampered)
  for path in tampered.glob('part-*.parquet'):
    table = pq.read_table(path)
    column = table.column('embedding').combine_chunks()
    flipped = pa.FixedSizeListArray.from_arrays(
        pa.array(-column.flatten().to_numpy(zero_copy_only=False)), 32)
    pq.write_table(table.set_column(1, table.schema.field('embedding'), flipped), path)
  reused_report, _, _ = _encode('--input', v2_path, '--output', root / 'v2',
                                '--previous', tampered, *model)
  shutil.copytree(root / 'v1', root / 'in_place')
  in_place_report, _, _ = _encode('--input', v2_path, '--output', root / 'in_place',
                                  '--previous', root / 'in_place', *model)
  return {'root': root, 'v2_path': v2_path, 'model': model, 'tampered': tampered,
          'reused_report': reused_report, 'in_place_report': in_place_report}


def _check_incremental_report(report):
  assert report['rows_in'] == 12
  assert report['embeddings_reused'] == 10
  assert report['texts_encoded'] == 2
  assert report['previous_ids_dropped'] == 1
  assert report['embeddings_written'] == 12
  assert report['dead_letters'] == 0


def test_incremental_counts(incremental):
  _check_incremental_report(incremental['reused_report'])


def test_incremental_reuses_embeddings_byte_for_byte(incremental, versions):
  _, v2 = versions
  _, previous = _read(incremental['tampered'])
  frame, vectors = _read(incremental['root'] / 'v2')
  assert sorted(vectors) == sorted(v2)
  unchanged = set(v2) - {V2_CHANGES['changed'], V2_CHANGES['added']}
  assert len(unchanged) == 10
  for key in unchanged:
    assert vectors[key].tobytes() == previous[key].tobytes(), key
  assert dict(zip(frame['id'], frame['text_sha256'])) == {k: _sha(v) for k, v in v2.items()}


def test_incremental_encodes_new_and_changed_texts(incremental, versions, tiny_model_dir,
                                                   direct_encode):
  _, v2 = versions
  _, vectors = _read(incremental['root'] / 'v2')
  fresh = {k: v2[k] for k in (V2_CHANGES['changed'], V2_CHANGES['added'])}
  ids = sorted(fresh)
  _assert_matches_direct({k: vectors[k] for k in ids}, fresh,
                         direct_encode(tiny_model_dir, [fresh[i] for i in ids]))
  assert V2_CHANGES['deleted'] not in vectors


def test_incremental_previous_is_output(incremental, versions, tiny_model_dir, direct_encode):
  _check_incremental_report(incremental['in_place_report'])
  root = incremental['root']
  _, v1_vectors = _read(root / 'v1')
  _, vectors = _read(root / 'in_place')
  _, v2 = versions
  assert sorted(vectors) == sorted(v2)
  for key in set(v2) - {V2_CHANGES['changed'], V2_CHANGES['added']}:
    assert vectors[key].tobytes() == v1_vectors[key].tobytes(), key
  fresh = {k: v2[k] for k in (V2_CHANGES['changed'], V2_CHANGES['added'])}
  ids = sorted(fresh)
  _assert_matches_direct({k: vectors[k] for k in ids}, fresh,
                         direct_encode(tiny_model_dir, [fresh[i] for i in ids]))
  manifest = _manifest(root / 'in_place')
  listed = sorted(f['path'] for f in manifest['outputs']['embeddings']['files'])
  assert sorted(p.name for p in (root / 'in_place').glob('part-*.parquet')) == listed
  assert manifest['row_count'] == 12
  assert not (root / 'in_place' / '.staging').exists()


def test_incremental_previous_is_output_equals_a_fresh_run(incremental, tmp_path):
  # Reused v1 embeddings of unchanged texts are what a fresh v2 run computes.
  fresh = tmp_path / 'fresh'
  _encode('--input', incremental['v2_path'], '--output', fresh, *incremental['model'])
  _, a = _read(fresh)
  _, b = _read(incremental['root'] / 'in_place')
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6)


def test_incremental_with_other_settings_reencodes_everything(incremental, tmp_path):
  report, _, stderr = _encode(
      '--input', incremental['v2_path'], '--output', tmp_path / 'out',
      '--previous', incremental['root'] / 'v1', '--prompt', 'passage: ',
      *incremental['model'])
  assert report['embeddings_reused'] == 0
  assert report['texts_encoded'] == 12
  assert report['embeddings_written'] == 12
  assert report['previous_ids_dropped'] == 0
  # (A coverage warning about the tiny model on these texts may be another line.)
  warning = [line for line in stderr.splitlines() if 'warning: --previous' in line]
  assert warning == [
      "beam-rerank encode: warning: --previous embeddings were made with other "
      "settings (prompt: previous '', now 'passage: '); re-encoding every row"]


@pytest.mark.parametrize('damage', ['manifest', 'shard'])
def test_incremental_damaged_previous_in_place_reencodes_everything(
    incremental, tmp_path, damage):
  """The nightly case (--previous = --output) over a truncated manifest or
  shard: one warning, every row encoded, the fresh result."""
  out = tmp_path / 'nightly'
  shutil.copytree(incremental['root'] / 'v1', out)
  if damage == 'manifest':
    path = out / 'manifest.json'
  else:
    path = sorted(out.glob('part-*.parquet'))[0]
  path.write_bytes(path.read_bytes()[:60])
  report, _, stderr = _encode(
      '--input', incremental['v2_path'], '--output', out, '--previous', out,
      *incremental['model'])
  assert (report['embeddings_reused'], report['texts_encoded']) == (0, 12)
  warning = [line for line in stderr.splitlines() if 'warning: --previous' in line]
  assert len(warning) == 1 and 'cannot be read' in warning[0], warning
  fresh = tmp_path / 'fresh'
  _encode('--input', incremental['v2_path'], '--output', fresh, *incremental['model'])
  assert sorted(_read(fresh)[1]) == sorted(_read(out)[1])


def test_incremental_with_another_model_reencodes_everything(
    incremental, tmp_path, tiny_1024_model_dir):
  report, _, stderr = _encode(
      '--input', incremental['v2_path'], '--output', tmp_path / 'out',
      '--previous', incremental['root'] / 'v1', '--model', tiny_1024_model_dir)
  assert (report['embeddings_reused'], report['texts_encoded']) == (0, 12)
  assert 'model_fingerprint: previous' in stderr
  assert 'dim: previous 32, now 1024' in stderr


def test_incremental_float16(float16_run, versions, corpus_writer, tmp_path, tiny_model_dir):
  _, v2 = versions
  v2_path = corpus_writer(tmp_path / 'v2.parquet', v2)
  report, _, _ = _encode('--input', v2_path, '--output', tmp_path / 'out',
                         '--model', tiny_model_dir, '--precision', 'float16',
                         '--previous', float16_run['out'])
  assert (report['embeddings_reused'], report['texts_encoded'],
          report['previous_ids_dropped']) == (10, 2, 1)
  _, previous = _read(float16_run['out'])
  _, vectors = _read(tmp_path / 'out')
  for key in set(v2) - {V2_CHANGES['changed'], V2_CHANGES['added']}:
    assert vectors[key].dtype == np.float16
    assert vectors[key].tobytes() == previous[key].tobytes(), key


# ============================================================ bad input

def _check_user_error(code, stdout, stderr, output, expected_fragment):
  assert code == 2
  lines = stderr.splitlines()
  assert len(lines) == 1, stderr
  assert lines[0].startswith(ERROR_PREFIX), lines[0]
  assert expected_fragment in lines[0]
  assert stdout == ''
  assert not os.path.exists(output)


@pytest.fixture
def corpus_path(tmp_path, parquet_writer):
  return parquet_writer(tmp_path / 'corpus.parquet', {'doc_id': ['a'], 'text': ['x']})


def test_error_glob_matches_nothing(tmp_path, tiny_model_dir):
  pattern = str(tmp_path / 'nothing-*.parquet')
  result = _main('--input', pattern, '--output', tmp_path / 'out', '--model', tiny_model_dir)
  _check_user_error(*result, tmp_path / 'out', f'--input {pattern!r} matches no files')


def test_error_missing_file(tmp_path, tiny_model_dir):
  path = str(tmp_path / 'missing.parquet')
  result = _main('--input', path, '--output', tmp_path / 'out', '--model', tiny_model_dir)
  _check_user_error(*result, tmp_path / 'out', 'matches no files')


def test_error_missing_column(tmp_path, parquet_writer, tiny_model_dir):
  path = parquet_writer(tmp_path / 'c.parquet', {'doc_id': ['a'], 'body': ['x']})
  result = _main('--input', path, '--output', tmp_path / 'out', '--model', tiny_model_dir)
  _check_user_error(*result, tmp_path / 'out', f"{path} has no column 'text'")


def test_error_missing_title_column(corpus_path, tmp_path, tiny_model_dir):
  result = _main('--input', corpus_path, '--output', tmp_path / 'out',
                 '--model', tiny_model_dir, '--title-column', 'title')
  _check_user_error(*result, tmp_path / 'out', "has no column 'title'")


def test_error_renamed_id_column_missing(corpus_path, tmp_path, tiny_model_dir):
  result = _main('--input', corpus_path, '--output', tmp_path / 'out',
                 '--model', tiny_model_dir, '--id-column', 'query_id')
  _check_user_error(*result, tmp_path / 'out', "has no column 'query_id'")


def test_error_wrong_column_type(tmp_path, parquet_writer, tiny_model_dir):
  path = parquet_writer(tmp_path / 'c.parquet', {'doc_id': ['a'], 'text': [1]},
                        pa.schema([('doc_id', pa.string()), ('text', pa.int64())]))
  result = _main('--input', path, '--output', tmp_path / 'out', '--model', tiny_model_dir)
  _check_user_error(*result, tmp_path / 'out',
                    f"column 'text' in {path} is int64, expected a string column")


def test_error_unreadable_file(tmp_path, tiny_model_dir):
  path = tmp_path / 'broken.parquet'
  path.write_bytes(b'PAR1 but not really')
  result = _main('--input', path, '--output', tmp_path / 'out', '--model', tiny_model_dir)
  _check_user_error(*result, tmp_path / 'out', 'is not a readable Parquet file')


def test_error_unknown_option(corpus_path, tmp_path, tiny_model_dir):
  result = _main('--input', corpus_path, '--output', tmp_path / 'out',
                 '--model', tiny_model_dir, '--no-such-option', '3')
  _check_user_error(*result, tmp_path / 'out', 'unrecognized arguments: --no-such-option 3')


def test_error_output_is_a_file(corpus_path, tmp_path, tiny_model_dir):
  output = tmp_path / 'out.txt'
  output.write_text('mine')
  code, stdout, stderr = _main('--input', corpus_path, '--output', output,
                               '--model', tiny_model_dir)
  assert code == 2
  assert stderr.splitlines() == [
      f"{ERROR_PREFIX} --output {str(output)!r} is a file, not a folder"]
  assert output.read_text() == 'mine'


def test_error_previous_without_manifest(corpus_path, tmp_path, tiny_model_dir):
  (tmp_path / 'prev').mkdir()
  result = _main('--input', corpus_path, '--output', tmp_path / 'out',
                 '--model', tiny_model_dir, '--previous', tmp_path / 'prev')
  _check_user_error(*result, tmp_path / 'out', 'has no manifest.json')


def test_error_max_seq_length_beyond_the_model(corpus_path, tmp_path, tiny_model_dir):
  result = _main('--input', corpus_path, '--output', tmp_path / 'out',
                 '--model', tiny_model_dir, '--max-seq-length', '1000')
  _check_user_error(*result, tmp_path / 'out',
                    '--max-seq-length 1000 exceeds what the model can take (128 positions)')


def test_error_model_directory_missing(corpus_path, tmp_path):
  model = str(tmp_path / 'no-model')
  result = _main('--input', corpus_path, '--output', tmp_path / 'out', '--model', model)
  _check_user_error(*result, tmp_path / 'out', f'model directory {model!r} does not exist')


@pytest.mark.parametrize('args', [
    ['--precision', 'float64'],
    ['--max-batch-size', '0'],
    ['--rows-per-shard', 'many'],
])
def test_bad_option_values_exit_2(corpus_path, tmp_path, tiny_model_dir, args, capsys):
  with pytest.raises(SystemExit) as exit_info:
    encode.main(['--input', corpus_path, '--output', str(tmp_path / 'out'),
                 '--model', tiny_model_dir, *args])
  assert exit_info.value.code == 2
  assert 'beam-rerank encode: error:' in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()


def test_missing_required_option_exits_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    encode.main(['--output', str(tmp_path / 'out')])
  assert exit_info.value.code == 2
  assert 'the following arguments are required: --input' in capsys.readouterr().err


# ============================================================ the real model

MIXED_TEXTS = {
    f'm{i:02d}': text for i, text in enumerate([
        'The quick brown fox jumps over the lazy dog.',
        'Быстрая коричневая лиса прыгает через ленивую собаку.',
        'Boundary layer separation on swept wings.',
        'Отрыв пограничного слоя на стреловидном крыле.',
        'How do I reset my password?',
        'Как восстановить пароль от личного кабинета?',
        'Shock wave interaction with a turbulent boundary layer at Mach 3.',
        'Взаимодействие ударной волны с турбулентным пограничным слоем.',
        'A recipe for borscht with beets and cabbage.',
        'Рецепт борща со свёклой и капустой.',
        'Patents for biodegradable food packaging.',
        'ПАТЕНТ НА БИОРАЗЛАГАЕМУЮ УПАКОВКУ ',
        'Heat transfer to a blunt body in hypersonic flow.',
        'Теплообмен затупленного тела в гиперзвуковом потоке.',
        'Machine learning for ranking search results.',
        'Машинное обучение для ранжирования результатов поиска.',
        'What time zone is Alaska in?',
        'В каком часовом поясе находится Аляска?',
        'Flutter of thin plates in supersonic flow.',
        'Флаттер тонких пластин в сверхзвуковом потоке.',
        'Mixed text: крыло wing, давление pressure.',
        'x',
        '42',
        'Ёж',
        ' '.join(['A very long English text about aerodynamics.'] * 40),
        ' '.join(['Очень длинный русский текст об аэродинамике.'] * 40),
    ])
}


def test_real_minilm_end_to_end(tmp_path, corpus_writer, minilm_dir, direct_encode,
                                tokenizer_of):
  path = corpus_writer(tmp_path / 'c.parquet', MIXED_TEXTS)
  out = tmp_path / 'out'
  # No --model: the packaged all-MiniLM-L6-v2 is the default.
  report, _, _ = _encode('--input', path, '--output', out)
  manifest = _manifest(out)
  assert manifest['model'] == minilm_dir
  assert (manifest['dim'], manifest['max_seq_length'], manifest['normalized']) == (384, 256, True)
  assert report['embeddings_written'] == len(MIXED_TEXTS)
  assert report['texts_truncated'] == _count_truncated(
      tokenizer_of(minilm_dir), MIXED_TEXTS.values(), 256) == 2
  _, vectors = _read(out)
  ids = sorted(MIXED_TEXTS)
  direct = direct_encode(minilm_dir, [MIXED_TEXTS[i] for i in ids])
  _assert_matches_direct(vectors, MIXED_TEXTS, direct, atol=1e-5)


def _seed_texts(shared: pathlib.Path) -> dict[str, str]:
  texts = {}
  for path in sorted((shared / 'seed_samples').glob('*.jsonl')):
    for n, line in enumerate(path.read_text(encoding='utf-8').splitlines()):
      if not line.strip():
        continue
      row = json.loads(line)
      values = []
      for value in row.values():
        values.extend(value if isinstance(value, list) else [value])
      for m, value in enumerate(v for v in values if isinstance(v, str)):
        texts[f'{path.stem}-{n}-{m}'] = value
  return texts


def test_real_minilm_on_seed_samples(tmp_path, corpus_writer, shared_dir, minilm_dir,
                                     direct_encode, tokenizer_of):
  texts = _seed_texts(shared_dir)
  assert len(texts) >= 20
  path = corpus_writer(tmp_path / 'seed.parquet', texts)
  out = tmp_path / 'out'
  report, _, _ = _encode('--input', path, '--output', out, '--model', minilm_dir,
                         '--prompt', 'query: ')
  unique = len(set(texts.values()))
  assert report['rows_in'] == len(texts)
  assert report['texts_truncated'] == _count_truncated(
      tokenizer_of(minilm_dir), texts.values(), 256, prompt='query: ')
  assert report['texts_truncated'] > 0  # The long instruction-style texts.
  _, vectors = _read(out)
  assert len(vectors) == len(texts) and unique <= len(texts)
  ids = sorted(texts)
  direct = direct_encode(minilm_dir, [texts[i] for i in ids], prompt='query: ')
  _assert_matches_direct(vectors, texts, direct, atol=1e-5)


@pytest.mark.slow
def test_cranfield_corpus(tmp_path, shared_dir, minilm_dir, direct_encode):
  corpus = shared_dir / 'datasets' / 'cranfield' / 'corpus.parquet'
  if not corpus.exists():
    pytest.skip(f'{corpus} is absent')
  out = tmp_path / 'out'
  report, _, _ = _encode('--input', corpus, '--output', out, '--title-column', 'title',
                         '--rows-per-shard', '500')
  source = pl.read_parquet(corpus)
  assert report['rows_in'] == source.height
  assert report['rows_in'] == report['embeddings_written'] + report['dead_letters']
  assert sorted(p.name for p in out.glob('part-*.parquet')) == [
      f'part-0000{i}-of-00003.parquet' for i in range(3)]
  _, vectors = _read(out)
  sample = source.filter(pl.col('doc_id').is_in(sorted(vectors)[:: 50]))
  texts = {}
  for row in sample.iter_rows(named=True):
    title = row['title']
    texts[str(row['doc_id'])] = (
        f"{title}\n{row['text']}" if title and title.strip() else row['text'])
  ids = sorted(texts)
  direct = direct_encode(minilm_dir, [texts[i] for i in ids])
  _assert_matches_direct({k: vectors[k] for k in ids}, texts, direct, atol=1e-5)


# ============================================================ failures inside the graph

def test_failed_batches_become_dead_letters(tmp_path, corpus_writer, tiny_model_dir,
                                            monkeypatch, direct_encode):
  from transforms.models import bi_encoder
  real_run_inference = bi_encoder.SentenceTransformerHandler.run_inference

  def run_inference(self, batch, model, inference_args=None):
    if any('BOOM' in record['text'] for record in batch):
      raise RuntimeError('boom\nsecond line of the error')
    return real_run_inference(self, batch, model, inference_args)

  monkeypatch.setattr(bi_encoder.SentenceTransformerHandler, 'run_inference', run_inference)
  texts = {'a': 'fine text', 'b': 'BOOM goes this one', 'c': 'another fine text'}
  path = corpus_writer(tmp_path / 'c.parquet', texts)
  out = tmp_path / 'out'
  report, _, _ = _encode('--input', path, '--output', out, '--model', tiny_model_dir,
                         '--max-batch-size', '1')
  assert (report['rows_in'], report['embeddings_written'], report['dead_letters']) == (3, 2, 1)
  assert report['dead_letters_by_reason'] == {'encode_error': 1}
  dead = _dead_letters(out)
  assert dead.to_dicts() == [{
      'stage': 'encode/inference', 'record_id': 'b',
      'reason': 'encode_error: RuntimeError: boom',
      'payload': json.dumps({'id': 'b', 'text': 'BOOM goes this one'}, sort_keys=True)}]
  _, vectors = _read(out)
  fine = {k: texts[k] for k in ('a', 'c')}
  _assert_matches_direct(vectors, fine, direct_encode(tiny_model_dir, [fine['a'], fine['c']]))


class _CustomError(Exception):
  pass


def _beam_failure(error: BaseException):
  """What ``with_exception_handling`` emits for an exception: (type, repr, trace)."""
  import traceback
  try:
    raise error
  except BaseException as raised:  # pylint: disable=broad-except
    return (type(raised), repr(raised), traceback.format_exception(raised))


@pytest.mark.parametrize('error, expected', [
    (RuntimeError('boom'), 'encode_error: RuntimeError: boom'),
    (_beam_failure(RuntimeError('boom\nmore')), 'encode_error: RuntimeError: boom'),
    (_beam_failure(ValueError()), 'encode_error: ValueError'),
    (_beam_failure(_CustomError('custom: with colon')),
     'encode_error: _CustomError: custom: with colon'),
])
def test_failed_batch_reasons(error, expected):
  from transforms.models.inference import _failed_batch_to_dead_letters
  batch = [{'id': 'a', 'text': 'x', 'text_sha256': 'h'}, {'id': 'b', 'text': 'y'}]
  dead = list(_failed_batch_to_dead_letters(
      (batch, error), 'encode/inference', 'encode_error', lambda r: r.get('id'),
      lambda r: {'id': r.get('id'), 'text': r.get('text')}))
  assert [d['record_id'] for d in dead] == ['a', 'b']
  assert {d['reason'] for d in dead} == {expected}
  assert {d['stage'] for d in dead} == {'encode/inference'}
  assert json.loads(dead[0]['payload']) == {'id': 'a', 'text': 'x'}


@pytest.mark.parametrize('precision, value_type', [
    ('float32', pa.float32()), ('float16', pa.float16())])
def test_embeddings_to_table(precision, value_type):
  from transforms.graphs.encode import embedding_schema, embeddings_to_table
  schema = embedding_schema(3, precision, {'dim': 3})
  assert json.loads(schema.metadata[METADATA_KEY]) == {'dim': 3}
  rows = [{'id': 'b', 'embedding': np.array([1.5, -2.0, 0.25], np.float32),
           'text_sha256': 'hb'},
          {'id': 'a', 'embedding': [0.0, 1.0, 2.0], 'text_sha256': 'ha'}]
  table = embeddings_to_table(rows, schema)
  assert table.schema.equals(schema, check_metadata=True)
  assert table.column('embedding').type == pa.list_(value_type, 3)
  assert table.to_pydict() == {
      'id': ['b', 'a'], 'embedding': [[1.5, -2.0, 0.25], [0.0, 1.0, 2.0]],
      'text_sha256': ['hb', 'ha']}
  empty = embeddings_to_table([], schema)
  assert empty.num_rows == 0 and empty.schema.equals(schema, check_metadata=True)


# ------------------------------------------------ --previous reads the files its manifest lists

def _run(function, argv):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    result = function([str(a) for a in argv])
  return result, err.getvalue()


def test_encode_previous_skips_an_unlisted_shard(
    tmp_path, corpus_writer, sample_texts, tiny_model_dir):
  model = ['--model', tiny_model_dir]
  v1 = corpus_writer(tmp_path / 'v1.parquet', sample_texts)
  _run(encode.run, ['--input', v1, '--output', tmp_path / 'v1', *model])
  # An unlisted shard that, if read, would make the new text "reused" with 7s.
  new_text = 'A new passage about supersonic flow.'
  listed = sorted((tmp_path / 'v1').glob('part-*.parquet'))
  schema = pq.read_schema(listed[0])
  stale = pa.Table.from_arrays([
      pa.array(['new'], pa.string()),
      pa.FixedSizeListArray.from_arrays(pa.array(np.full(32, 7.0, np.float32)), 32),
      pa.array([hashlib.sha256(new_text.encode('utf-8')).hexdigest()], pa.string()),
  ], schema=schema)
  pq.write_table(stale, tmp_path / 'v1' / 'part-00099-of-00100.parquet')
  v2 = corpus_writer(tmp_path / 'v2.parquet', {**sample_texts, 'new': new_text})
  report, _ = _run(encode.run, [
      '--input', v2, '--output', tmp_path / 'v2', '--previous', tmp_path / 'v1', *model])
  assert report['embeddings_reused'] == len(sample_texts)
  assert report['texts_encoded'] == 1
  table = pa.concat_tables(
      pq.read_table(p) for p in sorted((tmp_path / 'v2').glob('part-*.parquet')))
  embedding = dict(zip(table.column('id').to_pylist(),
                       table.column('embedding').to_pylist()))['new']
  assert not np.allclose(embedding, 7.0)

  # A listed file that is missing: the previous output cannot be read, so it
  # is not used (one warning naming the file) and every row is encoded.
  listed[0].unlink()
  code, err = _run(encode.main, [
      '--input', v2, '--output', tmp_path / 'v3', '--previous', tmp_path / 'v1', *model])
  assert code == 0
  # (The tiny model's coverage warning about these texts is another line.)
  lines = [line for line in err.strip().splitlines() if 'warning: --previous' in line]
  assert len(lines) == 1 and 'cannot be read' in lines[0] and 'missing' in lines[0]
  assert str(listed[0]) in lines[0]


def test_the_report_says_how_the_model_covers_the_texts(tmp_path, tiny_model_dir):
  """The tiny model has all-MiniLM-L6-v2's English vocabulary: Russian words cost
  it many tokens each (one warning line, figures in report.json), English ones
  do not (no warning)."""
  russian = ['Столица Нормандии находится в городе Руан на берегу реки Сены.',
             'Норманны приняли христианство и язык франков в десятом веке.']
  english = ['The capital of Normandy is the city of Rouen on the river Seine.',
             'The Normans adopted Christianity and the language of the Franks.']
  figures = {}
  for name, texts in (('ru', russian), ('en', english)):
    path = write_parquet(tmp_path / f'{name}.parquet', {'doc_id': ['a', 'b'], 'text': texts})
    report, stdout, stderr = _encode(
        '--input', path, '--output', tmp_path / name, '--model', tiny_model_dir)
    figures[name] = report['coverage']['bi-encoder']
    assert figures[name]['inputs'] == 2 and figures[name]['max_length'] == 64
    assert 'bi-encoder coverage' in stdout
    warnings = [line for line in stderr.splitlines() if 'does not know the language' in line]
    assert len(warnings) == (name == 'ru'), stderr
  assert figures['ru']['tokens_per_word'] > 2.5 > 1.5 > figures['en']['tokens_per_word']
  assert figures['ru']['warning'] and figures['en']['warning'] is None
