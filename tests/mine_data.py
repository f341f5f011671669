"""The mine and train tests' data: a small judged collection (corpus, queries,
qrels, rerank-style candidates) and a small (anchor, positive) set for comparing
with ``sentence_transformers.util.mine_hard_negatives``, with their helpers.

The models these tests use (``mine_bert_dir``, ``mine_bi_encoder_dir``,
``mine_cross_encoder_dir``, ``mine_st_scores``) and the Parquet writers and
readers are in ``tests/fixtures.py``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
from typing import Mapping, Sequence

import pyarrow as pa

from tests.fixtures import write_parquet

# A small collection written for these tests.
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
}
QUERIES: dict[str, str] = {
    'q1': 'boundary layer at high speed',
    'q2': 'как испечь хлеб',
    'q3': 'medical education online',
    'q4': 'wing pressure',
    'q5': 'cloud encryption',
    'q6': 'river deltas',
}
# query_id, doc_id, relevance (> 0 relevant). q3 has only a non-relevant
# judgment; q4 is judged but never retrieved; q6 is retrieved, not judged.
QRELS: list[tuple[str, str, int]] = [
    ('q1', 'd01', 2), ('q1', 'd03', 1), ('q1', 'd05', 0),
    ('q2', 'd06', 1),
    ('q3', 'd08', 0),
    ('q4', 'd11', 1),
    ('q5', 'd10', 1),
]
# query_id, doc_id, retrieval_rank, cross-encoder score. Score order differs
# from retrieval order, and retrieval order from doc_id order, on purpose.
# q5's only candidate is its positive.
CANDIDATES: list[tuple[str, str, int, float]] = [
    ('q1', 'd04', 1, 2.5), ('q1', 'd01', 2, 5.0), ('q1', 'd06', 3, -1.0),
    ('q1', 'd03', 4, 3.0), ('q1', 'd02', 5, 4.5), ('q1', 'd05', 6, 1.0),
    ('q2', 'd05', 1, 0.5), ('q2', 'd06', 2, 2.0), ('q2', 'd07', 3, 1.5),
    ('q2', 'd12', 4, -2.0),
    ('q3', 'd08', 1, 1.0), ('q3', 'd09', 2, 0.5),
    ('q5', 'd10', 1, 3.0),
    ('q6', 'd07', 1, 4.0), ('q6', 'd02', 2, 0.0),
]
RANKED_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('doc_id', pa.string()), ('rank', pa.int32()),
    ('score', pa.float32()), ('retrieval_rank', pa.int32()),
    ('retrieval_score', pa.float32())])
QRELS_SCHEMA = pa.schema([
    ('query_id', pa.string()), ('doc_id', pa.string()), ('relevance', pa.int32())])


def write_collection(
    root: str | os.PathLike,
    corpus: Mapping[str, str] = CORPUS,
    queries: Mapping[str, str] = QUERIES,
    qrels: Sequence[tuple[str, str, int]] = QRELS,
    candidates: Sequence[tuple[str, str, int, float]] = CANDIDATES,
) -> dict[str, str]:
  """Writes corpus, queries, qrels and a rerank-style ranked folder under
  ``root``; returns their paths (``ranked`` is a folder with ``candidates/``)."""
  root = pathlib.Path(root)
  ordered = sorted(candidates, key=lambda c: (c[0], -c[3], c[1]))
  rank_of, ranks = [], {}
  for query_id, *_ in ordered:  # rank: 1-based, by score within each query
    ranks[query_id] = ranks.get(query_id, 0) + 1
    rank_of.append(ranks[query_id])
  ranked_dir = root / 'ranked'
  write_parquet(ranked_dir / 'candidates' / 'part-00000-of-00001.parquet', {
      'query_id': [c[0] for c in ordered],
      'doc_id': [c[1] for c in ordered],
      'rank': rank_of,
      'score': [c[3] for c in ordered],
      'retrieval_rank': [c[2] for c in ordered],
      'retrieval_score': [1.0 / c[2] for c in ordered],
  }, RANKED_SCHEMA)
  # Rerank writes it last; readers take the file list from it.
  (ranked_dir / 'manifest.json').write_text(json.dumps({'kind': 'ranked', 'outputs': {
      'candidates': {'directory': 'candidates', 'rows': len(ordered), 'files': [
          {'path': 'part-00000-of-00001.parquet', 'rows': len(ordered)}]}}}))
  return {
      'corpus': write_parquet(root / 'corpus.parquet', {
          'doc_id': list(corpus), 'text': list(corpus.values())}),
      'queries': write_parquet(root / 'queries.parquet', {
          'query_id': list(queries), 'text': list(queries.values())}),
      'qrels': write_parquet(root / 'qrels.parquet', {
          'query_id': [r[0] for r in qrels], 'doc_id': [r[1] for r in qrels],
          'relevance': [r[2] for r in qrels]}, QRELS_SCHEMA),
      'ranked': str(ranked_dir),
  }


def write_candidates(
    path: str | os.PathLike,
    candidates: Sequence[tuple[str, str, int, float]] = CANDIDATES,
    with_rank: bool = True, with_score: bool = True) -> str:
  """A supplied candidates file: ``query_id, doc_id[, score][, retrieval_rank]``."""
  fields = [('query_id', pa.string()), ('doc_id', pa.string())]
  columns: dict[str, list] = {'query_id': [c[0] for c in candidates],
                              'doc_id': [c[1] for c in candidates]}
  if with_score:
    fields.append(('score', pa.float64()))
    columns['score'] = [c[3] for c in candidates]
  if with_rank:
    fields.append(('retrieval_rank', pa.int64()))
    columns['retrieval_rank'] = [c[2] for c in candidates]
  return write_parquet(path, columns, pa.schema(fields))


def quietly(fn, *args, **kwargs):
  """Calls ``fn`` with its printed summary captured."""
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args, **kwargs)


# ---------------------------------------------------------------- sentence-transformers
# A small (anchor, positive) set and corpus for comparing with
# ``sentence_transformers.util.mine_hard_negatives``.

ST_ANCHORS = [
    'how do airplane wings create lift',
    'best way to bake sourdough bread at home',
    'symptoms of seasonal flu in children',
    'how to repair a flat bicycle tire',
    'history of the roman empire in the west',
    'growing tomatoes on a sunny balcony',
]
ST_POSITIVES = [
    'Airplane wings create lift because air moves faster over the curved top.',
    'To bake sourdough bread at home you need a lively starter and patience.',
    'Seasonal flu in children brings fever, cough and tiredness.',
    'Repair a flat bicycle tire by patching the inner tube.',
    'The western Roman empire fell in the fifth century.',
    'Tomatoes grow well on a sunny balcony in large pots.',
]
ST_OTHERS = [
    'Jet engines burn kerosene to produce thrust.',
    'Rye bread is dense and slightly sour.',
    'Vaccines reduce the risk of severe influenza.',
    'Mountain bikes have wide tires with deep tread.',
    'Greek city states fought many wars with Persia.',
    'Basil and mint are easy herbs for beginners.',
    'The stock market fell sharply on Monday.',
    'Penguins live in the southern hemisphere.',
    'A violin has four strings tuned in fifths.',
    'Volcanoes erupt when magma reaches the surface.',
    'Chess openings are studied by serious players.',
    'Coffee beans are roasted before grinding.',
    'The river flooded the valley after heavy rain.',
    'Solar panels convert sunlight into electricity.',
]
ST_CORPUS = ST_POSITIVES + ST_OTHERS
ST_RANGE_MAX = 6


def midpoint_between(values: list[float], near: float) -> float:
  """A value between two neighbours of ``values``, the gap nearest ``near``
  among the wide ones: far from every value, so float32/float64 rounding
  cannot move a candidate across it."""
  values = sorted(set(values))
  gaps = [(b - a, (a + b) / 2) for a, b in zip(values, values[1:])]
  wide = [g for g in gaps if g[0] > 1e-4]
  assert wide, 'no usable gap in the scores'
  return min(wide, key=lambda g: abs(g[1] - near))[1]


def st_scores(model, corpus: Sequence[str]):
  """Anchor x ``corpus`` cosine scores, as mine_hard_negatives computes them
  (normalized float32 embeddings); asserts no near-ties in any anchor's row."""
  queries = model.encode(ST_ANCHORS, normalize_embeddings=True, convert_to_numpy=True)
  docs = model.encode(list(corpus), normalize_embeddings=True, convert_to_numpy=True)
  scores = model.similarity(queries, docs).numpy()
  for row in scores:
    ordered = sorted(float(s) for s in row)
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 1e-6
  return scores


def st_guard_configs(scores) -> dict[str, dict]:
  """Guard settings that each drop part of the candidates in the retrieval
  window (the top range_max + 1 other than the positive), placed in wide gaps
  between scores."""
  window, diffs, rel = [], [], []
  for i in range(len(ST_ANCHORS)):
    p = float(scores[i, i])
    top = sorted((float(s) for j, s in enumerate(scores[i]) if j != i), reverse=True)
    top = top[:ST_RANGE_MAX + 1]
    window += top
    diffs += [p - s for s in top]
    rel += [(p - s) / abs(p) for s in top]
  median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
  return {
      'plain': {},
      'absolute_margin': {'absolute_margin': midpoint_between(diffs, median(diffs))},
      'relative_margin': {'relative_margin': midpoint_between(rel, median(rel))},
      'max_score': {'max_score': midpoint_between(window, median(window))},
      'range_min': {'range_min': 2},
      'combined': {'range_min': 1,
                   'absolute_margin': midpoint_between(diffs, sorted(diffs)[len(diffs) // 4])},
  }


def st_reference(model, output_format: str, guards: dict,
                 corpus: Sequence[str] = ST_CORPUS) -> dict[str, list[str]]:
  """``mine_hard_negatives`` -> {anchor: [negative texts in output order]}."""
  from datasets import Dataset
  from sentence_transformers.util import mine_hard_negatives
  dataset = Dataset.from_dict({'anchor': ST_ANCHORS, 'positive': ST_POSITIVES})
  mined = mine_hard_negatives(
      dataset, model, corpus=list(corpus), range_max=ST_RANGE_MAX, num_negatives=3,
      sampling_strategy='top', output_format=output_format, use_faiss=False,
      verbose=False, batch_size=8, **guards)
  negatives: dict[str, list[str]] = {a: [] for a in ST_ANCHORS}
  for row in mined:
    if output_format == 'triplet':
      assert row['positive'] == ST_POSITIVES[ST_ANCHORS.index(row['anchor'])]
      negatives[row['anchor']].append(row['negative'])
    elif row['label'] == 0:
      negatives[row['anchor']].append(row['positive'])
  return negatives
