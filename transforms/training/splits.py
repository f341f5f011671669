"""The training loop's query splits: train, dev and test by a stable hash of the
query id (or a held-out test set), with the dev split the mine job makes."""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

from transforms.core.hashing import stable_hash
from transforms.core.splits import split_of
from transforms.ranking.fusion import MIN_TUNING_QUERIES

SPLITS = ('train', 'dev', 'test')


SPLIT_RULE = (
    'h = blake2b(query_id) % 1e6: test if h >= (1 - test_fraction) * 1e6; dev if '
    'h < dev_fraction * (1 - test_fraction) * 1e6 (the mine job\'s own dev split with '
    f'that fraction, raised to take {MIN_TUNING_QUERIES} judged queries when the hash gives '
    f'fewer and {2 * MIN_TUNING_QUERIES} or more are not test); else train')


EXPLICIT_TEST_RULE = (
    'test: the judged ids listed in --test-queries; of the rest, h = blake2b(query_id) '
    '% 1e6: dev if h < dev_fraction * 1e6 (the mine job\'s own dev split with that '
    f'fraction, raised to take {MIN_TUNING_QUERIES} judged queries when the hash gives fewer '
    f'and {2 * MIN_TUNING_QUERIES} or more are not test); else train')


def split_query_ids(
    query_ids: Iterable[str], test_fraction: float, dev_fraction: float,
    test_ids: Optional[Iterable[str]] = None) -> dict[str, list[str]]:
  """Judged query ids -> ``{'train', 'dev', 'test': sorted ids}``, by the id hash.

  ``test_ids`` (a held-out set of the user's) replace ``test_fraction``: test is
  the judged ids among them. Dev is ``split_of(query_id, loop_dev_share(...))
  == 'dev'``: the mine job, given the train+dev judgments and that fraction,
  puts exactly these queries in its dev split.
  """
  held_out = None if test_ids is None else set(test_ids)
  ids = sorted(set(query_ids))
  dev_share = loop_dev_share(ids, test_fraction, dev_fraction, held_out)
  splits: dict[str, list[str]] = {name: [] for name in SPLITS}
  for query_id in ids:
    if _is_test(query_id, test_fraction, held_out):
      splits['test'].append(query_id)
    elif split_of(query_id, dev_share) == 'dev':
      splits['dev'].append(query_id)
    else:
      splits['train'].append(query_id)
  check_disjoint(splits)
  return splits


def mine_dev_fraction(test_fraction: float, dev_fraction: float,
                      explicit_test: bool = False) -> float:
  """The mine job's ``--dev-fraction`` that yields the loop's dev split (the
  hash split's test share is cut out of the same hash range; an explicit test
  set is not)."""
  return dev_fraction if explicit_test else dev_fraction * (1 - test_fraction)


# The loop's dev split holds at least this many judged queries where the
# collection allows (the final stage's fusion guard needs as many to tune).
MIN_DEV_QUERIES = MIN_TUNING_QUERIES


def _is_test(query_id: str, test_fraction: float, held_out: Optional[set]) -> bool:
  if held_out is not None:
    return query_id in held_out
  return split_of(query_id, 1 - test_fraction) == 'train'


def loop_dev_share(query_ids: Iterable[str], test_fraction: float, dev_fraction: float,
                   held_out: Optional[Iterable[str]] = None) -> float:
  """The mine job's ``--dev-fraction`` for the loop's dev split:
  ``mine_dev_fraction``, raised just enough to put ``MIN_DEV_QUERIES`` of the
  judged non-test queries in dev when the hash gives fewer and at least twice
  that many are not test (so train keeps as many). The final stage's fusion is
  tuned on the dev queries, and the guard keeps the first stage with fewer
  than that; a hash split of ~110 queries at 0.2 can give 19. Never lowered;
  0 stays 0 (no dev split)."""
  held = None if held_out is None else set(held_out)
  share = mine_dev_fraction(test_fraction, dev_fraction, held is not None)
  if share <= 0:
    return share
  hashes = sorted(stable_hash(q) % 1_000_000 for q in set(query_ids)
                  if not _is_test(q, test_fraction, held))
  hashed_dev = sum(h < share * 1_000_000 for h in hashes)  # as split_of decides
  if len(hashes) < 2 * MIN_DEV_QUERIES or hashed_dev >= MIN_DEV_QUERIES:
    return share
  return (hashes[MIN_DEV_QUERIES - 1] + 1) / 1_000_000


def check_disjoint(splits: Mapping[str, Iterable[str]]) -> None:
  """Raises if a query id is in two splits (a leak: never expected)."""
  sets = {name: set(ids) for name, ids in splits.items()}
  for i, first in enumerate(SPLITS):
    for second in SPLITS[i + 1:]:
      shared = sets.get(first, set()) & sets.get(second, set())
      if shared:
        raise AssertionError(
            f'query splits {first} and {second} share {len(shared)} ids, e.g. '
            f'{sorted(shared)[:3]}')
