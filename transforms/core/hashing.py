"""Hashes that are the same in every process and run (unlike ``hash``)."""
from __future__ import annotations

import hashlib


def stable_digest(key: str) -> bytes:
  """8 bytes that are the same in every process and run: BLAKE2b-64 of the key.

  The form to use where a hash becomes a Beam element or key: bytes sort as
  ``stable_hash`` does, and Beam's integer coder takes signed 64-bit values
  only (apache-beam >= 2.78 refuses larger ones).
  """
  return hashlib.blake2b(key.encode('utf-8', 'surrogatepass'), digest_size=8).digest()


def stable_hash(key: str) -> int:
  """A hash that is the same in every process and run (unlike ``hash``), as an
  unsigned 64-bit integer: for ``%`` and seeds inside a step, never as a Beam
  element (``stable_digest`` is that)."""
  return int.from_bytes(stable_digest(key), 'big')
