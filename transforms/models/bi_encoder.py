"""A RunInference ModelHandler for a sentence-transformers bi-encoder."""
from __future__ import annotations

from typing import Any, Iterable, Literal, Optional, Sequence

import numpy as np

from transforms.models.handler import BackendModelHandler
from transforms.models.inference_settings import InferenceSettings

Precision = Literal['float32', 'float16']


class SentenceTransformerHandler(BackendModelHandler):
  """Encodes pre-formed batches of text records with a SentenceTransformer.

  Used as ``RunInference(handler.with_no_batching())`` after
  ``BatchByTokenLengthFn``: each element is one batch (a list of records with
  ``id``, ``text``, ``text_sha256``), and each output is one embedding row.
  The model is loaded in ``load_model`` on the worker, once per process (or
  once per machine with ``share_across_processes``), never pickled.
  """
  KIND = 'bi-encoder'

  def __init__(
      self,
      model_name_or_path: str,
      settings: InferenceSettings,
      *,
      max_seq_length: Optional[int] = None,
      prompt: Optional[str] = None,
      normalize: bool = True,
      precision: Precision = 'float32',
      fingerprint: Optional[str] = None):
    super().__init__(model_name_or_path, settings, fingerprint=fingerprint)
    self._max_seq_length = max_seq_length
    self._prompt = prompt or None
    self._normalize = normalize
    self._dtype = np.float16 if precision == 'float16' else np.float32

  def load_model(self) -> Any:
    model = self._load()
    if self._max_seq_length:
      model.max_seq_length = self._max_seq_length
    return model

  def encode(self, texts: Sequence[str], model: Any) -> np.ndarray:
    """Embeddings of ``texts`` in one batch, as the pipeline computes them."""
    with self._inference():
      embeddings = model.encode(
          list(texts), batch_size=max(1, len(texts)), prompt=self._prompt,
          normalize_embeddings=self._normalize, convert_to_numpy=True,
          show_progress_bar=False)
    return np.asarray(embeddings, dtype=np.float32)

  def run_inference(
      self,
      batch: Sequence[dict],
      model: Any,
      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
    embeddings = self.encode([record['text'] for record in batch], model)
    embeddings = embeddings.astype(self._dtype, copy=False)
    self._release_memory()
    return [{
        'id': record['id'],
        'embedding': embedding,
        'text_sha256': record['text_sha256'],
    } for record, embedding in zip(batch, embeddings)]

  def get_num_bytes(self, batch: Sequence[dict]) -> int:
    return sum(len(record['text'].encode('utf-8', 'replace')) for record in batch)

  def get_metrics_namespace(self) -> str:
    return 'beam_rerank_bi_encoder'
