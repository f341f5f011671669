"""Exact dense top-k: blocked matrix products with per-query top-k merged by a combine.

No process holds all corpus embeddings: the corpus arrives as blocks of rows,
each block is scored against the queries (a side input, split into query
blocks so the score matrix stays small), each block yields its own top-k per
query, and a ``CombineFn`` merges those per query block.

Exactness: BLAS float32 products differ in the last bits with matrix shape, so
a block's float32 scores only *select* candidates (with a margin that covers
float32 error); the selected pairs are rescored in float64 one pair at a time,
rounded to float32, and ordered by (score desc, doc_id asc). The result is the
same as scoring every pair that way and sorting — the brute-force reference.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from transforms.core.hashing import stable_hash
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.io.parquet_sink import committed_files

STAGE = 'retrieve'
# Corpus rows per matrix product: the score matrix of one product is
# query block x this x 4 bytes.
DEFAULT_CORPUS_BLOCK_SIZE = 65536
# Queries per matrix product.
DEFAULT_QUERY_BLOCK_SIZE = 1024
# Query embeddings one worker holds as a side input; more are split into groups.
DEFAULT_MAX_QUERIES_IN_MEMORY = 100_000
_FLOAT32_EPS = float(np.finfo(np.float32).eps)


def exact_top_k_of_candidates(
    queries: np.ndarray, docs: EmbeddingBlock, rows: np.ndarray, cols: np.ndarray,
    k: int) -> tuple[np.ndarray, np.ndarray]:
  """Per query row, the best ``k`` of its candidate docs (``rows`` sorted):
  ``(doc_ids, scores)`` of shape ``(len(queries), k)``, each row by score desc
  then doc_id asc, empty slots ``''`` / ``-inf``.

  Scores are inner products in float64, rounded to float32. Float32 products
  of float32 vectors are exact in float64 and the float64 sum differs between
  summation orders by ~1e-16, far below float32's resolution, so the rounded
  score is the same however the pair is computed: in a block of any shape
  here, or in one brute-force matrix product.
  """
  out_ids = np.full((len(queries), k), '', dtype=docs.ids.dtype)
  out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
  if not len(rows):
    return out_ids, out_scores
  # Ties break by doc_id: sort by the id's rank in the block (integers sort
  # far faster than strings, and give the same order).
  id_rank = np.empty(len(docs.ids), dtype=np.int64)
  id_rank[np.argsort(docs.ids, kind='stable')] = np.arange(len(docs.ids))
  boundaries = np.flatnonzero(np.diff(rows)) + 1
  starts = np.concatenate([[0], boundaries]).tolist()
  ends = np.concatenate([boundaries, [len(rows)]]).tolist()
  for start, end, row in zip(starts, ends, rows[starts].tolist()):
    candidates = cols[start:end]
    exact = (docs.matrix[candidates].astype(np.float64) @
             queries[row].astype(np.float64)).astype(np.float32)
    best = np.lexsort((id_rank[candidates], -exact))[:k]
    out_ids[row, :len(best)] = docs.ids[candidates[best]]
    out_scores[row, :len(best)] = exact[best]
  return out_ids, out_scores


def table_to_matrix(table: pa.Table, column: str = 'embedding') -> np.ndarray:
  """A fixed-size-list column -> a float32 ``(rows, dim)`` matrix (no per-row Python)."""
  array = table.column(column).combine_chunks()
  dim = array.type.list_size
  values = array.flatten().to_numpy(zero_copy_only=False)
  return values.astype(np.float32, copy=False).reshape(-1, dim)


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(matrix, axis=1, keepdims=True)
  return matrix / np.maximum(norms, 1e-12)


@dataclasses.dataclass
class EmbeddingBlock:
  """Rows of embeddings: ``ids`` (numpy str array) and a float32 ``matrix``."""
  ids: np.ndarray
  matrix: np.ndarray


@dataclasses.dataclass
class TopK:
  """Per-query best documents for one block of queries.

  ``doc_ids``/``scores`` are ``(num_queries, <=k)``, each row ordered by
  score desc, doc_id asc; empty slots hold ``''`` and ``-inf``.
  """
  query_ids: np.ndarray
  doc_ids: np.ndarray
  scores: np.ndarray


class ScoreBuffers:
  """A reusable float32 work area for ``block_top_k``'s score matrix.

  A (queries x docs) score matrix is ~100 MB at the default block sizes; a
  fresh one per block costs as much in page faults as the product itself.
  """
  def __init__(self):
    self._buffers = [np.empty(0, np.float32)]

  def get(self, index: int, rows: int, cols: int) -> np.ndarray:
    if self._buffers[index].size < rows * cols:
      self._buffers[index] = np.empty(rows * cols, np.float32)
    return self._buffers[index][:rows * cols].reshape(rows, cols)


# Columns of a score matrix are split into this many equal slabs; column j of
# every slab forms group j, and the k-th largest group maximum bounds a row's
# k-th largest score from below (see ``candidate_pairs``).
_GROUPS = 16


def candidate_pairs(
    scores: np.ndarray, k: int, margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(rows, cols)``, sorted by row, of every score ``>= T - margin`` per row,
  where ``T`` is at most the row's ``k``-th largest score: a superset of the
  row's top ``k`` and of every pair within ``margin`` of it.

  ``T`` is the ``k``-th largest of the row's group maxima: ``k`` groups have a
  member at least that large, so the row's ``k``-th largest score is too. This
  reads the matrix once (an element-wise maximum of its slabs) instead of
  partitioning all of it, and only the ~``k`` groups whose maximum clears the
  threshold are looked at again.
  """
  num_rows, num_cols = scores.shape
  width = num_cols // _GROUPS
  if width < max(k, 64):  # A small block: partition it all.
    kth = np.partition(scores, num_cols - k, axis=1)[:, num_cols - k]
    return np.nonzero(scores >= (kth - margin).astype(np.float32)[:, None])
  group_max = scores[:, :width].copy()
  for slab in range(1, _GROUPS):
    np.maximum(group_max, scores[:, slab * width:(slab + 1) * width], out=group_max)
  kth = np.partition(group_max, width - k, axis=1)[:, width - k]
  threshold = (kth - margin).astype(np.float32)
  group_rows, groups = np.nonzero(group_max >= threshold[:, None])
  # Flat positions of every member of the selected groups, in row order.
  index_type = np.int32 if scores.size < 2**31 else np.int64
  flat = ((group_rows * num_cols + groups).astype(index_type)[:, None] +
          np.arange(_GROUPS, dtype=index_type) * width)
  flat = flat[np.take(scores.reshape(-1), flat) >= threshold[group_rows][:, None]]
  rows, cols = np.divmod(flat, num_cols)
  tail_rows, tail_cols = np.nonzero(scores[:, _GROUPS * width:] >= threshold[:, None])
  if len(tail_rows):
    rows = np.concatenate([rows, tail_rows])
    cols = np.concatenate([cols, tail_cols + _GROUPS * width])
    order = np.argsort(rows, kind='stable')
    rows, cols = rows[order], cols[order]
  return rows, cols


def block_top_k(
    query_ids: np.ndarray, queries: np.ndarray, docs: EmbeddingBlock,
    k: int, buffers: ScoreBuffers | None = None) -> TopK:
  """Exact top-``k`` of one corpus block for one block of queries."""
  num_docs = len(docs.ids)
  kk = min(k, num_docs)
  buffers = buffers or ScoreBuffers()
  scores = np.matmul(
      queries, docs.matrix.T, out=buffers.get(0, len(queries), num_docs))
  # Bound on float32 dot-product error: dim * eps * |q| * max|d|, doubled
  # (and the norms themselves rounded up by a further 1%).
  dim = queries.shape[1]
  doc_norm_max = float(np.sqrt(np.einsum('ij,ij->i', docs.matrix, docs.matrix).max())) * 1.01
  query_norms = np.linalg.norm(queries, axis=1).astype(np.float64) * 1.01
  margin = 2.0 * dim * _FLOAT32_EPS * query_norms * doc_norm_max
  rows, cols = candidate_pairs(scores, kk, margin)
  out_ids, out_scores = exact_top_k_of_candidates(queries, docs, rows, cols, kk)
  return TopK(query_ids=query_ids, doc_ids=out_ids, scores=out_scores)


def merge_top_k(a: TopK, b: TopK, k: int) -> TopK:
  """The best ``k`` of two partial results for the same queries."""
  if not np.array_equal(a.query_ids, b.query_ids):
    raise ValueError('cannot merge top-k of different query blocks')
  doc_ids = np.concatenate([a.doc_ids, b.doc_ids.astype(
      np.result_type(a.doc_ids, b.doc_ids))], axis=1)
  scores = np.concatenate([a.scores, b.scores], axis=1)
  order = np.lexsort((doc_ids, -scores), axis=1)[:, :k]
  return TopK(
      query_ids=a.query_ids,
      doc_ids=np.take_along_axis(doc_ids, order, axis=1),
      scores=np.take_along_axis(scores, order, axis=1))


def top_k_rows(top: TopK) -> Iterator[dict]:
  """Candidate rows: ``query_id, doc_id, retrieval_rank (1-based), retrieval_score``."""
  for query_id, doc_ids, scores in zip(top.query_ids, top.doc_ids, top.scores):
    for rank, (doc_id, score) in enumerate(zip(doc_ids, scores), start=1):
      if np.isneginf(score) and not doc_id:
        break
      yield {
          'query_id': str(query_id),
          'doc_id': str(doc_id),
          'retrieval_rank': rank,
          'retrieval_score': float(score),
      }


class MergeTopKFn(beam.CombineFn):
  """Merges per-block ``TopK`` results of one query block."""
  def __init__(self, k: int):
    self._k = k

  def create_accumulator(self) -> Optional[TopK]:
    return None

  def add_input(self, accumulator: Optional[TopK], partial: TopK) -> TopK:
    if accumulator is None:
      return partial
    return merge_top_k(accumulator, partial, self._k)

  def merge_accumulators(self, accumulators: Iterable[Optional[TopK]]):
    merged = None
    for accumulator in accumulators:
      if accumulator is not None:
        merged = accumulator if merged is None else self.add_input(merged, accumulator)
    return merged

  def extract_output(self, accumulator: Optional[TopK]) -> Optional[TopK]:
    return accumulator


def tables_to_blocks(
    table: pa.Table, block_size: int, normalize: bool) -> Iterator[EmbeddingBlock]:
  """Slices an Arrow table of ``id, embedding`` rows into blocks."""
  for start in range(0, table.num_rows, block_size):
    piece = table.slice(start, block_size)
    matrix = table_to_matrix(piece)
    if normalize:
      matrix = l2_normalize(matrix)
    yield EmbeddingBlock(
        ids=np.array(piece.column('id').to_pylist(), dtype=str), matrix=matrix)


class _ToCorpusBlocksFn(beam.DoFn):
  """Arrow tables -> corpus blocks of ``block_size`` rows, across tables.

  Parquet batches are as small as the files' row groups (a folder of small
  shards gives small tables), and each block costs about the same fixed work
  per query (selecting and rescoring ~k candidates) however few docs it has,
  so rows are gathered up to the block size within a bundle; at most one
  smaller block per bundle remains.
  """
  def __init__(self, block_size: int, normalize: bool):
    self._block_size = block_size
    self._normalize = normalize

  def start_bundle(self):
    self._tables: list[pa.Table] = []
    self._rows = 0

  def process(self, table: pa.Table) -> Iterator[EmbeddingBlock]:
    if not table.num_rows:
      return
    self._tables.append(table.select(['id', 'embedding']).replace_schema_metadata(None))
    self._rows += table.num_rows
    if self._rows >= self._block_size:
      buffered = pa.concat_tables(self._tables)
      full = buffered.num_rows - buffered.num_rows % self._block_size
      yield from tables_to_blocks(buffered.slice(0, full), self._block_size, self._normalize)
      rest = buffered.slice(full)
      self._tables, self._rows = ([rest] if rest.num_rows else []), rest.num_rows

  def finish_bundle(self):
    if self._rows:
      for block in tables_to_blocks(
          pa.concat_tables(self._tables), self._block_size, self._normalize):
        yield beam.transforms.window.GlobalWindows.windowed_value(block)
    self._tables, self._rows = [], 0


class _ScoreBlockFn(beam.DoFn):
  """One corpus block x every query block -> ``(query_block, TopK)``."""
  def __init__(self, k: int, query_block_size: int):
    self._k = k
    self._query_block_size = query_block_size
    self._blocks_scored = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/corpus_blocks')
    self._docs_scored = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/docs_scored')
    self._score_microseconds = Metrics.counter(
        METRICS_NAMESPACE, f'{STAGE}/score_microseconds')

  def setup(self):
    self._buffers = ScoreBuffers()

  def process(self, docs: EmbeddingBlock, queries: list[EmbeddingBlock]):
    self._blocks_scored.inc()
    self._docs_scored.inc(len(docs.ids))
    for index, query_block in enumerate(queries):
      started = time.perf_counter()
      top = block_top_k(
          query_block.ids, query_block.matrix, docs, self._k, self._buffers)
      self._score_microseconds.inc(int((time.perf_counter() - started) * 1e6))
      yield index, top


def _query_blocks(
    tables: list[pa.Table], block_size: int, normalize: bool) -> list[EmbeddingBlock]:
  tables = [t for t in tables if t.num_rows]
  if not tables:
    return []
  table = pa.concat_tables(tables).sort_by('id')
  return list(tables_to_blocks(table, block_size, normalize))


def _table_of_group(table: pa.Table, group: int, groups: int) -> pa.Table:
  """The rows of ``table`` whose id hashes to ``group`` of ``groups``."""
  if groups == 1:
    return table
  mask = [stable_hash(i) % groups == group for i in table.column('id').to_pylist()]
  return table.filter(pa.array(mask, pa.bool_()))


class ReadEmbeddingTables(beam.PTransform):
  """Pipeline -> Arrow tables of ``id, embedding`` from an encode output folder.

  Reads exactly the files its manifest lists (``committed_files``): a stray
  ``part-*.parquet`` is not read, a missing one is refused when the pipeline
  is built. ``option`` names the folder in messages.
  """
  def __init__(self, directory: str, option: str = 'embeddings'):
    super().__init__()
    self._directory = directory
    self._option = option

  def expand(self, pbegin):
    files = committed_files(self._directory, 'embeddings', self._option)
    return (
        pbegin
        | 'EmbeddingFiles' >> beam.Create(files)
        | 'ReadParquetBatched' >> beam.io.ReadAllFromParquetBatched(
            columns=['id', 'embedding']))


class ExactTopK(beam.PTransform):
  """``{'queries': tables, 'corpus': tables}`` -> candidate rows, exact top-k.

  Inputs are PCollections of Arrow tables with ``id`` and a fixed-size-list
  ``embedding`` (what ``ReadFromParquetBatched`` yields from embedding shards).
  Queries reach the scoring step as a side input; with ``query_groups`` > 1
  they are split by id hash into that many groups, each its own side input
  and scoring branch over the same corpus stream, so no worker holds more
  than one group's queries.
  """
  def __init__(
      self, k: int, corpus_block_size: int = DEFAULT_CORPUS_BLOCK_SIZE,
      query_block_size: int = DEFAULT_QUERY_BLOCK_SIZE, normalize: bool = False,
      query_groups: int = 1):
    super().__init__()
    self._k = k
    self._corpus_block_size = corpus_block_size
    self._query_block_size = query_block_size
    self._normalize = normalize
    self._query_groups = query_groups

  def expand(self, pcolls):
    corpus_blocks = pcolls['corpus'] | 'ToCorpusBlocks' >> beam.ParDo(
        _ToCorpusBlocksFn(self._corpus_block_size, self._normalize))
    # No Reshuffle here: blocks stream from the (splittable) Parquet read into
    # scoring, so a runner never buffers the whole corpus.
    branches = []
    for group in range(self._query_groups):
      suffix = '' if self._query_groups == 1 else f'Group{group}'
      query_blocks = (
          pcolls['queries']
          | f'SelectQueries{suffix}' >> beam.Map(_table_of_group, group, self._query_groups)
          | f'CollectQueryTables{suffix}' >> beam.combiners.ToList()
          | f'ToQueryBlocks{suffix}' >> beam.Map(
              _query_blocks, self._query_block_size, self._normalize))
      branches.append(
          corpus_blocks
          | f'ScoreBlocks{suffix}' >> beam.ParDo(
              _ScoreBlockFn(self._k, self._query_block_size),
              queries=beam.pvalue.AsSingleton(query_blocks))
          | f'MergeTopK{suffix}' >> beam.CombinePerKey(MergeTopKFn(self._k))
          | f'ToCandidateRows{suffix}' >> beam.FlatMap(lambda keyed: top_k_rows(keyed[1])))
    if len(branches) == 1:
      return branches[0]
    return branches | 'FlattenQueryGroups' >> beam.Flatten()
