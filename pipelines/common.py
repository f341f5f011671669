"""What every job's launcher shares: Beam options, error lines, summaries."""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.core.errors import UserInputError
from transforms.core.language import AUTO, SAMPLE_TEXTS, Detected, resolve_language
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

BEAM_EPILOG = (
    'Any Beam pipeline option passes through, e.g. --runner DataflowRunner, '
    '--direct_running_mode multi_processing --direct_num_workers 2, '
    '--setup_file ./setup.py.')


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


def run_pipeline(options: PipelineOptions, build: Callable[[Any], None], output_dir: str,
                 max_dead_letter_fraction: float, rows_in: int) -> tuple[Any, float]:
  """A job's run step: builds its Beam graph (``build(pipeline)``) behind the
  dead-letter gate, runs it to the end and raises if the commit was refused.
  Returns the result and when the run started (after the build)."""
  import apache_beam as beam
  limit_dead_letters(options, max_dead_letter_fraction, rows_in)
  pipeline = beam.Pipeline(options=options)
  build(pipeline)
  started = time.perf_counter()
  result = pipeline.run()
  result.wait_until_finish()
  check_dead_letter_limit(result, output_dir, max_dead_letter_fraction, rows_in)
  return result, started


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
  return check_output_kind(read_json(path), directory, option, kind, job)


def check_output_kind(manifest: dict, directory: str, option: str, kind: str, job: str) -> dict:
  """``manifest``, refused (one error line) unless it describes a ``kind`` output."""
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


def corpus_language(requested: str, corpus_files: Sequence[str], text_column: str,
                    job: str) -> Detected:
  """The language of a job's texts: ``requested``, or (``auto``) detected on the
  first texts of the corpus; logged in one line."""
  sample = ([row[0] for row in first_values(corpus_files, [text_column], SAMPLE_TEXTS)]
            if requested == AUTO else [])
  detected = resolve_language(requested, sample)
  logging.getLogger('pipelines').info(
      '[%s] language: %s (%s)', job, detected.language,
      detected.reason if requested == AUTO else 'given by --language')
  return detected


def language_line(language: Mapping[str, Any] | None) -> list[tuple[str, str]]:
  """The summary's line on a report's ``language`` (none when no step used it)."""
  if not language:
    return []
  how = 'auto: ' + language['reason'] if language['requested'] == AUTO else 'given'
  return [('language', f"{language['language']} ({how}; BM25 stemmer "
                       f"{language['bm25_stemmer']})")]


def model_coverage(model_dir: str, max_length: int, role: str, consequence: str, *,
                   texts: Sequence[str] = (), pairs: Sequence[tuple[str, str]] = ()
                   ) -> dict | None:
  """How a model's tokenizer covers a sample of the run's texts (or query +
  passage pairs), for the report; one warning line when it covers them badly.
  None when the tokenizer cannot be loaded here (e.g. a hub id offline)."""
  from transforms.models import coverage
  from transforms.models.model_info import load_tokenizer
  try:
    tokenizer = load_tokenizer(model_dir)
  except Exception as error:  # noqa: BLE001 (a figure for the report, never a failure)
    logging.getLogger('pipelines').info('[coverage] %s: no tokenizer (%s)', role, error)
    return None
  name = os.path.basename(model_dir.rstrip('/')) or model_dir
  figures = (coverage.pair_coverage(tokenizer, pairs, max_length, name) if pairs
             else coverage.text_coverage(tokenizer, texts, max_length, name))
  warning = figures.warning(role, consequence)
  if warning:
    logging.getLogger('pipelines').warning('%s', warning)
  return {**figures.as_dict(), 'warning': warning}


def coverage_lines(coverage: Mapping[str, Any] | None) -> list[tuple[str, str]]:
  """The summary's lines of a report's ``coverage`` (``{role: figures}``)."""
  lines = []
  for role, figures in (coverage or {}).items():
    if figures:
      what = 'pairs' if figures['pairs'] else 'texts'
      lines.append((f'{role} coverage', f"{figures['tokens_per_word']:.2f} tokens/word, "
                    f"{figures['unknown_share']:.1%} unknown, {figures['truncated_share']:.0%} "
                    f"of {figures['inputs']} {what} truncated at {figures['max_length']}"))
  return lines
