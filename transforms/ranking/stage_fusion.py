"""Two-stage fusion per query, with weights tuned (and guarded) on judged queries.

* First stage: the candidate sources' scores (``dense``, ``bm25``,
  ``supplied``) fused into ``retrieval_score``/``retrieval_rank``.
* Final: the fused first stage (signal ``retrieval``) and the cross-encoder
  (``ce``) fused into ``score``/``rank``. With no cross-encoder the final
  ranking is the first stage.

With ``auto`` weights each stage's weights are chosen by ``fusion.choose_fusion``
on the tuning queries (those judged in the tuning qrels); its guard falls back
to equal weights, or to the stage's best single signal, when the gain is not
supported. The final stage is tuned on the first stage as decided, so its guard
compares against the fused first stage itself: the cross-encoder is only let in
where the final ranking does not lose on the tuning queries, and with fewer
than ``MIN_TUNING_QUERIES`` of them the first stage stays the final ranking.
Fixed weights: the first stage uses the weights of the first-stage signals, the
final one all the weights given.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core.metrics import METRICS_NAMESPACE
from transforms.ranking.fusion import (
  ALPHA,
  AUTO,
  MIN_TUNING_QUERIES,
  SINGLE_SIGNAL_PRIORITY,
  FusionDecision,
  FusionSpec,
  candidates_from_rows,
  choose_fusion,
  fuse,
  score_column,
)
from transforms.ranking.ranked import ALL_TAG, ranking_key

FIRST_STAGE_SIGNALS = ('dense', 'bm25', 'supplied')
FINAL_SIGNALS = ('retrieval', 'ce')
SIGNAL_COLUMNS = tuple(score_column(s) for s in ('dense', 'bm25', 'supplied', 'ce'))
# The guard of auto weights (fusion.MIN_TUNING_QUERIES, fusion.ALPHA) measures
# nDCG@10 with GUARD_FOLDS-fold cross-validation (weights tuned on the other folds).
GUARD_FOLDS = 5
GUARD_SEED = 0


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """The fusion of each stage as asked (weights may still be ``auto``).

  ``first`` is None when no first-stage signal has scores (a supplied run
  without scores only); ``final`` is None without a cross-encoder.
  """
  first: Optional[FusionSpec]
  final: Optional[FusionSpec]
  first_signals: tuple[str, ...]
  final_signals: tuple[str, ...]

  def as_dict(self) -> dict:
    return {'first_stage': self.first.as_dict() if self.first else None,
            'final': self.final.as_dict() if self.final else None,
            'first_stage_signals': list(self.first_signals),
            'final_signals': list(self.final_signals)}


def plan_stages(
    spec: FusionSpec, sources: Sequence[str], cross_encoder: bool,
    first_stage_weights: Optional[Mapping[str, float]] = None) -> StagePlan:
  """What each stage fuses, from the asked fusion and the signals present.

  Args:
    spec: the fusion asked for (method, weights or ``auto``, RRF k).
    sources: first-stage signals that have scores (of ``FIRST_STAGE_SIGNALS``).
    cross_encoder: whether a cross-encoder scores the candidates.
    first_stage_weights: fixed weights of the first stage under ``auto``
      weights (only the final stage is tuned): e.g. weights decided on more
      judged queries than the final stage may use, those the cross-encoder
      was trained on.

  Raises:
    ValueError: fixed weights that name a signal the run does not have, give
      no first-stage signal a weight, or (with a cross-encoder) neither
      ``ce`` nor ``retrieval``; ``first_stage_weights`` with fixed weights, or
      naming a signal that is not a first-stage one of this run.
  """
  first_signals = tuple(s for s in FIRST_STAGE_SIGNALS if s in sources)
  final_signals = FINAL_SIGNALS if cross_encoder else ()
  if first_stage_weights is not None:
    if not isinstance(spec.weights, str):
      raise ValueError('fixed fusion weights already fix the first stage; '
                       'give --first-stage-weights with --fusion-weights auto')
    named = {s: w for s, w in first_stage_weights.items() if w > 0}
    absent = [s for s in named if s not in first_signals]
    if absent:
      raise ValueError(
          f'--first-stage-weights names {", ".join(absent)}, which is not a first-stage '
          f'signal of this run (here: {", ".join(first_signals) or "none"})')
    if not named:
      raise ValueError('--first-stage-weights gives no signal a positive weight')
  if isinstance(spec.weights, str):
    first = None
    if first_signals:
      first = dataclasses.replace(
          spec, weights=AUTO if first_stage_weights is None else named)
    final = dataclasses.replace(spec, weights=AUTO) if cross_encoder else None
    return StagePlan(first, final, first_signals, final_signals)
  weights = {s: w for s, w in spec.weights.items() if w > 0}
  available = set(first_signals) | set(final_signals)
  absent = [s for s in weights if s not in available]
  if absent:
    have = ', '.join(sorted(available)) or 'none'
    raise ValueError(
        f'--fusion-weights names {", ".join(absent)}, which this run does not have '
        f'(signals here: {have})')
  if spec.method == 'none' and cross_encoder and 'ce' in weights:
    raise ValueError(
        "--fusion none ranks the final list by the cross-encoder alone; "
        "--fusion-weights names the first-stage signal (e.g. 'bm25=1')")
  first_weights = {s: w for s, w in weights.items() if s in FIRST_STAGE_SIGNALS}
  if first_signals and not first_weights:
    raise ValueError(
        f'--fusion-weights gives no first-stage signal a weight (of {", ".join(first_signals)})')
  if spec.method == 'none':
    final_weights = {'ce': 1.0}
  else:
    final_weights = weights
    if cross_encoder and not ({'ce', 'retrieval'} & set(weights)):
      raise ValueError(
          "with a cross-encoder, --fusion-weights needs a weight for 'ce' (or "
          "'retrieval'); or use --cross-encoder none")
  first = (dataclasses.replace(spec, weights=first_weights) if first_weights else None)
  final = dataclasses.replace(spec, weights=final_weights) if cross_encoder else None
  return StagePlan(first, final, first_signals, final_signals)


def decide(
    spec: Optional[FusionSpec], signals: Sequence[str],
    tuning_rows: Mapping[str, Sequence[Mapping]],
    qrels: Mapping[str, Mapping[str, int]],
    few_queries_fallback: Optional[str] = None) -> Optional[FusionDecision]:
  """One stage's concrete fusion: fixed weights as given, ``auto`` tuned and guarded
  (with too few tuning queries: ``few_queries_fallback``, else the best signal)."""
  if spec is None:
    return None
  if isinstance(spec.weights, str) and len(signals) == 1:
    return FusionDecision(
        {signals[0]: 1.0}, 'none', False, f'one signal ({signals[0]}): nothing to fuse',
        rrf_k=spec.rrf_k, normalisation=spec.normalisation)
  if isinstance(spec.weights, str) and not qrels:
    (best,) = [s for s in SINGLE_SIGNAL_PRIORITY if s in signals][:1]
    return FusionDecision(
        {best: 1.0}, 'none', True,
        f'auto fusion without tuning queries (--tune-qrels): ranks by {best} alone',
        {'queries': 0}, rrf_k=spec.rrf_k, normalisation=spec.normalisation)
  # Every tuning query counts; one without candidates scores 0 for every choice.
  per_query = {q: candidates_from_rows(tuning_rows.get(q, ()))
               for q in sorted(set(tuning_rows) | set(qrels))}
  return choose_fusion(
      per_query, qrels, spec, signals=signals, min_queries=MIN_TUNING_QUERIES,
      alpha=ALPHA, folds=GUARD_FOLDS, seed=GUARD_SEED,
      few_queries_fallback=few_queries_fallback)


def _has_any(rows: Sequence[Mapping], decision: FusionDecision) -> bool:
  columns = [score_column(s) for s, w in decision.weights.items() if w > 0]
  return any(row.get(c) is not None for row in rows for c in columns)


def apply_first_stage(
    rows: Sequence[Mapping], first: Optional[FusionDecision]) -> list[dict]:
  """Copies of ``rows`` with ``retrieval_score``/``retrieval_rank`` from ``first``
  (both None when no row has a signal the stage uses)."""
  out = [dict(row, retrieval_score=None, retrieval_rank=None) for row in rows]
  if first is None or not _has_any(out, first):
    return out
  by_doc = {str(row['doc_id']): row for row in out}
  for rank, (doc_id, score) in enumerate(fuse(candidates_from_rows(out), first), start=1):
    by_doc[doc_id]['retrieval_score'] = score
    by_doc[doc_id]['retrieval_rank'] = rank
  return out


def rank_query(
    query_id: str, rows: Iterable[Mapping], first: Optional[FusionDecision],
    final: Optional[FusionDecision]) -> list[dict]:
  """One query's candidates -> ranked contract rows, rank 1 first.

  ``score`` is the final fusion's (the first stage's without a final stage);
  ties: first-stage rank, then doc_id asc.
  """
  staged = apply_first_stage(list(rows), first)
  if final is not None and staged:
    final_scores = dict(fuse(candidates_from_rows(staged), final))
    for row in staged:
      row['score'] = final_scores[str(row['doc_id'])]
  else:
    for row in staged:
      retrieval = row['retrieval_score']
      row['score'] = retrieval if retrieval is not None else 0.0
  ordered = sorted(staged, key=ranking_key)
  return [{
      'query_id': query_id,
      'doc_id': row['doc_id'],
      'rank': rank,
      'score': row['score'],
      'retrieval_rank': row['retrieval_rank'],
      'retrieval_score': row['retrieval_score'],
      **{c: row.get(c) for c in SIGNAL_COLUMNS},
      'query_text_sha256': row.get('query_text_sha256'),
      'passage_text_sha256': row.get('passage_text_sha256'),
  } for rank, row in enumerate(ordered, start=1)]


def _slim(row: Mapping) -> dict:
  """The fields fusion needs (no texts)."""
  return {'doc_id': row['doc_id'], **{c: row.get(c) for c in SIGNAL_COLUMNS}}


class _RankStagesFn(beam.DoFn):
  def __init__(self, top_n: int):
    self._top_n = top_n
    self._queries = Metrics.counter(METRICS_NAMESPACE, 'rerank/queries_ranked')
    self._ranked = Metrics.counter(METRICS_NAMESPACE, 'rerank/candidates_ranked')

  def process(self, keyed: tuple[str, Iterable[dict]], first, final) -> Iterator:
    query_id, rows = keyed
    self._queries.inc()
    for row in rank_query(query_id, rows, first, final):
      self._ranked.inc()
      yield beam.pvalue.TaggedOutput(ALL_TAG, row)
      if row['rank'] <= self._top_n:
        yield row


def _decide_final(tuning_rows, first, plan, qrels):
  # Too few tuning queries to show the cross-encoder helps: the first stage stays.
  staged = {q: apply_first_stage(rows, first) for q, rows in tuning_rows.items()}
  return decide(plan.final, plan.final_signals, staged, qrels,
                few_queries_fallback='retrieval' if first is not None else None)


def _decisions(first: Optional[FusionDecision], final: Optional[FusionDecision],
               tuning_query_ids: Sequence[str]) -> dict:
  # Every tuning query counts in every decision that tunes (one without
  # candidates at 0), so each decision's count is this one.
  return {'first_stage': first.as_dict() if first else None,
          'final': final.as_dict() if final else None,
          'tuning_queries': len(tuning_query_ids),
          'tuning_query_ids': list(tuning_query_ids)}


class FuseStages(beam.PTransform):
  """Candidate rows (signal columns set) -> ranked rows per query, and the decisions.

  Returns ``{'top': top-n rows per query, 'all': every row ranked, 'decisions':
  one dict (first_stage, final, tuning_queries, tuning_query_ids)}``. The
  tuning queries' rows are collected in one place to choose the weights
  (tuning sets are small: their rows carry no texts).
  """
  def __init__(self, plan: StagePlan, tuning_qrels: Mapping[str, Mapping[str, int]],
               top_n: int):
    super().__init__()
    self._plan = plan
    self._qrels = {str(q): dict(d) for q, d in tuning_qrels.items()}
    self._top_n = top_n

  def expand(self, rows):
    plan, qrels = self._plan, self._qrels
    tuning_ids = frozenset(qrels)
    grouped = (
        rows
        | 'KeyByQuery' >> beam.WithKeys(lambda row: row['query_id'])
        | 'GroupByQuery' >> beam.GroupByKey())
    tuning = (
        grouped
        | 'TuningQueries' >> beam.Filter(lambda kv: kv[0] in tuning_ids)
        | 'SlimRows' >> beam.MapTuple(lambda q, rs: (q, [_slim(r) for r in rs]))
        | 'CollectTuning' >> beam.combiners.ToDict())
    first = tuning | 'DecideFirstStage' >> beam.Map(
        lambda t: decide(plan.first, plan.first_signals, t, qrels))
    final = tuning | 'DecideFinal' >> beam.Map(
        _decide_final, first=beam.pvalue.AsSingleton(first), plan=plan, qrels=qrels)
    ranked = grouped | 'RankQuery' >> beam.ParDo(
        _RankStagesFn(self._top_n), first=beam.pvalue.AsSingleton(first),
        final=beam.pvalue.AsSingleton(final)).with_outputs(ALL_TAG, main='top')
    decisions = first | 'Decisions' >> beam.Map(
        _decisions, final=beam.pvalue.AsSingleton(final),
        tuning_query_ids=sorted(tuning_ids))
    return {'top': ranked.top, ALL_TAG: ranked[ALL_TAG], 'decisions': decisions}
