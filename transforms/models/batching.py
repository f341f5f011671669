"""Length-aware batching: texts of similar token length, under a token budget.

Beam's ``BatchElements`` batches in arrival order (31% of tokens wasted on
padding on Cranfield); ``SortAndBatchElements`` sorts but buffers a whole bundle
(unbounded on the DirectRunner, where one bundle can be the whole corpus) and
weighs a batch by the sum of lengths rather than the padded size. This DoFn
sorts within a bounded window and caps ``batch size x longest text`` — the
tokens the model really computes on.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.utils import shared

from transforms.core.metrics import METRICS_NAMESPACE

# Padded tokens per batch by default (encode and cross-encoder scoring). On
# CPUs, activations of ~4k tokens stay in cache: on a 2-core AMD EPYC (no
# AVX-512) all-MiniLM-L6-v2 ran 14-18% faster at 2,048-4,096 than at 8,192 and
# the encode job's peak RSS fell 100 MB. On a GPU, raise it (e.g. 65536).
DEFAULT_MAX_TOKENS_PER_BATCH = 4096


def plan_batches(
    lengths: Sequence[int],
    max_tokens_per_batch: int,
    max_batch_size: int,
) -> list[list[int]]:
  """Groups indices into batches of similar length.

  Indices are sorted by length (ties by position); a batch closes when one more
  text would make ``len(batch) * longest`` exceed ``max_tokens_per_batch`` or
  the batch would exceed ``max_batch_size``. A text longer than the budget on
  its own still gets a batch of one.

  Returns:
    Lists of indices into ``lengths``, shortest texts first.
  """
  order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
  batches: list[list[int]] = []
  current: list[int] = []
  for index in order:
    length = lengths[index]
    if current and (len(current) >= max_batch_size or
                    (len(current) + 1) * length > max_tokens_per_batch):
      batches.append(current)
      current = []
    current.append(index)
  if current:
    batches.append(current)
  return batches


# Texts per tokenizer call when measuring lengths.
TOKENIZE_CHUNK = 256


class _SharedTokenizer:
  """A weak-referenceable holder so ``shared.Shared`` can cache tokenizers."""
  def __init__(self, tokenizer: Any):
    self.tokenizer = tokenizer


class BatchByTokenLengthFn(beam.DoFn):
  """Buffers up to ``sort_window`` texts, then emits token-budgeted batches.

  ``text_fn`` gives a record's text, or a ``(query, passage)`` pair for a
  cross-encoder. Each output element is a list of input records, each with
  ``num_tokens`` (the length the model sees, capped at ``max_seq_length``) and
  ``truncated`` added.
  """
  def __init__(
      self,
      tokenizer_loader: Callable[[], Any],
      tokenizer_key: str,
      max_seq_length: int,
      max_tokens_per_batch: int,
      max_batch_size: int,
      sort_window: int,
      text_fn: Callable[[dict], Any],
      stage: str):
    self._tokenizer_loader = tokenizer_loader
    self._tokenizer_key = tokenizer_key
    self._max_seq_length = max_seq_length
    self._max_tokens_per_batch = max_tokens_per_batch
    self._max_batch_size = max_batch_size
    self._sort_window = sort_window
    self._text_fn = text_fn
    self._shared = shared.Shared()
    self._buffer: list[dict] = []
    self._truncated = Metrics.counter(METRICS_NAMESPACE, f'{stage}/texts_truncated')
    self._batches = Metrics.counter(METRICS_NAMESPACE, f'{stage}/batches')
    self._real_tokens = Metrics.counter(METRICS_NAMESPACE, f'{stage}/real_tokens')
    self._padded_tokens = Metrics.counter(
        METRICS_NAMESPACE, f'{stage}/padded_tokens')

  def setup(self):
    self._tokenizer = self._shared.acquire(
        lambda: _SharedTokenizer(self._tokenizer_loader()),
        tag=self._tokenizer_key).tokenizer

  def start_bundle(self):
    self._buffer = []

  def process(self, record: dict) -> Iterable[list[dict]]:
    self._buffer.append(record)
    if len(self._buffer) >= self._sort_window:
      yield from self._flush()

  def finish_bundle(self):
    for batch in self._flush():
      yield window.GlobalWindows.windowed_value_at_end_of_window(batch)

  def _token_lengths(self, texts: list) -> list[int]:
    # Truncating at max_seq_length + 1 bounds the work on huge texts and
    # still tells a truncated text (length max + 1) from one that fits.
    # Pairs (query, passage) for cross-encoders are tokenized as pairs.
    # A few hundred texts per call: a fast tokenizer's encodings (tokens,
    # offsets, masks) for a whole sort window would take hundreds of MB.
    lengths: list[int] = []
    for start in range(0, len(texts), TOKENIZE_CHUNK):
      chunk = texts[start:start + TOKENIZE_CHUNK]
      if chunk and isinstance(chunk[0], tuple):
        first, second = [t[0] for t in chunk], [t[1] for t in chunk]
      else:
        first, second = chunk, None
      encoded = self._tokenizer(
          first, second, add_special_tokens=True, truncation=True,
          max_length=self._max_seq_length + 1, return_attention_mask=False,
          return_token_type_ids=False)
      lengths.extend(len(ids) for ids in encoded['input_ids'])
    return lengths

  def _flush(self) -> Iterable[list[dict]]:
    if not self._buffer:
      return
    # Copies: a DoFn must not mutate its input elements.
    records, self._buffer = [dict(r) for r in self._buffer], []
    raw_lengths = self._token_lengths([self._text_fn(r) for r in records])
    lengths = []
    for record, raw in zip(records, raw_lengths):
      truncated = raw > self._max_seq_length
      if truncated:
        self._truncated.inc()
      length = min(raw, self._max_seq_length)
      lengths.append(length)
      record['num_tokens'] = length
      record['truncated'] = truncated
    for indices in plan_batches(
        lengths, self._max_tokens_per_batch, self._max_batch_size):
      self._batches.inc()
      self._real_tokens.inc(sum(lengths[i] for i in indices))
      self._padded_tokens.inc(len(indices) * max(lengths[i] for i in indices))
      yield [records[i] for i in indices]
