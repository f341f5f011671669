"""Deterministic, all-or-nothing Parquet outputs.

Beam's ``WriteToParquet`` assigns rows to shards in arrival order, so two runs
on the same input give different files. Here a row's shard is a stable hash of
its key, rows are sorted inside a shard, and the number of shards follows from
the row count, so the same rows always make the same bytes. Shards are written
to a staging folder and moved into place by one commit step that runs after
every shard of every output is written; the manifest is written last, so a
folder with a manifest is complete.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any, Callable, Iterable, Mapping, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.core.errors import UserInputError
from transforms.core.hashing import stable_hash
from transforms.core.settings import fraction, positive_int, setting

_LOGGER = logging.getLogger(__name__)

MANIFEST_NAME = 'manifest.json'
STAGING_NAME = '.staging'
DEAD_LETTER_OUTPUT = 'dead_letter'
# The rerank output's list of queries that got no candidate (and why).
NO_CANDIDATES = 'no_candidates'
# Counters of a refused commit (namespace of every job counter).
COMMIT_REFUSED_COUNTER = 'commit/refused'
COMMIT_DEAD_LETTERS_COUNTER = 'commit/dead_letters'


class CommitGateOptions(PipelineOptions):
  """Set by the job launchers from --max-dead-letter-fraction (not a flag
  to pass by hand): the most dead letters a run may write and still commit."""
  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--max_dead_letters_to_commit', type=int, default=None,
        help='Commit outputs only if the dead_letter output has at most this '
        'many rows (default: no limit).')


def shard_file_name(shard: int, num_shards: int) -> str:
  return f'part-{shard:05d}-of-{num_shards:05d}.parquet'


def write_table(table: pa.Table, path: str) -> None:
  """Writes one Parquet file through Beam filesystems (local, gs://, ...)."""
  with FileSystems.create(
      path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    pq.write_table(table, handle, compression='zstd')


def write_json(value: Any, path: str) -> None:
  """Writes JSON to a temporary name, then renames it into place."""
  data = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + '\n'
  tmp_path = path + '.tmp'
  with FileSystems.create(
      tmp_path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    handle.write(data.encode('utf-8'))
  if FileSystems.exists(path):
    FileSystems.delete([path])
  FileSystems.rename([tmp_path], [path])


def read_json(path: str) -> Any:
  """A JSON file (any Beam filesystem); a damaged one (truncated, not UTF-8)
  is one error line naming it, not a traceback."""
  with FileSystems.open(
      path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    data = handle.read()
  try:
    return json.loads(data.decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise UserInputError(
        f'{path} is not valid JSON ({error}): damaged or cut off while being written?'
    ) from None


def unreadable_parquet(files: Iterable[str]) -> Optional[str]:
  """Why one of ``files`` cannot be read as Parquet (its footer: where a
  truncated file breaks), or None when all can. Reads footers only."""
  for path in files:
    try:
      with FileSystems.open(
          path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        pq.read_metadata(handle)
    except (OSError, pa.ArrowException) as error:
      return f'{path} is not a readable Parquet file ({error})'
  return None


# Rows per output file, every job.
DEFAULT_ROWS_PER_SHARD = 100_000


@dataclasses.dataclass(frozen=True)
class ShardedOutput:
  """One folder of ``part-*.parquet`` files.

  Attributes:
    name: the output's name in the manifest, e.g. ``'embeddings'``.
    root: the job's output folder (where the manifest goes).
    subdirectory: the folder under ``root`` for these files ('' for root).
    schema: the explicit Arrow schema (with key-value metadata) of every file.
    key_fn: a row's shard key and sort key (a string, e.g. its id).
    sort_key_fn: the order of rows inside a file; defaults to ``key_fn``.
    rows_per_shard: the target size of a file.
    to_table: rows -> Arrow table; defaults to ``Table.from_pylist``.
  """
  name: str
  root: str
  subdirectory: str
  schema: pa.Schema
  key_fn: Callable[[dict], str]
  sort_key_fn: Optional[Callable[[dict], Any]] = None
  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
  to_table: Optional[Callable[[list[dict], pa.Schema], pa.Table]] = None
  # False: an output with no rows gets no file (e.g. datasets.load_dataset
  # cannot read an empty Parquet file); True: one empty file with the schema.
  write_empty: bool = True

  @property
  def directory(self) -> str:
    if not self.subdirectory:
      return self.root
    return FileSystems.join(self.root, self.subdirectory)

  @property
  def staging_directory(self) -> str:
    return FileSystems.join(self.root, STAGING_NAME, self.name)

  def num_shards(self, num_rows: int) -> int:
    return max(1, math.ceil(num_rows / self.rows_per_shard))

  def make_table(self, rows: list[dict]) -> pa.Table:
    if self.to_table is not None:
      return self.to_table(rows, self.schema)
    return pa.Table.from_pylist(rows, schema=self.schema)


class _WriteShardFn(beam.DoFn):
  def __init__(self, output: ShardedOutput):
    self._output = output

  def process(self, keyed: tuple[int, Iterable[dict]], num_rows: int):
    shard, rows = keyed
    output = self._output
    rows = sorted(rows, key=output.sort_key_fn or output.key_fn)
    num_shards = output.num_shards(num_rows)
    file_name = shard_file_name(shard, num_shards)
    write_table(
        output.make_table(rows),
        FileSystems.join(output.staging_directory, file_name))
    yield {'file': file_name, 'rows': len(rows), 'num_shards': num_shards}


class WriteParquetShards(beam.PTransform):
  """Rows -> staged Parquet shards; outputs one small record per shard."""
  def __init__(self, output: ShardedOutput):
    super().__init__()
    self._output = output

  def expand(self, rows):
    output = self._output
    num_rows = beam.pvalue.AsSingleton(
        rows | 'CountRows' >> beam.combiners.Count.Globally())
    return (
        rows
        | 'AssignShard' >> beam.Map(
            lambda row, n: (stable_hash(output.key_fn(row)) %
                            output.num_shards(n), row), n=num_rows)
        | 'GroupByShard' >> beam.GroupByKey()
        | 'WriteShard' >> beam.ParDo(_WriteShardFn(output), num_rows=num_rows))


def _list(pattern: str) -> list[str]:
  """The paths ``pattern`` matches; [] when none (Beam reports no match as an
  empty result). A failed listing raises (``BeamIOError``): a commit must not
  go on as if there were no stale files to remove."""
  return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def _file_name(path: str) -> str:
  return path.rstrip('/').rsplit('/', 1)[-1]


def read_manifest(directory: str, option: str) -> dict:
  """The manifest of a committed output folder; one error line naming
  ``option`` if there is none (the folder is not a complete output)."""
  path = FileSystems.join(directory, MANIFEST_NAME)
  if not FileSystems.exists(path):
    raise UserInputError(
        f'{option} {directory!r} has no {MANIFEST_NAME}: not a complete job output')
  return read_json(path)


def committed_output_exists(
    directory: str, output: str, option: str,
    manifest: Optional[Mapping[str, Any]] = None) -> bool:
  """Whether the manifest of ``directory`` describes the output ``output``
  (e.g. rerank outputs made before ``candidates`` existed lack it)."""
  if manifest is None:
    manifest = read_manifest(directory, option)
  return output in (manifest.get('outputs') or {})


def committed_files(
    directory: str, output: str, option: str,
    manifest: Optional[Mapping[str, Any]] = None) -> list[str]:
  """The full paths of the files of ``output``, in manifest order.

  The list comes from ``directory``'s manifest, never from a glob: a
  ``part-*.parquet`` file in the output's folder that the manifest does not
  list (e.g. left by a failed commit) is not returned, and is reported with
  one warning. A listed file that is missing, or a manifest without this
  output, is refused with one error line naming ``option``. Works on any Beam
  filesystem.

  Args:
    directory: a job's output folder (where ``manifest.json`` is).
    output: the output's name in the manifest, e.g. ``'embeddings'``.
    option: the option the folder came from, for messages (``'--ranked'``).
    manifest: the folder's manifest, if already read.
  """
  if manifest is None:
    manifest = read_manifest(directory, option)
  described = (manifest.get('outputs') or {}).get(output)
  if described is None:
    raise UserInputError(
        f'{option} {directory!r}: its {MANIFEST_NAME} lists no {output!r} output')
  subdirectory = described.get('directory') or '.'
  folder = directory if subdirectory == '.' else FileSystems.join(directory, subdirectory)
  listed = [entry['path'] for entry in described.get('files', [])]
  try:
    present = {
        _file_name(path): path
        for path in _list(FileSystems.join(folder, 'part-*.parquet'))}
  except Exception as error:  # Beam raises BeamIOError with per-glob causes.
    raise UserInputError(
        f'{option} {directory!r}: cannot list {folder!r} ({error})') from error
  paths = []
  for name in listed:
    path = FileSystems.join(folder, name)
    if name not in present and not FileSystems.exists(path):
      raise UserInputError(
          f'{option} {directory!r}: {path!r} is listed in its {MANIFEST_NAME} but '
          f'missing (the folder changed after its job committed it; run the job again)')
    paths.append(path)
  extra = sorted(set(present) - set(listed))
  if extra:
    _LOGGER.warning(
        '%s %r: ignoring %d file(s) in %r that its %s does not list: %s', option,
        directory, len(extra), folder, MANIFEST_NAME, ', '.join(extra))
  return paths


def commit_outputs(
    outputs: Iterable[ShardedOutput],
    written: Mapping[str, list[dict]],
    manifest_path: str,
    manifest: Mapping[str, Any],
    row_count_output: Optional[str] = None,
) -> dict:
  """Moves staged shards into place, removes stale ones, writes the manifest.

  The old manifest goes first and the new one last, so a folder is never seen
  with a manifest that does not describe its files. Safe to run again.
  """
  if FileSystems.exists(manifest_path):
    FileSystems.delete([manifest_path])
  outputs = list(outputs)
  described: dict[str, Any] = {}
  for output in outputs:
    shards = written.get(output.name, [])
    num_shards = shards[0]['num_shards'] if shards else 1
    by_name = {s['file']: s['rows'] for s in shards}
    if not FileSystems.exists(output.directory):
      FileSystems.mkdirs(output.directory)
    for shard in range(num_shards):
      file_name = shard_file_name(shard, num_shards)
      staged = FileSystems.join(output.staging_directory, file_name)
      final = FileSystems.join(output.directory, file_name)
      if file_name not in by_name:  # A shard that got no rows.
        if not output.write_empty:
          continue
        write_table(output.schema.empty_table(), staged)
        by_name[file_name] = 0
      if FileSystems.exists(staged):
        if FileSystems.exists(final):
          FileSystems.delete([final])
        FileSystems.rename([staged], [final])
    for path in _list(FileSystems.join(output.directory, 'part-*.parquet')):
      if path.rsplit('/', 1)[-1] not in by_name:
        FileSystems.delete([path])
    described[output.name] = {
        'directory': output.subdirectory or '.',
        'files': [{'path': name, 'rows': by_name[name]} for name in sorted(by_name)],
        'rows': sum(by_name.values()),
    }
    if FileSystems.exists(output.staging_directory):
      FileSystems.delete([output.staging_directory])
  for root in {output.root for output in outputs}:
    staging_root = FileSystems.join(root, STAGING_NAME)
    if FileSystems.exists(staging_root):
      FileSystems.delete([staging_root])
  full_manifest = dict(manifest)
  full_manifest['outputs'] = described
  if row_count_output is not None:
    full_manifest['row_count'] = described[row_count_output]['rows']
  write_json(full_manifest, manifest_path)
  return full_manifest


_EXTRA_PREFIX = 'manifest_extra__'


class _CommitFn(beam.DoFn):
  def __init__(self, outputs, manifest_path, manifest, row_count_output,
               max_dead_letters=None):
    self._outputs = outputs
    self._manifest_path = manifest_path
    self._manifest = manifest
    self._row_count_output = row_count_output
    self._max_dead_letters = max_dead_letters

  def process(self, unused_element, **side_inputs):
    written = {k: v for k, v in side_inputs.items() if not k.startswith(_EXTRA_PREFIX)}
    manifest = dict(self._manifest)
    manifest.update({k[len(_EXTRA_PREFIX):]: v for k, v in side_inputs.items()
                     if k.startswith(_EXTRA_PREFIX)})
    if self._max_dead_letters is not None:
      dead = sum(shard['rows'] for shard in written.get(DEAD_LETTER_OUTPUT, []))
      if dead > self._max_dead_letters:
        # Nothing is moved into place: the previous outputs and manifest stay
        # as they were; the staged files (dead letters too) stay in .staging/.
        Metrics.counter('beam_rerank', COMMIT_REFUSED_COUNTER).inc()
        Metrics.counter('beam_rerank', COMMIT_DEAD_LETTERS_COUNTER).inc(dead)
        return
    yield commit_outputs(
        self._outputs, written, self._manifest_path, manifest, self._row_count_output)


class CommitOutputs(beam.PTransform):
  """Runs ``commit_outputs`` once, after every shard of every output is written.

  Applied to the pipeline; ``written`` maps each output's name to the
  PCollection ``WriteParquetShards`` returned for it. With
  ``CommitGateOptions.max_dead_letters_to_commit`` set in the pipeline options,
  a run whose ``dead_letter`` output has more rows commits nothing (counted as
  ``commit/refused``). ``manifest_extras`` maps manifest keys to one-element
  PCollections computed by the pipeline (e.g. tuned weights).
  """
  def __init__(
      self, outputs: list[ShardedOutput], written: Mapping[str, Any],
      manifest_path: str, manifest: Mapping[str, Any],
      row_count_output: Optional[str] = None,
      manifest_extras: Optional[Mapping[str, Any]] = None):
    super().__init__()
    self._extras = dict(manifest_extras or {})
    self._row_count_output = row_count_output
    self._outputs = outputs
    self._written = written
    self._manifest_path = manifest_path
    self._manifest = dict(manifest)

  def expand(self, pbegin):
    side_inputs = {
        name: beam.pvalue.AsList(pcoll) for name, pcoll in self._written.items()
    }
    side_inputs.update({
        _EXTRA_PREFIX + name: beam.pvalue.AsSingleton(pcoll)
        for name, pcoll in self._extras.items()})
    return (
        pbegin
        | 'CommitTrigger' >> beam.Create([None])
        | 'MoveIntoPlace' >> beam.ParDo(
            _CommitFn(
                self._outputs, self._manifest_path, self._manifest,
                self._row_count_output,
                pbegin.pipeline.options.view_as(
                    CommitGateOptions).max_dead_letters_to_commit),
            **side_inputs))


def rows_per_shard_setting(group: str = 'input and output') -> Any:
  """The ``--rows-per-shard`` setting of a job that writes Parquet shards."""
  return setting(DEFAULT_ROWS_PER_SHARD, 'Rows per output file (default: %(default)s).',
                 type=positive_int, group=group)


def dead_letter_limit_setting(group: str = 'input and output') -> Any:
  """The ``--max-dead-letter-fraction`` setting of a job that dead-letters rows."""
  return setting(
      1.0, 'Commit nothing and exit 3 when more than F x (rows of the input files) rows are '
      'dead-lettered; the previous outputs stay as they were and the run\'s files stay in '
      'OUTPUT/.staging/ (default: %(default)s = never).', type=fraction, metavar='F',
      group=group)
