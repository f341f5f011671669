"""Train and dev splits by a stable hash of the query id."""
from __future__ import annotations

from transforms.core.hashing import stable_hash


def split_of(query_id: str, dev_fraction: float) -> str:
  """``train`` or ``dev``, decided by a stable hash of the query id."""
  if dev_fraction <= 0:
    return 'train'
  return 'dev' if (stable_hash(query_id) % 1_000_000) < dev_fraction * 1_000_000 else 'train'
