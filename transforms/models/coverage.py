"""How well a model's tokenizer covers the texts of a run: a tokenizer pass over
a fixed-size sample, not the model.

- tokens per word: how finely the vocabulary cuts the words (a model's own
  language takes about 1.1 to 1.6; all-MiniLM-L6-v2 cuts a Russian word into
  about 6 tokens);
- unknown share: the tokens that are the tokenizer's unknown token;
- truncated share: the texts (or query + passage pairs) longer than the
  model's maximum length, whose end the model never sees.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional, Sequence

# Texts (and pairs) a coverage check reads.
SAMPLE_SIZE = 200
# A model cutting words finer than this does not know their language well
# (WordPiece and BPE vocabularies take 1.1 to 1.6 tokens a word in theirs).
MAX_TOKENS_PER_WORD = 2.5
# A model truncating more than this share of its inputs misses most of them.
MAX_TRUNCATED_SHARE = 0.5
_WORD = re.compile(r'\w+')


@dataclasses.dataclass(frozen=True)
class Coverage:
  """A tokenizer's figures on a sample (``pairs``: query + passage inputs)."""
  model: str
  inputs: int
  words: int
  tokens: int
  unknown_tokens: int
  truncated: int
  max_length: int
  pairs: bool = False

  @property
  def tokens_per_word(self) -> float:
    return self.tokens / self.words if self.words else 0.0

  @property
  def unknown_share(self) -> float:
    return self.unknown_tokens / self.tokens if self.tokens else 0.0

  @property
  def truncated_share(self) -> float:
    return self.truncated / self.inputs if self.inputs else 0.0

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), 'tokens_per_word': round(self.tokens_per_word, 4),
            'unknown_share': round(self.unknown_share, 4),
            'truncated_share': round(self.truncated_share, 4)}

  def warning(self, role: str, consequence: str) -> Optional[str]:
    """One line when the model cuts words far finer than in its own language
    or truncates most inputs (``consequence``: what follows for the run)."""
    problems = []
    if self.tokens_per_word > MAX_TOKENS_PER_WORD:
      problems.append(
          f'cuts a word into {self.tokens_per_word:.1f} tokens (about 1.1-1.6 in a '
          "model's own language): it does not know the language of these texts")
    if self.truncated_share > MAX_TRUNCATED_SHARE:
      what = 'query + passage pairs' if self.pairs else 'texts'
      problems.append(f'truncates {self.truncated_share:.0%} of the {what} at '
                      f'{self.max_length} tokens')
    if not problems:
      return None
    return f'warning: the {role} ({self.model}) ' + '; '.join(problems) + f': {consequence}'


def _counts(tokenizer: Any, encodings: Sequence[Sequence[int]]) -> tuple[int, int]:
  special = set(tokenizer.all_special_ids)
  unknown = tokenizer.unk_token_id
  tokens = unknowns = 0
  for ids in encodings:
    for token in ids:
      if token in special and token != unknown:
        continue
      tokens += 1
      unknowns += token == unknown
  return tokens, unknowns


def text_coverage(tokenizer: Any, texts: Sequence[str], max_length: int,
                  model: str = '') -> Coverage:
  """The coverage of single texts (a bi-encoder's inputs)."""
  texts = [t for t in texts if isinstance(t, str)][:SAMPLE_SIZE]
  encodings = tokenizer(list(texts), add_special_tokens=True, truncation=False,
                        verbose=False)['input_ids']
  tokens, unknowns = _counts(tokenizer, encodings)
  return Coverage(
      model=model, inputs=len(texts), words=sum(len(_WORD.findall(t)) for t in texts),
      tokens=tokens, unknown_tokens=unknowns,
      truncated=sum(len(ids) > max_length for ids in encodings), max_length=max_length)


def pair_coverage(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int,
                  model: str = '') -> Coverage:
  """The coverage of query + passage pairs (a cross-encoder's inputs)."""
  pairs = list(pairs)[:SAMPLE_SIZE]
  encodings = tokenizer([q for q, _ in pairs], [p for _, p in pairs],
                        add_special_tokens=True, truncation=False, verbose=False)['input_ids']
  tokens, unknowns = _counts(tokenizer, encodings)
  return Coverage(
      model=model, inputs=len(pairs),
      words=sum(len(_WORD.findall(q)) + len(_WORD.findall(p)) for q, p in pairs),
      tokens=tokens, unknown_tokens=unknowns,
      truncated=sum(len(ids) > max_length for ids in encodings), max_length=max_length,
      pairs=True)
