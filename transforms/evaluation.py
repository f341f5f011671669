"""Ranking metrics per stage (retrieval vs rerank), with ir-measures doing the math.

Metrics are computed per query by ir-measures (trec_eval underneath: linear-gain
nDCG, relevance > 0 is relevant) and averaged here over an explicit set of
queries, so a query with judgments but no results counts as 0, not as absent.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import ir_measures
import polars as pl

from transforms.errors import UserInputError
from transforms.parquet_sink import committed_files, committed_output_exists, read_manifest

DEFAULT_MEASURES = ('nDCG@10', 'RR@10', 'R@100')
DISPLAY_NAMES = {'RR': 'MRR', 'R': 'Recall'}


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


def stage_runs(ranked: pl.DataFrame) -> dict[str, pl.DataFrame]:
  """The ranked contract -> one run per stage (``query_id, doc_id, score``).

  Ranks become scores (``-rank``) so trec_eval's own tie-breaking never
  reorders them.
  """
  runs = {}
  retrieval = ranked.filter(pl.col('retrieval_rank').is_not_null())
  if retrieval.height:
    runs['retrieval'] = retrieval.select(
        'query_id', 'doc_id', score=-pl.col('retrieval_rank').cast(pl.Float64))
  runs['rerank'] = ranked.select(
      'query_id', 'doc_id', score=-pl.col('rank').cast(pl.Float64))
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


def evaluate_stages(
    ranked: pl.DataFrame,
    qrels: pl.DataFrame,
    measures: Sequence,
    query_ids: Optional[Iterable[str]] = None,
) -> pl.DataFrame:
  """Mean metrics per stage: ``stage, measure, value, queries``.

  Args:
    ranked: rows of the ranked contract (all scored candidates, ideally).
    qrels: ``query_id, doc_id, relevance``.
    measures: ir-measures measure objects.
    query_ids: the queries to average over (missing results count 0); by
      default the judged queries that appear in ``ranked``.
  """
  judged = set(qrels['query_id'].unique().to_list())
  if query_ids is None:
    scope = sorted(judged & set(ranked['query_id'].unique().to_list()))
  else:
    scope = sorted(judged & set(query_ids))
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


def metrics_table(metrics: pl.DataFrame) -> str:
  """Stages side by side: one line per measure."""
  wide = metrics.pivot(on='stage', index='measure', values='value')
  stages = [c for c in ('retrieval', 'rerank') if c in wide.columns]
  lines = [f'  {"metric":<12}' + ''.join(f'{s:>12}' for s in stages)]
  for row in wide.iter_rows(named=True):
    lines.append(f'  {row["measure"]:<12}' + ''.join(
        f'{row[s]:>12.4f}' for s in stages))
  return '\n'.join(lines)


def plot_report(
    metrics: pl.DataFrame, ranked: pl.DataFrame, qrels: pl.DataFrame,
    title: str) -> bytes:
  """A PNG: metrics per stage, and score distributions of relevant vs other."""
  import io

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  measures = metrics['measure'].unique(maintain_order=True).to_list()
  stages = metrics['stage'].unique(maintain_order=True).to_list()
  width = 0.8 / max(1, len(stages))
  for i, stage in enumerate(stages):
    values = [
        metrics.filter((pl.col('stage') == stage) & (pl.col('measure') == m))['value'][0]
        for m in measures]
    positions = [j + i * width for j in range(len(measures))]
    bars = left.bar(positions, values, width, label=stage)
    left.bar_label(bars, fmt='%.3f', fontsize=8)
  left.set_xticks([j + width * (len(stages) - 1) / 2 for j in range(len(measures))])
  left.set_xticklabels(measures)
  left.set_ylim(0, 1.05)
  left.set_title('metrics per stage')
  left.legend()

  judged = ranked.join(
      qrels.select('query_id', 'doc_id', 'relevance'), on=['query_id', 'doc_id'],
      how='left').with_columns(
          relevant=pl.col('relevance').fill_null(0) > 0)
  plotted = False
  for relevant, label in ((True, 'judged relevant'), (False, 'other candidates')):
    scores = judged.filter(pl.col('relevant') == relevant)['score'].to_list()
    if scores:
      right.hist(scores, bins=40, alpha=0.6, density=True, label=f'{label} ({len(scores):,})')
      plotted = True
  right.set_title('cross-encoder scores')
  right.set_xlabel('score')
  if plotted:
    right.legend()
  fig.suptitle(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  return buffer.getvalue()


def read_parquet_files(files: Sequence[str], columns: Sequence[str]) -> pl.DataFrame:
  """Parquet files (any Beam filesystem) -> one polars frame."""
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
  frames = []
  for path in files:
    with FileSystems.open(
        path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
      frames.append(pl.read_parquet(handle.read(), columns=list(columns)))
  return pl.concat(frames, how='vertical_relaxed') if frames else pl.DataFrame()


def read_qrels(files: Sequence[str]) -> pl.DataFrame:
  """Qrels with string ids and integer relevance."""
  return read_parquet_files(files, ['query_id', 'doc_id', 'relevance']).select(
      pl.col('query_id').cast(pl.String), pl.col('doc_id').cast(pl.String),
      pl.col('relevance').cast(pl.Int64)).drop_nulls()


def read_ranked(ranked_dir: str) -> tuple[pl.DataFrame, str]:
  """A rerank output folder -> its rows: every scored candidate when its
  manifest has the ``candidates`` output (so retrieval Recall@100 sees all
  100), else the top-n. Reads exactly the files the manifest lists."""
  columns = ['query_id', 'doc_id', 'rank', 'score', 'retrieval_rank', 'retrieval_score']
  manifest = read_manifest(ranked_dir, '--ranked')
  which = ('candidates' if committed_output_exists(
      ranked_dir, 'candidates', '--ranked', manifest) else 'ranked')
  files = committed_files(ranked_dir, which, '--ranked', manifest)
  if not files:
    raise UserInputError(f'--ranked {ranked_dir!r}: its {which!r} output has no files')
  return read_parquet_files(files, columns), which
