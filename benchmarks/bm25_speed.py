"""BM25 top-k: the Beam pipeline (``BM25TopK``, DirectRunner) vs ``bm25s`` in one process.

Each side runs as its own child process on the same data and the same tokens
(``transforms.retrieval.bm25.tokenize``; the bm25s child uses a copy of its rule, checked
equal by the parent, so that it does not import Beam), from reading Parquet to having the top-k of
every query, and prints its own timings and peak RSS (``VmHWM`` of its address
space, Linux; ``ru_maxrss`` is printed too but on Linux it carries the
parent's high-water mark over ``exec``). The parent compares the two top-k
lists per query.

Speed (default): ``--docs`` sizes (default 1,000 and 10,000); up to 1,400 docs
are Cranfield abstracts (title + ' ' + text), beyond that synthetic docs whose
token counts follow Cranfield's and whose words are drawn from Cranfield's
corpus unigram distribution (fixed seed). Queries: Cranfield's 225 plus
synthetic ones drawn the same way from the query-word distribution, 1,000 in
all by default.

    .venv/bin/python benchmarks/bm25_speed.py [--docs 1000 10000 100000] [-- beam args]
    .venv/bin/python benchmarks/bm25_speed.py --check-cranfield

``--check-cranfield``: the 1,400 Cranfield docs and 225 queries, top-100 of
both sides: max |score difference| (each of our scores against bm25s's score
of that doc) and whether the lists agree (identical; or identical up to
near-ties, i.e. scores equal within ``--tie-tol`` and set differences only at
the cut-off score).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CRANFIELD = os.environ.get(
    'CRANFIELD_DIR', os.path.join(REPO, '..', 'shared', 'datasets', 'cranfield'))


def _peak_rss() -> dict:
  """This process's own peak RSS (VmHWM) and its ru_maxrss, in MB."""
  with open('/proc/self/status') as handle:
    hwm_kb = next(int(line.split()[1]) for line in handle if line.startswith('VmHWM:'))
  return {'peak_rss_mb': hwm_kb / 1024,
          'ru_maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# transforms.retrieval.bm25.tokenize without stemming, copied so that the bm25s child does not
# import Beam (~160 MB); ``_check_tokenizer`` holds the two equal.
_TOKEN_RULE = re.compile(r'[^\W_]+', re.UNICODE)


def _plain_tokenize(text: str | None) -> list[str]:
  return _TOKEN_RULE.findall(text.lower()) if text else []


def _check_tokenizer(directory: str, sample: int = 5_000) -> None:
  from transforms.retrieval.bm25 import tokenize
  for name, column in (('queries.parquet', 'query_id'), ('corpus.parquet', 'doc_id')):
    _, texts = _read_pairs(os.path.join(directory, name), column)
    for text in texts[:sample]:
      if tokenize(text) != _plain_tokenize(text):
        sys.exit('the benchmark tokenizer differs from transforms.retrieval.bm25.tokenize '
                 f'on {text!r}')


def _read_pairs(path: str, id_column: str) -> tuple[list[str], list[str]]:
  import pyarrow.parquet as pq
  table = pq.read_table(path)
  return table.column(id_column).to_pylist(), table.column('text').to_pylist()


def child_beam(args, beam_args: list[str]) -> None:
  """``BM25TopK`` over the Parquet files, rows written as JSON lines."""
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter
  from apache_beam.options.pipeline_options import PipelineOptions

  from transforms.retrieval.bm25 import BM25Settings, BM25TopK
  after_imports = _peak_rss()['peak_rss_mb']

  def pairs(table, id_column):
    return zip(table.column(id_column).to_pylist(), table.column('text').to_pylist())

  started = time.perf_counter()
  pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
  inputs = {
      'queries': pipeline
      | 'ReadQueries' >> beam.io.ReadFromParquetBatched(os.path.join(args.data, 'queries.parquet'))
      | 'QueryPairs' >> beam.FlatMap(pairs, 'query_id'),
      'corpus': pipeline
      | 'ReadCorpus' >> beam.io.ReadFromParquetBatched(os.path.join(args.data, 'corpus.parquet'))
      | 'DocPairs' >> beam.FlatMap(pairs, 'doc_id'),
  }
  kwargs = {'corpus_block_size': args.block_size} if args.block_size else {}
  rows = inputs | 'BM25TopK' >> BM25TopK(BM25Settings(top_k=args.k), **kwargs)
  _ = (rows | 'ToJson' >> beam.Map(json.dumps)
       | 'Write' >> beam.io.WriteToText(args.out, shard_name_template=''))
  result = pipeline.run()
  result.wait_until_finish()
  seconds = time.perf_counter() - started
  micros = sum(c.committed or 0 for c in result.metrics().query(
      MetricsFilter().with_name('rerank/bm25_score_microseconds'))['counters'])
  print(json.dumps({'seconds': seconds, 'block_scoring_seconds': micros / 1e6,
                    'peak_rss_after_imports_mb': after_imports, **_peak_rss()}))


def child_bm25s(args) -> None:
  """bm25s (method='lucene') on the same tokens: index, then top-k of every query."""
  import bm25s
  import pyarrow.parquet  # noqa: F401  (imported before the RSS baseline)
  after_imports = _peak_rss()['peak_rss_mb']
  started = time.perf_counter()
  doc_ids, doc_texts = _read_pairs(os.path.join(args.data, 'corpus.parquet'), 'doc_id')
  query_ids, query_texts = _read_pairs(os.path.join(args.data, 'queries.parquet'), 'query_id')
  corpus_tokens = [_plain_tokenize(text) for text in doc_texts]
  query_tokens = [_plain_tokenize(text) for text in query_texts]
  del doc_texts
  tokenized = time.perf_counter()
  retriever = bm25s.BM25(method='lucene', k1=1.5, b=0.75)
  retriever.index(corpus_tokens, show_progress=False)
  del corpus_tokens
  indexed = time.perf_counter()
  indices, scores = retriever.retrieve(
      query_tokens, k=min(args.k, len(doc_ids)), show_progress=False, n_threads=0, sorted=True)
  retrieved = time.perf_counter()
  report = {'seconds': retrieved - started, 'tokenize_seconds': tokenized - started,
            'index_seconds': indexed - tokenized, 'retrieve_seconds': retrieved - indexed,
            'peak_rss_after_imports_mb': after_imports, **_peak_rss()}
  saved = {'query_ids': np.array(query_ids, dtype=str), 'doc_ids': np.array(doc_ids, dtype=str),
           'indices': indices, 'scores': scores}
  if args.full_scores:  # Every doc's score for every query (small corpora only).
    saved['full'] = np.stack([
        retriever.get_scores(tokens) if tokens else np.zeros(len(doc_ids), np.float32)
        for tokens in query_tokens])
  np.savez(args.out, **saved)
  print(json.dumps(report))


def _run_child(mode: str, data: str, out: str, args, beam_args: list[str]) -> dict:
  command = [sys.executable, os.path.abspath(__file__), '--child', mode, '--data', data,
             '--out', out, '--k', str(args.k)]
  if args.block_size:
    command += ['--block-size', str(args.block_size)]
  if mode == 'bm25s' and args.check_cranfield:
    command.append('--full-scores')
  started = time.perf_counter()
  proc = subprocess.run(
      command + (['--', *beam_args] if mode == 'beam' and beam_args else []),
      capture_output=True, text=True, cwd=REPO,
      env={**os.environ, 'PYTHONPATH': REPO, 'HF_HUB_OFFLINE': '1'})
  if proc.returncode:
    sys.exit(f'{mode} child failed:\n{proc.stdout[-2000:]}{proc.stderr[-6000:]}')
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  report['process_seconds'] = time.perf_counter() - started
  return report


def _load_cranfield() -> tuple[list[str], list[str], list[str], list[str]]:
  """Cranfield doc ids, title + ' ' + text, query ids, query texts."""
  import pyarrow.parquet as pq
  if not os.path.exists(os.path.join(CRANFIELD, 'corpus.parquet')):
    sys.exit(f'Cranfield not found at {CRANFIELD} (set CRANFIELD_DIR)')
  corpus = pq.read_table(os.path.join(CRANFIELD, 'corpus.parquet')).to_pylist()
  queries = pq.read_table(os.path.join(CRANFIELD, 'queries.parquet')).to_pylist()
  texts = [' '.join(part for part in (row['title'], row['text']) if part) for row in corpus]
  return ([row['doc_id'] for row in corpus], texts,
          [row['query_id'] for row in queries], [row['text'] for row in queries])


def _synthetic(texts: list[str], count: int, rng: np.random.Generator) -> list[str]:
  """``count`` texts: token counts drawn from ``texts``'s, words from their unigrams."""
  from transforms.retrieval.bm25 import tokenize
  tokens = [tokenize(text) for text in texts]
  lengths = np.array([len(t) for t in tokens if t])
  vocabulary, counts = np.unique(np.concatenate([np.array(t) for t in tokens if t]),
                                 return_counts=True)
  chosen = rng.choice(lengths, size=count)
  words = vocabulary[rng.choice(len(vocabulary), size=int(chosen.sum()), p=counts / counts.sum())]
  bounds = np.cumsum(chosen)[:-1]
  return [' '.join(piece) for piece in np.split(words, bounds)]


def _write(directory: str, name: str, id_column: str, ids: list[str], texts: list[str]) -> None:
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({id_column: pa.array(ids, pa.string()),
                           'text': pa.array(texts, pa.string())}),
                 os.path.join(directory, name), row_group_size=10_000)


def make_data(directory: str, num_docs: int | None, num_queries: int | None, seed: int) -> None:
  """corpus.parquet (doc_id, text) and queries.parquet (query_id, text) in ``directory``;
  ``None`` sizes: Cranfield as it is."""
  rng = np.random.default_rng(seed)
  doc_ids, doc_texts, query_ids, query_texts = _load_cranfield()
  real_docs, real_queries = doc_texts, query_texts
  if num_docs is not None:
    doc_ids, doc_texts = doc_ids[:num_docs], doc_texts[:num_docs]
    extra = num_docs - len(doc_ids)
    if extra > 0:
      doc_ids += [f's{i:07d}' for i in range(extra)]
      doc_texts += _synthetic(real_docs, extra, rng)
  if num_queries is not None:
    query_ids, query_texts = query_ids[:num_queries], query_texts[:num_queries]
    extra = num_queries - len(query_ids)
    if extra > 0:
      query_ids += [f'sq{i:05d}' for i in range(extra)]
      query_texts += _synthetic(real_queries, extra, rng)
  os.makedirs(directory, exist_ok=True)
  _write(directory, 'corpus.parquet', 'doc_id', doc_ids, doc_texts)
  _write(directory, 'queries.parquet', 'query_id', query_ids, query_texts)


def compare(beam_rows_path: str, bm25s_path: str, tie_tol: float) -> dict:
  """Per query: our rows against bm25s's positive-score top-k."""
  ours: dict[str, list[tuple[str, float]]] = {}
  with open(beam_rows_path) as handle:
    rows = sorted((json.loads(line) for line in handle),
                  key=lambda r: (r['query_id'], r['retrieval_rank']))
  for row in rows:
    ours.setdefault(row['query_id'], []).append((row['doc_id'], row['retrieval_score']))
  saved = np.load(bm25s_path)
  doc_ids, full = saved['doc_ids'], saved['full'] if 'full' in saved else None
  position = {doc_id: i for i, doc_id in enumerate(doc_ids.tolist())} if full is not None else {}
  identical = same_set = up_to_ties = 0
  max_diff = max_diff_full = max_rel_full = 0.0
  for row, query_id in enumerate(saved['query_ids'].tolist()):
    keep = saved['scores'][row] > 0
    theirs = list(zip(doc_ids[saved['indices'][row][keep]].tolist(),
                      saved['scores'][row][keep].astype(np.float64).tolist()))
    mine = ours.get(query_id, [])
    their_score, my_score = dict(theirs), dict(mine)
    for doc_id, score in mine:
      if doc_id in their_score:
        max_diff = max(max_diff, abs(score - their_score[doc_id]))
      if full is not None:
        reference = float(full[row, position[doc_id]])
        max_diff_full = max(max_diff_full, abs(score - reference))
        max_rel_full = max(max_rel_full, abs(score - reference) / max(abs(reference), 1e-30))
    identical += [d for d, _ in mine] == [d for d, _ in theirs]
    same_set += set(my_score) == set(their_score)
    agree = len(mine) == len(theirs) and all(
        abs(a[1] - b[1]) <= tie_tol for a, b in zip(mine, theirs))
    if agree and mine:
      cut = min(mine[-1][1], theirs[-1][1])
      differing = [my_score.get(d, their_score.get(d)) for d in set(my_score) ^ set(their_score)]
      agree = all(abs(score - cut) <= tie_tol for score in differing)
    up_to_ties += agree
  result = {
      'queries': len(saved['query_ids']), 'queries_with_rows': len(ours),
      'rows': len(rows), 'identical_lists': identical, 'same_sets': same_set,
      'agree_up_to_near_ties': up_to_ties, 'tie_tol': tie_tol,
      'max_abs_score_diff_common_docs': max_diff,
  }
  if full is not None:
    result['max_abs_score_diff_vs_bm25s_full_scores'] = max_diff_full
    result['max_rel_score_diff_vs_bm25s_full_scores'] = max_rel_full
  return result


def run_case(directory: str, args, beam_args: list[str]) -> dict:
  _check_tokenizer(directory)
  beam = _run_child('beam', directory, os.path.join(directory, 'beam_rows.jsonl'), args, beam_args)
  theirs = _run_child('bm25s', directory, os.path.join(directory, 'bm25s.npz'), args, beam_args)
  import pyarrow.parquet as pq
  num_queries = pq.read_metadata(os.path.join(directory, 'queries.parquet')).num_rows
  num_docs = pq.read_metadata(os.path.join(directory, 'corpus.parquet')).num_rows
  result = {
      'docs': num_docs, 'queries': num_queries, 'k': args.k,
      'beam': beam, 'bm25s': theirs,
      'beam_queries_per_second': num_queries / beam['seconds'],
      'bm25s_queries_per_second': num_queries / theirs['seconds'],
      'bm25s_retrieve_only_queries_per_second': num_queries / theirs['retrieve_seconds'],
      'agreement': compare(os.path.join(directory, 'beam_rows.jsonl'),
                           os.path.join(directory, 'bm25s.npz'), args.tie_tol),
  }
  result['ratio_beam_over_bm25s_queries_per_second'] = (
      result['beam_queries_per_second'] / result['bm25s_queries_per_second'])
  result['ratio_beam_over_bm25s_peak_rss'] = beam['peak_rss_mb'] / theirs['peak_rss_mb']
  return result


def _summary(result: dict) -> str:
  agreement = result['agreement']
  return (f"docs={result['docs']} queries={result['queries']}: "
          f"beam {result['beam_queries_per_second']:.1f} q/s ({result['beam']['seconds']:.1f} s, "
          f"peak {result['beam']['peak_rss_mb']:.0f} MB) | bm25s "
          f"{result['bm25s_queries_per_second']:.1f} q/s ({result['bm25s']['seconds']:.1f} s, "
          f"peak {result['bm25s']['peak_rss_mb']:.0f} MB) | q/s ratio "
          f"{result['ratio_beam_over_bm25s_queries_per_second']:.2f} | lists identical "
          f"{agreement['identical_lists']}/{agreement['queries']}, up to near-ties "
          f"{agreement['agree_up_to_near_ties']}, max |diff| "
          f"{agreement['max_abs_score_diff_common_docs']:.2e}")


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--docs', type=int, nargs='+', default=[1_000, 10_000])
  parser.add_argument('--queries', type=int, default=1_000)
  parser.add_argument('--k', type=int, default=100)
  parser.add_argument('--block-size', type=int, default=0,
                      help="BM25TopK's corpus_block_size (0: its default)")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--tie-tol', type=float, default=1e-5,
                      help='scores this close count as tied when comparing lists')
  parser.add_argument('--check-cranfield', action='store_true')
  parser.add_argument('--workdir', default=None, help='where data and outputs go (default: temp)')
  parser.add_argument('--json-out', default=None, help='also write the results here')
  parser.add_argument('--child', choices=['beam', 'bm25s'], help=argparse.SUPPRESS)
  parser.add_argument('--data', help=argparse.SUPPRESS)
  parser.add_argument('--out', help=argparse.SUPPRESS)
  parser.add_argument('--full-scores', action='store_true', help=argparse.SUPPRESS)
  args, beam_args = parser.parse_known_args()
  beam_args = [a for a in beam_args if a != '--']
  if args.child == 'beam':
    return child_beam(args, beam_args)
  if args.child == 'bm25s':
    return child_bm25s(args)

  workdir = args.workdir or tempfile.mkdtemp(prefix='bm25_speed_')
  results = []
  if args.check_cranfield:
    directory = os.path.join(workdir, 'cranfield')
    make_data(directory, None, None, args.seed)
    results.append({'case': 'cranfield', **run_case(directory, args, beam_args)})
  else:
    for num_docs in args.docs:
      directory = os.path.join(workdir, f'docs{num_docs}_queries{args.queries}')
      started = time.perf_counter()
      make_data(directory, num_docs, args.queries, args.seed)
      print(f'data for {num_docs} docs: {time.perf_counter() - started:.1f} s', file=sys.stderr)
      results.append({'case': f'synthetic_{num_docs}', **run_case(directory, args, beam_args)})
      print(_summary(results[-1]), file=sys.stderr)
  for result in results:
    print(_summary(result))
  print(json.dumps(results, indent=2))
  if args.json_out:
    with open(args.json_out, 'w') as handle:
      json.dump(results, handle, indent=2)


if __name__ == '__main__':
  main()
