"""transforms.core.language: auto picks the stemmer from the corpus's letters;
an explicit language wins; the stemmer reaches BM25 through BM25Options."""
from __future__ import annotations

import pytest

from transforms.core.language import (
    CLEAR_SHARE,
    detect_language,
    resolve_language,
)
from transforms.retrieval.bm25 import BM25Options, tokenize

RUSSIAN = ['Столица Нормандии — Руан.', 'Норманны приняли христианство в десятом веке.']
ENGLISH = ['The capital of Normandy is Rouen.', 'The Normans adopted Christianity.']


def test_russian_and_english_samples():
  russian = detect_language(RUSSIAN)
  assert (russian.language, russian.stemmer, russian.cyrillic_share) == ('russian', 'russian', 1.0)
  assert russian.texts == 2 and 'are Cyrillic' in russian.reason
  english = detect_language(ENGLISH)
  assert (english.language, english.stemmer, english.cyrillic_share) == ('english', 'english', 0.0)


def test_a_mixed_sample_takes_its_majority_and_says_it_is_mixed():
  mixed = detect_language(RUSSIAN + ENGLISH[:1])  # about two thirds Cyrillic
  assert mixed.language == 'russian'
  assert 1 - CLEAR_SHARE < mixed.cyrillic_share < CLEAR_SHARE
  assert 'mixed, the majority (russian)' in mixed.reason
  assert detect_language(ENGLISH + RUSSIAN[:1]).language == 'english'


def test_no_letters_means_no_stemming():
  detected = detect_language(['12 345', '', '—'])
  assert (detected.language, detected.stemmer) == ('none', None)


def test_an_explicit_language_always_wins():
  assert resolve_language('english', RUSSIAN).language == 'english'
  assert resolve_language('none', RUSSIAN).stemmer is None
  assert resolve_language('auto', RUSSIAN).as_dict()['bm25_stemmer'] == 'russian'
  with pytest.raises(ValueError, match='not one of'):
    resolve_language('french', RUSSIAN)


def test_the_language_reaches_bm25_unless_the_stemmer_is_named():
  assert BM25Options(enabled=True).settings(10, 'russian').stemmer == 'russian'
  assert BM25Options(enabled=True, stemmer='none').settings(10, 'russian').stemmer is None
  assert BM25Options(enabled=True, stemmer='english').settings(10, 'russian').stemmer == 'english'
  assert BM25Options(enabled=True).settings(10, None).stemmer is None
  assert BM25Options().settings(10, 'russian') is None  # no --bm25
  # Each Snowball stemmer leaves the other script alone.
  assert tokenize('Норманны normans', 'russian') == ['норман', 'normans']
  assert tokenize('Норманны normans', 'english') == ['норманны', 'norman']
