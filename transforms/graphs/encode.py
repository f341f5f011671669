"""The encode job's graph: Parquet rows -> embedding shards + dead letters."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.core.dead_letters import DEAD_LETTER_SCHEMA, DEAD_LETTER_TAG, dead_letter_sort_key
from transforms.core.texts import ReadTexts
from transforms.io.parquet_sink import (
  DEFAULT_ROWS_PER_SHARD,
  MANIFEST_NAME,
  CommitOutputs,
  ShardedOutput,
  WriteParquetShards,
  committed_files,
)
from transforms.models.bi_encoder import SentenceTransformerHandler
from transforms.models.inference import InferByTokenLength
from transforms.models.inference_settings import InferenceSettings
from transforms.models.model_info import BiEncoderInfo
from transforms.reuse.embeddings import REUSED_TAG, ReuseUnchanged

STAGE = 'encode'
EMBEDDINGS_METADATA_KEY = b'beam_rerank.embeddings'


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
  """Everything the encode job needs, validated by the launcher."""
  input_pattern: str
  output_dir: str
  model: str
  id_column: str = 'doc_id'
  text_column: str = 'text'
  title_column: Optional[str] = None
  title_separator: str = '\n'
  prompt: Optional[str] = None
  max_seq_length: Optional[int] = None
  precision: str = 'float32'
  normalize: bool = True
  previous_dir: Optional[str] = None
  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
  inference: InferenceSettings = InferenceSettings()


def embedding_settings(config: EncodeConfig, info: BiEncoderInfo) -> dict:
  """The manifest's description of the embeddings (what decides their values)."""
  return {
      'kind': 'embeddings',
      'model': config.model,
      'model_fingerprint': info.fingerprint,
      'dim': info.dim,
      'normalized': bool(config.normalize or info.model_normalizes),
      'similarity': info.similarity,
      'precision': config.precision,
      'max_seq_length': info.max_seq_length,
      'prompt': config.prompt or '',
      'backend': config.inference.backend,
      'source': {
          'input': config.input_pattern,
          'id_column': config.id_column,
          'text_column': config.text_column,
          'title_column': config.title_column,
          'title_separator': config.title_separator,
      },
  }


def embedding_schema(dim: int, precision: str, settings: dict) -> pa.Schema:
  """The embeddings contract: ``id, embedding fixed_size_list[dim], text_sha256``."""
  value_type = pa.float16() if precision == 'float16' else pa.float32()
  return pa.schema(
      [
          pa.field('id', pa.string(), nullable=False),
          pa.field('embedding', pa.list_(value_type, dim), nullable=False),
          pa.field('text_sha256', pa.string(), nullable=False),
      ],
      metadata={EMBEDDINGS_METADATA_KEY: json.dumps(settings, sort_keys=True)})


def embeddings_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
  """Rows with numpy embeddings -> one Arrow table, without per-float Python work."""
  list_type = schema.field('embedding').type
  dim = list_type.list_size
  dtype = np.float16 if list_type.value_type == pa.float16() else np.float32
  if rows:
    matrix = np.stack([np.asarray(r['embedding'], dtype=dtype) for r in rows])
  else:
    matrix = np.zeros((0, dim), dtype=dtype)
  embeddings = pa.FixedSizeListArray.from_arrays(
      pa.array(matrix.reshape(-1), type=list_type.value_type), dim)
  return pa.Table.from_arrays(
      [
          pa.array([r['id'] for r in rows], pa.string()),
          embeddings,
          pa.array([r['text_sha256'] for r in rows], pa.string()),
      ],
      schema=schema)


class EncodeTexts(beam.PTransform):
  """Text records -> ``{'embeddings', 'dead_letter'}``.

  Length-aware batches through ``RunInference`` (``InferByTokenLength``); a
  batch that fails becomes dead letters, one per text.
  """
  def __init__(self, config: EncodeConfig, info: BiEncoderInfo):
    super().__init__()
    self._config = config
    self._info = info

  def handler(self, backend: Optional[str] = None) -> SentenceTransformerHandler:
    """The job's model handler (on ``backend`` instead of the configured one,
    for the launcher's fidelity check)."""
    config, info = self._config, self._info
    settings = config.inference.on_backend(backend) if backend else config.inference
    return SentenceTransformerHandler(
        config.model, settings, max_seq_length=info.max_seq_length,
        prompt=config.prompt, normalize=config.normalize, precision=config.precision,
        fingerprint=info.fingerprint)

  def expand(self, texts):
    config, info = self._config, self._info
    model = config.model
    prompt = config.prompt or ''
    handler = self.handler()
    encoded = texts | 'InferByTokenLength' >> InferByTokenLength(
        handler, model=model, model_fingerprint=info.fingerprint,
        max_seq_length=info.max_seq_length, settings=config.inference,
        text_fn=lambda record: prompt + record['text'], stage=STAGE, unit='texts',
        done_counter='texts_encoded', dead_letter_stage=f'{STAGE}/inference',
        error_code='encode_error',
        record_id=lambda record: record.get('id'),
        payload=lambda record: {'id': record.get('id'), 'text': record.get('text')})
    return {'embeddings': encoded['outputs'], DEAD_LETTER_TAG: encoded[DEAD_LETTER_TAG]}


def _previous_to_record(row: dict, dtype) -> dict:
  return {
      'id': row['id'],
      'embedding': np.asarray(row['embedding'], dtype=dtype),
      'text_sha256': row['text_sha256'],
  }


def build_encode_pipeline(
    pipeline: beam.Pipeline,
    config: EncodeConfig,
    info: BiEncoderInfo,
    reuse_previous: bool,
) -> None:
  """Wires the encode job onto ``pipeline``.

  Args:
    pipeline: the pipeline to add steps to.
    config: the validated options.
    info: the bi-encoder, inspected by the launcher.
    reuse_previous: whether ``config.previous_dir`` holds embeddings made with
      the same settings (checked by the launcher from its manifest).
  """
  settings = embedding_settings(config, info)
  prepared = pipeline | 'ReadInput' >> ReadTexts(
      config.input_pattern, STAGE, config.id_column, config.text_column,
      config.title_column, config.title_separator)

  to_encode = prepared['texts']
  reused = None
  if reuse_previous:
    dtype = np.float16 if config.precision == 'float16' else np.float32
    # Exactly the files the previous manifest lists, never a glob.
    previous = (
        pipeline
        | 'ReadPreviousEmbeddings' >> (
            beam.Create(committed_files(config.previous_dir, 'embeddings', '--previous'))
            | beam.io.ReadAllFromParquet(columns=['id', 'embedding', 'text_sha256']))
        | 'PreviousToArrays' >> beam.Map(_previous_to_record, dtype=dtype))
    split = {
        'current': to_encode, 'previous': previous
    } | 'ReuseUnchanged' >> ReuseUnchanged(STAGE)
    to_encode, reused = split['to_encode'], split[REUSED_TAG]

  # A Reshuffle after the read spreads the texts over workers before the
  # expensive step (without it one bundle can carry the whole corpus).
  encoded = (
      to_encode
      | 'SpreadTexts' >> beam.Reshuffle()
      | 'EncodeTexts' >> EncodeTexts(config, info))
  embeddings = encoded['embeddings']
  if reused is not None:
    embeddings = (embeddings, reused) | 'AddReused' >> beam.Flatten()
  dead = ((prepared[DEAD_LETTER_TAG], encoded[DEAD_LETTER_TAG])
          | 'FlattenDeadLetters' >> beam.Flatten())

  embeddings_output = ShardedOutput(
      name='embeddings',
      root=config.output_dir,
      subdirectory='',
      schema=embedding_schema(info.dim, config.precision, settings),
      key_fn=lambda row: row['id'],
      rows_per_shard=config.rows_per_shard,
      to_table=embeddings_to_table)
  dead_letter_output = ShardedOutput(
      name='dead_letter',
      root=config.output_dir,
      subdirectory='dead_letter',
      schema=DEAD_LETTER_SCHEMA,
      key_fn=lambda row: row['record_id'] or '',
      sort_key_fn=dead_letter_sort_key,
      rows_per_shard=config.rows_per_shard)
  written = {
      'embeddings': embeddings | 'WriteEmbeddings' >> WriteParquetShards(
          embeddings_output),
      'dead_letter': dead | 'WriteDeadLetters' >> WriteParquetShards(
          dead_letter_output),
  }
  _ = pipeline | 'CommitOutputs' >> CommitOutputs(
      [embeddings_output, dead_letter_output], written,
      FileSystems.join(config.output_dir, MANIFEST_NAME), settings,
      row_count_output='embeddings')
