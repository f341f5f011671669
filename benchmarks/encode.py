"""Encode stage: the pipeline vs raw ``SentenceTransformer.encode``, one run.

Both sides are whole processes (interpreter start, imports, model load, Parquet
read, encoding, writing Parquet), same model, same backend, same torch threads,
on the Cranfield abstracts (1,400 rows, the ``text`` column; the 2 empty ones
are dead-lettered by the job and skipped by the raw side).

The raw side is a plain ``model.encode(texts, batch_size=32,
normalize_embeddings=True)`` on a model loaded by the product's own
``transforms.backends.load_model`` (so both sides run identical model objects:
same export, same OpenVINO config) inside ``inference_context`` (autocast for
torch-bf16; nothing otherwise); it then writes ``id, embedding`` Parquet.
With ``--mltransform`` a third process runs Beam's ``MLTransform`` +
``SentenceTransformerEmbeddings`` (``benchmarks/encode_mltransform.py``).

For non-torch backends the export is made once before any timing
(``--export-cache``, shared by all sides). The job's fidelity check (a float32
reference on a sample) is part of its run and is timed; ``--fidelity-sample 0``
after ``--`` skips it. Embeddings of the two sides are compared (mean cosine).

    .venv/bin/python benchmarks/encode.py [--repeats 3] [--limit N] [--backend B]
        [--export-cache DIR] [--mltransform] [-- beam/job args]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import (  # noqa: E402
  backend_args,
  last_json,
  pre_export,
  require_cranfield,
  timed_python,
  write_result,
)

RAW = r'''
import json, resource, sys, time
import pyarrow as pa, pyarrow.parquet as pq
from transforms.models.backends import BACKENDS, inference_context, load_model
from transforms.models.model_info import packaged_minilm_path
table = pq.read_table(sys.argv[1], columns=['doc_id', 'text'])
rows = [(i, t) for i, t in zip(table.column('doc_id').to_pylist(), table.column('text').to_pylist())
        if t and t.strip()]
ids, texts = [r[0] for r in rows], [r[1] for r in rows]
backend = BACKENDS[sys.argv[2]]
model = load_model(packaged_minilm_path(), 'bi-encoder', backend, 'cpu',
                   export_root=sys.argv[3] or None)
t = time.perf_counter()
with inference_context(backend, 'cpu'):
    embeddings = model.encode(texts, batch_size=32, normalize_embeddings=True)
encode_seconds = time.perf_counter() - t
pq.write_table(pa.table({'id': ids, 'embedding': pa.FixedSizeListArray.from_arrays(
    pa.array(embeddings.astype('float32').ravel()), embeddings.shape[1])}), sys.argv[4])
print(json.dumps({'texts': len(texts), 'encode_seconds': encode_seconds,
                  'self_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def mean_cosine(path_a: str, path_b: str) -> dict:
  """Mean and minimum cosine between two embedding sets, joined by id."""
  import numpy as np
  import polars as pl
  a = pl.read_parquet(path_a).select('id', pl.col('embedding').alias('a'))
  b = pl.read_parquet(path_b).select('id', pl.col('embedding').alias('b'))
  joined = a.join(b, on='id')
  if not joined.height:
    return {'rows_compared': 0}
  x = np.asarray(joined['a'].to_list(), dtype=np.float64)
  y = np.asarray(joined['b'].to_list(), dtype=np.float64)
  cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
  return {'rows_compared': joined.height, 'mean_cosine': float(cos.mean()),
          'min_cosine': float(cos.min())}


def limited(corpus: str, limit: int, workdir: str) -> str:
  if not limit:
    return corpus
  import pyarrow.parquet as pq
  path = os.path.join(workdir, f'corpus-first{limit}.parquet')
  pq.write_table(pq.read_table(corpus).slice(0, limit), path)
  return path


def measure(corpus: str, *, backend: str = 'torch', export_cache: str | None = None,
            repeats: int = 1, mltransform: bool = False, beam_args: list[str] = (),
            workdir: str | None = None, env: dict | None = None) -> dict:
  """Runs raw, the encode job (and MLTransform) ``repeats`` times each, in
  turn, every one its own process; medians of the wall times."""
  workdir = workdir or tempfile.mkdtemp(prefix='bench_encode_')
  os.makedirs(workdir, exist_ok=True)
  export_seconds = pre_export(_minilm(), 'bi-encoder', backend, export_cache)
  runs: dict[str, list[dict]] = {'raw': [], 'pipeline': [], 'mltransform': []}
  for repeat in range(repeats):
    raw_out = os.path.join(workdir, f'raw-{repeat}.parquet')
    raw = timed_python(['-c', RAW, corpus, backend, export_cache or '', raw_out], env=env)
    info = last_json(raw['stdout'])
    runs['raw'].append({'texts': info['texts'], 'wall_seconds': raw['wall_seconds'],
                        'encode_seconds': info['encode_seconds'],
                        'peak_rss_mb': raw['peak_rss_mb']})
    out = os.path.join(workdir, f'pipeline-{repeat}')
    pipe = timed_python(['-m', 'pipelines.encode', '--input', corpus, '--output', out,
                         *backend_args(backend, export_cache), *beam_args], env=env)
    with open(os.path.join(out, 'report.json')) as handle:
      report = json.load(handle)
    runs['pipeline'].append({
        'texts': report['texts_encoded'], 'wall_seconds': pipe['wall_seconds'],
        'padding_fraction': report['padding_fraction'], 'batches': report['batches'],
        'pipeline_seconds': report['pipeline_seconds'], 'peak_rss_mb': pipe['peak_rss_mb'],
        'backend_fidelity': report.get('backend_fidelity')})
    msg = (f'encode repeat {repeat + 1} ({backend}): raw {raw["wall_seconds"]:.1f}s, '
           f'pipeline {pipe["wall_seconds"]:.1f}s')
    if mltransform:
      ml_out = os.path.join(workdir, f'mltransform-{repeat}')
      ml = timed_python([os.path.join('benchmarks', 'encode_mltransform.py'), '--input', corpus,
                         '--output', ml_out, '--backend', backend,
                         *(['--export-cache', export_cache] if export_cache else [])], env=env)
      ml_info = last_json(ml['stdout'])
      runs['mltransform'].append({'texts': ml_info['texts'], 'wall_seconds': ml['wall_seconds'],
                                  'peak_rss_mb': ml['peak_rss_mb']})
      msg += f', MLTransform {ml["wall_seconds"]:.1f}s'
    print(msg, file=sys.stderr, flush=True)

  def rate(side):
    return runs[side][0]['texts'] / statistics.median(r['wall_seconds'] for r in runs[side])

  texts = runs['raw'][0]['texts']
  result = {
      'texts': texts, 'backend': backend, 'beam_args': list(beam_args),
      'export_seconds_before_timing': export_seconds,
      'raw_texts_per_second': rate('raw'),
      'pipeline_texts_per_second': rate('pipeline'),
      'ratio_pipeline_over_raw': rate('pipeline') / rate('raw'),
      'pipeline_padding_fraction': runs['pipeline'][0]['padding_fraction'],
      'raw_encode_only_texts_per_second': texts / statistics.median(
          r['encode_seconds'] for r in runs['raw']),
      'raw_peak_rss_mb': max(r['peak_rss_mb'] for r in runs['raw']),
      'pipeline_peak_rss_mb': max(r['peak_rss_mb'] for r in runs['pipeline']),
      'pipeline_vs_raw_embeddings': mean_cosine(
          os.path.join(workdir, 'raw-0.parquet'),
          os.path.join(workdir, 'pipeline-0', 'part-*.parquet')),
      'raw_runs': runs['raw'], 'pipeline_runs': runs['pipeline'],
  }
  if mltransform:
    result.update({
        'mltransform_texts_per_second': rate('mltransform'),
        'ratio_mltransform_over_raw': rate('mltransform') / rate('raw'),
        'ratio_pipeline_over_mltransform': rate('pipeline') / rate('mltransform'),
        'mltransform_peak_rss_mb': max(r['peak_rss_mb'] for r in runs['mltransform']),
        'mltransform_runs': runs['mltransform'],
    })
  return result


def _minilm() -> str:
  from transforms.models.model_info import packaged_minilm_path
  return packaged_minilm_path()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--limit', type=int, default=0, help='first N rows only (0 = all)')
  parser.add_argument('--corpus', default=None, help='corpus Parquet (default: Cranfield)')
  parser.add_argument('--backend', default='torch',
                      help='torch | torch-bf16 | torch-fp16 | openvino | openvino-fp32; '
                           'both sides run it (default: torch)')
  parser.add_argument('--export-cache', default=None,
                      help='export folder for non-torch backends, shared by all sides '
                           '(default: the product default)')
  parser.add_argument('--mltransform', action='store_true',
                      help="also Beam's MLTransform + SentenceTransformerEmbeddings")
  args, beam_args = parser.parse_known_args()
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  corpus = args.corpus or os.path.join(require_cranfield(), 'corpus.parquet')
  workdir = tempfile.mkdtemp(prefix='bench_encode_')
  corpus = limited(corpus, args.limit, workdir)
  result = measure(corpus, backend=args.backend, export_cache=args.export_cache,
                   repeats=args.repeats, mltransform=args.mltransform,
                   beam_args=[a for a in beam_args if a != '--'], workdir=workdir)
  name = 'encode' if args.backend == 'torch' else f'encode-{args.backend}'
  path = write_result(name, result, smoke=bool(args.limit))
  line = (f'texts {result["texts"]} ({args.backend}): raw encode (whole process) '
          f'{result["raw_texts_per_second"]:.1f} texts/s, pipeline '
          f'{result["pipeline_texts_per_second"]:.1f} texts/s, ratio '
          f'{result["ratio_pipeline_over_raw"]:.3f}')
  if args.mltransform:
    line += (f'; MLTransform {result["mltransform_texts_per_second"]:.1f} texts/s (pipeline/'
             f'MLTransform {result["ratio_pipeline_over_mltransform"]:.3f})')
  line += (f'; pipeline padding {result["pipeline_padding_fraction"]:.1%}; raw encode() alone '
           f'{result["raw_encode_only_texts_per_second"]:.1f} texts/s; peak RSS pipeline '
           f'{result["pipeline_peak_rss_mb"]:.0f} MB, raw {result["raw_peak_rss_mb"]:.0f} MB; '
           f'embeddings {result["pipeline_vs_raw_embeddings"]} -> {path}')
  print(line)


if __name__ == '__main__':
  main()
