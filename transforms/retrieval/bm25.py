"""Exact BM25 top-k in Beam: corpus statistics by combines, blocks scored against
every query, per-query top-k merged by a combine.

The variant is ``bm25s``'s ``method='lucene'`` (Kamphuis et al., ECIR 2020)::

  idf(t)       = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
  score(q, d)  = sum over query tokens t (repeats counted) of
                 idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * dl(d) / avgdl))

with ``N`` the number of docs given (empty ones included; the rerank and mine
jobs dead-letter blank texts and repeated ids before BM25 sees them), ``dl`` a doc's
token count and ``avgdl`` the mean ``dl`` over the whole corpus. A query token
that occurs twice adds its term score twice, as in ``bm25s``.

Flow (no process holds the corpus texts):

1. Queries are tokenised and collected into a ``QuerySet`` (ids, the query
   vocabulary, per-query token counts): a small side input.
2. Docs are tokenised once, as they stream in, and kept only as their token
   count and the counts of *query-vocabulary* terms; ``corpus_block_size``
   docs form a ``TermBlock`` (a sparse doc x query-term matrix).
3. One ``CombineGlobally`` over the blocks gives ``N``, the total token count
   and the document frequencies of the query terms (an array over the query
   vocabulary, so the df table stays small).
4. Each block is scored against all queries (queries and statistics as side
   inputs) and yields its own top-k per query; ``MergeHitsFn`` merges those
   per query.

Between steps 2 and 4 the blocks are materialised by the runner (scoring
needs statistics of the whole corpus): on a distributed runner in its
shuffle/storage, on the DirectRunner in its memory. A block holds doc ids,
lengths and query-term counts only, not texts.

Exactness: scores are summed in float64 in a fixed order (the doc's query
terms by vocabulary index), rounded to float32, and ordered by (score desc,
doc_id asc), so the result does not depend on block boundaries. Docs sharing
no term with a query (score 0) are never candidates: a query gets at most
``top_k`` rows, fewer if fewer docs match (``bm25s`` pads its top-k with
score-0 docs instead).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import threading
import time
from typing import Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from scipy import sparse

from transforms.core.errors import UserInputError
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.core.settings import fraction, non_negative_float, positive_int, setting

logger = logging.getLogger(__name__)

STAGE = 'rerank'
SUPPORTED_STEMMERS = ('english', 'russian')
# Letters and digits of any script: \w without the underscore.
_TOKEN_PATTERN = re.compile(r'[^\W_]+', re.UNICODE)
# Cells (docs x queries) of one dense float64 score slab.
_SCORE_SLAB_CELLS = 1 << 22


# Beyond this k1, float rounding flattens term frequencies (1e300 made every
# score 0); the literature's values lie between 0.5 and 3.
MAX_K1 = 100.0


@dataclasses.dataclass(frozen=True)
class BM25Settings:
  """BM25 parameters, the tokeniser's stemmer (None, 'english', 'russian') and k."""
  k1: float = 1.5
  b: float = 0.75
  stemmer: str | None = None
  top_k: int = 100

  def __post_init__(self):
    if not 0 <= self.k1 <= MAX_K1:
      raise ValueError(
          f'k1 must be in [0, {MAX_K1:g}] (usual values 0.5 to 3: the term-frequency '
          f'saturation), got {self.k1:g}')
    if not 0 <= self.b <= 1:
      raise ValueError(f'b must be in [0, 1], got {self.b}')
    if self.top_k < 1:
      raise ValueError(f'top_k must be >= 1, got {self.top_k}')
    if self.stemmer is not None and self.stemmer not in SUPPORTED_STEMMERS:
      raise ValueError(f'stemmer must be one of {SUPPORTED_STEMMERS} or None, '
                       f'got {self.stemmer!r}')



def bm25_k1(value: str) -> float:
  """argparse type: BM25's k1, a number in [0, MAX_K1]."""
  number = non_negative_float(value)
  if number > MAX_K1:
    raise argparse.ArgumentTypeError(
        f'{value!r} is above {MAX_K1:g}: the usual values are 0.5 to 3 (beyond '
        f'{MAX_K1:g}, rounding flattens every score)')
  return number


@dataclasses.dataclass(frozen=True)
class BM25Options:
  """BM25 candidates as a job's options ask for them (``settings``: what the
  transforms take)."""
  enabled: bool = setting(
      False, 'BM25 candidates: exact top-k over the passage texts (title + text with '
      '--doc-title-column), Unicode letters and digits lowercased.', flag='--bm25')
  k1: float = setting(
      BM25Settings.k1, f'Term-frequency saturation, 0 to {MAX_K1:g} (default: %(default)s).',
      flag='--bm25-k1', type=bm25_k1)
  b: float = setting(BM25Settings.b, '(default: %(default)s)', flag='--bm25-b', type=fraction)
  stemmer: str = setting(
      'auto', 'Snowball stemmer for BM25 tokens: auto = the one of --language (default: '
      '%(default)s).', flag='--bm25-stemmer', choices=('auto', 'none') + SUPPORTED_STEMMERS)
  top_k: Optional[int] = setting(
      None, 'BM25 candidates per query (default: --top-k).', flag='--bm25-top-k',
      type=positive_int)

  def settings(self, top_k: int, language_stemmer: Optional[str] = None
               ) -> Optional[BM25Settings]:
    """The BM25 settings of a run retrieving ``top_k`` per source (None: no
    BM25); ``language_stemmer``: the stemmer of the texts' language, used
    unless ``--bm25-stemmer`` names one."""
    if not self.enabled:
      return None
    stemmer = {'auto': language_stemmer, 'none': None}.get(self.stemmer, self.stemmer)
    try:
      return BM25Settings(k1=self.k1, b=self.b, stemmer=stemmer, top_k=self.top_k or top_k)
    except ValueError as error:
      raise UserInputError(f'BM25: {error}') from None


_STEMMERS = threading.local()  # PyStemmer objects are not thread-safe.


def _stemmer(language: str):
  cache = _STEMMERS.__dict__.setdefault('by_language', {})
  if language not in cache:
    import Stemmer  # PyStemmer
    cache[language] = Stemmer.Stemmer(language)
  return cache[language]


def tokenize(text: str | None, stemmer: str | None = None) -> list[str]:
  """Lower-cased runs of letters/digits (any script), optionally Snowball-stemmed."""
  if not text:
    return []
  tokens = _TOKEN_PATTERN.findall(text.lower())
  if stemmer is not None and tokens:
    if stemmer not in SUPPORTED_STEMMERS:
      raise ValueError(f'unsupported stemmer {stemmer!r}')
    tokens = _stemmer(stemmer).stemWords(tokens)
  return tokens


@dataclasses.dataclass
class QuerySet:
  """Tokenised queries: ``ids`` sorted, the sorted ``vocabulary`` of their tokens,
  and ``term_counts`` (queries x vocabulary, float64 occurrences per query)."""
  ids: np.ndarray
  vocabulary: tuple[str, ...]
  term_counts: sparse.csr_matrix


def build_query_set(queries: Iterable[tuple[str, list[str]]]) -> QuerySet:
  """``(query_id, tokens)`` pairs -> a ``QuerySet``; duplicate ids are an error."""
  pairs = sorted((str(query_id), tokens) for query_id, tokens in queries)
  ids = [query_id for query_id, _ in pairs]
  duplicates = sorted({a for a, b in zip(ids, ids[1:]) if a == b})
  if duplicates:
    raise ValueError(f'duplicate query ids: {duplicates[:5]}')
  vocabulary = tuple(sorted({token for _, tokens in pairs for token in tokens}))
  index = {term: i for i, term in enumerate(vocabulary)}
  rows = np.repeat(np.arange(len(pairs)), [len(tokens) for _, tokens in pairs])
  cols = np.array([index[t] for _, tokens in pairs for t in tokens], dtype=np.int64)
  counts = sparse.csr_matrix(
      (np.ones(len(cols)), (rows, cols)), shape=(len(pairs), len(vocabulary)))
  counts.sum_duplicates()
  return QuerySet(ids=np.array(ids, dtype=str), vocabulary=vocabulary, term_counts=counts)


def _smallest_int_type(max_value: int) -> np.dtype:
  for dtype in (np.uint8, np.uint16, np.uint32):
    if max_value <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  return np.dtype(np.int64)


@dataclasses.dataclass
class TermBlock:
  """Docs as their token counts (``lengths``) and, in CSR form (``indptr``,
  ``terms`` sorted per doc, ``counts``), how often each query-vocabulary term
  occurs in each. Arrays use the smallest integer types that fit: blocks are
  what a runner materialises between the statistics and scoring steps."""
  ids: np.ndarray
  lengths: np.ndarray
  indptr: np.ndarray
  terms: np.ndarray
  counts: np.ndarray
  vocabulary_size: int

  def matrix(self) -> sparse.csr_matrix:
    """The (docs x query vocabulary) counts as a canonical float64 CSR matrix."""
    return sparse.csr_matrix(
        (self.counts.astype(np.float64), self.terms.astype(np.int32),
         self.indptr.astype(np.int64)), shape=(len(self.ids), self.vocabulary_size))


@dataclasses.dataclass
class CorpusStats:
  """``num_docs``, ``total_length`` (tokens) and ``doc_freqs`` over the query vocabulary."""
  num_docs: int = 0
  total_length: int = 0
  doc_freqs: Optional[np.ndarray] = None


@dataclasses.dataclass
class Hits:
  """One query's best docs: ``doc_ids`` and float32 ``scores``, by score desc, doc_id asc."""
  doc_ids: np.ndarray
  scores: np.ndarray


class TermBlockBuilder:
  """Accumulates tokenised docs and cuts them into ``TermBlock``s."""
  def __init__(self, vocabulary_size: int):
    self.vocabulary_size = vocabulary_size
    self.clear()

  def clear(self):
    self.ids: list[str] = []
    self._lengths: list[int] = []
    self._row_sizes: list[int] = []
    self._cols: list[int] = []

  def add(self, doc_id: str, tokens: list[str], index: dict[str, int]):
    get = index.get
    cols = [c for c in map(get, tokens) if c is not None]
    self.ids.append(doc_id)
    self._lengths.append(len(tokens))
    self._row_sizes.append(len(cols))
    self._cols.extend(cols)

  def build(self) -> TermBlock:
    num_docs = len(self.ids)
    rows = np.repeat(np.arange(num_docs), self._row_sizes)
    cols = np.array(self._cols, dtype=np.int64)
    counts = sparse.csr_matrix(
        (np.ones(len(cols), dtype=np.int64), (rows, cols)),
        shape=(num_docs, self.vocabulary_size))
    counts.sum_duplicates()  # Also sorts each row's terms: a fixed summation order.
    lengths = np.array(self._lengths, dtype=np.int64)
    block = TermBlock(
        ids=np.array(self.ids, dtype=str),
        lengths=lengths.astype(_smallest_int_type(int(lengths.max(initial=0)))),
        indptr=counts.indptr.astype(_smallest_int_type(counts.nnz)),
        terms=counts.indices.astype(_smallest_int_type(self.vocabulary_size)),
        counts=counts.data.astype(_smallest_int_type(int(counts.data.max(initial=0)))),
        vocabulary_size=self.vocabulary_size)
    self.clear()
    return block


def term_block(
    docs: Iterable[tuple[str, str]], vocabulary: Iterable[str],
    stemmer: str | None = None) -> TermBlock:
  """``(doc_id, text)`` pairs -> one ``TermBlock`` over ``vocabulary``."""
  vocabulary = tuple(vocabulary)
  index = {term: i for i, term in enumerate(vocabulary)}
  builder = TermBlockBuilder(len(vocabulary))
  for doc_id, text in docs:
    builder.add(str(doc_id), tokenize(text, stemmer), index)
  return builder.build()


def add_block_stats(stats: CorpusStats, block: TermBlock) -> CorpusStats:
  """``stats`` plus one block's docs, lengths and document frequencies."""
  # A doc's terms are unique in CSR form: counting them counts docs.
  doc_freqs = np.bincount(block.terms, minlength=block.vocabulary_size).astype(np.int64)
  if stats.doc_freqs is not None:
    doc_freqs += stats.doc_freqs
  return CorpusStats(
      num_docs=stats.num_docs + len(block.ids),
      total_length=stats.total_length + int(block.lengths.sum()),
      doc_freqs=doc_freqs)


def merge_stats(a: CorpusStats, b: CorpusStats) -> CorpusStats:
  if a.doc_freqs is None:
    doc_freqs = b.doc_freqs
  elif b.doc_freqs is None:
    doc_freqs = a.doc_freqs
  else:
    doc_freqs = a.doc_freqs + b.doc_freqs
  return CorpusStats(
      a.num_docs + b.num_docs, a.total_length + b.total_length, doc_freqs)


def idf(stats: CorpusStats) -> np.ndarray:
  """Lucene idf per query-vocabulary term, float64 (as ``bm25s``: ln(1 + x))."""
  doc_freqs = stats.doc_freqs.astype(np.float64)
  return np.log(1.0 + (stats.num_docs - doc_freqs + 0.5) / (doc_freqs + 0.5))


def term_weights(block: TermBlock, stats: CorpusStats, settings: BM25Settings
                 ) -> sparse.csr_matrix:
  """The block's per (doc, term) BM25 term scores, float64, same sparsity."""
  counts = block.matrix()
  tf = counts.data
  rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
  avg_length = stats.total_length / stats.num_docs
  doc_length = block.lengths[rows].astype(np.float64)
  # bm25s's expression order: tfc = tf / (k1 * ((1 - b) + b * dl / avgdl) + tf).
  tfc = tf / (settings.k1 * ((1 - settings.b) + settings.b * doc_length / avg_length) + tf)
  weights = idf(stats)[counts.indices] * tfc
  return sparse.csr_matrix((weights, counts.indices, counts.indptr), shape=counts.shape)


def _best_per_row(scores: np.ndarray, id_rank: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """``(rows, cols)`` of each row's best ``k`` positive float32 ``scores``, by row,
  then score desc, then ``id_rank`` asc."""
  num_cols = scores.shape[1]
  if num_cols > k:
    kth = np.partition(scores, num_cols - k, axis=1)[:, num_cols - k]
    mask = (scores >= kth[:, None]) & (scores > 0)
  else:
    mask = scores > 0
  rows, cols = np.nonzero(mask)
  order = np.lexsort((id_rank[cols], -scores[rows, cols], rows))
  rows, cols = rows[order], cols[order]
  if not len(rows):
    return rows, cols
  starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
  position = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
  keep = position < k
  return rows[keep], cols[keep]


def score_block(block: TermBlock, queries: QuerySet, stats: CorpusStats,
                settings: BM25Settings) -> Iterator[tuple[str, Hits]]:
  """``(query_id, Hits)`` for every query with a positive score in ``block``."""
  num_docs = len(block.ids)
  if not num_docs or not len(queries.ids) or not len(block.terms):
    return
  weights = term_weights(block, stats, settings)
  id_rank = np.empty(num_docs, dtype=np.int64)
  id_rank[np.argsort(block.ids, kind='stable')] = np.arange(num_docs)
  # Only query terms that occur in the block matter.
  used = np.unique(weights.indices)
  weights = weights[:, used]
  weights.sort_indices()
  query_counts = queries.term_counts[:, used].tocsr()
  slab = max(1, min(len(queries.ids), _SCORE_SLAB_CELLS // max(num_docs, len(used))))
  for lo in range(0, len(queries.ids), slab):
    hi = min(len(queries.ids), lo + slab)
    dense_queries = query_counts[lo:hi].T.toarray()  # (terms, queries) float64
    # Per (doc, query), float64 products summed over the doc's terms in index
    # order: the same sum whatever block the doc is in.
    scores = (weights @ dense_queries).T.astype(np.float32)  # (queries, docs)
    rows, cols = _best_per_row(scores, id_rank, settings.top_k)
    if not len(rows):
      continue
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    for start, end in zip(starts.tolist(), ends.tolist()):
      picked = cols[start:end]
      yield str(queries.ids[lo + rows[start]]), Hits(
          doc_ids=block.ids[picked], scores=scores[rows[start], picked])


def merge_hits(a: Hits, b: Hits, k: int) -> Hits:
  """The best ``k`` of two ``Hits`` of one query (score desc, doc_id asc)."""
  doc_ids = np.concatenate([a.doc_ids, b.doc_ids.astype(np.result_type(a.doc_ids, b.doc_ids))])
  scores = np.concatenate([a.scores, b.scores])
  order = np.lexsort((doc_ids, -scores))[:k]
  return Hits(doc_ids=doc_ids[order], scores=scores[order])


def hits_rows(query_id: str, hits: Hits) -> Iterator[dict]:
  """Candidate rows: ``query_id, doc_id, retrieval_rank (1-based), retrieval_score``."""
  for rank, (doc_id, score) in enumerate(zip(hits.doc_ids, hits.scores), start=1):
    yield {
        'query_id': str(query_id),
        'doc_id': str(doc_id),
        'retrieval_rank': rank,
        'retrieval_score': float(score),
    }


class MergeHitsFn(beam.CombineFn):
  """Merges per-block ``Hits`` of one query into its top ``k``."""
  def __init__(self, k: int):
    self._k = k

  def create_accumulator(self) -> Optional[Hits]:
    return None

  def add_input(self, accumulator: Optional[Hits], hits: Hits) -> Hits:
    if accumulator is None:
      return hits
    return merge_hits(accumulator, hits, self._k)

  def merge_accumulators(self, accumulators: Iterable[Optional[Hits]]) -> Optional[Hits]:
    merged = None
    for accumulator in accumulators:
      if accumulator is not None:
        merged = accumulator if merged is None else self.add_input(merged, accumulator)
    return merged

  def extract_output(self, accumulator: Optional[Hits]) -> Optional[Hits]:
    return accumulator


class CorpusStatsFn(beam.CombineFn):
  """``TermBlock``s -> ``CorpusStats`` (doc count, total tokens, query-term dfs)."""
  def create_accumulator(self) -> CorpusStats:
    return CorpusStats()

  def add_input(self, accumulator: CorpusStats, block: TermBlock) -> CorpusStats:
    return add_block_stats(accumulator, block)

  def merge_accumulators(self, accumulators: Iterable[CorpusStats]) -> CorpusStats:
    merged = CorpusStats()
    for accumulator in accumulators:
      merged = merge_stats(merged, accumulator)
    return merged

  def extract_output(self, accumulator: CorpusStats) -> CorpusStats:
    return accumulator


class _TokenizeQueriesFn(beam.DoFn):
  def __init__(self, stemmer: str | None):
    self._stemmer = stemmer
    self._queries = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_queries')
    self._empty = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_queries_without_tokens')

  def process(self, element: tuple[str, str]) -> Iterator[tuple[str, list[str]]]:
    query_id, text = element
    tokens = tokenize(text, self._stemmer)
    self._queries.inc()
    if not tokens:
      self._empty.inc()
    yield str(query_id), tokens


class _ToTermBlocksFn(beam.DoFn):
  """``(doc_id, text)`` -> ``TermBlock``s of ``block_size`` docs, within a bundle.

  Docs are tokenised as they arrive (the query vocabulary is a side input,
  which ``finish_bundle`` cannot read) and kept only as counts; at most one
  smaller block per bundle remains.
  """
  def __init__(self, block_size: int, stemmer: str | None):
    self._block_size = block_size
    self._stemmer = stemmer
    self._docs = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_docs_tokenized')
    self._empty_docs = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_empty_docs')
    self._tokens = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_doc_tokens')

  def setup(self):
    self._index_of: tuple[int, Optional[QuerySet], dict[str, int]] = (0, None, {})

  def start_bundle(self):
    self._builder: Optional[TermBlockBuilder] = None

  def _index(self, queries: QuerySet) -> dict[str, int]:
    if self._index_of[1] is not queries:
      self._index_of = (id(queries), queries,
                        {term: i for i, term in enumerate(queries.vocabulary)})
    return self._index_of[2]

  def process(self, element: tuple[str, str], queries: QuerySet) -> Iterator[TermBlock]:
    doc_id, text = element
    if self._builder is None:
      self._builder = TermBlockBuilder(len(queries.vocabulary))
    tokens = tokenize(text, self._stemmer)
    self._docs.inc()
    self._tokens.inc(len(tokens))
    if not tokens:
      self._empty_docs.inc()
    self._builder.add(str(doc_id), tokens, self._index(queries))
    if len(self._builder.ids) >= self._block_size:
      yield self._builder.build()

  def finish_bundle(self):
    if self._builder is not None and self._builder.ids:
      yield beam.transforms.window.GlobalWindows.windowed_value(self._builder.build())
    self._builder = None


class _ScoreBlockFn(beam.DoFn):
  """One ``TermBlock`` x every query -> ``(query_id, Hits)``."""
  def __init__(self, settings: BM25Settings):
    self._settings = settings
    self._blocks = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_corpus_blocks')
    self._docs = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_docs_scored')
    self._hits = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_block_hits')
    self._micros = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/bm25_score_microseconds')

  def process(self, block: TermBlock, queries: QuerySet, stats: CorpusStats
              ) -> Iterator[tuple[str, Hits]]:
    self._blocks.inc()
    self._docs.inc(len(block.ids))
    started = time.perf_counter()
    for query_id, hits in score_block(block, queries, stats, self._settings):
      self._hits.inc(len(hits.doc_ids))
      yield query_id, hits
    self._micros.inc(int((time.perf_counter() - started) * 1e6))


def _log_stats(stats: CorpusStats) -> CorpusStats:
  logger.info('BM25 corpus: %d docs, %d tokens, %d query terms', stats.num_docs,
              stats.total_length, 0 if stats.doc_freqs is None else len(stats.doc_freqs))
  return stats


class BM25TopK(beam.PTransform):
  """``{'queries': (query_id, text), 'corpus': (doc_id, text)}`` -> candidate rows.

  Rows are ``{'query_id', 'doc_id', 'retrieval_rank' (1-based), 'retrieval_score'
  (float32 value)}``, per query by score desc then doc_id asc, at most
  ``settings.top_k`` per query, positive scores only (a query sharing no term
  with the corpus gets no rows).
  """
  def __init__(self, settings: BM25Settings = BM25Settings(), corpus_block_size: int = 8192):
    super().__init__()
    if corpus_block_size < 1:
      raise ValueError(f'corpus_block_size must be >= 1, got {corpus_block_size}')
    self._settings = settings
    self._corpus_block_size = corpus_block_size

  def expand(self, pcolls):
    settings = self._settings
    query_set = (
        pcolls['queries']
        | 'TokenizeQueries' >> beam.ParDo(_TokenizeQueriesFn(settings.stemmer))
        | 'CollectQueries' >> beam.combiners.ToList()
        | 'ToQuerySet' >> beam.Map(build_query_set))
    blocks = pcolls['corpus'] | 'ToTermBlocks' >> beam.ParDo(
        _ToTermBlocksFn(self._corpus_block_size, settings.stemmer),
        queries=beam.pvalue.AsSingleton(query_set))
    stats = (
        blocks
        | 'CorpusStats' >> beam.CombineGlobally(CorpusStatsFn())
        | 'LogStats' >> beam.Map(_log_stats))
    return (
        blocks
        | 'ScoreBlocks' >> beam.ParDo(
            _ScoreBlockFn(settings), queries=beam.pvalue.AsSingleton(query_set),
            stats=beam.pvalue.AsSingleton(stats))
        | 'MergeTopK' >> beam.CombinePerKey(MergeHitsFn(settings.top_k))
        | 'ToCandidateRows' >> beam.FlatMapTuple(hits_rows))
