"""Per-query score fusion (linear or RRF) with guarded, auto-tuned weights.

Signals are named scores per candidate: ``dense``, ``bm25``, ``supplied``,
``retrieval`` (the fused first stage) and ``ce`` (cross-encoder), read from the
row columns ``<signal>_score``.

Rules (all deterministic):

* Missing signals: a candidate may lack a signal (``None``, NaN or +/-inf all
  count as missing). For ``linear`` a missing signal counts as the minimum the
  query's candidates have for it after normalisation, never above 0.0 (with
  min-max: exactly 0.0). For ``rrf`` a missing signal contributes nothing. For
  ``none`` (a single signal) candidates lacking it rank after all that have it.
* Normalisation (``linear`` only) is per query over the candidates that have
  the signal; ``NORMALISATIONS[DEFAULT_NORMALISATION]`` is the one line to
  change. Min-max maps to [0, 1]; if all present values are equal they all
  become 1.0 (the signal found them, but cannot order them), so a candidate
  that has the signal never scores below one that lacks it.
* RRF rank per signal: by that signal's raw score desc, ties by doc_id asc,
  over the candidates that have it; fused = sum_s w_s / (k + rank_s).
* Final order: fused score desc, then doc_id asc.
* nDCG@10 is trec_eval's (as ir-measures computes it in ``evaluation``):
  gain = relevance (negative counts 0), discount log2(rank + 1), ideal from
  every judged relevant doc of the query.

The guard (``choose_fusion``) keeps auto-tuned weights only when they beat the
best single signal on the tuning queries by a one-sided paired sign-flip test;
otherwise it falls back to that single signal.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)

SIGNALS = ('dense', 'bm25', 'supplied', 'retrieval', 'ce')
# Breaks ties between equally good single signals (e.g. with no judgments):
# the cross-encoder first, as the product ranks by it without fusion.
SINGLE_SIGNAL_PRIORITY = ('ce', 'retrieval', 'dense', 'supplied', 'bm25')
METHODS = ('none', 'linear', 'rrf')
AUTO = 'auto'
DEFAULT_RRF_K = 60
CUTOFF = 10
# Tuning grids: step for two signals, and for three or four (a simplex grid).
PAIR_STEPS = 20  # w in 0, 0.05, ..., 1
# The guard of auto weights (choose_fusion): tuned weights are kept only with
# >= MIN_TUNING_QUERIES judged tuning queries and a gain that a one-sided paired
# sign-flip test supports at p < ALPHA.
MIN_TUNING_QUERIES = 20
ALPHA = 0.05
SIMPLEX_STEPS = 10  # weights in 0, 0.1, ..., 1 summing to 1
_TIE_TOLERANCE = 1e-12


def score_column(signal: str) -> str:
  """The row column holding ``signal``'s score: ``dense`` -> ``dense_score``."""
  return f'{signal}_score'


def _minmax(values: np.ndarray) -> np.ndarray:
  low, high = values.min(), values.max()
  if high == low:
    return np.ones_like(values)
  return (values - low) / (high - low)


def _zscore(values: np.ndarray) -> np.ndarray:
  std = values.std()
  if std == 0:
    return np.zeros_like(values)
  return (values - values.mean()) / std


NORMALISATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    'minmax': _minmax,
    'zscore': _zscore,
}
DEFAULT_NORMALISATION = 'minmax'


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One query's candidate: ``scores`` maps signal -> score (absent or None: missing)."""
  doc_id: str
  scores: Mapping[str, Optional[float]] = dataclasses.field(hash=False)


def _present(value: Any) -> bool:
  return value is not None and math.isfinite(value)


def candidates_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Candidate]:
  """Rows with ``doc_id`` and ``<signal>_score`` columns -> candidates."""
  return [
      Candidate(str(row['doc_id']), {
          signal: (float(row[score_column(signal)])
                   if _present(row.get(score_column(signal))) else None)
          for signal in SIGNALS})
      for row in rows]


def signals_present(rows: Iterable[Union[Mapping[str, Any], Candidate]]) -> list[str]:
  """Signals (in ``SIGNALS`` order) with at least one finite score in ``rows``."""
  found = set()
  for row in rows:
    for signal in SIGNALS:
      value = (row.scores.get(signal) if isinstance(row, Candidate)
               else row.get(score_column(signal)))
      if _present(value):
        found.add(signal)
  return [s for s in SIGNALS if s in found]


def normalise(
    scores: Sequence[Optional[float]], method: str = DEFAULT_NORMALISATION,
) -> list[Optional[float]]:
  """Per-query normalisation over the present scores; missing stay ``None``.

  Args:
    scores: one signal's scores for one query's candidates.
    method: a key of ``NORMALISATIONS`` (min-max by default: all-equal -> 1.0).
  """
  if method not in NORMALISATIONS:
    raise ValueError(
        f'unknown normalisation {method!r} (known: {", ".join(NORMALISATIONS)})')
  present = [i for i, s in enumerate(scores) if _present(s)]
  out: list[Optional[float]] = [None] * len(scores)
  if present:
    values = NORMALISATIONS[method](np.array([scores[i] for i in present], dtype=float))
    for i, value in zip(present, values):
      out[i] = float(value)
  return out


# ---------------------------------------------------------------------------
# Per-query matrices shared by the fusion functions and the tuner, so that a
# tuned weight vector ranks exactly as fuse_linear/fuse_rrf later rank.


@dataclasses.dataclass
class _Query:
  doc_ids: list[str]  # sorted asc: a stable sort on -score breaks ties by doc_id
  raw: np.ndarray  # (n, len(signals)) float, NaN = missing
  signals: tuple[str, ...]


def _prepare(candidates: Sequence[Candidate], signals: Sequence[str]) -> _Query:
  ordered = sorted(candidates, key=lambda c: c.doc_id)
  doc_ids = [c.doc_id for c in ordered]
  for a, b in zip(doc_ids, doc_ids[1:]):
    if a == b:
      raise ValueError(f'duplicate doc_id {a!r} among one query\'s candidates')
  raw = np.full((len(ordered), len(signals)), np.nan)
  for i, candidate in enumerate(ordered):
    for j, signal in enumerate(signals):
      value = candidate.scores.get(signal)
      if _present(value):
        raw[i, j] = float(value)
  return _Query(doc_ids, raw, tuple(signals))


def _linear_features(query: _Query, normalisation: str) -> np.ndarray:
  """Normalised scores, a missing one filled with min(0, lowest normalised)."""
  features = np.zeros_like(query.raw)
  for j in range(query.raw.shape[1]):
    column = query.raw[:, j]
    mask = ~np.isnan(column)
    if not mask.any():
      continue
    values = NORMALISATIONS[normalisation](column[mask])
    features[mask, j] = values
    features[~mask, j] = min(0.0, float(values.min()))
  return features


def _signal_ranks(query: _Query) -> np.ndarray:
  """1-based rank per signal (score desc, doc_id asc); 0 where missing."""
  ranks = np.zeros(query.raw.shape, dtype=np.int64)
  for j in range(query.raw.shape[1]):
    column = query.raw[:, j]
    present = np.flatnonzero(~np.isnan(column))
    order = present[np.argsort(-column[present], kind='stable')]
    ranks[order, j] = np.arange(1, len(order) + 1)
  return ranks


def _rrf_features(query: _Query, k: float) -> np.ndarray:
  ranks = _signal_ranks(query)
  return np.where(ranks > 0, 1.0 / (k + np.maximum(ranks, 1)), 0.0)


def _combine(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """(n, s) features x (g, s) weights -> (n, g), summed in signal order.

  Elementwise products and sums (no BLAS), so one weight vector gives
  bit-identical scores whether scored alone or as a column of a grid.
  """
  fused = np.zeros((features.shape[0], weights.shape[0]))
  for j in range(features.shape[1]):
    fused = fused + features[:, j, None] * weights[None, :, j]
  return fused


def _order(fused: np.ndarray) -> np.ndarray:
  """Row order per column: score desc, ties by position (doc_id asc)."""
  return np.argsort(-fused, axis=0, kind='stable')


def _single_order(query: _Query, j: int) -> np.ndarray:
  """Order by one signal's raw score desc; missing after, all ties by doc_id."""
  column = query.raw[:, j]
  key = np.where(np.isnan(column), np.inf, -column)
  return np.argsort(key, kind='stable')


def _resolve_weights(weights: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
  signals = [s for s in SIGNALS if weights.get(s, 0.0) > 0]
  unknown = sorted(set(weights) - set(SIGNALS))
  if unknown:
    raise ValueError(f'unknown fusion signal(s) {unknown} (known: {", ".join(SIGNALS)})')
  if not signals:
    raise ValueError('fusion weights are all zero')
  return signals, np.array([[float(weights[s]) for s in signals]])


def _ranked(query: _Query, fused: np.ndarray) -> list[tuple[str, float]]:
  return [(query.doc_ids[i], float(fused[i])) for i in _order(fused)]


def fuse_linear(
    candidates: Sequence[Candidate], weights: Mapping[str, float],
    normalisation: str = DEFAULT_NORMALISATION,
) -> list[tuple[str, float]]:
  """Weighted sum of per-query normalised scores; missing = the minimum (0.0).

  Returns:
    ``(doc_id, fused_score)`` by fused score desc, then doc_id asc.
  """
  if normalisation not in NORMALISATIONS:
    raise ValueError(f'unknown normalisation {normalisation!r}')
  signals, w = _resolve_weights(weights)
  query = _prepare(candidates, signals)
  return _ranked(query, _combine(_linear_features(query, normalisation), w)[:, 0])


def fuse_rrf(
    candidates: Sequence[Candidate], weights: Mapping[str, float],
    k: float = DEFAULT_RRF_K,
) -> list[tuple[str, float]]:
  """Weighted reciprocal rank fusion: sum_s w_s / (k + rank_s); missing adds 0.

  Returns:
    ``(doc_id, fused_score)`` by fused score desc, then doc_id asc.
  """
  if not k >= 0:
    raise ValueError(f'rrf k must be >= 0, got {k}')
  signals, w = _resolve_weights(weights)
  query = _prepare(candidates, signals)
  return _ranked(query, _combine(_rrf_features(query, k), w)[:, 0])


def rank_single(candidates: Sequence[Candidate], signal: str) -> list[tuple[str, float]]:
  """Method ``none``: one signal's raw order, candidates lacking it last.

  A candidate lacking the signal gets the query's lowest score for it (0.0 if
  no candidate has it), so scores never increase down the list.
  """
  if signal not in SIGNALS:
    raise ValueError(f'unknown signal {signal!r} (known: {", ".join(SIGNALS)})')
  query = _prepare(candidates, [signal])
  column = query.raw[:, 0]
  floor = float(np.nanmin(column)) if (~np.isnan(column)).any() else 0.0
  return [(query.doc_ids[i], floor if np.isnan(column[i]) else float(column[i]))
          for i in _single_order(query, 0)]


# ---------------------------------------------------------------------------
# Specs and parsing.


def parse_fusion_weights(text: str) -> Union[dict[str, float], str]:
  """``'dense=0.5,bm25=0.5,ce=1.0'`` -> ``{'dense': 0.5, ...}``; ``'auto'`` -> ``'auto'``.

  Raises:
    ValueError: empty text, a malformed item, an unknown or repeated signal, a
      weight that is not a finite number or is negative, or all weights zero.
  """
  example = "e.g. 'dense=0.5,bm25=0.5' or 'auto'"
  if text is None or not str(text).strip():
    raise ValueError(f'empty fusion weights; expected {example}')
  text = str(text).strip()
  if text.lower() == AUTO:
    return AUTO
  weights: dict[str, float] = {}
  for item in text.split(','):
    name, sep, value = item.partition('=')
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
      raise ValueError(f'fusion weight {item.strip()!r} is not signal=weight; {example}')
    if name not in SIGNALS:
      raise ValueError(
          f'unknown fusion signal {name!r} in {item.strip()!r} (known: {", ".join(SIGNALS)})')
    if name in weights:
      raise ValueError(f'fusion signal {name!r} is given twice')
    try:
      weight = float(value)
    except ValueError:
      raise ValueError(f'fusion weight for {name!r} is not a number: {value!r}') from None
    if not math.isfinite(weight):
      raise ValueError(f'fusion weight for {name!r} must be finite, got {value!r}')
    if weight < 0:
      raise ValueError(f'fusion weight for {name!r} must be >= 0, got {value!r}')
    weights[name] = weight
  if not any(w > 0 for w in weights.values()):
    raise ValueError('fusion weights are all zero; give at least one signal a positive weight')
  return weights


def _check_weights(method: str, weights: Union[Mapping[str, float], str]) -> None:
  if isinstance(weights, str):
    if weights != AUTO:
      raise ValueError(f"fusion weights must be a mapping or 'auto', got {weights!r}")
    return
  unknown = sorted(set(weights) - set(SIGNALS))
  if unknown:
    raise ValueError(f'unknown fusion signal(s) {unknown} (known: {", ".join(SIGNALS)})')
  for name, weight in weights.items():
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
      raise ValueError(f'fusion weight for {name!r} must be a finite number >= 0, got {weight!r}')
  positive = [s for s, w in weights.items() if w > 0]
  if not positive:
    raise ValueError('fusion weights are all zero; give at least one signal a positive weight')
  if method == 'none' and len(positive) != 1:
    raise ValueError(
        f"fusion method 'none' ranks by one signal; got positive weights for {positive}")


def _canonical(weights: Union[Mapping[str, float], str]) -> Union[dict[str, float], str]:
  if isinstance(weights, str):
    return weights
  return {s: float(weights[s]) for s in SIGNALS if s in weights}


@dataclasses.dataclass(frozen=True)
class FusionSpec:
  """What the user asked for: method, weights (or ``'auto'``), RRF k."""
  method: str = 'none'
  weights: Union[Mapping[str, float], str] = dataclasses.field(
      default=AUTO, hash=False)
  rrf_k: float = DEFAULT_RRF_K
  normalisation: str = DEFAULT_NORMALISATION

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'unknown fusion method {self.method!r} (known: {", ".join(METHODS)})')
    _check_weights(self.method, self.weights)
    if not self.rrf_k >= 0:
      raise ValueError(f'rrf k must be >= 0, got {self.rrf_k}')
    if self.normalisation not in NORMALISATIONS:
      raise ValueError(
          f'unknown normalisation {self.normalisation!r} (known: {", ".join(NORMALISATIONS)})')
    object.__setattr__(self, 'weights', _canonical(self.weights))

  def as_dict(self) -> dict:
    """JSON-serialisable."""
    return {'method': self.method, 'weights': _canonical(self.weights),
            'rrf_k': self.rrf_k, 'normalisation': self.normalisation}


@dataclasses.dataclass(frozen=True)
class FusionDecision:
  """The fusion to apply, and why (``tuning`` holds the evidence)."""
  weights: Mapping[str, float] = dataclasses.field(hash=False)
  method: str
  fell_back: bool
  reason: str
  tuning: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
  rrf_k: float = DEFAULT_RRF_K
  normalisation: str = DEFAULT_NORMALISATION

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'unknown fusion method {self.method!r}')
    if isinstance(self.weights, str):
      raise ValueError('a fusion decision needs concrete weights, not auto')
    _check_weights(self.method, self.weights)
    object.__setattr__(self, 'weights', _canonical(self.weights))

  def as_dict(self) -> dict:
    """JSON-serialisable, for manifests."""
    return {'method': self.method, 'weights': dict(self.weights), 'rrf_k': self.rrf_k,
            'normalisation': self.normalisation, 'fell_back': self.fell_back,
            'reason': self.reason, 'tuning': dict(self.tuning)}


def fuse(
    candidates: Sequence[Candidate], fusion: Union[FusionSpec, FusionDecision],
) -> list[tuple[str, float]]:
  """Ranks one query's candidates as ``fusion`` says (weights must be concrete)."""
  if isinstance(fusion.weights, str):
    raise ValueError("fusion weights are 'auto': resolve them with choose_fusion first")
  if fusion.method == 'none':
    (signal,) = [s for s, w in fusion.weights.items() if w > 0]
    return rank_single(candidates, signal)
  if fusion.method == 'linear':
    return fuse_linear(candidates, fusion.weights, fusion.normalisation)
  return fuse_rrf(candidates, fusion.weights, fusion.rrf_k)


# ---------------------------------------------------------------------------
# Evaluation and tuning.


def _discounts(cutoff: int = CUTOFF) -> np.ndarray:
  return 1.0 / np.log2(np.arange(cutoff) + 2.0)


def _ideal_dcg(qrels_for_query: Mapping[str, int], cutoff: int = CUTOFF) -> float:
  gains = sorted((float(r) for r in qrels_for_query.values() if r > 0), reverse=True)
  total = 0.0
  for gain, discount in zip(gains[:cutoff], _discounts(cutoff)):
    total += gain * discount
  return total


def ndcg_at_10(ranked_doc_ids: Sequence[str], qrels_for_query: Mapping[str, int]) -> float:
  """trec_eval's nDCG@10 for one query's ranking (doc ids, best first, unique).

  Gain = relevance (unjudged or <= 0 counts 0), discount log2(rank + 1), ideal
  from all judged relevant docs; 0.0 when the query has none. Written here,
  not taken from ir-measures (``transforms.ranking.evaluation``), because tuning scores
  every grid point's ranking of every query; a test keeps the two equal.
  """
  ideal = _ideal_dcg(qrels_for_query)
  if ideal == 0:
    return 0.0
  total = 0.0
  for doc_id, discount in zip(ranked_doc_ids[:CUTOFF], _discounts()):
    total += max(float(qrels_for_query.get(doc_id, 0)), 0.0) * discount
  return total / ideal


def _grid_ndcg(query: _Query, orders: np.ndarray, qrels_for_query: Mapping[str, int]) -> np.ndarray:
  """nDCG@10 per column of ``orders`` (n, g); same arithmetic as ``ndcg_at_10``."""
  ideal = _ideal_dcg(qrels_for_query)
  if ideal == 0 or orders.shape[0] == 0:
    return np.zeros(orders.shape[1])
  gains = np.array([max(float(qrels_for_query.get(d, 0)), 0.0) for d in query.doc_ids])
  total = np.zeros(orders.shape[1])
  for position, discount in enumerate(_discounts()[:orders.shape[0]]):
    total = total + gains[orders[position]] * discount
  return total / ideal


def weight_grid(signals: Sequence[str]) -> list[dict[str, float]]:
  """Candidate weights: step 0.05 on w*a + (1-w)*b for two signals, else a 0.1 simplex."""
  n = len(signals)
  if n == 1:
    return [{signals[0]: 1.0}]
  steps = PAIR_STEPS if n == 2 else SIMPLEX_STEPS
  grid = []

  def compositions(left: int, parts: int) -> Iterator[tuple[int, ...]]:
    if parts == 1:
      yield (left,)
      return
    for first in range(left, -1, -1):
      for rest in compositions(left - first, parts - 1):
        yield (first,) + rest

  for units in compositions(steps, n):
    grid.append({s: u / steps for s, u in zip(signals, units)})
  return grid


def _tuning_queries(
    per_query_candidates: Mapping[str, Sequence[Candidate]],
    qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
  """Queries listed in ``per_query_candidates`` (an empty list counts: it
  scores 0 under every weighting) with at least one judged relevant doc."""
  return sorted(q for q in per_query_candidates
                if any(r > 0 for r in qrels.get(q, {}).values()))


def _canonical_signals(signals: Sequence[str]) -> list[str]:
  unknown = sorted(set(signals) - set(SIGNALS))
  if unknown:
    raise ValueError(f'unknown signal(s) {unknown} (known: {", ".join(SIGNALS)})')
  return [s for s in SIGNALS if s in set(signals)]


def _evaluate_grid(
    per_query_candidates: Mapping[str, Sequence[Candidate]],
    qrels: Mapping[str, Mapping[str, int]], queries: Sequence[str],
    signals: Sequence[str], grid: Sequence[Mapping[str, float]], method: str,
    rrf_k: float, normalisation: str) -> np.ndarray:
  """(queries, grid) nDCG@10 of each weight vector on each query."""
  weights = np.array([[w[s] for s in signals] for w in grid])
  out = np.zeros((len(queries), len(grid)))
  for i, query_id in enumerate(queries):
    if not per_query_candidates.get(query_id):
      continue  # No candidates: nDCG@10 0 for every weight vector.
    query = _prepare(per_query_candidates[query_id], signals)
    if method == 'linear':
      features = _linear_features(query, normalisation)
    elif method == 'rrf':
      features = _rrf_features(query, rrf_k)
    else:
      raise ValueError(f"can only tune 'linear' or 'rrf', not {method!r}")
    orders = _order(_combine(features, weights))
    out[i] = _grid_ndcg(query, orders, qrels[query_id])
  return out


def _single_ndcg(
    per_query_candidates: Mapping[str, Sequence[Candidate]],
    qrels: Mapping[str, Mapping[str, int]], queries: Sequence[str],
    signals: Sequence[str]) -> np.ndarray:
  """(queries, signals) nDCG@10 of ranking by each signal alone (method none)."""
  out = np.zeros((len(queries), len(signals)))
  for i, query_id in enumerate(queries):
    if not per_query_candidates.get(query_id):
      continue  # No candidates: nDCG@10 0 for every signal.
    query = _prepare(per_query_candidates[query_id], signals)
    orders = np.stack([_single_order(query, j) for j in range(len(signals))], axis=1)
    out[i] = _grid_ndcg(query, orders, qrels[query_id])
  return out


def _pick(means: np.ndarray, grid: Sequence[Mapping[str, float]],
          signals: Sequence[str]) -> int:
  """Best mean; ties -> most even weights, then lexicographically largest."""
  best = means.max()
  tied = [g for g in range(len(grid)) if means[g] >= best - _TIE_TOLERANCE]

  def key(g: int) -> tuple:
    vector = [grid[g][s] for s in signals]
    return (sum(w * w for w in vector), tuple(-w for w in vector))

  return min(tied, key=key)


def tune_weights(
    per_query_candidates: Mapping[str, Sequence[Candidate]],
    qrels: Mapping[str, Mapping[str, int]],
    signals: Sequence[str],
    method: str = 'linear',
    rrf_k: float = DEFAULT_RRF_K,
    normalisation: str = DEFAULT_NORMALISATION,
) -> tuple[dict[str, float], float]:
  """Grid search for the weights with the best mean nDCG@10 over the tuning queries.

  Tuning queries: those in ``per_query_candidates`` with a judged relevant doc.
  Ties go to the most even weights (least sum of squares), then to the
  lexicographically largest vector in ``SIGNALS`` order.

  Returns:
    ``(weights over signals, mean nDCG@10)``; mean 0.0 with no tuning queries.
  """
  signals = _canonical_signals(signals)
  if not signals:
    raise ValueError('no signals to tune')
  queries = _tuning_queries(per_query_candidates, qrels)
  grid = weight_grid(signals)
  values = _evaluate_grid(per_query_candidates, qrels, queries, signals, grid, method,
                          rrf_k, normalisation)
  means = values.mean(axis=0) if queries else np.zeros(len(grid))
  g = _pick(means, grid, signals)
  return dict(grid[g]), float(means[g])


def paired_sign_flip_p(
    differences: Sequence[float], flips: int = 10_000, seed: int = 0) -> float:
  """One-sided p-value that the mean paired difference is > 0 (random sign flips).

  p = (1 + #flips with mean >= observed) / (1 + flips); 1.0 with no data or
  all differences zero. Deterministic for a given seed. Kept rather than
  ``scipy.stats.permutation_test(permutation_type='samples', alternative='greater')``:
  that gives other p-values (it enumerates every sign pattern for small samples
  and has no +1 correction there) and was slower (docs/benchmarks.md).
  """
  d = np.asarray(differences, dtype=float)
  if d.size == 0 or not np.any(d):
    return 1.0
  observed = d.mean()
  rng = np.random.default_rng(seed)
  hits, done, batch = 0, 0, 1000
  while done < flips:
    size = min(batch, flips - done)
    signs = rng.integers(0, 2, size=(size, d.size)) * 2 - 1
    hits += int(np.count_nonzero((signs * d).mean(axis=1) >= observed - _TIE_TOLERANCE))
    done += size
  return (1 + hits) / (1 + flips)


def _cross_validated(
    values: np.ndarray, grid: Sequence[Mapping[str, float]], signals: Sequence[str],
    folds: int, seed: int) -> np.ndarray:
  """Per-query nDCG@10 of weights tuned without that query's fold."""
  n = values.shape[0]
  fold_of = np.empty(n, dtype=np.int64)
  fold_of[np.random.default_rng(seed).permutation(n)] = np.arange(n) % min(folds, n)
  heldout = np.zeros(n)
  for fold in np.unique(fold_of):
    train = fold_of != fold
    g = _pick(values[train].mean(axis=0), grid, signals)
    heldout[~train] = values[~train, g]
  return heldout


def _fmt_weights(weights: Mapping[str, float]) -> str:
  return ', '.join(f'{s}={w:g}' for s, w in weights.items())


def _best_single(means: Mapping[str, float]) -> str:
  best = max(means.values())
  tied = [s for s in SINGLE_SIGNAL_PRIORITY
          if s in means and means[s] >= best - _TIE_TOLERANCE]
  return tied[0]


def choose_fusion(
    per_query_candidates: Mapping[str, Sequence[Candidate]],
    qrels: Mapping[str, Mapping[str, int]],
    spec: FusionSpec,
    signals: Optional[Sequence[str]] = None,
    min_queries: int = MIN_TUNING_QUERIES,
    alpha: float = ALPHA,
    flips: int = 10_000,
    seed: int = 0,
    folds: int = 0,
    few_queries_fallback: Optional[str] = None,
) -> FusionDecision:
  """Resolves ``spec`` to concrete weights, guarding auto-tuned ones.

  Fixed weights are kept as given (no tuning). With ``'auto'``: ``none`` picks
  the best single signal; ``linear``/``rrf`` tune weights, then keep them only
  if there are >= ``min_queries`` tuning queries, the mean gain over the best
  single signal is > 0 and a one-sided paired sign-flip test gives p < alpha
  (the weights were tuned on these same queries, so this is optimistic: with
  pure-noise extra signals it keeps fusion somewhat more often than alpha).
  Otherwise they fall back to equal weights when those score above the best
  single signal on the tuning queries (equal weights are not chosen there, so
  their mean is a fair estimate, while the best single's is the best of
  several: the comparison favours the single signal), else to the best single
  signal (method ``none``, 1.0). Fewer than ``min_queries`` always fall back to
  one signal: ``few_queries_fallback`` when given (e.g. the final stage's input
  ranking, which so few queries cannot show a model should replace), else the
  best single signal on them.
  With ``folds`` >= 2 the gain and the test use cross-validated per-query
  nDCG@10 (each fold scored with weights tuned on the other folds), which
  keeps the false-keep rate near alpha; the kept weights are still tuned on
  all queries.

  Args:
    per_query_candidates: query_id -> that query's candidates.
    qrels: query_id -> doc_id -> relevance.
    spec: the requested fusion.
    signals: signals to consider; default: those present in the candidates.
    min_queries: fewer tuning queries (with a judged relevant doc) fall back.
    alpha: the one-sided test's level.
    flips: random sign flips of the paired test.
    seed: seeds the sign flips and the fold assignment.
    folds: 0 (test the in-sample tuned fusion) or >= 2 (cross-validate).
    few_queries_fallback: the signal ranked by with fewer than ``min_queries``
      tuning queries (one of ``signals``); None: the best single signal.
  """
  if folds == 1 or folds < 0:
    raise ValueError(f'folds must be 0 or >= 2, got {folds}')
  base = {'rrf_k': spec.rrf_k, 'normalisation': spec.normalisation}
  if not isinstance(spec.weights, str):
    return FusionDecision(
        spec.weights, spec.method, False,
        f'fixed fusion: {spec.method} with {_fmt_weights(spec.weights)} (not tuned)', {},
        **base)
  if signals is None:
    signals = signals_present(c for cands in per_query_candidates.values() for c in cands)
  signals = _canonical_signals(signals)
  if not signals:
    raise ValueError('no signal scores among the candidates: nothing to rank by')
  queries = _tuning_queries(per_query_candidates, qrels)
  singles = _single_ndcg(per_query_candidates, qrels, queries, signals)
  single_means = {s: float(singles[:, j].mean()) if queries else 0.0
                  for j, s in enumerate(signals)}
  best = _best_single(single_means)
  best_values = singles[:, signals.index(best)]
  tuning: dict[str, Any] = {
      'queries': len(queries), 'signals': list(signals), 'single_ndcg@10': single_means,
      'best_single': best, 'best_single_ndcg@10': single_means[best],
      'min_queries': min_queries, 'alpha': alpha, 'method': spec.method}
  summary = f'{best} {single_means[best]:.3f}'

  def fallback(why: str) -> FusionDecision:
    reason = f'auto fusion fell back to {best}: {why}'
    logger.info('%s', reason)
    return FusionDecision({best: 1.0}, 'none', True, reason, tuning, **base)

  if spec.method == 'none':
    reason = (f'no fusion: best single signal {best} ({summary} nDCG@10 on '
              f'{len(queries)} tuning queries)')
    return FusionDecision({best: 1.0}, 'none', False, reason, tuning, **base)
  if len(signals) < 2:
    return fallback(f'only one signal present ({best}); nothing to fuse')

  grid = weight_grid(signals)
  values = _evaluate_grid(per_query_candidates, qrels, queries, signals, grid, spec.method,
                          spec.rrf_k, spec.normalisation)
  means = values.mean(axis=0) if queries else np.zeros(len(grid))
  g = _pick(means, grid, signals)
  weights = dict(grid[g])
  fused_values = values[:, g]
  fused_mean = float(means[g])
  gain = fused_mean - single_means[best]
  tuning.update({'tuned_weights': weights, 'fused_ndcg@10': fused_mean, 'gain': gain,
                 'grid_size': len(grid), 'flips': flips, 'seed': seed, 'folds': folds})
  if len(queries) < min_queries:
    tuning['p_value'] = None
    if few_queries_fallback in signals and few_queries_fallback != best:
      reason = (f'auto fusion fell back to {few_queries_fallback}: {len(queries)} tuning '
                f'queries with judgments < {min_queries} needed to replace it (tuned '
                f'{_fmt_weights(weights)}: {fused_mean:.3f}; {summary}; '
                f'{few_queries_fallback} {single_means[few_queries_fallback]:.3f})')
      logger.info('%s', reason)
      return FusionDecision({few_queries_fallback: 1.0}, 'none', True, reason, tuning, **base)
    return fallback(f'{len(queries)} tuning queries with judgments < {min_queries} needed '
                    f'(tuned {_fmt_weights(weights)}: {fused_mean:.3f} vs {summary})')
  if folds and len(queries) >= 2:
    fused_values = _cross_validated(values, grid, signals, folds, seed)
    fused_mean = float(fused_values.mean())
    gain = fused_mean - single_means[best]
    tuning.update({'heldout_fused_ndcg@10': fused_mean, 'gain': gain})
  p = paired_sign_flip_p(fused_values - best_values, flips, seed)
  tuning['p_value'] = p
  if gain <= 0 or p >= alpha:
    why = f'gain {gain:+.3f} not supported (p={p:.3g}) on {len(queries)} tuning queries'
    # Equal weights choose nothing on the tuning queries, so their mean there is
    # a fair estimate; the best single signal's is the better of several, an
    # optimistic one. Equal weights that still beat it do not lose to it.
    equal = {s: 1.0 / len(signals) for s in signals}
    equal_mean = float(_evaluate_grid(
        per_query_candidates, qrels, queries, signals, [equal], spec.method,
        spec.rrf_k, spec.normalisation)[:, 0].mean())
    tuning['equal_weights_ndcg@10'] = equal_mean
    if equal_mean > single_means[best] + _TIE_TOLERANCE:
      reason = (f'auto fusion fell back to equal weights: tuned {why}; {spec.method} '
                f'{_fmt_weights(equal)} scores {equal_mean:.3f} there, above {summary}')
      logger.info('%s', reason)
      return FusionDecision(equal, spec.method, True, reason, tuning, **base)
    return fallback(why)
  singles_text = ', '.join(f'{s} {single_means[s]:.2f}' for s in signals)
  fused_text = f'fused {fused_mean:.2f}' + (f' ({folds}-fold held out)' if folds else '')
  reason = (f'auto fusion kept: {singles_text} -> {fused_text} ({gain:+.2f}, '
            f'p={p:.3g}, {len(queries)} tuning queries; {spec.method} '
            f'{_fmt_weights(weights)})')
  logger.info('%s', reason)
  return FusionDecision(weights, spec.method, False, reason, tuning, **base)
