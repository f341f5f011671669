"""transforms.models.coverage: tokens per word, unknown share and truncation on
a tiny WordPiece tokenizer whose answers are known; the warning's thresholds."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from transforms.models import coverage

VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'cat', 'sat', '##s', 'on', 'mat']


@pytest.fixture(scope='module')
def tokenizer():
  """A BERT-style WordPiece tokenizer over ``VOCAB`` (any other word is [UNK])."""
  wordpiece = Tokenizer(models.WordPiece(
      {token: i for i, token in enumerate(VOCAB)}, unk_token='[UNK]'))
  wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
  wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  wordpiece.post_processor = processors.TemplateProcessing(
      single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B [SEP]',
      special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
  return PreTrainedTokenizerFast(
      tokenizer_object=wordpiece, unk_token='[UNK]', cls_token='[CLS]', sep_token='[SEP]',
      pad_token='[PAD]', mask_token='[MASK]')


def test_text_coverage_known_answers(tokenizer):
  # 'the cats sat' -> the cat ##s sat (4 tokens, 3 words); 'the dog' -> the [UNK];
  # with [CLS] and [SEP] the first is 6 tokens long, the second 4.
  figures = coverage.text_coverage(tokenizer, ['the cats sat', 'the dog'], max_length=5)
  assert (figures.inputs, figures.words, figures.tokens, figures.unknown_tokens) == (2, 5, 6, 1)
  assert figures.tokens_per_word == pytest.approx(6 / 5)
  assert figures.unknown_share == pytest.approx(1 / 6)
  assert (figures.truncated, figures.truncated_share) == (1, 0.5)


def test_pair_coverage_counts_both_texts_and_the_pair_length(tokenizer):
  # [CLS] the cat ##s [SEP] on the mat [SEP]: 9 tokens, 7 of them words' (5 words).
  figures = coverage.pair_coverage(tokenizer, [('the cats', 'on the mat')], max_length=8)
  assert (figures.words, figures.tokens, figures.truncated, figures.pairs) == (5, 6, 1, True)
  assert coverage.pair_coverage(tokenizer, [('the cats', 'on the mat')], 9).truncated == 0


def _figures(tokens_per_word=1.3, truncated_share=0.0):
  return coverage.Coverage('m', inputs=100, words=1000, tokens=int(tokens_per_word * 1000),
                           unknown_tokens=0, truncated=int(truncated_share * 100),
                           max_length=256)


def test_the_warning_threshold():
  assert _figures(coverage.MAX_TOKENS_PER_WORD).warning('bi-encoder', 'so') is None
  words = _figures(coverage.MAX_TOKENS_PER_WORD + 0.1).warning('bi-encoder', 'weak dense')
  assert words == ('warning: the bi-encoder (m) cuts a word into 2.6 tokens (about 1.1-1.6 '
                   "in a model's own language): it does not know the language of these "
                   'texts: weak dense')
  assert _figures(truncated_share=coverage.MAX_TRUNCATED_SHARE).warning('x', 'y') is None
  truncated = _figures(truncated_share=0.51).warning('cross-encoder', 'weak scores')
  assert truncated == ('warning: the cross-encoder (m) truncates 51% of the texts at 256 '
                       'tokens: weak scores')
