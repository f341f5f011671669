"""The ``rerank`` job: queries x corpus -> candidates -> cross-encoder -> ranked Parquet.

    beam-rerank rerank --queries q.parquet --corpus c.parquet --output out/ranked \\
        --cross-encoder CE_DIR --query-embeddings out/q_emb --corpus-embeddings out/c_emb
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
from pipelines import encode as encode_job
from pipelines.evaluate import evaluate_ranked
from transforms import evaluation
from transforms.batching import DEFAULT_MAX_TOKENS_PER_BATCH
from transforms.errors import UserInputError
from transforms.model_info import inspect_cross_encoder
from transforms.parquet_input import check_parquet_input, file_columns
from transforms.parquet_sink import MANIFEST_NAME, read_json, write_json
from transforms.reranking import RerankConfig, build_rerank_pipeline, score_pairs

PROG = 'beam-rerank rerank'
_CANDIDATE_STAGES = ('rerank/candidates', 'rerank/join', 'rerank/score')


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description='Rank corpus passages for each query with a cross-encoder. '
      'Candidates come from exact dense top-k over embedding shards (--query-'
      'embeddings/--corpus-embeddings, or --model to encode first), from a '
      'supplied run (--candidates), or from both (their union).',
      epilog=common.BEAM_EPILOG)
  io = parser.add_argument_group('input and output')
  io.add_argument('--queries', required=True, metavar='GLOB', help='Parquet queries (query_id, text).')
  io.add_argument('--corpus', required=True, metavar='GLOB', help='Parquet corpus (doc_id, text[, title]).')
  io.add_argument(
      '--output', required=True, metavar='DIR',
      help='Folder for ranked part-*.parquet (top-n per query), candidates/ '
      '(every scored candidate), dead_letter/, manifest.json, report.json.')
  io.add_argument('--query-id-column', default='query_id', help='(default: %(default)s)')
  io.add_argument('--query-text-column', default='text', help='(default: %(default)s)')
  io.add_argument('--doc-id-column', default='doc_id', help='(default: %(default)s)')
  io.add_argument('--doc-text-column', default='text', help='(default: %(default)s)')
  io.add_argument(
      '--doc-title-column', default=None,
      help='Optional title column put in front of passage texts (default: none).')
  io.add_argument('--title-separator', default='\n', help='What joins title and text (default: newline).')
  io.add_argument(
      '--trec', action='store_true',
      help='Also write the ranked lists as a TREC run file, OUTPUT/run.trec.')
  io.add_argument('--rows-per-shard', type=common.positive_int, default=100_000, help='(default: %(default)s)')
  common.add_dead_letter_limit_argument(io)

  cands = parser.add_argument_group('candidates')
  cands.add_argument(
      '--query-embeddings', metavar='DIR', default=None,
      help='Query embedding shards made by the encode job.')
  cands.add_argument(
      '--corpus-embeddings', metavar='DIR', default=None,
      help='Corpus embedding shards made by the encode job with the same model.')
  cands.add_argument(
      '--model', metavar='NAME_OR_PATH', default=None,
      help='Bi-encoder: encode queries and corpus first (into OUTPUT/embeddings/, '
      'reusable with --previous), then retrieve.')
  cands.add_argument(
      '--candidates', metavar='GLOB', default=None,
      help='Supplied candidates Parquet: query_id, doc_id[, score] (e.g. a BM25 run).')
  cands.add_argument(
      '--candidates-score-column', default='score',
      help='Score column of --candidates, if present (default: %(default)s).')
  cands.add_argument('--top-k', type=common.positive_int, default=100, help='Dense candidates per query (default: %(default)s).')
  cands.add_argument('--corpus-block-size', type=common.positive_int, default=65536, help='Corpus rows per matrix product; the score matrix of one product is query block x this x 4 bytes (default: %(default)s).')
  cands.add_argument('--query-block-size', type=common.positive_int, default=1024, help='Queries per matrix product (default: %(default)s).')
  cands.add_argument(
      '--max-queries-in-memory', type=common.positive_int, default=100_000,
      help='Query embeddings one worker holds as a side input; more queries are split '
      'into groups scored in separate branches (default: %(default)s).')

  scoring = parser.add_argument_group('cross-encoder')
  scoring.add_argument(
      '--cross-encoder', default=None, metavar='NAME_OR_PATH',
      help='sentence-transformers CrossEncoder directory or hub id (1 label). Default: '
      'a cross-encoder fine-tuned locally from the packaged all-MiniLM-L6-v2 on the '
      'sample collection (built once, cached; see its note).')
  scoring.add_argument('--top-n', type=common.positive_int, default=10, help='Ranked rows kept per query (default: %(default)s).')
  scoring.add_argument('--max-length', type=common.positive_int, default=None, help="Tokens per pair (default: the model's).")
  scoring.add_argument(
      '--activation', choices=['identity', 'sigmoid', 'model'], default='identity',
      help='Applied to the logit: identity = raw logits (right for BCE-trained '
      "models), sigmoid, or the model's own default (default: %(default)s).")
  scoring.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto', help='(default: %(default)s)')
  scoring.add_argument('--max-tokens-per-batch', type=common.positive_int, default=DEFAULT_MAX_TOKENS_PER_BATCH, help='Padded tokens per batch (default: %(default)s).')
  scoring.add_argument('--max-batch-size', type=common.positive_int, default=256, help='(default: %(default)s)')
  scoring.add_argument('--sort-window', type=common.positive_int, default=8192, help='Pairs sorted together by length (default: %(default)s).')
  scoring.add_argument('--share-model-across-processes', action='store_true', help='One model per machine (GPUs).')
  scoring.add_argument('--model-copies', type=common.positive_int, default=None, help='With sharing: copies per machine.')
  scoring.add_argument('--trust-remote-code', action='store_true', help='Allow models that ship Python code.')
  common.add_backend_arguments(scoring)
  scoring.add_argument('--allow-pickle-weights', action='store_true', help='Allow models whose weights are only pickle files (.bin); off by default: unpickling can run code.')

  evaluation_group = parser.add_argument_group('evaluation')
  evaluation_group.add_argument('--qrels', metavar='GLOB', default=None, help='Evaluate against these judgments after ranking.')
  evaluation_group.add_argument(
      '--metrics', default=','.join(evaluation.DEFAULT_MEASURES),
      help='With --qrels (default: %(default)s).')
  return parser


def _encode_first(args, beam_args) -> tuple[str, str]:
  """--model: run the encode job for queries and corpus into OUTPUT/embeddings."""
  dirs = {}
  for name, pattern, id_column, text_column, title in (
      ('queries', args.queries, args.query_id_column, args.query_text_column, None),
      ('corpus', args.corpus, args.doc_id_column, args.doc_text_column,
       args.doc_title_column)):
    directory = FileSystems.join(args.output, 'embeddings', name)
    argv = ['--input', pattern, '--output', directory, '--model', args.model,
            '--id-column', id_column, '--text-column', text_column,
            '--device', args.device, '--backend', args.backend,
            '--min-fidelity', str(args.min_fidelity),
            '--fidelity-sample', str(args.fidelity_sample)]
    argv += ['--export-cache', args.export_cache] if args.export_cache else []
    argv += ['--allow-pickle-weights'] if args.allow_pickle_weights else []
    argv += ['--trust-remote-code'] if args.trust_remote_code else []
    if title:
      argv += ['--title-column', title, '--title-separator', args.title_separator]
    if FileSystems.exists(FileSystems.join(directory, MANIFEST_NAME)):
      argv += ['--previous', directory]
    encode_job.run(argv + list(beam_args))
    dirs[name] = directory
  return dirs['queries'], dirs['corpus']


def _write_trec(output_dir: str, tag: str) -> str:
  import polars as pl
  frame = evaluation.read_parquet_files(
      [m.path for m in FileSystems.match(
          [FileSystems.join(output_dir, 'part-*.parquet')])[0].metadata_list],
      ['query_id', 'doc_id', 'rank', 'score']).sort('query_id', 'rank')
  lines = frame.select(pl.format(
      '{} Q0 {} {} {} ' + tag, 'query_id', 'doc_id', 'rank', 'score'))
  path = FileSystems.join(output_dir, 'run.trec')
  text = ''.join(f'{line}\n' for line in lines.to_series().to_list())
  with FileSystems.create(path) as handle:
    handle.write(text.encode('utf-8'))
  return path


def _sample_pairs(query_files, corpus_files, args) -> list[tuple[str, str]]:
  """Pairs for the fidelity check: the i-th query with the i-th passage."""
  if args.fidelity_sample <= 0 or args.backend == 'torch':
    return []
  queries = common.first_values(query_files, [args.query_text_column], args.fidelity_sample)
  passages = common.first_values(corpus_files, [args.doc_text_column], args.fidelity_sample)
  if not queries or not passages:
    return []
  return [(queries[i % len(queries)][0], passages[i % len(passages)][0])
          for i in range(args.fidelity_sample)]


def run(argv: Sequence[str] | None = None) -> dict:
  """Runs the rerank job; returns its report (also written as report.json)."""
  common.quiet_libraries()
  started = time.perf_counter()
  args, beam_args = build_parser().parse_known_args(argv)
  options = common.pipeline_options(beam_args, PROG)
  if bool(args.query_embeddings) != bool(args.corpus_embeddings):
    raise UserInputError('--query-embeddings and --corpus-embeddings go together')
  if args.model and args.query_embeddings:
    raise UserInputError('give either --model or --query-embeddings/--corpus-embeddings')
  if not (args.model or args.query_embeddings or args.candidates):
    raise UserInputError(
        'no candidates: give --query-embeddings and --corpus-embeddings, --model, '
        'or --candidates')
  if os.path.isfile(args.output):
    raise UserInputError(f'--output {args.output!r} is a file, not a folder')
  queries_input = check_parquet_input(
      args.queries, '--queries',
      {args.query_id_column: 'id', args.query_text_column: 'string'})
  corpus_columns = {args.doc_id_column: 'id', args.doc_text_column: 'string'}
  if args.doc_title_column:
    corpus_columns[args.doc_title_column] = 'string'
  corpus_input = check_parquet_input(args.corpus, '--corpus', corpus_columns)
  candidates_pattern, score_column = None, None
  if args.candidates:
    candidates_input = check_parquet_input(
        args.candidates, '--candidates', {'query_id': 'id', 'doc_id': 'id'})
    candidates_pattern = candidates_input.pattern
    if args.candidates_score_column in file_columns(candidates_input.files[0]):
      check_parquet_input(
          args.candidates, '--candidates', {args.candidates_score_column: 'float'})
      score_column = args.candidates_score_column
  if args.qrels:
    check_parquet_input(
        args.qrels, '--qrels', {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'})
    evaluation.parse_measures(args.metrics.split(','))
  # An explicit cross-encoder is checked before any encoding; the default one
  # is built (minutes, once) only after every cheap check has passed.
  ce = (inspect_cross_encoder(
      args.cross_encoder, args.max_length, args.trust_remote_code, args.allow_pickle_weights)
        if args.cross_encoder else None)
  query_dir, corpus_dir = args.query_embeddings, args.corpus_embeddings
  if args.model:
    query_dir, corpus_dir = _encode_first(args, beam_args)
  embeddings = None
  if query_dir:
    embeddings, _ = common.check_embedding_pair(query_dir, corpus_dir)
  if ce is None:
    from transforms.default_cross_encoder import describe, ensure_default_cross_encoder
    default_dir, default_info = ensure_default_cross_encoder()
    print(describe(default_dir, default_info), file=sys.stderr, flush=True)
    ce = inspect_cross_encoder(default_dir, args.max_length, args.trust_remote_code)

  output_dir = args.output.rstrip('/')
  config = RerankConfig(
      queries_pattern=queries_input.pattern,
      corpus_pattern=corpus_input.pattern,
      output_dir=output_dir,
      cross_encoder=ce.name_or_path,
      cross_encoder_fingerprint=ce.fingerprint,
      max_length=ce.max_length,
      query_embeddings_dir=query_dir,
      corpus_embeddings_dir=corpus_dir,
      normalize_embeddings=bool(
          embeddings and not embeddings['normalized'] and
          embeddings['similarity'] == 'cosine'),
      query_groups=common.query_groups(embeddings, args.max_queries_in_memory),
      candidates_pattern=candidates_pattern,
      candidates_score_column=score_column,
      top_k=args.top_k,
      top_n=args.top_n,
      query_id_column=args.query_id_column,
      query_text_column=args.query_text_column,
      doc_id_column=args.doc_id_column,
      doc_text_column=args.doc_text_column,
      doc_title_column=args.doc_title_column,
      title_separator=args.title_separator,
      activation=args.activation,
      device=args.device,
      max_tokens_per_batch=args.max_tokens_per_batch,
      max_batch_size=args.max_batch_size,
      sort_window=args.sort_window,
      corpus_block_size=args.corpus_block_size,
      query_block_size=args.query_block_size,
      rows_per_shard=args.rows_per_shard,
      share_model_across_processes=args.share_model_across_processes,
      model_copies=args.model_copies,
      trust_remote_code=args.trust_remote_code,
      backend=args.backend,
      export_root=args.export_cache)
  fidelity = common.check_backend(
      args, 'cross-encoder',
      lambda backend: score_pairs(config).handler(backend),
      _sample_pairs(queries_input.files, corpus_input.files, args))
  manifest = {
      'kind': 'ranked',
      'cross_encoder': ce.name_or_path,
      'cross_encoder_fingerprint': ce.fingerprint,
      'activation': args.activation,
      'max_length': ce.max_length,
      'top_k': args.top_k if query_dir else None,
      'top_n': args.top_n,
      'candidate_sources': [s for s, on in (
          ('dense', bool(query_dir)), ('supplied', bool(candidates_pattern))) if on],
      'retrieval_model_fingerprint': embeddings and embeddings['model_fingerprint'],
      'ranking': 'score desc, then retrieval_score desc, then doc_id asc',
      'backend': args.backend,
      'backend_fidelity': fidelity,
  }
  print(
      f'[rerank] queries {queries_input.num_rows:,} rows, corpus '
      f'{corpus_input.num_rows:,} rows; candidates from '
      f"{' + '.join(manifest['candidate_sources'])}; cross-encoder {ce.name_or_path} "
      f'(max_length {ce.max_length}, activation {args.activation})',
      file=sys.stderr, flush=True)

  rows_in = queries_input.num_rows + corpus_input.num_rows + (
      candidates_input.num_rows if args.candidates else 0)
  common.limit_dead_letters(options, args.max_dead_letter_fraction, rows_in)
  pipeline = beam.Pipeline(options=options)
  build_rerank_pipeline(pipeline, config, manifest)
  pipeline_started = time.perf_counter()
  result = pipeline.run()
  result.wait_until_finish()
  common.check_dead_letter_limit(result, output_dir, args.max_dead_letter_fraction, rows_in)
  finished = time.perf_counter()

  counts = common.counters(result, 'rerank')
  written = read_json(FileSystems.join(output_dir, MANIFEST_NAME))
  import polars as pl
  dead = common.dead_letter_counts(output_dir)
  by_reason = {f'{stage} {code}': rows for stage, code, rows in dead}
  candidate_dead = sum(rows for stage, _, rows in dead if stage in _CANDIDATE_STAGES)
  candidates_in = counts.get('dense_candidates', 0) + counts.get('supplied_candidates_in', 0)
  scored = counts.get('pairs_scored', 0)
  report = {
      'job': 'rerank',
      'output': output_dir,
      'queries_ranked': counts.get('queries_ranked', 0),
      'candidates_in': candidates_in,
      'dense_candidates': counts.get('dense_candidates', 0),
      'supplied_candidates': counts.get('supplied_candidates_in', 0),
      'union_overlap': counts.get('union_overlap', 0),
      'pairs_scored': scored,
      'candidate_dead_letters': candidate_dead,
      'reconciles': candidates_in == scored + candidate_dead + counts.get('union_overlap', 0),
      'dead_letters': sum(rows for _, _, rows in dead),
      'dead_letters_by_reason': by_reason,
      'pairs_truncated': counts.get('texts_truncated', 0),
      'batches': counts.get('batches', 0),
      'padding_fraction': (1 - counts.get('real_tokens', 0) / counts['padded_tokens'])
      if counts.get('padded_tokens') else 0.0,
      'ranked_rows': written['outputs']['ranked']['rows'],
      'wall_seconds': finished - started,
      'pipeline_seconds': finished - pipeline_started,
      'pairs_per_second': scored / (finished - pipeline_started) if scored else 0.0,
      'backend': args.backend,
      'backend_fidelity': fidelity,
  }
  if args.trec:
    report['trec_run'] = _write_trec(output_dir, 'beam-rerank')
  if args.qrels:
    query_ids = evaluation.read_parquet_files(
        queries_input.files, [args.query_id_column])[args.query_id_column].cast(
            pl.String).to_list()
    report['evaluation'] = evaluate_ranked(
        output_dir, args.qrels, args.metrics.split(','), output_dir, query_ids)
  write_json(report, FileSystems.join(output_dir, 'report.json'))
  common.print_summary('rerank summary', [
      ('queries ranked', report['queries_ranked']),
      ('candidates in', report['candidates_in']),
      ('  dense', report['dense_candidates']),
      ('  supplied', report['supplied_candidates']),
      ('  in both (union)', report['union_overlap']),
      ('pairs scored', scored),
      ('candidates dead-lettered', candidate_dead),
      ('in = scored + dead + union', 'yes' if report['reconciles'] else 'NO'),
      ('all dead letters', report['dead_letters']),
      *[(f'  {k}', n) for k, n in by_reason.items()],
      ('pairs truncated at max_length', report['pairs_truncated']),
      ('padding fraction', f"{report['padding_fraction']:.1%}"),
      ('wall time (s)', report['wall_seconds']),
      ('pairs/s (pipeline)', report['pairs_per_second']),
      ('backend', args.backend + (
          f" (score correlation with float32 {fidelity['mean']:.5f})" if fidelity else '')),
      ('output', output_dir),
  ])
  return report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
