"""Russian next to English: stemming, model coverage, and the product's hybrid rerank.

1. ``stemming``: BM25 nDCG@10 (bm25s lucene, k1 1.5, b 0.75, over the product's
   tokens) with no stemmer, the English and the Russian Snowball stemmer, on
   every judged query of Cranfield, CACM, xquad-en and xquad-ru.
2. ``coverage``: the packaged all-MiniLM-L6-v2 tokenizer on 200 passages (at 256
   tokens) and 200 question + passage pairs (at 128) of xquad-ru, xquad-en and
   Cranfield (``transforms.models.coverage``).
3. ``hybrid`` (``--hybrid``): on xquad-ru (or ``--collection``), the test queries are
   every other query id in sorted order (ids[0::2]); the rest tune.
   ``rerank --model <packaged> --bm25 --cross-encoder none --fusion-weights auto
   --tune-qrels <the rest>`` (language auto) against BM25 stemmed alone, both
   on the test queries.

    .venv/bin/python benchmarks/russian.py [--hybrid] [--collection xquad-ru]

Results: benchmarks/results/russian[-COLLECTION].json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import REPO, write_result  # noqa: E402

DATASETS = os.path.join(REPO, '..', 'shared', 'datasets')


def _load(collection: str):
  import polars as pl
  root = os.path.join(DATASETS, collection)
  corpus = pl.read_parquet(os.path.join(root, 'corpus.parquet'))
  queries = pl.read_parquet(os.path.join(root, 'queries.parquet'))
  qrels: dict = {}
  for query_id, doc_id, relevance in pl.read_parquet(os.path.join(root, 'qrels.parquet')).select(
      'query_id', 'doc_id', 'relevance').iter_rows():
    if relevance > 0:
      qrels.setdefault(str(query_id), {})[str(doc_id)] = relevance
  texts = corpus['text'].to_list()
  if 'title' in corpus.columns:
    texts = [f'{t}\n{x}' if t else x for t, x in zip(corpus['title'].to_list(), texts)]
  return corpus, queries, qrels, texts


def bm25_ndcg(collection: str, stemmer, query_ids=None) -> tuple[float, int]:
  """BM25 nDCG@10 over the judged queries (or ``query_ids``)."""
  import bm25s
  import numpy as np

  from transforms.ranking.fusion import ndcg_at_10
  from transforms.retrieval.bm25 import tokenize
  corpus, queries, qrels, texts = _load(collection)
  ids = [str(d) for d in corpus['doc_id'].to_list()]
  retriever = bm25s.BM25(k1=1.5, b=0.75, method='lucene')
  retriever.index([tokenize(t, stemmer) for t in texts], show_progress=False)
  scores = []
  for query_id, text in queries.select('query_id', 'text').iter_rows():
    query_id = str(query_id)
    if query_id not in qrels or (query_ids is not None and query_id not in query_ids):
      continue
    tokens = tokenize(text, stemmer)
    values = retriever.get_scores(tokens) if tokens else np.zeros(len(ids))
    order = np.argsort(-values, kind='stable')[:10]
    scores.append(ndcg_at_10([ids[i] for i in order], qrels[query_id]))
  return float(np.mean(scores)), len(scores)


def coverage_figures() -> dict:
  from transforms.models import coverage
  from transforms.models.model_info import load_tokenizer, packaged_minilm_path
  tokenizer = load_tokenizer(packaged_minilm_path())
  found = {}
  for collection in ('xquad-ru', 'xquad-en', 'cranfield'):
    _, queries, _, texts = _load(collection)
    pairs = list(zip(queries['text'].to_list(), texts))
    found[collection] = {
        'passages@256': coverage.text_coverage(tokenizer, texts, 256, 'all-MiniLM-L6-v2').as_dict(),
        'pairs@128': coverage.pair_coverage(tokenizer, pairs, 128, 'all-MiniLM-L6-v2').as_dict()}
  return found


def hybrid(collection: str) -> dict:
  """The product's hybrid rerank (auto fusion, guarded) vs BM25 stemmed, on the test half."""
  import polars as pl

  from pipelines import encode, rerank
  from pipelines.common import configure_logging
  configure_logging()
  root = os.path.join(DATASETS, collection)
  queries = pl.read_parquet(os.path.join(root, 'queries.parquet'))
  ids = sorted(queries['query_id'].cast(pl.String).to_list())
  test = set(ids[0::2])
  work = tempfile.mkdtemp(prefix=f'russian-{collection}-')
  qrels = pl.read_parquet(os.path.join(root, 'qrels.parquet'))
  tune = os.path.join(work, 'qrels_tune.parquet')
  qrels.filter(~pl.col('query_id').cast(pl.String).is_in(sorted(test))).write_parquet(tune)
  test_qrels = os.path.join(work, 'qrels_test.parquet')
  qrels.filter(pl.col('query_id').cast(pl.String).is_in(sorted(test))).write_parquet(test_qrels)
  for name, source, extra in (('corpus', 'corpus.parquet', []),
                              ('queries', 'queries.parquet', ['--id-column', 'query_id'])):
    encode.run(['--input', os.path.join(root, source), '--output',
                os.path.join(work, f'emb_{name}'), *extra])
  report = rerank.run([
      '--queries', os.path.join(root, 'queries.parquet'),
      '--corpus', os.path.join(root, 'corpus.parquet'), '--output', os.path.join(work, 'ranked'),
      '--query-embeddings', os.path.join(work, 'emb_queries'),
      '--corpus-embeddings', os.path.join(work, 'emb_corpus'), '--bm25', '--top-k', '100',
      '--cross-encoder', 'none', '--fusion-weights', 'auto', '--tune-qrels', tune,
      '--qrels', test_qrels])
  language = report['language']['bm25_stemmer']
  bm25, count = bm25_ndcg(collection, language, test)
  return {
      'split': 'test = every other query id in sorted order (ids[0::2]); the rest tune',
      'test_queries': count, 'language': report['language'], 'coverage': report['coverage'],
      'fusion': report['fusion'], 'metrics': report['evaluation']['metrics'],
      f'bm25_{language}_test_ndcg@10': bm25,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--hybrid', action='store_true')
  parser.add_argument('--collection', default='xquad-ru', choices=('xquad-ru', 'xquad-en'))
  args = parser.parse_args()
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  result = {'stemming': {}, 'coverage': coverage_figures()}
  for collection in ('cranfield', 'cacm', 'xquad-en', 'xquad-ru'):
    result['stemming'][collection] = {
        str(stemmer): bm25_ndcg(collection, stemmer)[0]
        for stemmer in (None, 'english', 'russian')}
  print({c: {s: round(v, 4) for s, v in r.items()} for c, r in result['stemming'].items()})
  for collection, figures in result['coverage'].items():
    print(collection, {k: {m: v[m] for m in ('tokens_per_word', 'unknown_share',
                                             'truncated_share')} for k, v in figures.items()})
  name = 'russian'
  if args.hybrid:
    result['hybrid'] = hybrid(args.collection)
    name += f'-{args.collection}'
    print({k: v for k, v in result['hybrid'].items() if k not in ('coverage', 'fusion')})
  print('->', write_result(name, result))


if __name__ == '__main__':
  main()
