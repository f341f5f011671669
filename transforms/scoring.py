"""Cross-encoder scoring of (query, passage) pairs through RunInference."""
from __future__ import annotations

from typing import Any, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from transforms.batching import BatchByTokenLengthFn
from transforms.cross_encoder import Activation, CrossEncoderHandler
from transforms.dead_letters import DEAD_LETTER_TAG, dead_letter, error_text
from transforms.model_info import load_tokenizer, resolve_model_dir
from transforms.progress import LogProgressFn
from transforms.texts import METRICS_NAMESPACE

STAGE = 'rerank'


def _failed_batch_to_dead_letters(failed: tuple[Any, Any]):
  batch, error = failed
  reason = f'score_error: {error_text(error)}'.splitlines()[0]
  for record in batch:
    yield dead_letter(
        f'{STAGE}/score', f'{record["query_id"]}\t{record["doc_id"]}', reason,
        {k: record.get(k) for k in ('query_id', 'doc_id')})


class ScorePairs(beam.PTransform):
  """Pairs with ``query_text``/``passage_text`` -> the same with ``score``.

  Pairs are batched by their joint token length under a token budget, then
  scored by ``CrossEncoderHandler`` in ``RunInference``; a failing batch turns
  into dead letters, one per pair.
  """
  def __init__(
      self,
      model: str,
      model_fingerprint: str,
      max_length: int,
      *,
      device: str = 'auto',
      activation: Activation = 'identity',
      max_tokens_per_batch: int = 8192,
      max_batch_size: int = 256,
      sort_window: int = 8192,
      trust_remote_code: bool = False,
      share_across_processes: bool = False,
      model_copies: Optional[int] = None):
    super().__init__()
    self._model = model
    self._fingerprint = model_fingerprint
    self._max_length = max_length
    self._device = device
    self._activation = activation
    self._max_tokens_per_batch = max_tokens_per_batch
    self._max_batch_size = max_batch_size
    self._sort_window = sort_window
    self._trust_remote_code = trust_remote_code
    self._share = share_across_processes
    self._model_copies = model_copies

  def expand(self, pairs):
    model = self._model
    handler = CrossEncoderHandler(
        model, device=self._device, max_length=self._max_length,
        activation=self._activation, trust_remote_code=self._trust_remote_code,
        share_across_processes=self._share, model_copies=self._model_copies)
    batches = pairs | 'BatchByTokenLength' >> beam.ParDo(
        BatchByTokenLengthFn(
            tokenizer_loader=lambda: load_tokenizer(resolve_model_dir(model)),
            tokenizer_key=f'tokenizer:{self._fingerprint}',
            max_seq_length=self._max_length,
            max_tokens_per_batch=self._max_tokens_per_batch,
            max_batch_size=self._max_batch_size,
            sort_window=self._sort_window,
            text_fn=lambda r: (r['query_text'], r['passage_text']),
            stage=STAGE))
    scored, failures = (
        batches
        | 'ScoreBatches' >> RunInference(
            handler.with_no_batching()).with_exception_handling())
    counter = Metrics.counter(METRICS_NAMESPACE, f'{STAGE}/pairs_scored')

    def count(row):
      counter.inc()
      return row

    scored = (
        scored
        | 'CountScored' >> beam.Map(count)
        | 'ReportProgress' >> beam.ParDo(LogProgressFn(STAGE, 'pairs')))
    dead = failures.failed_inferences | 'FailedBatchesToDeadLetters' >> beam.FlatMap(
        _failed_batch_to_dead_letters)
    return {'scored': scored, DEAD_LETTER_TAG: dead}
