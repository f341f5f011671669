"""What every job's launcher shares: Beam options, error lines, summaries."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import math
import os
import sys
import typing
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, TypeVar, Union

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.core import settings
from transforms.core.errors import UserInputError
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.io.parquet_sink import (
  COMMIT_DEAD_LETTERS_COUNTER,
  COMMIT_REFUSED_COUNTER,
  DEAD_LETTER_OUTPUT,
  MANIFEST_NAME,
  STAGING_NAME,
  CommitGateOptions,
  committed_files,
  read_json,
)
from transforms.models.inference_settings import InferenceSettings
from transforms.models.inference_settings import (
  non_negative_int as non_negative_int,  # for the jobs
)
from transforms.models.inference_settings import (
  positive_int as positive_int,  # re-exported for the jobs
)
from transforms.ranking.fusion import AUTO
from transforms.retrieval.bm25 import MAX_K1, SUPPORTED_STEMMERS, BM25Settings
from transforms.training.pseudo_queries import parse_sources

BEAM_EPILOG = (
    'Any Beam pipeline option passes through, e.g. --runner DataflowRunner, '
    '--direct_running_mode multi_processing --direct_num_workers 2, '
    '--setup_file ./setup.py.')


def non_negative_float(value: str) -> float:
  """argparse type: a finite number >= 0."""
  try:
    number = float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{value!r} is not a number') from None
  if not math.isfinite(number) or number < 0:
    raise argparse.ArgumentTypeError(f'{value!r} must be a finite number >= 0')
  return number


def bm25_k1(value: str) -> float:
  """argparse type: BM25's k1, a number in [0, MAX_K1]."""
  number = non_negative_float(value)
  if number > MAX_K1:
    raise argparse.ArgumentTypeError(
        f'{value!r} is above {MAX_K1:g}: the usual values are 0.5 to 3 (beyond '
        f'{MAX_K1:g}, rounding flattens every score)')
  return number


def add_bm25_arguments(group) -> None:
  """The BM25 candidate options shared by rerank and mine (config fields
  ``bm25, bm25_k1, bm25_b, bm25_stemmer, bm25_top_k``)."""
  defaults = BM25Settings()
  group.add_argument(
      '--bm25', action='store_true',
      help='BM25 candidates: exact top-k over the passage texts (title + text with '
      '--doc-title-column), Unicode letters and digits lowercased.')
  group.add_argument(
      '--bm25-k1', type=bm25_k1, default=defaults.k1,
      help=f'Term-frequency saturation, 0 to {MAX_K1:g} (default: %(default)s).')
  group.add_argument(
      '--bm25-b', type=fraction, default=defaults.b, help='(default: %(default)s)')
  group.add_argument(
      '--bm25-stemmer', choices=('none',) + SUPPORTED_STEMMERS, default='none',
      help='Snowball stemmer for BM25 tokens (default: %(default)s).')
  group.add_argument(
      '--bm25-top-k', type=positive_int, default=None,
      help='BM25 candidates per query (default: --top-k).')


def bm25_settings(job: Any) -> Optional[BM25Settings]:
  """A job config's BM25 options -> settings (None without ``--bm25``)."""
  if not job.bm25:
    return None
  try:
    return BM25Settings(
        k1=job.bm25_k1, b=job.bm25_b,
        stemmer=None if job.bm25_stemmer == 'none' else job.bm25_stemmer,
        top_k=job.bm25_top_k or job.top_k)
  except ValueError as error:
    raise UserInputError(f'BM25: {error}') from None


_LOGGED_PACKAGES = ('pipelines', 'transforms', 'benchmarks')
ConfigT = TypeVar('ConfigT')


class _CurrentStderrHandler(logging.StreamHandler):
  """Writes to whatever ``sys.stderr`` is when a record is emitted (so a
  caller that redirects stderr, as tests and the default-model builder do,
  gets the lines)."""
  def __init__(self):
    super().__init__()
    self.setFormatter(logging.Formatter('%(message)s'))

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    pass


def configure_logging(level: int = logging.INFO) -> None:
  """Command line: the product's notices and progress at ``level`` (INFO by
  default) on stderr, one line each. Idempotent. On a distributed runner's
  workers the records propagate to the runner's own handler (with severities)."""
  for name in _LOGGED_PACKAGES:
    logger = logging.getLogger(name)
    logger.setLevel(level)
    if not any(isinstance(h, _CurrentStderrHandler) for h in logger.handlers):
      logger.addHandler(_CurrentStderrHandler())
    logger.propagate = False


def config_from_args(
    config_type: type[ConfigT], args: argparse.Namespace,
    pipeline_args: Sequence[str] = ()) -> ConfigT:
  """A job's config from its parsed options: one field per option (same name
  as the option's ``dest``); a field that is itself a settings dataclass (e.g.
  ``InferenceSettings``) is built the same way from the options of its own
  fields; ``pipeline_args`` = the arguments left for Beam."""
  types = typing.get_type_hints(config_type)
  values: dict[str, Any] = {}
  for field in dataclasses.fields(config_type):
    if field.name == 'pipeline_args':
      values['pipeline_args'] = tuple(pipeline_args)
    elif dataclasses.is_dataclass(types[field.name]):
      group = types[field.name]
      values[field.name] = (
          settings.from_arguments(group, args) if settings.declares_options(group)
          else config_from_args(group, args))
    else:
      values[field.name] = getattr(args, field.name)
  return config_type(**values)


def quiet_libraries() -> None:
  """Silences model-loading progress bars and chatter (workers inherit this)."""
  os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
  os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')


def _unknown_beam_args(beam_args: Sequence[str]) -> list[str]:
  """The arguments no Beam options class accepts (Beam itself only warns)."""
  from apache_beam.options.pipeline_options import _BeamArgumentParser
  parser = _BeamArgumentParser(allow_abbrev=False)
  classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
  for cls in classes.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  _, unknown = parser.parse_known_args(list(beam_args))
  return unknown


def pipeline_options(beam_args: Sequence[str], parser_prog: str) -> PipelineOptions:
  """Beam options from the arguments the job's own parser did not take.

  A flag that neither the job nor Beam knows is an error (a typo must not be
  silently ignored, as Beam would).
  """
  unknown = _unknown_beam_args(beam_args)
  if unknown:
    raise UserInputError(
        f'unrecognized arguments: {" ".join(unknown)} (see {parser_prog} --help)')
  return PipelineOptions(list(beam_args))


def counters(result: Any, prefix: str) -> dict[str, int]:
  """The job's counters after the run, summed over steps: ``{name: value}``."""
  values: dict[str, int] = {}
  query = result.metrics().query(
      MetricsFilter().with_namespace(METRICS_NAMESPACE))
  for counter in query['counters']:
    name = counter.key.metric.name
    if not name.startswith(prefix + '/'):
      continue
    value = counter.committed if counter.committed is not None else counter.attempted
    short = name[len(prefix) + 1:]
    values[short] = values.get(short, 0) + int(value or 0)
  return values


def print_summary(title: str, rows: Iterable[tuple[str, Any]]) -> None:
  """A two-column summary on stdout."""
  rows = list(rows)
  width = max(len(label) for label, _ in rows)
  print(f'\n== {title}')
  for label, value in rows:
    if isinstance(value, float):
      value = f'{value:,.2f}'
    elif isinstance(value, int):
      value = f'{value:,}'
    print(f'  {label:<{width}}  {value}')


class DeadLetterLimitExceeded(UserInputError):
  """Too many rows were dead-lettered: the run committed nothing (exit 3)."""
  exit_code = 3


def fraction(value: str) -> float:
  """argparse type: a number in [0, 1]."""
  try:
    number = float(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{value!r} is not a number') from None
  if not 0 <= number <= 1:
    raise argparse.ArgumentTypeError(f'{value!r} must be between 0 and 1')
  return number


def pseudo_sources(value: str) -> tuple[str, ...]:
  """argparse type: ``title,sentence`` -> ``('title', 'sentence')``."""
  try:
    return parse_sources(value)
  except ValueError as error:
    raise argparse.ArgumentTypeError(str(error)) from None


def bm25_weight(value: str) -> Union[float, str]:
  """argparse type of ``--teacher-bm25-weight``: ``auto`` or a number in [0, 1]."""
  return AUTO if value == AUTO else fraction(value)


def add_dead_letter_limit_argument(group: Any) -> None:
  """``--max-dead-letter-fraction`` (encode, rerank, mine)."""
  group.add_argument(
      '--max-dead-letter-fraction', type=fraction, default=1.0, metavar='F',
      help='Commit nothing and exit 3 when more than F x (rows of the input '
      'files) rows are dead-lettered; the previous outputs stay as they were and '
      'the run\'s files stay in OUTPUT/.staging/ (default: %(default)s = never).')


def limit_dead_letters(options: PipelineOptions, max_fraction: float, rows_in: int) -> None:
  """Gates the run's commit step: at most ``max_fraction`` x ``rows_in`` dead
  letters (``rows_in``: the rows of the job's input files); 1 = no limit."""
  limit = None if max_fraction >= 1 else int(max_fraction * rows_in)
  options.view_as(CommitGateOptions).max_dead_letters_to_commit = limit


def check_dead_letter_limit(
    result: Any, output_dir: str, max_fraction: float, rows_in: int) -> None:
  """After the run: raises ``DeadLetterLimitExceeded`` if the commit was refused."""
  refused = counters(result, 'commit')
  if not refused.get(COMMIT_REFUSED_COUNTER.split('/', 1)[1]):
    return
  dead = refused.get(COMMIT_DEAD_LETTERS_COUNTER.split('/', 1)[1], 0)
  share = dead / rows_in if rows_in else 1.0
  raise DeadLetterLimitExceeded(
      f'{dead:,} of {rows_in:,} input rows ({share:.1%}) were dead-lettered, more than '
      f'--max-dead-letter-fraction {max_fraction:g}; outputs were not committed '
      f'(the dead letters are in {output_dir}/{STAGING_NAME}/dead_letter/)')


def main_wrapper(
    run: Callable[[Sequence[str] | None], Any], prog: str,
    argv: Sequence[str] | None) -> int:
  """Runs a job; a user error is one line on stderr and exit code 2; Ctrl-C
  (however deep in Beam it arrived) is one line and exit code 130."""
  try:
    with _quiet_interrupts():
      run(argv)
  except UserInputError as error:
    print(f'{prog}: error: {error}', file=sys.stderr)
    return getattr(error, 'exit_code', 2)
  except BaseException as error:  # noqa: BLE001 (re-raised unless an interrupt)
    if not is_interrupt(error):
      raise
    print(f'{prog}: interrupted; nothing was committed by the interrupted run '
          '(earlier outputs are as they were)', file=sys.stderr)
    return 130
  return 0


def is_interrupt(error: BaseException) -> bool:
  """Whether ``error`` is a Ctrl-C: a ``KeyboardInterrupt``, or an error Beam
  raised around one (its runners wrap it in ``RuntimeError``)."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, KeyboardInterrupt):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


class _DropInterruptRecords(logging.Filter):
  """Drops log records about a ``KeyboardInterrupt`` (Beam logs the whole
  traceback of a step that was interrupted, once per worker)."""
  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and record.exc_info[1] is not None:
      return not is_interrupt(record.exc_info[1])
    return 'KeyboardInterrupt' not in record.getMessage()


@contextlib.contextmanager
def _quiet_interrupts():
  """While a job runs, the root handlers (and Python's last-resort handler,
  which prints for loggers that have none) drop records about a Ctrl-C."""
  handlers = list(logging.getLogger().handlers)
  if logging.lastResort is not None:
    handlers.append(logging.lastResort)
  drop = _DropInterruptRecords()
  for handler in handlers:
    handler.addFilter(drop)
  try:
    yield
  finally:
    for handler in handlers:
      handler.removeFilter(drop)



def query_groups(query_manifest: Mapping[str, Any] | None, max_in_memory: int) -> int:
  """How many groups queries are split into so one group fits in memory."""
  if not query_manifest:
    return 1
  rows = int(query_manifest.get('row_count') or 0)
  return max(1, -(-rows // max_in_memory))


def dead_letter_counts(output_dir: str) -> list[tuple[str, str, int]]:
  """``(stage, reason code, rows)`` of an output's ``dead_letter/`` files."""
  import polars as pl

  from transforms.ranking.evaluation import read_parquet_files
  files = committed_files(output_dir, DEAD_LETTER_OUTPUT, '--output')
  if not files:
    return []
  frame = read_parquet_files(files, ['stage', 'reason'])
  if frame.height == 0:
    return []
  counts = frame.group_by(
      'stage', code=pl.col('reason').str.split(':').list.first()).len().sort('stage', 'code')
  return [tuple(row) for row in counts.iter_rows()]


def output_manifest(directory: str, option: str, kind: str, job: str) -> dict:
  """The manifest of a job's output folder; one error line if there is none
  (the folder is not a complete output: the manifest is written last) or it
  describes another kind of output."""
  path = FileSystems.join(directory, MANIFEST_NAME)
  if not FileSystems.exists(path):
    raise UserInputError(
        f'{option} {directory!r} has no {MANIFEST_NAME}: not a complete output of '
        f'the {job} job')
  manifest = read_json(path)
  if manifest.get('kind') != kind:
    raise UserInputError(
        f'{option} {directory!r} is not an output of the {job} job '
        f'(its manifest says kind {manifest.get("kind")!r})')
  return manifest


def embedding_manifest(directory: str, option: str) -> dict:
  """The manifest of an encode output folder; one error line if it is not one."""
  return output_manifest(directory, option, 'embeddings', 'encode')


def check_embedding_pair(query_dir: str, corpus_dir: str) -> tuple[dict, dict]:
  """Query and corpus manifests, refused unless made alike (model, dim, normalization)."""
  query = embedding_manifest(query_dir, '--query-embeddings')
  corpus = embedding_manifest(corpus_dir, '--corpus-embeddings')
  disagree = [
      f'{key}: queries {query.get(key)!r} vs corpus {corpus.get(key)!r}'
      for key in ('model_fingerprint', 'dim', 'normalized', 'similarity')
      if query.get(key) != corpus.get(key)]
  if disagree:
    raise UserInputError(
        'query and corpus embeddings were not made alike, refusing to mix them: '
        + '; '.join(disagree))
  if query.get('similarity') not in ('cosine', 'dot'):
    raise UserInputError(
        f"similarity {query.get('similarity')!r} is not supported (cosine or dot)")
  return query, corpus


def first_values(files: Sequence[str], columns: Sequence[str], limit: int) -> list[tuple]:
  """Up to ``limit`` rows of ``columns`` from the start of ``files`` whose
  first value is a non-empty string (a sample of the real input)."""
  import pyarrow.parquet as pq
  rows: list[tuple] = []
  for path in files:
    if len(rows) >= limit:
      break
    with FileSystems.open(path, mime_type='application/octet-stream') as handle:
      parquet = pq.ParquetFile(handle)
      for batch in parquet.iter_batches(batch_size=max(limit, 64), columns=list(columns)):
        values = zip(*(batch.column(c).to_pylist() for c in columns))
        rows.extend(v for v in values if isinstance(v[0], str) and v[0].strip())
        if len(rows) >= limit:
          break
  return rows[:limit]


def check_backend(settings: InferenceSettings, kind: str,
                  handler_factory: Callable[[str], Any], sample: Sequence[Any]) -> dict | None:
  """Checks ``settings.backend`` is usable here and close enough to float32 on
  ``sample`` (texts or pairs); returns the fidelity for the manifest."""
  from transforms.models import backends
  from transforms.models.backends import resolve_device
  backend = backends.get_backend(settings.backend, resolve_device(settings.device))
  if backend.is_reference or settings.fidelity_sample <= 0:
    return None
  reference, candidate = handler_factory('torch'), handler_factory(settings.backend)
  run = ((lambda handler, model: lambda s: handler.encode(s, model)) if kind == 'bi-encoder'
         else (lambda handler, model: lambda s: handler.predict(s, model)))
  try:
    fidelity = backends.check_fidelity(
        backend, kind, list(sample)[:settings.fidelity_sample],
        run(reference, reference.load_model()), run(candidate, candidate.load_model()),
        settings.min_fidelity)
  finally:
    # Both models are dropped before the pipeline loads its own: the
    # runtimes' sessions sit in reference cycles that only a collection frees
    # (an ONNX job peaked 0.74 GB higher with the check than without).
    del reference, candidate, run
    gc.collect()
  return fidelity.as_dict() if fidelity else None
