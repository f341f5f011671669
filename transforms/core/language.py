"""The language of the texts: one setting for every job that tokenizes for BM25
or splits sentences (rerank, mine, loop, the default cross-encoder).

``auto`` looks at a sample of the corpus: the share of Cyrillic among its
letters decides between Russian and English (the two languages with a
Snowball stemmer here). What it picked, and why, goes into the report. An
explicit language always wins; ``none`` turns stemming off.

Stemming helped BM25 in every collection measured (nDCG@10, docs/benchmarks.md):
the Russian stemmer on xquad-ru by 0.077, the English one on Cranfield, CACM and
xquad-en by 0.019, 0.053 and 0.008. The sentence rules (pseudo-queries) are the
same for both languages: terminal punctuation, with closing quotes of either.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

from transforms.core.settings import setting

AUTO = 'auto'
NONE = 'none'
ENGLISH = 'english'
RUSSIAN = 'russian'
LANGUAGES = (AUTO, ENGLISH, RUSSIAN, NONE)
# ``auto`` takes Russian when at least this share of the sample's letters are
# Cyrillic, English when at most 1 - this share are; a sample in between is
# mixed and takes its majority (the other language's words are left as they
# are: each Snowball stemmer leaves the other script alone).
CLEAR_SHARE = 0.8
# Texts auto reads from the start of the corpus.
SAMPLE_TEXTS = 200


@dataclasses.dataclass(frozen=True)
class LanguageSettings:
  """The language of the corpus and queries (what BM25 stems, how sentences split)."""
  language: str = setting(
      AUTO, 'Language of the texts, for BM25 stemming: auto (from a sample of the corpus: '
      'Cyrillic letters -> russian, Latin -> english), english, russian, or none (no '
      'stemming) (default: %(default)s; --bm25-stemmer, where a job has it, wins).',
      choices=LANGUAGES)


@dataclasses.dataclass(frozen=True)
class Detected:
  """What ``auto`` (or an explicit setting) decided, for the report."""
  language: str
  requested: str
  letters: int = 0
  cyrillic_share: Optional[float] = None
  texts: int = 0
  reason: str = ''

  @property
  def stemmer(self) -> Optional[str]:
    """The BM25 stemmer of the language (None: no stemming)."""
    return None if self.language == NONE else self.language

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self), 'bm25_stemmer': self.stemmer}


def _script_counts(texts: Iterable[str]) -> tuple[int, int, int]:
  """``(texts, Cyrillic letters, Latin letters)`` of ``texts``."""
  count = cyrillic = latin = 0
  for text in texts:
    count += 1
    for char in text or '':
      if not char.isalpha():
        continue
      if '\u0400' <= char <= '\u04ff':
        cyrillic += 1
      elif char.isascii() or '\u00c0' <= char <= '\u024f':
        latin += 1
  return count, cyrillic, latin


def detect_language(texts: Iterable[str]) -> Detected:
  """The language of a sample of texts, by the script of their letters."""
  count, cyrillic, latin = _script_counts(texts)
  letters = cyrillic + latin
  if not letters:
    return Detected(NONE, AUTO, 0, None, count, 'no Latin or Cyrillic letters: no stemming')
  share = cyrillic / letters
  language = RUSSIAN if share >= 0.5 else ENGLISH
  clear = share >= CLEAR_SHARE or share <= 1 - CLEAR_SHARE
  reason = (f'{share:.0%} of {letters:,} letters in {count:,} texts are Cyrillic'
            + ('' if clear else f': mixed, the majority ({language}) is stemmed'))
  return Detected(language, AUTO, letters, round(share, 4), count, reason)


def resolve_language(requested: str, sample: Iterable[str]) -> Detected:
  """``requested`` as given, or (``auto``) detected on ``sample``."""
  if requested not in LANGUAGES:
    raise ValueError(f'language {requested!r} is not one of {", ".join(LANGUAGES)}')
  if requested != AUTO:
    return Detected(requested, requested, reason='given')
  return detect_language(sample)
