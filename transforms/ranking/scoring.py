"""Cross-encoder scoring of (query, passage) pairs through RunInference."""
from __future__ import annotations

from typing import Optional

import apache_beam as beam

from transforms.core.dead_letters import DEAD_LETTER_TAG
from transforms.models.cross_encoder import Activation, CrossEncoderHandler
from transforms.models.inference import InferByTokenLength
from transforms.models.inference_settings import InferenceSettings

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
      settings: InferenceSettings,
      *,
      activation: Activation = 'identity'):
    super().__init__()
    self._model = model
    self._fingerprint = model_fingerprint
    self._max_length = max_length
    self._settings = settings
    self._activation = activation

  def handler(self, backend: Optional[str] = None) -> CrossEncoderHandler:
    """The model handler of this step (on ``backend`` instead of the
    configured one, for the launcher's fidelity check)."""
    settings = self._settings.on_backend(backend) if backend else self._settings
    return CrossEncoderHandler(
        self._model, settings, max_length=self._max_length,
        activation=self._activation, fingerprint=self._fingerprint)

  def expand(self, pairs):
    model = self._model
    handler = self.handler()
    scored = pairs | 'InferByTokenLength' >> InferByTokenLength(
        handler, model=model, model_fingerprint=self._fingerprint,
        max_seq_length=self._max_length, settings=self._settings,
        text_fn=lambda r: (r['query_text'], r['passage_text']), stage=STAGE,
        unit='pairs', done_counter='pairs_scored', dead_letter_stage=f'{STAGE}/score',
        error_code='score_error',
        record_id=lambda r: f'{r["query_id"]}\t{r["doc_id"]}',
        payload=lambda r: {k: r.get(k) for k in ('query_id', 'doc_id')})
    return {'scored': scored['outputs'], DEAD_LETTER_TAG: scored[DEAD_LETTER_TAG]}
