"""The mine job: ranked candidates + labels -> training-pair Parquet per format."""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from pipelines import common
from pipelines.steps.mine import (
    MINE_FUSION_WEIGHTS,
    check_candidates,
    check_options,
    pseudo_settings,
    run_report,
    summary_lines,
)
from transforms.core.language import LanguageSettings
from transforms.core.settings import REQUIRED, group, positive_int, setting
from transforms.core.texts import TextColumns
from transforms.graphs.mine import MineConfig, build_mine_pipeline
from transforms.io.parquet_input import check_parquet_input
from transforms.io.parquet_sink import (
  dead_letter_limit_setting,
  rows_per_shard_setting,
  write_json,
)
from transforms.retrieval.bm25 import BM25Options
from transforms.retrieval.dense import DEFAULT_MAX_QUERIES_IN_MEMORY
from transforms.training.mining import FORMATS, NegativeMiningSettings
from transforms.training.pseudo_queries import (
  PseudoQuerySettings,
)

PROG = 'beam-rerank mine'


@dataclasses.dataclass(frozen=True)
class MineJobConfig:
  """The mine job's options (the command line's, one field per option)."""
  corpus: str = setting(
      REQUIRED, 'Parquet corpus (doc_id, text[, title]).', metavar='GLOB', group='input and output')
  output: str = setting(
      REQUIRED,
      'Folder: FORMAT/train, FORMAT/dev, FORMAT/train-ids, ..., manifest.json, report.json.',
      metavar='DIR', group='input and output')
  queries: Optional[str] = setting(
      None, 'Parquet queries (query_id, text); optional with --pseudo-queries.',
      metavar='GLOB', group='input and output')
  ranked: Optional[str] = setting(
      None, 'Output of the rerank job (its candidates/ with cross-encoder scores).', metavar='DIR',
      group='input and output')
  candidates: Optional[str] = setting(
      None, 'Candidates Parquet: query_id, doc_id[, score][, retrieval_rank].', metavar='GLOB',
      group='input and output')
  query_embeddings: Optional[str] = setting(
      None, 'With --corpus-embeddings: retrieve dense candidates here.', metavar='DIR',
      group='input and output')
  corpus_embeddings: Optional[str] = setting(
      None, '', metavar='DIR', group='input and output')
  top_k: int = setting(
      100, 'Dense (and BM25) candidates per query (default: %(default)s).', type=positive_int,
      group='input and output')
  bm25: BM25Options = group(BM25Options(), 'input and output')
  language: LanguageSettings = group(LanguageSettings(), 'input and output')
  fusion: str = setting(
      'linear', 'With dense and --bm25 together: how their scores are fused into one '
      'retrieval order, as rerank fuses its first stage (default: %(default)s). For '
      "weights tuned on judgments, run rerank --cross-encoder none and mine its --ranked.",
      choices=('linear', 'rrf'), group='input and output')
  fusion_weights: str = setting(
      MINE_FUSION_WEIGHTS, 'Fixed weights of dense and bm25 (default: %(default)s).',
      group='input and output')
  max_queries_in_memory: int = setting(
      DEFAULT_MAX_QUERIES_IN_MEMORY, 'Dense: query embeddings one worker holds; more are split '
      'into groups (default: %(default)s).', type=positive_int, group='input and output')
  columns: TextColumns = group(TextColumns(), 'input and output')
  rows_per_shard: int = rows_per_shard_setting()
  max_dead_letter_fraction: float = dead_letter_limit_setting()
  qrels: Optional[str] = setting(
      None, 'query_id, doc_id, relevance: positives are relevance >= --min-relevance.',
      metavar='GLOB', group='labels')
  positives: Optional[str] = setting(
      None, 'A positives table: query_id, doc_id (every row a positive).', metavar='GLOB',
      group='labels')
  format: str = setting(
      'labeled-pair,pair', f'Comma-separated, of {",".join(FORMATS)} (default: %(default)s).',
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  # Labels' thresholds, negatives' guards and sampling (--min-relevance,
  # --positive-threshold, --num-negatives, --range-min, ..., --sampling, --seed).
  mining: NegativeMiningSettings = group(NegativeMiningSettings())
  score_column: Optional[str] = setting(
      None, 'Candidate score used by the guards and distill labels (default: the '
      'cross-encoder score, ce_score, for --ranked; for a --ranked made with '
      '--cross-encoder none, the fused first stage, retrieval_score; score for '
      '--candidates; the retrieval score when retrieving here).',
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  dev_fraction: float = setting(
      0.0, 'Share of queries (by id hash) in dev/; with --qrels or --positives, of the '
      'judged queries only: pseudo-queries then all train (default: %(default)s).', type=float,
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  dev_negatives: Optional[int] = setting(
      None, "Mine each dev query's N best-ranked negatives (the other guards apply; "
      'no --range-min, no sampling), so checkpoints are selected on the hard '
      'candidates a rerank of the first stage sees, not on easy ones (default: as '
      'training, --num-negatives).', type=positive_int, metavar='N',
      group='negatives (sentence-transformers mine_hard_negatives semantics)')
  # --pseudo-queries, --pseudo-per-doc, ..., --pseudo-title-column (and --seed).
  pseudo: PseudoQuerySettings = group(PseudoQuerySettings())
  pipeline_args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MineResult:
  """What a mine run did; ``rows``: rows written per output (``FORMAT/SPLIT``)."""
  output_dir: str
  rows: dict[str, int]
  report: dict


def execute(job: MineJobConfig) -> MineResult:
  """Runs the mine job; its report is also written as report.json."""
  common.quiet_libraries()
  started = time.perf_counter()
  options = common.pipeline_options(job.pipeline_args, PROG)
  mining = job.mining
  formats, pseudo_asked = check_options(job)
  queries = None
  if job.queries:
    queries = check_parquet_input(job.queries, '--queries', {
        job.columns.query_id: 'id', job.columns.query_text: 'string'})
  corpus_columns = {job.columns.doc_id: 'id', job.columns.doc_text: 'string'}
  if job.columns.doc_title:
    corpus_columns[job.columns.doc_title] = 'string'
  corpus = check_parquet_input(job.corpus, '--corpus', corpus_columns)
  pseudo = pseudo_settings(job, corpus) if pseudo_asked else None
  candidates = check_candidates(job, corpus)
  rows_in = ((queries.num_rows if queries else 0) + corpus.num_rows + candidates.rows)
  if job.qrels:
    rows_in += check_parquet_input(
        job.qrels, '--qrels', {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'}).num_rows
  if job.positives:
    rows_in += check_parquet_input(
        job.positives, '--positives', {'query_id': 'id', 'doc_id': 'id'}).num_rows

  output_dir = job.output.rstrip('/')
  config = MineConfig(
      queries_pattern=queries.pattern if queries else None,
      corpus_pattern=corpus.pattern, output_dir=output_dir, formats=formats, mining=mining,
      candidate_source=candidates.source,
      candidates_pattern=candidates.pattern, candidates_files=candidates.files,
      candidates_score_column=candidates.score_column,
      candidates_have_retrieval_rank=candidates.has_rank,
      query_embeddings_dir=job.query_embeddings, corpus_embeddings_dir=job.corpus_embeddings,
      normalize_embeddings=candidates.normalize, top_k=job.top_k, bm25=candidates.bm25,
      fusion=candidates.fusion,
      qrels_pattern=job.qrels,
      query_groups=common.query_groups(candidates.embeddings, job.max_queries_in_memory),
      positives_pattern=job.positives, columns=job.columns,
      dev_fraction=job.dev_fraction,
      dev_mining=None if job.dev_negatives is None else mining.best_ranked(job.dev_negatives),
      rows_per_shard=job.rows_per_shard, pseudo=pseudo)
  labels = ('pseudo: cross-encoder score thresholds '
            f'(positive >= {mining.positive_threshold}, '
            f'negative <= {mining.negative_threshold})'
            if mining.positive_threshold is not None else
            'qrels' if job.qrels else 'positives table' if job.positives else None)
  if pseudo is not None:
    made = f'pseudo-queries ({", ".join(pseudo.sources)})'
    labels = f'{labels} + {made}' if labels else made
  manifest = {
      'kind': 'training_pairs',
      'formats': formats,
      'candidate_source': candidates.source,
      'score_column': ('retrieval_score' if candidates.retrieved_here
                       else candidates.score_column),
      'bm25': dataclasses.asdict(candidates.bm25) if candidates.bm25 else None,
      'fusion': candidates.fusion.as_dict() if candidates.fusion else None,
      'labels': labels,
      'pseudo_labels': mining.positive_threshold is not None,
      'pseudo_queries': dataclasses.asdict(pseudo) if pseudo else None,
      'mining': {k: v for k, v in vars(mining).items()},
      'dev_fraction': job.dev_fraction,
      'dev_negatives': job.dev_negatives,
      'split': 'dev if blake2b(query_id) % 1e6 < dev_fraction * 1e6' + (
          ' (judged queries only; pseudo-queries train)'
          if pseudo and (job.qrels or job.positives) else ''),
  }
  result, _ = common.run_pipeline(
      options, lambda pipeline: build_mine_pipeline(pipeline, config, manifest),
      output_dir, job.max_dead_letter_fraction, rows_in)
  finished = time.perf_counter()
  report = run_report(result, output_dir, manifest, pseudo, candidates.language,
                      finished - started)
  write_json(report, FileSystems.join(output_dir, 'report.json'))
  common.print_summary('mine summary', summary_lines(report, manifest['labels']))
  return MineResult(output_dir=output_dir, rows=report['rows'], report=report)
