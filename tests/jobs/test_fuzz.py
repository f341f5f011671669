"""Property/fuzz tests: hostile rows mixed with good ones through the encode,
rerank (supplied candidates) and mine jobs, each run once on one big table.

Rows are generated with hypothesis (``collect``: many small derandomized
examples gathered into one table, no shrinking), plus a few fixed 200k-character
texts. Each job runs once; an oracle written from the documented rules says
what must become of every row, and the test checks that:

- the job does not crash;
- every bad row is in ``dead_letter/`` with its reason code (and its payload);
- every good row is in the output unchanged;
- the counts reconcile: rows in = rows out + dead letters (+ documented merges).

Hostile rows per job (printed with ``-s``; asserted as minimums):
encode >= 1,200 input rows; rerank >= 1,200 candidate rows (+ hostile queries
and corpus rows); mine >= 1,200 candidate rows + >= 300 qrels (+ hostile queries
and corpus rows).

Lone surrogates (and any invalid UTF-8) could not be put in a Parquet string
column here: Arrow refuses to build such a column, and bytes that are not UTF-8
written as binary are refused when read as strings (``test_invalid_utf8_...``).
A file from another writer with a UTF-8-annotated column holding invalid bytes
was not produced, so how the read of one fails is not tested.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import pathlib
import random
from collections import Counter, defaultdict
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipelines import encode as encode_job
from pipelines import mine as mine_job
from pipelines import rerank as rerank_job
from tests.fixtures import CORPUS, QUERIES, read_rows, write_parquet

FLOAT32_MAX = float(np.finfo(np.float32).max)

# Every character here is whitespace to ``str.strip`` (the product's rule).
WHITESPACE = (' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002'
              '\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029'
              '\u202f\u205f\u3000')
assert all(c.isspace() for c in WHITESPACE)
UNUSUAL = [
    '\u202eRTL override', '\u200fמימין לשמאל', 'مرحبا بالعالم', 'שלום עולם',
    'e\u0301\u0302\u0303\u0304\u0305', 'Z\u0351\u0352\u0353\u0354\u0355\u0356' * 5,
    '👩\u200d👩\u200d👧\u200d👦', '🇺🇦🇷🇺', '\x00', 'a\x00b', '\ufeffBOM', '\uffff',
    '\U0010ffff', '\ue000private', '\u200b', '\u2060', 'ﷺ', '𒐫', '\u0000\u0000',
    'Ёлка\u0308', '\u0301', '😀' * 30, 'तकनीकी', '中文文本', '\x7f\x80\x9f',
]
GOOD_TEXTS = list(CORPUS.values())[:12] + list(QUERIES.values())
# Built, not drawn: 200k characters each (tokenized with truncation).
HUGE_TEXTS = [
    ('shock wave pressure ' * 10_000)[:200_000],
    ('Длинный текст о крыле ' * 10_000)[:200_000],
    '😀' * 200_000,
    ('a\u0301' * 100_000),
    ('x\x00' * 100_000),
    ('مرحبا ' * 40_000)[:200_000],
]


def collect(strategy, examples: int) -> list:
  """Values of ``strategy`` from ``examples`` derandomized hypothesis examples
  (no shrinking, no database), concatenated; ``strategy`` draws lists."""
  out: list = []

  @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
            phases=[Phase.generate], suppress_health_check=list(HealthCheck))
  @given(strategy)
  def gather(values):
    out.extend(values)

  gather()
  return out


def texts_strategy():
  """Hostile (and a few good) texts: null, empty, whitespace, control
  characters, unusual unicode, anything hypothesis draws."""
  return st.one_of(
      st.none(),
      st.just(''),
      st.text(alphabet=WHITESPACE, min_size=1, max_size=12),
      st.text(alphabet=st.characters(categories=['Cc']), min_size=1, max_size=12),
      st.lists(st.sampled_from(UNUSUAL), min_size=1, max_size=4).map(''.join),
      st.text(alphabet=st.characters(categories=['Mn', 'Me', 'Cf', 'So', 'Co', 'Zs']),
              min_size=1, max_size=12),
      st.text(max_size=40),
      st.sampled_from(GOOD_TEXTS),
  )


def ids_strategy(prefix: str):
  """Hostile ids: null, empty, whitespace, colliding, unicode, tab inside."""
  return st.one_of(
      st.none(),
      st.just(''),
      st.text(alphabet=WHITESPACE, min_size=1, max_size=4),
      st.integers(0, 14).map(lambda i: f'{prefix}dup{i}'),
      st.text(min_size=1, max_size=8).map(lambda s: f'{prefix}{s}'),
      st.sampled_from([f'{prefix}\ttab', f'{prefix}\x00nul', f'{prefix}😀', '\u202e' + prefix]),
  )


def text_reason(record_id: Any, text: Any) -> Optional[str]:
  """The validation reason code of a text row (``transforms/texts.py`` rules)."""
  if record_id is None:
    return 'null_id'
  if isinstance(record_id, str) and not record_id.strip():
    return 'empty_id'
  if text is None:
    return 'null_text'
  if not text.strip():
    return 'empty_text'
  return None


def expected_texts(rows: list[tuple[Any, Any]]) -> tuple[dict[str, str], list[tuple]]:
  """(id -> text kept, [(record_id, reason code)] dead letters) of text rows."""
  dead, valid = [], defaultdict(list)
  for record_id, text in rows:
    reason = text_reason(record_id, text)
    if reason:
      dead.append((None if record_id is None else str(record_id), reason))
    else:
      valid[str(record_id)].append(text)
  kept = {}
  for record_id, texts in valid.items():
    if len(texts) == 1:
      kept[record_id] = texts[0]
    elif len(set(texts)) == 1:
      kept[record_id] = texts[0]
      dead += [(record_id, 'duplicate_id_same_text')] * (len(texts) - 1)
    else:
      dead += [(record_id, 'duplicate_id')] * len(texts)
  return kept, dead


def sha256(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def write_texts(path: pathlib.Path, id_column: str, rows: list[tuple]) -> str:
  """An id column and a ``text`` column (strings) from ``(id, text)`` rows."""
  return write_parquet(
      path, {id_column: [r[0] for r in rows], 'text': [r[1] for r in rows]})


def quiet(fn: Callable, argv: list[str]):
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    result = fn([str(a) for a in argv])
  return result, out.getvalue()


def text_rows(prefix: str, examples: int, good: int) -> tuple[list[tuple], int]:
  """Hostile (id, text) rows from hypothesis, huge texts and good unique rows,
  shuffled together; returns (rows, how many are hostile)."""
  hostile = collect(st.lists(st.tuples(ids_strategy(prefix), texts_strategy()),
                             min_size=20, max_size=20), examples)
  hostile += [(f'{prefix}huge{i}', text) for i, text in enumerate(HUGE_TEXTS)]
  hostile.append((f'{prefix}huge0', HUGE_TEXTS[0]))  # Duplicate id, same text.
  goods = [(f'{prefix}good{i}', GOOD_TEXTS[i % len(GOOD_TEXTS)] + f' #{i}')
           for i in range(good)]
  rows = hostile + goods
  random.Random(0).shuffle(rows)  # Bad and good rows share bundles.
  return rows, len(hostile)


def dead_pairs(dead: list[dict], stages: Optional[set] = None) -> Counter:
  return Counter((d['record_id'], d['reason'].split(':', 1)[0]) for d in dead
                 if stages is None or d['stage'] in stages)


# ------------------------------------------------------------------- encode


def test_encode_fuzz(tmp_path, tiny_model_dir, direct_encode):
  rows, hostile = text_rows('d', examples=62, good=200)
  print(f'\n[fuzz] encode: {len(rows)} rows, {hostile} hostile')
  assert hostile >= 1200
  source = write_texts(tmp_path / 'corpus.parquet', 'doc_id', rows)
  out = tmp_path / 'emb'
  report, _ = quiet(encode_job.run, ['--input', source, '--output', out,
                                     '--model', tiny_model_dir])

  kept, dead_expected = expected_texts(rows)
  output = read_rows(out)
  assert {r['id']: r['text_sha256'] for r in output} == {
      k: sha256(v) for k, v in kept.items()}
  assert len(output) == len(kept)  # No id twice.
  matrix = np.stack([np.asarray(r['embedding'], np.float32) for r in output])
  assert np.isfinite(matrix).all()
  # The embeddings of hostile good rows (huge, unusual unicode) are what the
  # model gives for the same text outside Beam.
  by_id = {r['id']: np.asarray(r['embedding'], np.float32) for r in output}
  sample = sorted(i for i in kept if 'huge' in i)[:6] + sorted(
      i for i in kept if 'good' not in i and 'huge' not in i)[:40]
  want = direct_encode(tiny_model_dir, [kept[i] for i in sample])
  np.testing.assert_allclose(np.stack([by_id[i] for i in sample]), want, atol=1e-5)

  dead = read_rows(out / 'dead_letter')
  assert dead_pairs(dead) == Counter(dead_expected)
  for letter in dead:  # The payload keeps the row.
    payload = json.loads(letter['payload'])
    assert payload.get('doc_id', payload.get('id')) == letter['record_id']
    assert 'text' in payload
  assert report['rows_in'] == len(rows)
  assert report['embeddings_written'] + report['dead_letters'] == len(rows)
  assert report['dead_letters'] == len(dead_expected)


def test_invalid_utf8_cannot_reach_a_job(tmp_path):
  """A lone surrogate cannot be put in an Arrow string column, and invalid
  UTF-8 bytes written as a Parquet string column are refused on read."""
  with pytest.raises((pa.ArrowInvalid, UnicodeEncodeError)):
    pa.array(['ok', 'lone \ud800 surrogate'], pa.string())
  with pytest.raises(pa.ArrowInvalid):
    pa.array([b'\xff\xfe bad'], pa.binary()).cast(pa.string())
  # Bytes that are not UTF-8 in a column whose Parquet type says UTF-8.
  binary = pa.table({'doc_id': pa.array([b'd1'], pa.binary()),
                     'text': pa.array([b'\xff\xfe bad'], pa.binary())})
  path = tmp_path / 'bad.parquet'
  pq.write_table(binary, str(path))
  raw = path.read_bytes()
  assert b'\xff\xfe bad' in raw
  schema = pa.schema([('doc_id', pa.string()), ('text', pa.string())])
  with pytest.raises(pa.ArrowInvalid):
    pq.read_table(str(path), schema=schema)


# ------------------------------------------------------------------- rerank

CANDIDATES_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('doc_id', pa.string()), ('score', pa.float64())])
SPECIAL_SCORES = [0.0, -0.0, 1e308, -1e308, 5e-324, FLOAT32_MAX, -FLOAT32_MAX, 3.5e38,
                  1e-45, 2.0 ** 64]


def scores_strategy():
  return st.one_of(
      st.none(), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
      st.sampled_from(SPECIAL_SCORES),
      st.floats(allow_nan=False, allow_infinity=False),
      st.floats(-10, 10))


def pair_ids(query_ids: list, doc_ids: list):
  """Ids that exist (good or dead-lettered), and hostile/unknown ones."""
  return st.tuples(
      st.one_of(st.sampled_from(query_ids), st.sampled_from(query_ids), ids_strategy('q')),
      st.one_of(st.sampled_from(doc_ids), st.sampled_from(doc_ids), ids_strategy('d')))


def score_reason(score: Any) -> Optional[str]:
  if score is not None and (not math.isfinite(score) or abs(score) > FLOAT32_MAX):
    return 'bad_score'
  return None


def id_reason(value: Any, code: str) -> Optional[str]:
  return code if value is None or str(value).strip() == '' else None


def candidate_record_id(query_id, doc_id) -> Optional[str]:
  return None if query_id is None else f'{query_id}\t{doc_id}'


def f32(value):
  return None if value is None else float(np.float32(value))


def test_rerank_supplied_candidates_fuzz(tmp_path, tiny_cross_encoder_dir):
  queries, hostile_queries = text_rows('q', examples=6, good=30)
  corpus, hostile_docs = text_rows('d', examples=12, good=80)
  query_ids = [q for q, _ in queries]
  doc_ids = [d for d, _ in corpus]
  hostile = collect(st.lists(st.tuples(pair_ids(query_ids, doc_ids), scores_strategy()).map(
      lambda t: (*t[0], t[1])), min_size=25, max_size=25), 50)
  kept_queries, _ = expected_texts(queries)
  kept_docs, _ = expected_texts(corpus)
  good_rng = random.Random(1)
  good = [(q, d, good_rng.uniform(-5, 5)) for q, d in zip(
      good_rng.choices(sorted(kept_queries), k=300), good_rng.choices(sorted(kept_docs), k=300))]
  rows = hostile + good
  random.Random(2).shuffle(rows)
  print(f'\n[fuzz] rerank: {len(rows)} candidate rows, {len(hostile)} hostile; '
        f'{hostile_queries} hostile query rows, {hostile_docs} hostile corpus rows')
  assert len(hostile) >= 1200
  root = tmp_path / 'in'
  root.mkdir()
  pq.write_table(pa.Table.from_pydict({
      'query_id': [r[0] for r in rows], 'doc_id': [r[1] for r in rows],
      'score': [r[2] for r in rows]}, schema=CANDIDATES_SCHEMA), str(root / 'cand.parquet'))
  out = tmp_path / 'ranked'
  report, _ = quiet(rerank_job.run, [
      '--queries', write_texts(root / 'q.parquet', 'query_id', queries),
      '--corpus', write_texts(root / 'c.parquet', 'doc_id', corpus),
      '--candidates', root / 'cand.parquet', '--cross-encoder', tiny_cross_encoder_dir,
      '--output', out, '--top-n', '3'])

  # The oracle: validation, then one copy per pair (best score), then the joins.
  dead, best = Counter(), {}
  for query_id, doc_id, score in rows:
    reason = (id_reason(query_id, 'null_query_id') or id_reason(doc_id, 'null_doc_id')
              or score_reason(score))
    if reason:
      dead[(candidate_record_id(query_id, doc_id), reason)] += 1
      continue
    key = (str(query_id), str(doc_id))
    if key in best:
      dead[(f'{key[0]}\t{key[1]}', 'duplicate_pair')] += 1
      if (score if score is not None else -math.inf) > (
          best[key] if best[key] is not None else -math.inf):
        best[key] = score
    else:
      best[key] = score
  scored = {}
  for (query_id, doc_id), score in best.items():
    if doc_id not in kept_docs:
      dead[(f'{query_id}\t{doc_id}', 'unknown_doc_id')] += 1
    elif query_id not in kept_queries:
      dead[(f'{query_id}\t{doc_id}', 'unknown_query_id')] += 1
    else:
      scored[(query_id, doc_id)] = score

  candidates = read_rows(out / 'candidates')
  got = {(r['query_id'], r['doc_id']): r for r in candidates}
  assert len(got) == len(candidates) == len(scored)
  assert {k: r['supplied_score'] for k, r in got.items()} == {
      k: f32(v) for k, v in scored.items()}
  assert all(math.isfinite(r['score']) for r in candidates)
  assert all((r['retrieval_rank'] is None) == (r['retrieval_score'] is None)
             for r in candidates)
  per_query = Counter(q for q, _ in scored)
  ranked = read_rows(out)
  assert Counter(r['query_id'] for r in ranked) == {q: min(3, n) for q, n in per_query.items()}
  assert all(got[(r['query_id'], r['doc_id'])]['score'] == r['score'] for r in ranked)

  dead_letters = read_rows(out / 'dead_letter')
  got_dead = dead_pairs(dead_letters, {'rerank/candidates', 'rerank/join', 'rerank/score'})
  assert (sorted((got_dead - dead).items()), sorted((dead - got_dead).items())) == ([], [])
  assert report['candidates_in'] == len(rows)
  assert report['pairs_scored'] == len(scored)
  assert report['candidate_dead_letters'] == sum(dead.values())
  assert report['reconciles'] is True
  assert report['pairs_scored'] + report['candidate_dead_letters'] == len(rows)


# ------------------------------------------------------------------- mine

MINE_CANDIDATES_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('doc_id', pa.string()), ('score', pa.float64()),
    ('retrieval_rank', pa.int64())])
QRELS_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('doc_id', pa.string()), ('relevance', pa.int32())])


def retrieval_order(candidate: tuple) -> tuple:
  _, doc_id, score, rank = candidate
  return (math.inf if rank is None else rank, math.inf if score is None else -score, doc_id)


def test_mine_fuzz(tmp_path):
  queries, hostile_queries = text_rows('q', examples=6, good=40)
  corpus, hostile_docs = text_rows('d', examples=12, good=80)
  query_ids = [q for q, _ in queries]
  doc_ids = [d for d, _ in corpus]
  ranks = st.one_of(st.none(), st.integers(-5, 50), st.integers(-2 ** 63, 2 ** 63 - 1))
  hostile = collect(st.lists(st.tuples(pair_ids(query_ids, doc_ids), scores_strategy(), ranks).map(
      lambda t: (*t[0], t[1], t[2])), min_size=25, max_size=25), 50)
  hostile_qrels = collect(st.lists(st.tuples(pair_ids(query_ids, doc_ids), st.one_of(
      st.none(), st.integers(-3, 3), st.sampled_from([2 ** 31 - 1, -2 ** 31]))).map(
          lambda t: (*t[0], t[1])), min_size=25, max_size=25), 13)
  kept_queries, dead_queries = expected_texts(queries)
  kept_docs, dead_docs = expected_texts(corpus)
  rng = random.Random(3)
  good_queries = sorted(kept_queries)
  good = [(q, d, rng.uniform(-5, 5), rng.randint(1, 100)) for q, d in zip(
      rng.choices(good_queries, k=300), rng.choices(sorted(kept_docs), k=300))]
  good_qrels = [(q, rng.choice(sorted(kept_docs)), 1) for q in good_queries[::2]]
  rows, qrels = hostile + good, hostile_qrels + good_qrels
  random.Random(4).shuffle(rows)
  random.Random(5).shuffle(qrels)
  print(f'\n[fuzz] mine: {len(rows)} candidate rows, {len(hostile)} hostile; '
        f'{len(qrels)} qrels, {len(hostile_qrels)} hostile; {hostile_queries} hostile '
        f'query rows, {hostile_docs} hostile corpus rows')
  assert len(hostile) >= 1200 and len(hostile_qrels) >= 300
  root = tmp_path / 'in'
  root.mkdir()
  pq.write_table(pa.Table.from_pylist([dict(zip(MINE_CANDIDATES_SCHEMA.names, r)) for r in rows],
                                      schema=MINE_CANDIDATES_SCHEMA), str(root / 'cand.parquet'))
  pq.write_table(pa.Table.from_pylist([dict(zip(QRELS_SCHEMA.names, r)) for r in qrels],
                                      schema=QRELS_SCHEMA), str(root / 'qrels.parquet'))
  out = tmp_path / 'pairs'
  report, _ = quiet(mine_job.run, [
      '--candidates', root / 'cand.parquet', '--qrels', root / 'qrels.parquet',
      '--queries', write_texts(root / 'q.parquet', 'query_id', queries),
      '--corpus', write_texts(root / 'c.parquet', 'doc_id', corpus),
      '--output', out, '--format', 'labeled-pair,distill', '--num-negatives', '100000'])

  # The oracle: row checks, unknown docs, unknown queries (one letter per
  # query), one copy per pair (first in retrieval order), then labels.
  dead = Counter()
  known = defaultdict(list)
  for query_id, doc_id, score, rank in rows:
    reason = (id_reason(query_id, 'null_query_id') or id_reason(doc_id, 'null_doc_id')
              or score_reason(score))
    if reason:
      dead[(candidate_record_id(query_id, doc_id), reason)] += 1
    elif str(doc_id) not in kept_docs:
      dead[(f'{query_id}\t{doc_id}', 'unknown_doc_id')] += 1
    else:
      known[str(query_id)].append((str(query_id), str(doc_id), score, rank))
  candidates = {}
  for query_id, group in known.items():
    if query_id not in kept_queries:
      dead[(query_id, 'unknown_query_id')] += 1
      continue
    candidates[query_id] = {}
    for _, doc_id, score, _ in sorted(group, key=retrieval_order):
      if doc_id in candidates[query_id]:
        dead[(f'{query_id}\t{doc_id}', 'duplicate_pair')] += 1
      else:
        candidates[query_id][doc_id] = score
  positives = defaultdict(set)
  for query_id, doc_id, relevance in qrels:
    reason = (id_reason(query_id, 'null_query_id') or id_reason(doc_id, 'null_doc_id')
              or ('null_relevance' if relevance is None else None))
    if reason:
      dead[(candidate_record_id(query_id, doc_id), reason)] += 1
    elif relevance >= 1:
      positives[str(query_id)].add(str(doc_id))
  labeled, distill = Counter(), Counter()
  for query_id, docs in candidates.items():
    for doc_id in positives.get(query_id, ()):
      if doc_id not in kept_docs:
        dead[(f'{query_id}\t{doc_id}', 'unknown_doc_id')] += 1
        continue
      labeled[(query_id, doc_id, kept_queries[query_id], kept_docs[doc_id], 1.0)] += 1
      if docs.get(doc_id) is not None:
        distill[(query_id, doc_id, kept_queries[query_id], kept_docs[doc_id],
                 f32(docs[doc_id]))] += 1
    if not positives.get(query_id):
      continue
    for doc_id, score in docs.items():
      if doc_id in positives[query_id]:
        continue
      if kept_docs[doc_id] == kept_queries[query_id]:
        continue  # The query's own text is never a negative.
      labeled[(query_id, doc_id, kept_queries[query_id], kept_docs[doc_id], 0.0)] += 1
      if score is not None:
        distill[(query_id, doc_id, kept_queries[query_id], kept_docs[doc_id], f32(score))] += 1

  def joined(fmt, columns):
    texts, ids = read_rows(out / fmt / 'train'), read_rows(out / fmt / 'train-ids')
    assert len(texts) == len(ids)
    return Counter((i['query_id'], i['doc_id'], *(t[c] for c in columns))
                   for t, i in zip(texts, ids))

  print(f'[fuzz] mine: {sum(labeled.values())} labeled pairs, {sum(dead.values())} '
        f'candidate/qrel dead letters expected: {dict(Counter(r for _, r in dead.elements()))}')
  assert joined('labeled-pair', ('sentence_0', 'sentence_1', 'label')) == labeled
  assert joined('distill', ('query', 'passage', 'score')) == distill
  dead_letters = read_rows(out / 'dead_letter')
  got_dead = dead_pairs(dead_letters, {'mine/candidates', 'mine/join', 'mine/qrels'})
  assert (sorted((got_dead - dead).items()), sorted((dead - got_dead).items())) == ([], [])
  assert dead_pairs(dead_letters, {'mine/queries'}) == Counter(dead_queries)
  assert dead_pairs(dead_letters, {'mine/corpus'}) == Counter(dead_docs)
  assert report['candidates_in'] == len(rows)
  assert report['qrels_in'] == len(qrels)
  assert report['reconciles'] is True
  assert report['dead_letters'] == len(dead_letters)


# ------------------------------------------------------------------- queries


def test_rerank_query_accounting_fuzz(tmp_path):
  """Any mix of queries (hostile texts, duplicate ids, words in and out of the
  corpus) with BM25 and a supplied run naming known and unknown docs: queries
  in = ranked + dead-lettered + no candidates, in total and per source, the
  no-candidates list is exactly the oracle's, and `evaluate` on the folder
  equals `rerank --qrels`."""
  from pipelines import evaluate as evaluate_job
  from transforms.retrieval.bm25 import tokenize
  queries, hostile_queries = text_rows('q', examples=12, good=30)
  corpus = [(f'd{i}', text) for i, text in enumerate(GOOD_TEXTS)]
  kept_queries, dead_queries = expected_texts(queries)
  vocabulary = {t for _, text in corpus for t in tokenize(text)}
  rng = random.Random(7)
  kept_ids = sorted(kept_queries)
  supplied = [(q, rng.choice([f'd{rng.randrange(len(corpus))}', 'd_unknown']))
              for q in rng.sample(kept_ids, k=len(kept_ids) // 3)]
  qrels = [(q, f'd{rng.randrange(len(corpus))}', 1) for q in rng.sample(kept_ids, k=20)]
  root = tmp_path / 'in'
  root.mkdir()
  pq.write_table(pa.table({
      'query_id': pa.array([q for q, _ in supplied], pa.string()),
      'doc_id': pa.array([d for _, d in supplied], pa.string())}), str(root / 's.parquet'))
  pq.write_table(pa.Table.from_pylist(
      [dict(zip(QRELS_SCHEMA.names, r)) for r in qrels], schema=QRELS_SCHEMA),
      str(root / 'qrels.parquet'))
  out = tmp_path / 'ranked'
  report, _ = quiet(rerank_job.run, [
      '--queries', write_texts(root / 'q.parquet', 'query_id', queries),
      '--corpus', write_texts(root / 'c.parquet', 'doc_id', corpus),
      '--bm25', '--candidates', root / 's.parquet', '--cross-encoder', 'none',
      '--qrels', root / 'qrels.parquet', '--output', out])
  print(f'\n[fuzz] query accounting: {len(queries)} query rows, {hostile_queries} hostile')

  # The oracle.
  bm25_hits = {q for q, text in kept_queries.items() if set(tokenize(text)) & vocabulary}
  supplied_known = {q for q, d in supplied if d != 'd_unknown'}
  supplied_any = {q for q, _ in supplied}
  ranked = bm25_hits | supplied_known
  expected_none = {}
  for q in kept_queries:
    if q in ranked:
      continue
    expected_none[q] = ('all_candidates_dead_lettered' if q in supplied_any
                        else 'no_source_returned_candidates')
  accounts = report['queries']
  assert accounts['in'] == len(queries)
  assert accounts['dead_lettered'] == len(dead_queries)
  assert accounts['ranked'] == len(ranked)
  assert accounts['no_candidates'] == len(expected_none)
  assert accounts['in'] == accounts['ranked'] + accounts['dead_lettered'] + accounts[
      'no_candidates']
  assert accounts['reconciles'] is True
  for source, statuses in accounts['by_source'].items():
    assert sum(statuses.values()) == len(kept_queries), source
  assert accounts['by_source']['bm25']['with_candidates'] == len(bm25_hits)
  assert accounts['by_source']['bm25']['no_tokens'] == sum(
      not tokenize(t) for t in kept_queries.values())
  assert accounts['by_source']['supplied']['with_candidates'] == len(supplied_any)
  got_none = {r['query_id']: r['reason'] for r in read_rows(out / 'no_candidates')}
  assert got_none == expected_none
  evaluated, _ = quiet(evaluate_job.run, ['--ranked', out, '--qrels', root / 'qrels.parquet'])
  assert evaluated['metrics'] == report['evaluation']['metrics']
  assert evaluated['queries_evaluated'] == report['evaluation']['queries_evaluated']
  judged_in_run = {q for q, _, _ in qrels}
  assert evaluated['queries_evaluated'] == len(judged_in_run)
  assert evaluated['queries_without_results'] == len(judged_in_run - ranked)
