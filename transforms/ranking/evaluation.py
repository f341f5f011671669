"""Ranking metrics per stage (each signal, fused first stage, cross-encoder, final),
with ir-measures doing the math.

Metrics are computed per query by ir-measures (trec_eval underneath: linear-gain
nDCG, relevance > 0 is relevant) and averaged here over an explicit set of
queries, so a query with judgments but no results counts as 0, not as absent.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import ir_measures
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.core.errors import UserInputError
from transforms.io.parquet_sink import (
  NO_CANDIDATES,
  committed_files,
  committed_output_exists,
  read_manifest,
)

# The dead-letter stage of a rerank run's rejected query rows.
QUERY_DEAD_LETTER_STAGE = 'rerank/queries'

DEFAULT_MEASURES = ('nDCG@10', 'RR@10', 'R@100')
DISPLAY_NAMES = {'RR': 'MRR', 'R': 'Recall'}

# The per-signal score columns of the ranked contract (null where that source
# did not return the doc, or no cross-encoder ran); folders written before they
# existed lack them.
SIGNAL_COLUMNS = ('dense_score', 'bm25_score', 'supplied_score', 'ce_score')
RANKED_COLUMNS = ('query_id', 'doc_id', 'rank', 'score', 'retrieval_rank', 'retrieval_score')
# Stage key -> its score column, for the stages ranked by one signal alone.
SIGNAL_STAGES = {
    'dense': 'dense_score', 'bm25': 'bm25_score', 'supplied': 'supplied_score',
    'ce': 'ce_score'}
# Every stage, in report order, with its column header (at most 11 characters).
STAGE_LABELS = {
    'dense': 'dense', 'bm25': 'BM25', 'supplied': 'supplied',
    'retrieval': 'first stage', 'ce': 'CE alone', 'final': 'final'}
STAGES = tuple(STAGE_LABELS)


def stage_label(stage: str) -> str:
  """The readable name of a stage key (``'retrieval'`` -> ``'first stage'``)."""
  return STAGE_LABELS.get(stage, stage)


def display_name(measure: str) -> str:
  """``RR@10`` -> ``MRR@10``, ``R@100`` -> ``Recall@100``; others unchanged."""
  name, _, cutoff = measure.partition('@')
  name = DISPLAY_NAMES.get(name, name)
  return f'{name}@{cutoff}' if cutoff else name


def parse_measures(names: Iterable[str]) -> list:
  """ir-measures objects; accepts ``MRR@10``/``Recall@100`` spellings too."""
  aliases = {'MRR': 'RR', 'Recall': 'R', 'NDCG': 'nDCG', 'ndcg': 'nDCG'}
  measures = []
  for raw in names:
    name, sep, cutoff = raw.strip().partition('@')
    name = aliases.get(name, name)
    try:
      measures.append(ir_measures.parse_measure(f'{name}{sep}{cutoff}'))
    except Exception:
      raise UserInputError(
          f'unknown metric {raw!r} (e.g. nDCG@10, MRR@10, Recall@100, P@10, MAP)') from None
  return measures


def _by_score(ranked: pl.DataFrame, column: str) -> pl.DataFrame:
  """Rows with a ``column`` score, ranked per query by it (desc, then doc_id
  asc), as a run whose score is ``-rank``."""
  value = pl.col(column).cast(pl.Float64)
  rows = ranked.with_columns(_value=value).filter(
      pl.col('_value').is_not_null() & pl.col('_value').is_not_nan())
  return rows.sort(
      ['query_id', '_value', 'doc_id'], descending=[False, True, False]).select(
          'query_id', 'doc_id',
          score=-pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over('query_id').cast(
              pl.Float64))


def stage_runs(ranked: pl.DataFrame) -> dict[str, pl.DataFrame]:
  """The ranked contract -> one run per stage (``query_id, doc_id, score``).

  Stages, in order: ``dense``, ``bm25``, ``supplied`` (each source's own
  score; only the docs it returned), ``retrieval`` (the fused first stage, by
  ``retrieval_rank``), ``ce`` (the cross-encoder score alone) and ``final``
  (by ``rank``; always present). A stage whose column is missing (folders
  written before it existed) or null on every row is left out. Ranks become
  scores (``-rank``) so trec_eval's own tie-breaking never reorders them.
  """
  runs = {}
  for stage in STAGES:
    if stage == 'final':
      run = ranked.select('query_id', 'doc_id', score=-pl.col('rank').cast(pl.Float64))
    elif stage == 'retrieval':
      run = ranked.filter(pl.col('retrieval_rank').is_not_null()).select(
          'query_id', 'doc_id', score=-pl.col('retrieval_rank').cast(pl.Float64))
    elif SIGNAL_STAGES[stage] in ranked.columns:
      run = _by_score(ranked, SIGNAL_STAGES[stage])
    else:
      continue
    if run.height or stage == 'final':
      runs[stage] = run
  return runs


def per_query_metrics(
    run: pl.DataFrame, qrels: pl.DataFrame, measures: Sequence) -> pl.DataFrame:
  """``query_id, measure, value`` for every query that has results."""
  qrel_rows = [
      ir_measures.Qrel(q, d, int(r)) for q, d, r in qrels.select(
          'query_id', 'doc_id', 'relevance').iter_rows()]
  run_rows = [
      ir_measures.ScoredDoc(q, d, float(s))
      for q, d, s in run.select('query_id', 'doc_id', 'score').iter_rows()]
  values = [(m.query_id, str(m.measure), float(m.value))
            for m in ir_measures.iter_calc(measures, qrel_rows, run_rows)]
  return pl.DataFrame(
      values, schema={'query_id': pl.String, 'measure': pl.String, 'value': pl.Float64},
      orient='row')


def query_scope(
    qrels: pl.DataFrame,
    query_ids: Optional[Iterable[str]] = None,
    exclude_query_ids: Optional[Iterable[str]] = None,
) -> list[str]:
  """The queries metrics are averaged over, sorted: the judged ones among
  ``query_ids`` (default: every judged query, as trec_eval's ``-c``), less
  ``exclude_query_ids`` (e.g. the queries fusion weights were tuned on).

  Whether a query has results never matters: a judged query with none counts
  as 0, it does not drop out of the mean.
  """
  judged = set(qrels['query_id'].unique().to_list())
  if query_ids is not None:
    judged &= set(query_ids)
  return sorted(judged - set(exclude_query_ids or ()))


def queries_without_results(ranked: pl.DataFrame, scope: Iterable[str]) -> list[str]:
  """The queries of ``scope`` with no row in ``ranked`` (they count as 0)."""
  have = set(ranked['query_id'].unique().to_list()) if ranked.height else set()
  return sorted(set(scope) - have)


def run_query_ids(ranked_dir: str, manifest: Mapping[str, Any],
                  ranked: pl.DataFrame) -> Optional[list[str]]:
  """Every query a rerank output read: those with rows in ``ranked``, those in
  its ``no_candidates`` output and the query rows it dead-lettered. None for
  a folder written before ``no_candidates`` existed (its queries without a
  result cannot be known)."""
  if not committed_output_exists(ranked_dir, NO_CANDIDATES, '--ranked', manifest):
    return None
  ids = set(ranked['query_id'].unique().to_list()) if ranked.height else set()
  none = read_parquet_files(
      committed_files(ranked_dir, NO_CANDIDATES, '--ranked', manifest), ['query_id'])
  if none.height:
    ids |= set(none['query_id'].to_list())
  dead = read_parquet_files(
      committed_files(ranked_dir, 'dead_letter', '--ranked', manifest), ['stage', 'record_id'])
  if dead.height:
    ids |= set(dead.filter(
        (pl.col('stage') == QUERY_DEAD_LETTER_STAGE) & pl.col('record_id').is_not_null())[
            'record_id'].to_list())
  return sorted(ids)


def evaluate_stages(
    ranked: pl.DataFrame,
    qrels: pl.DataFrame,
    measures: Sequence,
    query_ids: Optional[Iterable[str]] = None,
    exclude_query_ids: Optional[Iterable[str]] = None,
) -> pl.DataFrame:
  """Mean metrics per stage (``stage_runs`` order): ``stage, measure, value, queries``.

  Args:
    ranked: rows of the ranked contract (all scored candidates, ideally).
    qrels: ``query_id, doc_id, relevance``.
    measures: ir-measures measure objects.
    query_ids: the queries to average over (missing results count 0); by
      default every judged query (trec_eval's ``-c``).
    exclude_query_ids: queries never averaged over (e.g. fusion's tuning queries).
  """
  scope = query_scope(qrels, query_ids, exclude_query_ids)
  frames = []
  for stage, run in stage_runs(ranked).items():
    values = per_query_metrics(run, qrels, measures)
    for measure in measures:
      name = str(measure)
      got = dict(values.filter(pl.col('measure') == name).select(
          'query_id', 'value').iter_rows())
      mean = sum(got.get(q, 0.0) for q in scope) / len(scope) if scope else 0.0
      frames.append({
          'stage': stage, 'measure': display_name(name), 'value': mean,
          'queries': len(scope)})
  return pl.DataFrame(frames, schema={
      'stage': pl.String, 'measure': pl.String, 'value': pl.Float64,
      'queries': pl.Int64})


def _ordered_stages(present: Iterable[str]) -> list[str]:
  """The known stages in report order, then any others as they came."""
  present = list(present)
  return [s for s in STAGES if s in present] + [s for s in present if s not in STAGES]


def metrics_table(metrics: pl.DataFrame) -> str:
  """Stages side by side (dense ... final, those present): one line per measure."""
  wide = metrics.pivot(on='stage', index='measure', values='value')
  stages = _ordered_stages(c for c in wide.columns if c != 'measure')
  lines = [f'  {"metric":<12}' + ''.join(f'{stage_label(s):>12}' for s in stages)]
  for row in wide.iter_rows(named=True):
    lines.append(f'  {row["measure"]:<12}' + ''.join(
        f'{row[s]:>12.4f}' for s in stages))
  return '\n'.join(lines)


def plot_report(
    metrics: pl.DataFrame, ranked: pl.DataFrame, qrels: pl.DataFrame,
    title: str) -> bytes:
  """A PNG: metrics per stage, and score distributions of relevant vs other
  (cross-encoder scores where the rows have them, else final scores)."""
  import io

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
  measures = metrics['measure'].unique(maintain_order=True).to_list()
  stages = _ordered_stages(metrics['stage'].unique(maintain_order=True).to_list())
  width = 0.8 / max(1, len(stages))
  many = len(stages) > 3
  for i, stage in enumerate(stages):
    values = [
        metrics.filter((pl.col('stage') == stage) & (pl.col('measure') == m))['value'][0]
        for m in measures]
    positions = [j + i * width for j in range(len(measures))]
    bars = left.bar(positions, values, width, label=stage_label(stage))
    left.bar_label(bars, fmt='%.3f', fontsize=6 if many else 8,
                   rotation=90 if many else 0, padding=2)
  left.set_xticks([j + width * (len(stages) - 1) / 2 for j in range(len(measures))])
  left.set_xticklabels(measures)
  left.set_ylim(0, 1.2 if many else 1.05)
  left.set_title('metrics per stage')
  if stages:
    left.legend(fontsize=7, ncol=min(len(stages), 3), loc='upper center',
                bbox_to_anchor=(0.5, -0.08), frameon=False)

  column, name = 'score', 'final scores'
  if 'ce_score' in ranked.columns and ranked['ce_score'].drop_nulls().len():
    column, name = 'ce_score', 'cross-encoder scores'
  judged = ranked.filter(pl.col(column).is_not_null()).join(
      qrels.select('query_id', 'doc_id', 'relevance'), on=['query_id', 'doc_id'],
      how='left').with_columns(
          relevant=pl.col('relevance').fill_null(0) > 0)
  plotted = False
  for relevant, label in ((True, 'judged relevant'), (False, 'other candidates')):
    scores = judged.filter(pl.col('relevant') == relevant)[column].to_list()
    if scores:
      right.hist(scores, bins=40, alpha=0.6, density=True, label=f'{label} ({len(scores):,})')
      plotted = True
  right.set_title(name)
  right.set_xlabel(column)
  if plotted:
    right.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  return buffer.getvalue()


def read_parquet_files(
    files: Sequence[str], columns: Sequence[str],
    optional: Sequence[str] = ()) -> pl.DataFrame:
  """Parquet files (any Beam filesystem) -> one polars frame: ``columns``, and
  those of ``optional`` that the files have (null in a file without one)."""
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
  frames = []
  for path in files:
    with FileSystems.open(
        path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
      data = handle.read()
    wanted = list(columns)
    if optional:
      names = set(pq.read_schema(pa.BufferReader(data)).names)
      wanted += [c for c in optional if c in names]
    frames.append(pl.read_parquet(data, columns=wanted))
  return pl.concat(frames, how='diagonal_relaxed') if frames else pl.DataFrame()


def read_qrels(files: Sequence[str]) -> pl.DataFrame:
  """Qrels with string ids and integer relevance."""
  return clean_qrels(read_parquet_files(files, ['query_id', 'doc_id', 'relevance']))


def clean_qrels(frame: pl.DataFrame) -> pl.DataFrame:
  """Qrels rows as read -> string ids and integer relevance, rows with a null left out."""
  return frame.select(
      pl.col('query_id').cast(pl.String), pl.col('doc_id').cast(pl.String),
      pl.col('relevance').cast(pl.Int64)).drop_nulls()


def read_ranked(
    ranked_dir: str, manifest: Optional[Mapping[str, Any]] = None,
) -> tuple[pl.DataFrame, str]:
  """A rerank output folder -> its rows: every scored candidate when its
  manifest has the ``candidates`` output (so retrieval Recall@100 sees all
  100), else the top-n. Reads exactly the files the manifest lists, and the
  signal columns (``SIGNAL_COLUMNS``) where its files have them (folders
  written before they existed do not)."""
  if manifest is None:
    manifest = read_manifest(ranked_dir, '--ranked')
  which = ('candidates' if committed_output_exists(
      ranked_dir, 'candidates', '--ranked', manifest) else 'ranked')
  files = committed_files(ranked_dir, which, '--ranked', manifest)
  if not files:
    raise UserInputError(f'--ranked {ranked_dir!r}: its {which!r} output has no files')
  return read_parquet_files(files, RANKED_COLUMNS, SIGNAL_COLUMNS), which


def tuning_query_ids(manifest: Mapping[str, Any]) -> list[str]:
  """The queries a rerank output's fusion weights were tuned on (its
  manifest's ``fusion.tuning_query_ids``; none in older folders). Metrics
  must leave them out."""
  fusion = manifest.get('fusion') or {}
  return [str(q) for q in fusion.get('tuning_query_ids') or ()]
