"""Cross-encoder scoring of (query, passage) pairs through RunInference."""
from __future__ import annotations

from typing import Optional

import apache_beam as beam

from transforms.batching import DEFAULT_MAX_TOKENS_PER_BATCH
from transforms.cross_encoder import Activation, CrossEncoderHandler
from transforms.dead_letters import DEAD_LETTER_TAG
from transforms.inference import InferByTokenLength

STAGE = 'rerank'


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
      max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
      max_batch_size: int = 256,
      sort_window: int = 8192,
      trust_remote_code: bool = False,
      share_across_processes: bool = False,
      model_copies: Optional[int] = None,
      backend: str = 'torch',
      export_root: Optional[str] = None):
    super().__init__()
    self._backend = backend
    self._export_root = export_root
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

  def handler(self, backend: Optional[str] = None) -> CrossEncoderHandler:
    """The model handler of this step (on ``backend`` instead of the
    configured one, for the launcher's fidelity check)."""
    return CrossEncoderHandler(
        self._model, device=self._device, max_length=self._max_length,
        activation=self._activation, trust_remote_code=self._trust_remote_code,
        share_across_processes=self._share, model_copies=self._model_copies,
        backend=backend or self._backend, fingerprint=self._fingerprint,
        export_root=self._export_root)

  def expand(self, pairs):
    model = self._model
    handler = self.handler()
    scored = pairs | 'InferByTokenLength' >> InferByTokenLength(
        handler, model=model, model_fingerprint=self._fingerprint,
        max_seq_length=self._max_length,
        max_tokens_per_batch=self._max_tokens_per_batch,
        max_batch_size=self._max_batch_size, sort_window=self._sort_window,
        text_fn=lambda r: (r['query_text'], r['passage_text']), stage=STAGE,
        unit='pairs', done_counter='pairs_scored', dead_letter_stage=f'{STAGE}/score',
        error_code='score_error',
        record_id=lambda r: f'{r["query_id"]}\t{r["doc_id"]}',
        payload=lambda r: {k: r.get(k) for k in ('query_id', 'doc_id')})
    return {'scored': scored['outputs'], DEAD_LETTER_TAG: scored[DEAD_LETTER_TAG]}
