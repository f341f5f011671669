"""A RunInference ModelHandler for a sentence-transformers CrossEncoder."""
from __future__ import annotations

from typing import Any, Iterable, Literal, Optional, Sequence

import numpy as np

from transforms.models.handler import BackendModelHandler
from transforms.models.inference_settings import InferenceSettings

Activation = Literal['identity', 'sigmoid', 'model']


def activation_module(activation: Activation) -> Any:
  """The ``activation_fn`` for ``CrossEncoder.predict``; None = the model's own."""
  import torch
  if activation == 'identity':
    return torch.nn.Identity()
  if activation == 'sigmoid':
    return torch.nn.Sigmoid()
  return None


class CrossEncoderHandler(BackendModelHandler):
  """Scores pre-formed batches of ``(query_text, passage_text)`` records.

  Used as ``RunInference(handler.with_no_batching())`` after length-aware
  batching. Each output is the input record with ``score`` added (float32),
  exactly what ``CrossEncoder.predict`` returns for the pair with the chosen
  activation: raw logits (``identity``, the default for BCE-trained models),
  ``sigmoid``, or the model's own (``model``).
  """
  KIND = 'cross-encoder'

  def __init__(
      self,
      model_name_or_path: str,
      settings: InferenceSettings,
      *,
      max_length: Optional[int] = None,
      activation: Activation = 'identity',
      fingerprint: Optional[str] = None):
    super().__init__(model_name_or_path, settings, fingerprint=fingerprint)
    self._max_length = max_length
    self._activation = activation

  def load_model(self) -> Any:
    return self._load(max_length=self._max_length)

  def predict(self, pairs: Sequence[tuple[str, str]], model: Any) -> np.ndarray:
    """Scores of ``pairs`` in one batch, as the pipeline computes them."""
    with self._inference():
      scores = model.predict(
          list(pairs), batch_size=max(1, len(pairs)), show_progress_bar=False,
          activation_fn=activation_module(self._activation), convert_to_numpy=True)
    return np.asarray(scores, dtype=np.float32).reshape(len(pairs), -1)

  def run_inference(
      self,
      batch: Sequence[dict],
      model: Any,
      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
    pairs = [(record['query_text'], record['passage_text']) for record in batch]
    scores = self.predict(pairs, model)
    self._release_memory()
    if scores.shape[1] != 1:
      raise ValueError(
          f'the cross-encoder returns {scores.shape[1]} scores per pair; '
          'ranking needs a 1-label model')
    outputs = []
    for record, score in zip(batch, scores[:, 0]):
      scored = dict(record)
      scored['score'] = float(score)
      outputs.append(scored)
    return outputs

  def get_num_bytes(self, batch: Sequence[dict]) -> int:
    return sum(
        len(r['query_text'].encode('utf-8', 'replace')) +
        len(r['passage_text'].encode('utf-8', 'replace')) for r in batch)

  def get_metrics_namespace(self) -> str:
    return 'beam_rerank_cross_encoder'
