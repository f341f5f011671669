"""Model inference on length-aware batches, with counts, progress and dead letters.

The one shape both models share: ``BatchByTokenLengthFn`` forms batches of
similar token length under a token budget, ``RunInference`` runs the
``ModelHandler`` on them (its own batching skipped), every output is counted
and reported, and a batch that raises becomes one dead letter per record.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from transforms.core.dead_letters import DEAD_LETTER_TAG, dead_letter, error_text
from transforms.core.metrics import METRICS_NAMESPACE
from transforms.core.progress import LogProgressFn
from transforms.models.batching import BatchByTokenLengthFn
from transforms.models.inference_settings import InferenceSettings
from transforms.models.model_info import load_tokenizer, resolve_model_dir


class _CountFn(beam.DoFn):
  def __init__(self, counter_name: str):
    self._counter = Metrics.counter(METRICS_NAMESPACE, counter_name)

  def process(self, element):
    self._counter.inc()
    yield element


def _failed_batch_to_dead_letters(
    failed: tuple[Any, Any], stage: str, error_code: str,
    record_id: Callable[[dict], str], payload: Callable[[dict], dict]) -> Iterable[dict]:
  batch, error = failed
  reason = f'{error_code}: {error_text(error)}'.splitlines()[0]
  for record in batch:
    yield dead_letter(stage, record_id(record), reason, payload(record))


class InferByTokenLength(beam.PTransform):
  """Records -> ``{'outputs': handler outputs, 'dead_letter': failed records}``.

  Args:
    handler: a ModelHandler whose ``run_inference`` takes a list of records.
    model: the model's name or path (its tokenizer measures lengths).
    model_fingerprint: caches the tokenizer per model in each worker.
    max_seq_length: tokens the model sees; longer inputs are counted truncated.
    settings: the token budget, batch size cap and sort window of the batches.
    text_fn: a record's text, or its ``(query, passage)`` pair.
    stage: counter and dead-letter prefix, e.g. ``'encode'``.
    unit: what the progress lines count, e.g. ``'texts'``.
    done_counter: the counter name for successful outputs.
    dead_letter_stage: the stage named in failed records' dead letters.
    error_code: the dead-letter reason code for failed batches.
    record_id: a failed record's id for its dead letter.
    payload: what of a failed record its dead letter keeps.
  """
  def __init__(
      self, handler: ModelHandler, *, model: str, model_fingerprint: str,
      max_seq_length: int, settings: InferenceSettings, text_fn: Callable[[dict], Any],
      stage: str, unit: str, done_counter: str, dead_letter_stage: str, error_code: str,
      record_id: Callable[[dict], str],
      payload: Callable[[dict], dict]):
    super().__init__()
    self._handler = handler
    self._model = model
    self._fingerprint = model_fingerprint
    self._max_seq_length = max_seq_length
    self._settings = settings
    self._text_fn = text_fn
    self._stage = stage
    self._unit = unit
    self._done_counter = done_counter
    self._dead_letter_stage = dead_letter_stage
    self._error_code = error_code
    self._record_id = record_id
    self._payload = payload

  def expand(self, records):
    model = self._model
    batches = records | 'BatchByTokenLength' >> beam.ParDo(
        BatchByTokenLengthFn(
            tokenizer_loader=lambda: load_tokenizer(resolve_model_dir(model)),
            tokenizer_key=f'tokenizer:{self._fingerprint}',
            max_seq_length=self._max_seq_length,
            max_tokens_per_batch=self._settings.max_tokens_per_batch,
            max_batch_size=self._settings.max_batch_size,
            sort_window=self._settings.sort_window,
            text_fn=self._text_fn,
            stage=self._stage))
    outputs, failures = (
        batches
        | 'RunInference' >> RunInference(
            self._handler.with_no_batching()).with_exception_handling())
    outputs = (
        outputs
        | 'CountOutputs' >> beam.ParDo(_CountFn(f'{self._stage}/{self._done_counter}'))
        | 'ReportProgress' >> beam.ParDo(LogProgressFn(self._stage, self._unit)))
    dead = failures.failed_inferences | 'FailedBatchesToDeadLetters' >> beam.FlatMap(
        _failed_batch_to_dead_letters, self._dead_letter_stage, self._error_code,
        self._record_id, self._payload)
    return {'outputs': outputs, DEAD_LETTER_TAG: dead}
