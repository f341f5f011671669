"""transforms.models.batching: the batch plan, and the DoFn that applies it."""
from __future__ import annotations

import itertools

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.core.texts import METRICS_NAMESPACE
from transforms.models.batching import BatchByTokenLengthFn, plan_batches
from transforms.models.model_info import load_tokenizer

# ---------------------------------------------------------------- plan_batches


def test_plan_batches_empty():
  assert plan_batches([], 100, 10) == []


def test_plan_batches_sorts_by_length_ties_by_position():
  assert plan_batches([5, 3, 8, 3], 16, 10) == [[1, 3, 0], [2]]


def test_plan_batches_budget_is_inclusive():
  # 4 texts x 4 tokens = 16 padded tokens: exactly the budget, one batch.
  assert plan_batches([4, 4, 4, 4], 16, 10) == [[0, 1, 2, 3]]
  # One token less of budget: the fourth text starts a new batch.
  assert plan_batches([4, 4, 4, 4], 15, 10) == [[0, 1, 2], [3]]


def test_plan_batches_budget_counts_padding_to_the_longest():
  # [1, 1, 1] then 10: 4 x 10 = 40 > 20 padded tokens although the real
  # tokens (13) fit, so the long text goes alone.
  assert plan_batches([1, 1, 1, 10], 20, 10) == [[0, 1, 2], [3]]
  assert plan_batches([2, 2, 6, 6, 6], 18, 10) == [[0, 1, 2], [3, 4]]


def test_plan_batches_max_batch_size():
  assert plan_batches([1] * 5, 1000, 2) == [[0, 1], [2, 3], [4]]
  assert plan_batches([1] * 3, 1000, 1) == [[0], [1], [2]]


def test_plan_batches_oversize_text_gets_a_batch_of_its_own():
  assert plan_batches([100], 10, 4) == [[0]]
  assert plan_batches([2, 100, 3, 50], 10, 4) == [[0, 2], [3], [1]]


@pytest.mark.parametrize('budget, max_size', [(7, 3), (32, 4), (64, 100), (1, 5)])
def test_plan_batches_invariants(budget, max_size):
  lengths = [(i * 37) % 23 + 1 for i in range(60)]
  batches = plan_batches(lengths, budget, max_size)
  flat = list(itertools.chain.from_iterable(batches))
  assert sorted(flat) == list(range(len(lengths)))  # Every index once.
  assert [lengths[i] for i in flat] == sorted(lengths)  # Shortest first.
  for batch in batches:
    assert 1 <= len(batch) <= max_size
    longest = max(lengths[i] for i in batch)
    assert len(batch) == 1 or len(batch) * longest <= budget


# ------------------------------------------------------- BatchByTokenLengthFn

class WordTokenizer:
  """A fake tokenizer: one token per word, plus [CLS] and [SEP] (+1 [SEP] per pair)."""

  def __call__(self, first, second=None, *, add_special_tokens, truncation,
               max_length, **unused_kwargs):
    assert add_special_tokens and truncation
    if second is None:
      lengths = [len(text.split()) + 2 for text in first]
    else:
      lengths = [len(a.split()) + len(b.split()) + 3 for a, b in zip(first, second)]
    return {'input_ids': [[0] * min(n, max_length) for n in lengths]}


def load_word_tokenizer():
  return WordTokenizer()


def _batch_fn(key, *, max_seq_length=6, max_tokens_per_batch=12,
              max_batch_size=3, sort_window=1000, text_fn=None, stage='test'):
  return BatchByTokenLengthFn(
      tokenizer_loader=load_word_tokenizer,
      tokenizer_key=key,
      max_seq_length=max_seq_length,
      max_tokens_per_batch=max_tokens_per_batch,
      max_batch_size=max_batch_size,
      sort_window=sort_window,
      text_fn=text_fn or (lambda record: record['text']),
      stage=stage)


def _run_dofn(fn, records):
  """Drives the DoFn by hand through one bundle; returns its batches in order."""
  fn.setup()
  fn.start_bundle()
  out = []
  for record in records:
    out.extend(fn.process(record))
  out.extend(windowed.value for windowed in fn.finish_bundle())
  return out


def _words(n):
  return ' '.join(['w'] * n)


def test_batch_fn_sorts_budgets_and_annotates():
  records = [{'id': str(i), 'text': _words(n)} for i, n in enumerate([3, 1, 9, 1, 2])]
  batches = _run_dofn(_batch_fn('words-1'), records)
  # Token lengths (words + 2, capped at 6): [5, 3, 6, 3, 4].
  assert [[r['id'] for r in batch] for batch in batches] == [['1', '3', '4'], ['0', '2']]
  by_id = {r['id']: r for batch in batches for r in batch}
  assert {i: (r['num_tokens'], r['truncated']) for i, r in by_id.items()} == {
      '0': (5, False), '1': (3, False), '2': (6, True), '3': (3, False), '4': (4, False)}
  assert by_id['2']['text'] == _words(9)  # Texts are never cut here.


def test_batch_fn_does_not_mutate_its_input():
  records = [{'id': 'a', 'text': 'one two'}, {'id': 'b', 'text': 'three'}]
  originals = [dict(r) for r in records]
  batches = _run_dofn(_batch_fn('words-2'), records)
  assert records == originals
  assert sum(len(b) for b in batches) == 2


def test_batch_fn_flushes_every_sort_window():
  records = [{'id': str(i), 'text': _words(n)} for i, n in enumerate([4, 1, 4, 1, 4])]
  fn = _batch_fn('words-3', sort_window=2, max_tokens_per_batch=100, max_batch_size=10)
  batches = _run_dofn(fn, records)
  # Windows of two texts, each sorted on its own; the last one is flushed at
  # the end of the bundle.
  assert [[r['id'] for r in batch] for batch in batches] == [['1', '0'], ['3', '2'], ['4']]


def test_batch_fn_tokenizes_pairs():
  records = [
      {'id': 'p1', 'query': 'a b', 'passage': 'c'},  # 2 + 1 + 3 = 6
      {'id': 'p2', 'query': 'a', 'passage': 'b c d e f'},  # 1 + 5 + 3 = 9 > 8
  ]
  fn = _batch_fn('words-4', max_seq_length=8, max_tokens_per_batch=100,
                 text_fn=lambda r: (r['query'], r['passage']))
  batches = _run_dofn(fn, records)
  assert [[(r['id'], r['num_tokens'], r['truncated']) for r in b] for b in batches] == [
      [('p1', 6, False), ('p2', 8, True)]]


def test_batch_fn_real_tokenizer_lengths(tiny_model_dir, sample_texts, tokenizer_of,
                                         tiny_max_seq_length):
  tokenizer = tokenizer_of(tiny_model_dir)
  fn = BatchByTokenLengthFn(
      tokenizer_loader=lambda: load_tokenizer(tiny_model_dir),
      tokenizer_key=f'tokenizer:{tiny_model_dir}',
      max_seq_length=tiny_max_seq_length,
      max_tokens_per_batch=10_000,
      max_batch_size=100,
      sort_window=1000,
      text_fn=lambda record: record['text'],
      stage='test')
  records = [{'id': k, 'text': v} for k, v in sample_texts.items()]
  batches = _run_dofn(fn, records)
  got = {r['id']: (r['num_tokens'], r['truncated']) for b in batches for r in b}
  expected = {}
  for record_id, text in sample_texts.items():
    n = len(tokenizer(text)['input_ids'])
    expected[record_id] = (min(n, tiny_max_seq_length), n > tiny_max_seq_length)
  assert got == expected
  assert {k for k, (_, truncated) in got.items() if truncated} == {'d09', 'd10'}


def test_batch_fn_in_a_pipeline_counts_batches_tokens_and_truncation():
  lengths = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # Words; tokens = words + 2, cap 8.
  records = [{'id': f'r{n}', 'text': _words(n)} for n in lengths]
  p = TestPipeline()
  batches = (
      p
      | beam.Create(records)
      | beam.ParDo(_batch_fn('words-5', max_seq_length=8, max_tokens_per_batch=16,
                             max_batch_size=4, stage='batchtest')))
  assert_that(
      batches | 'Flatten' >> beam.FlatMap(
          lambda batch: [(r['id'], r['num_tokens'], r['truncated']) for r in batch]),
      equal_to([(f'r{n}', min(n + 2, 8), n + 2 > 8) for n in lengths]),
      label='CheckRecords')

  def check_batch(batch):
    tokens = [r['num_tokens'] for r in batch]
    assert tokens == sorted(tokens)
    assert len(batch) <= 4 and (len(batch) == 1 or len(batch) * max(tokens) <= 16)
    return True

  assert_that(batches | 'CheckEachBatch' >> beam.Map(check_batch)
              | 'Distinct' >> beam.Distinct(), equal_to([True]), label='CheckBatches')
  result = p.run()
  result.wait_until_finish()
  counters = {
      c.key.metric.name: c.committed
      for c in result.metrics().query(
          MetricsFilter().with_namespace(METRICS_NAMESPACE))['counters']
      if c.key.metric.name.startswith('batchtest/')}
  assert counters['batchtest/texts_truncated'] == 4  # 9 to 12 tokens > 8.
  assert counters['batchtest/real_tokens'] == sum(min(n + 2, 8) for n in lengths)
  assert counters['batchtest/batches'] >= 4
  assert counters['batchtest/padded_tokens'] >= counters['batchtest/real_tokens']


def test_lengths_are_measured_in_chunks_with_the_same_batches(monkeypatch):
  from transforms.models import batching
  calls = []

  class CountingTokenizer(WordTokenizer):
    def __call__(self, first, second=None, **kwargs):
      calls.append(len(first))
      return super().__call__(first, second, **kwargs)

  records = [{'id': str(i), 'text': _words(n)} for i, n in enumerate([3, 1, 9, 1, 2, 4, 5])]
  whole = _run_dofn(_batch_fn('words-chunk-a'), records)
  monkeypatch.setattr(batching, 'TOKENIZE_CHUNK', 3)
  fn = _batch_fn('words-chunk-b')
  fn._tokenizer_loader = CountingTokenizer
  chunked = _run_dofn(fn, records)
  assert calls == [3, 3, 1]
  assert chunked == whole
