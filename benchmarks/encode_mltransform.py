"""Beam's own route for the encode stage: ``MLTransform`` +
``SentenceTransformerEmbeddings`` (apache_beam.ml.transforms.embeddings.huggingface).

One whole process, as a user would write it with Beam's built-ins: read the
corpus Parquet (doc_id, text), drop empty texts, embed the ``text`` column
(normalized, Beam's default ``BatchElements`` batching), write
``id, embedding`` Parquet. Prints one JSON line (texts, seconds, peak RSS).
``benchmarks/encode.py --mltransform`` and ``benchmarks/run_all.py`` run it
beside the encode job and raw ``model.encode``.

    .venv/bin/python benchmarks/encode_mltransform.py --input corpus.parquet \
        --output DIR [--backend torch|openvino|openvino-fp32] [--export-cache DIR]

Backends: ``torch`` loads the model folder; ``openvino*`` load the same cached
export the encode job uses (``backend='openvino'`` through ``load_model_args``,
the same ``ov_config`` for openvino-fp32). ``torch-bf16`` (autocast) cannot be
expressed through MLTransform's arguments and is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--input', required=True)
  parser.add_argument('--output', required=True)
  parser.add_argument('--model', default=None, help='default: packaged all-MiniLM-L6-v2')
  parser.add_argument('--backend', default='torch')
  parser.add_argument('--export-cache', default=None)
  args, beam_args = parser.parse_known_args()
  started = time.perf_counter()
  import apache_beam as beam
  import pyarrow as pa
  from apache_beam.ml.transforms.base import MLTransform
  from apache_beam.ml.transforms.embeddings.huggingface import SentenceTransformerEmbeddings
  from apache_beam.options.pipeline_options import PipelineOptions

  from transforms.models.backends import BACKENDS, _runtime_kwargs, ensure_export
  from transforms.models.model_info import fingerprint_model_dir, packaged_minilm_path
  model = args.model or packaged_minilm_path()
  backend = BACKENDS[args.backend]
  if backend.autocast or backend.half:
    sys.exit(f'--backend {args.backend}: MLTransform has no way to run autocast/half')
  load_model_args = {'device': 'cpu'}
  if backend.runtime != 'torch':
    model = ensure_export(model, fingerprint_model_dir(model), 'bi-encoder', backend,
                          args.export_cache)
    load_model_args.update(backend=backend.runtime, **_runtime_kwargs(backend, model))
  artifacts = tempfile.mkdtemp(prefix='mltransform_artifacts_')
  os.makedirs(args.output, exist_ok=True)
  counter = beam.metrics.Metrics.counter('bench', 'texts')

  def keep(row):
    return bool(row['text'] and row['text'].strip())

  def to_row(row):
    counter.inc()
    return {'id': row['doc_id'], 'embedding': [float(x) for x in row['text']]}

  schema = pa.schema([('id', pa.string()), ('embedding', pa.list_(pa.float32()))])
  pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
  rows = (pipeline
          | 'Read' >> beam.io.ReadFromParquet(args.input, columns=['doc_id', 'text'])
          | 'NonEmpty' >> beam.Filter(keep))
  embedded = rows | 'MLTransform' >> MLTransform(
      write_artifact_location=artifacts).with_transform(SentenceTransformerEmbeddings(
          model_name=model, columns=['text'], load_model_args=load_model_args,
          inference_args={'normalize_embeddings': True}))
  _ = (embedded | 'ToRow' >> beam.Map(to_row)
       | 'Write' >> beam.io.WriteToParquet(os.path.join(args.output, 'part'), schema,
                                           file_name_suffix='.parquet'))
  result = pipeline.run()
  result.wait_until_finish()
  texts = sum(c.committed or 0 for c in result.metrics().query()['counters']
              if c.key.metric.name == 'texts')
  print(json.dumps({'texts': texts, 'pipeline_seconds': time.perf_counter() - started,
                    'backend': args.backend,
                    'self_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == '__main__':
  main()
