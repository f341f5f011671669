"""The ``loop`` job: mine -> train -> rerank with guarded fusion -> evaluate, in one command.

    beam-rerank loop --queries q.parquet --corpus c.parquet --qrels qrels.parquet \\
        --output out/loop --base-model BASE --kind both --pseudo-queries title,sentence

The judged queries are split by a stable hash of their ids into train, dev and
test (``--test-fraction``, or the ``--test-queries`` given, then ``--dev-fraction``
of the rest); the split judgments go to OUTPUT/splits/. Test queries are never
mined, trained or tuned on. Each step is another job's ``execute``: encode (the
first-stage bi-encoder), mine (train+dev judgments, dense + BM25 candidates,
optional pseudo-queries, negatives at random from the top-k by default; the
mined dev split is exactly the dev queries), train (a cross-encoder on labeled
pairs, warmed up first on the base first-stage bi-encoder's similarities of
them, and/or a bi-encoder with MNRL on triplets or pairs, the best dev
checkpoint kept), rerank of the dev and test queries (fusion weights ``auto``,
tuned on the dev judgments, which the models never trained on; guarded; with
both models the cross-encoder reranks the fine-tuned bi-encoder's first stage)
and its evaluation on the test queries. One table compares the first stage,
each signal alone, the fine-tuned models and the final ranking;
OUTPUT/loop_report.json holds every figure, the split sizes and each step's
folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from typing import Iterable, Mapping, Optional, Sequence, Union

import polars as pl

from pipelines import common
from pipelines import encode as encode_job
from pipelines import mine as mine_job
from pipelines import rerank as rerank_job
from pipelines import train as train_job
from transforms.core.errors import UserInputError
from transforms.io.parquet_input import check_parquet_input
from transforms.io.parquet_sink import (
  MANIFEST_NAME,
  committed_files,
  read_json,
  stable_hash,
  write_json,
)
from transforms.models import inference_settings
from transforms.models.inference_settings import InferenceSettings
from transforms.models.model_info import resolve_model_dir, resolve_model_name
from transforms.ranking import evaluation
from transforms.ranking.fusion import AUTO
from transforms.ranking.stage_fusion import MIN_TUNING_QUERIES
from transforms.training import trainer as training
from transforms.training.mining import NegativeMiningSettings, split_of
from transforms.training.pseudo_queries import PseudoQuerySettings
from transforms.training.trainer import PRECISIONS, is_cross_encoder

PROG = 'beam-rerank loop'
KINDS = ('cross-encoder', 'bi-encoder', 'both')
SPLITS = ('train', 'dev', 'test')
NEGATIVE_SAMPLING = ('random', 'top')
# Cross-encoder warm-start steps on the first-stage bi-encoder's similarities:
# in a Cranfield trial (seed 7) 300 steps took a fresh head to the teacher's own
# ranking of the dev queries' candidates (nDCG@10 0.434, teacher 0.438), and the
# label steps after it left the class prior at once.
DEFAULT_DISTILL_STEPS = 300
REPORT_NAME = 'loop_report.json'
SPLIT_RULE = (
    'h = blake2b(query_id) % 1e6: test if h >= (1 - test_fraction) * 1e6; dev if '
    'h < dev_fraction * (1 - test_fraction) * 1e6 (the mine job\'s own dev split with '
    'that fraction, raised to take 20 judged queries when the hash gives fewer and 40 '
    'or more are not test); else train')
EXPLICIT_TEST_RULE = (
    'test: the judged ids listed in --test-queries; of the rest, h = blake2b(query_id) '
    '% 1e6: dev if h < dev_fraction * 1e6 (the mine job\'s own dev split with that '
    'fraction, raised to take 20 judged queries when the hash gives fewer and 40 or more '
    'are not test); else train')
# Row key -> label of the printed table, in order.
TABLE_ROWS = {
    'first_stage': 'first stage (dense + BM25)',
    'dense': 'dense, base bi-encoder',
    'bm25': 'BM25',
    'bi_encoder_dense': 'dense, fine-tuned bi-encoder',
    'bi_encoder_first_stage': 'fine-tuned dense + BM25',
    'cross_encoder': 'fine-tuned CE alone',
    'final': 'final (first stage + CE)',
}
logger = logging.getLogger(__name__)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description='The whole loop on judged queries: split them into train/dev/test '
      '(by id hash, never leaking), mine training pairs from train+dev, fine-tune a '
      'cross-encoder and/or a bi-encoder, rerank with fusion tuned on the dev split, and '
      'print one table of test-query metrics: first stage, each signal alone, the '
      'fine-tuned models, final.',
      epilog=common.BEAM_EPILOG)
  io_group = parser.add_argument_group('input and output')
  io_group.add_argument(
      '--queries', required=True, metavar='GLOB', help='Parquet queries (query_id, text).')
  io_group.add_argument(
      '--corpus', required=True, metavar='GLOB', help='Parquet corpus (doc_id, text[, title]).')
  io_group.add_argument(
      '--qrels', required=True, metavar='GLOB',
      help='Parquet judgments: query_id, doc_id, relevance (int; >= 1 relevant).')
  io_group.add_argument(
      '--output', required=True, metavar='DIR',
      help='A local folder: splits/, embeddings/, pairs/, models/, rerank/, '
      f'{REPORT_NAME}.')
  io_group.add_argument('--query-id-column', default='query_id')
  io_group.add_argument('--query-text-column', default='text')
  io_group.add_argument('--doc-id-column', default='doc_id')
  io_group.add_argument('--doc-text-column', default='text')
  io_group.add_argument(
      '--doc-title-column', default=None,
      help='Optional title column put in front of passage texts (default: none).')
  io_group.add_argument('--title-separator', default='\n')

  splits = parser.add_argument_group('query splits (by a stable hash of the query id)')
  splits.add_argument(
      '--test-fraction', type=common.fraction, default=0.5,
      help='Share of the judged queries held out for the test metrics (default: '
      '%(default)s).')
  splits.add_argument(
      '--test-queries', default=None, metavar='GLOB',
      help='Parquet whose --query-id-column lists the test queries (a held-out set of '
      'your own; default: --test-fraction by hash). Dev and train split the other judged '
      'queries by hash.')
  splits.add_argument(
      '--dev-fraction', type=common.fraction, default=0.2,
      help='Share of the other judged queries used to pick the training checkpoint and '
      'tune the final fusion; raised to hold 20 queries (the fusion guard\'s minimum) '
      'when the hash gives fewer and 40 or more are not test (default: %(default)s; '
      '0: no dev split).')

  models = parser.add_argument_group('models')
  models.add_argument(
      '--kind', choices=KINDS, default='cross-encoder',
      help='What to fine-tune (default: %(default)s).')
  models.add_argument(
      '--base-model', default=None, metavar='NAME_OR_PATH',
      help='The cross-encoder starts from it (a CrossEncoder, or any transformer: a new '
      'head); default: the packaged all-MiniLM-L6-v2.')
  models.add_argument(
      '--bi-encoder', default=None, metavar='NAME_OR_PATH',
      help='The first-stage sentence-transformers bi-encoder, and where --kind '
      'bi-encoder starts from (default: the packaged all-MiniLM-L6-v2; never --base-model, '
      'which may be a cross-encoder).')

  candidates = parser.add_argument_group('candidates and mining')
  candidates.add_argument(
      '--bm25', action=argparse.BooleanOptionalAction, default=True,
      help='BM25 candidates next to dense ones, in mining and reranking (default: on).')
  candidates.add_argument(
      '--top-k', type=common.positive_int, default=100,
      help='Candidates per query from each source that mining draws negatives from '
      '(default: %(default)s).')
  candidates.add_argument(
      '--rerank-top-k', type=common.positive_int, default=20, metavar='N',
      help='Candidates per query from each source that the fine-tuned cross-encoder '
      'reranks on the dev and test queries (default: %(default)s; mining draws negatives '
      'from --top-k).')
  candidates.add_argument(
      '--top-n', type=common.positive_int, default=10,
      help='Ranked rows kept per query (default: %(default)s).')
  candidates.add_argument(
      '--pseudo-queries', type=mine_job.pseudo_sources, default=(), metavar='SOURCES',
      help='Also mine pseudo-queries made from the corpus (title,sentence; needs BM25) '
      '(default: none).')
  candidates.add_argument(
      '--pseudo-max-docs', type=common.positive_int, default=None, metavar='N',
      help='Pseudo-queries from at most N documents (default: all).')
  candidates.add_argument(
      '--num-negatives', type=common.positive_int, default=4,
      help='Negatives per mined query (default: %(default)s).')
  candidates.add_argument(
      '--negatives', choices=NEGATIVE_SAMPLING, default='random',
      help='random: drawn at random from each query\'s top-k candidates (easy ones, '
      'mostly; what a model trained from a bi-encoder base learns from in a short CPU run); '
      'top: its highest-ranked non-positives (hard ones; more false negatives where '
      'judgments are sparse) (default: %(default)s).')
  candidates.add_argument(
      '--dev-negatives', type=common.positive_int, default=None, metavar='N',
      help="Negatives per dev query: its N best-ranked candidates, so the checkpoint is "
      'chosen on the hard lists a rerank sees (default: --rerank-top-k).')
  candidates.add_argument(
      '--bi-encoder-format', choices=('triplet', 'pair'), default='triplet',
      help='Mined rows the bi-encoder trains on with MNRL (default: %(default)s).')

  training = parser.add_argument_group('training')
  training.add_argument('--epochs', type=float, default=1.0, help='(default: %(default)s)')
  training.add_argument(
      '--max-steps', type=int, default=-1, help='Stop after N steps (default: off).')
  training.add_argument(
      '--batch-size', type=common.positive_int, default=16, help='(default: %(default)s)')
  training.add_argument(
      '--learning-rate', type=float, default=5e-5, help='(default: %(default)s)')
  training.add_argument(
      '--max-length', type=common.positive_int, default=None,
      help="Tokens per input, in training and reranking (default: the model's).")
  training.add_argument(
      '--distill-steps', type=common.non_negative_int, default=DEFAULT_DISTILL_STEPS,
      metavar='N',
      help='Cross-encoder warm start: N steps learning the --bi-encoder\'s similarities of '
      'the training pairs before the labels (train --distill-steps; the base bi-encoder, also '
      'with --kind both); skipped when --base-model is already a cross-encoder (default: '
      '%(default)s; 0: off).')
  training.add_argument(
      '--teacher-bm25-weight', type=bm25_weight, default=0.0, metavar='W',
      help='The share of BM25 in the warm-start targets (train --teacher-bm25-weight). '
      '"auto": the first stage\'s own choice, made on the dev queries before training: '
      'its BM25 weight when it fuses dense + BM25, 1 when it falls back to BM25, 0 when '
      'to dense (default: %(default)s).')
  training.add_argument(
      '--eval-steps', type=common.positive_int, default=None, metavar='N',
      help='Score dev nDCG@10 every N steps (default: once per epoch).')
  training.add_argument(
      '--early-stopping-patience', type=common.positive_int, default=None, metavar='N',
      help='Stop after N evaluations without a better dev score (default: off).')
  training.add_argument(
      '--train-precision', choices=PRECISIONS, default='fp32',
      help='Mixed precision of training: fp16/bf16 on a CUDA GPU, bf16 on a CPU with '
      'native bfloat16 (AVX512-BF16/AMX) (default: %(default)s).')
  training.add_argument(
      '--seed', type=int, default=12, help='Mining and training (default: %(default)s).')
  training.add_argument('--no-progress', action='store_true', help='No progress bars.')

  parser.add_argument(
      '--metrics', default=','.join(evaluation.DEFAULT_MEASURES),
      help='Comma-separated ir-measures names (default: %(default)s).')
  inference_settings.add_arguments(parser, 'inference and batching (encode and rerank)')
  return parser


@dataclasses.dataclass(frozen=True)
class LoopJobConfig:
  """The loop job's options (the command line's, one field per option)."""
  queries: str
  corpus: str
  qrels: str
  output: str
  query_id_column: str = 'query_id'
  query_text_column: str = 'text'
  doc_id_column: str = 'doc_id'
  doc_text_column: str = 'text'
  doc_title_column: Optional[str] = None
  title_separator: str = '\n'
  test_fraction: float = 0.5
  test_queries: Optional[str] = None
  dev_fraction: float = 0.2
  kind: str = 'cross-encoder'
  base_model: Optional[str] = None
  bi_encoder: Optional[str] = None
  bm25: bool = True
  top_k: int = 100
  rerank_top_k: int = 20
  top_n: int = 10
  pseudo_queries: tuple[str, ...] = ()
  pseudo_max_docs: Optional[int] = None
  num_negatives: int = 4
  negatives: str = 'random'
  dev_negatives: Optional[int] = None  # None: rerank_top_k
  bi_encoder_format: str = 'triplet'
  epochs: float = 1.0
  max_steps: int = -1
  batch_size: int = 16
  learning_rate: float = 5e-5
  max_length: Optional[int] = None
  distill_steps: int = DEFAULT_DISTILL_STEPS
  teacher_bm25_weight: Union[float, str] = 0.0
  eval_steps: Optional[int] = None
  early_stopping_patience: Optional[int] = None
  train_precision: str = 'fp32'
  seed: int = 12
  no_progress: bool = False
  metrics: str = ','.join(evaluation.DEFAULT_MEASURES)
  inference: InferenceSettings = InferenceSettings()
  pipeline_args: tuple[str, ...] = ()

  @property
  def kinds(self) -> tuple[str, ...]:
    return ('cross-encoder', 'bi-encoder') if self.kind == 'both' else (self.kind,)


@dataclasses.dataclass(frozen=True)
class LoopResult:
  """What a loop run did.

  ``table``: ``{row: {measure: value}}`` on the test queries (rows of
  ``TABLE_ROWS`` that the run has); ``splits``: judged queries per split;
  ``report``: loop_report.json.
  """
  output_dir: str
  splits: dict[str, int]
  table: dict[str, dict[str, float]]
  report: dict


def parse_config(argv: Sequence[str] | None = None) -> LoopJobConfig:
  """The command line -> the job's config (Beam's options kept for the runs)."""
  args, beam_args = build_parser().parse_known_args(argv)
  return common.config_from_args(LoopJobConfig, args, beam_args)


# ---------------------------------------------------------------- splits

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


def _write_parquet(frame: pl.DataFrame, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  frame.write_parquet(path)
  return path


def _write_splits(job: LoopJobConfig, splits_dir: str) -> tuple[dict, dict[str, list[str]]]:
  """Split qrels (train, dev, test, tune = train+dev) and the tune queries as
  Parquet under ``splits_dir``; returns their paths and the split ids."""
  qrels = evaluation.read_qrels(check_parquet_input(
      job.qrels, '--qrels', {'query_id': 'id', 'doc_id': 'id', 'relevance': 'int'}).files)
  queries_input = check_parquet_input(job.queries, '--queries', {
      job.query_id_column: 'id', job.query_text_column: 'string'})
  queries = evaluation.read_parquet_files(
      queries_input.files, [job.query_id_column, job.query_text_column])
  if qrels.height == 0:
    raise UserInputError(f'--qrels {job.qrels!r} holds no judgments')
  test_ids = None
  if job.test_queries:
    test_input = check_parquet_input(
        job.test_queries, '--test-queries', {job.query_id_column: 'id'})
    test_ids = evaluation.read_parquet_files(
        test_input.files, [job.query_id_column])[job.query_id_column].cast(pl.String).to_list()
  judged = qrels['query_id'].to_list()
  known = set(queries[job.query_id_column].cast(pl.String).to_list())
  test_check = None
  if test_ids is not None:
    given = set(test_ids)
    test_check = {'given': len(given), 'not_in_queries': len(given - known),
                  'not_judged': len(given - set(judged))}
    for key, what in (('not_in_queries', 'are not in --queries'),
                      ('not_judged', 'have no judgment in --qrels')):
      if test_check[key]:
        logger.warning('%s: warning: %d of the %d --test-queries ids %s: they are not test '
                       'queries', PROG, test_check[key], len(given), what)
  splits = split_query_ids(judged, job.test_fraction, job.dev_fraction, test_ids)
  dev_share = loop_dev_share(judged, job.test_fraction, job.dev_fraction, test_ids)
  requested = mine_dev_fraction(job.test_fraction, job.dev_fraction, test_ids is not None)
  if dev_share != requested:
    logger.info('[loop] the dev split takes %d queries (hash < %g instead of %g): the '
                "final stage's fusion guard needs %d", len(splits['dev']), dev_share,
                requested, MIN_DEV_QUERIES)
  for name in ('train', 'test'):
    if not splits[name]:
      raise UserInputError(
          f'no judged query falls in the {name} split ({qrels["query_id"].n_unique():,} '
          'judged queries; change --test-fraction or --test-queries, or judge more queries)')
  if not splits['dev'] and job.dev_fraction > 0:
    logger.warning('%s: warning: no judged query falls in the dev split; training '
                   'keeps its last step', PROG)
  tune_ids = splits['train'] + splits['dev']
  paths = {}
  for name, ids in (*splits.items(), ('tune', tune_ids)):
    paths[name] = _write_parquet(
        qrels.filter(pl.col('query_id').is_in(ids)),
        os.path.join(splits_dir, f'{name}.parquet'))
  for name, ids in (('queries_tune', tune_ids), ('queries_eval', splits['dev'] + splits['test'])):
    paths[name] = _write_parquet(
        queries.filter(pl.col(job.query_id_column).cast(pl.String).is_in(ids)),
        os.path.join(splits_dir, f'{name}.parquet'))
  missing = {name: sum(q not in known for q in ids) for name, ids in splits.items()}
  if missing['test']:
    logger.warning('%s: warning: %d test queries are judged but not in --queries',
                   PROG, missing['test'])
  return {'files': paths, 'judged_not_in_queries': missing,
          'mine_dev_fraction': dev_share, 'test_queries_check': test_check}, splits


def _mined_query_ids(pairs_dir: str) -> dict[str, set[str]]:
  """``{split: query ids}`` over every format's ``*-ids`` outputs of a mine run."""
  manifest = read_json(os.path.join(pairs_dir, MANIFEST_NAME))
  found: dict[str, set[str]] = {'train': set(), 'dev': set()}
  for name in manifest['outputs']:
    if not name.endswith('-ids'):
      continue
    split = name.rsplit('/', 1)[1][:-len('-ids')]
    files = committed_files(pairs_dir, name, '--pairs', manifest)
    if files:
      ids = evaluation.read_parquet_files(files, ['query_id'])['query_id']
      found[split] |= set(ids.cast(pl.String).to_list())
  return found


def check_mined_splits(pairs_dir: str, splits: Mapping[str, Sequence[str]]) -> dict[str, int]:
  """Raises unless the mined judged queries of each split are the loop's (no
  test query, dev rows only of dev queries); returns queries mined per split."""
  mined = _mined_query_ids(pairs_dir)
  judged = {q: name for name, ids in splits.items() for q in ids}
  for split, ids in mined.items():
    wrong = sorted(q for q in ids if q in judged and judged[q] != split)
    if wrong:
      raise AssertionError(
          f'the mined {split} split holds {len(wrong)} queries of other splits, e.g. '
          f'{[(q, judged[q]) for q in wrong[:3]]}')
  return {
      **{f'judged_{split}': sum(q in judged for q in ids) for split, ids in mined.items()},
      **{f'pseudo_{split}': sum(q not in judged for q in ids) for split, ids in mined.items()},
  }


# ---------------------------------------------------------------- steps

def _encode(job: LoopJobConfig, model: Optional[str], directory: str,
            queries: Mapping[str, str]) -> dict[str, str]:
  """Encodes the corpus and each of ``queries`` (name -> pattern) with ``model``
  into ``directory/NAME`` (reusing what is there when unchanged)."""
  dirs = {}
  inputs = [('corpus', job.corpus, job.doc_id_column, job.doc_text_column,
             job.doc_title_column)]
  inputs += [(name, pattern, job.query_id_column, job.query_text_column, None)
             for name, pattern in queries.items()]
  for name, pattern, id_column, text_column, title in inputs:
    out = os.path.join(directory, name)
    previous = out if os.path.exists(os.path.join(out, MANIFEST_NAME)) else None
    encode_job.execute(encode_job.EncodeJobConfig(
        input=pattern, output=out, model=model, id_column=id_column,
        text_column=text_column, title_column=title, title_separator=job.title_separator,
        previous=previous, inference=job.inference, pipeline_args=job.pipeline_args))
    dirs[name] = out
  return dirs


def _mine(job: LoopJobConfig, files: Mapping[str, str], embeddings: Mapping[str, str],
          output: str, dev_share: float) -> mine_job.MineResult:
  formats = []
  if 'cross-encoder' in job.kinds:
    formats.append('labeled-pair')
  if 'bi-encoder' in job.kinds:
    formats.append(job.bi_encoder_format)
  return mine_job.execute(mine_job.MineJobConfig(
      corpus=job.corpus, output=output, queries=files['queries_tune'],
      query_embeddings=embeddings['queries_tune'], corpus_embeddings=embeddings['corpus'],
      top_k=job.top_k, bm25=job.bm25, query_id_column=job.query_id_column,
      query_text_column=job.query_text_column, doc_id_column=job.doc_id_column,
      doc_text_column=job.doc_text_column, doc_title_column=job.doc_title_column,
      title_separator=job.title_separator, qrels=files['tune'], format=','.join(formats),
      mining=NegativeMiningSettings(
          num_negatives=job.num_negatives, sampling_strategy=job.negatives, seed=job.seed),
      dev_fraction=dev_share,
      dev_negatives=(job.dev_negatives or job.rerank_top_k) if job.dev_fraction else None,
      pseudo=PseudoQuerySettings(
          sources=tuple(job.pseudo_queries), max_docs=job.pseudo_max_docs, seed=job.seed),
      pipeline_args=job.pipeline_args))


def warm_start_teacher(job: LoopJobConfig) -> Optional[str]:
  """The cross-encoder's warm-start teacher, the first-stage bi-encoder (a local
  folder); None without a warm start: ``--distill-steps 0``, no cross-encoder
  trained, or a ``--base-model`` that is a cross-encoder already."""
  if not job.distill_steps or 'cross-encoder' not in job.kinds:
    return None
  if is_cross_encoder(resolve_model_dir(resolve_model_name(job.base_model))):
    return None
  teacher = resolve_model_dir(resolve_model_name(job.bi_encoder))
  training.check_teacher(
      teacher, job.bi_encoder or teacher, 'the teacher is --bi-encoder; or turn the warm start '
      'off with --distill-steps 0')
  return teacher


def bm25_weight(value: str) -> Union[float, str]:
  """argparse type of ``--teacher-bm25-weight``: ``auto`` or a number in [0, 1]."""
  return AUTO if value == AUTO else common.fraction(value)


def _first_stage_decision(rerank_report: Mapping) -> dict:
  """A rerank report's first-stage fusion decision ({} without one)."""
  return (rerank_report.get('fusion') or {}).get('first_stage') or {}


def first_stage_bm25_share(rerank_report: Mapping) -> float:
  """The BM25 share of a rerank run's first-stage fusion as tuned (and guarded):
  its BM25 weight over dense + BM25; 1 or 0 when it fell back to BM25 or to
  dense alone (0 without a fusion decision)."""
  weights = _first_stage_decision(rerank_report).get('weights') or {}
  dense, lexical = float(weights.get('dense', 0)), float(weights.get('bm25', 0))
  return lexical / (dense + lexical) if dense + lexical > 0 else 0.0


def _train(job: LoopJobConfig, kind: str, pairs: str, output: str,
           teacher_bm25_weight: float = 0.0) -> train_job.TrainResult:
  base = job.base_model if kind == 'cross-encoder' else job.bi_encoder
  teacher = warm_start_teacher(job) if kind == 'cross-encoder' else None
  if kind == 'cross-encoder' and job.distill_steps and teacher is None:
    logger.info('[loop] --base-model is a cross-encoder already: no warm start')
  return train_job.execute(train_job.TrainJobConfig(
      pairs=pairs, kind=kind, output=output, base_model=base,
      format='labeled-pair' if kind == 'cross-encoder' else job.bi_encoder_format,
      epochs=job.epochs, max_steps=job.max_steps, batch_size=job.batch_size,
      learning_rate=job.learning_rate, max_length=job.max_length, seed=job.seed,
      trust_remote_code=job.inference.trust_remote_code,
      allow_pickle_weights=job.inference.allow_pickle_weights, no_progress=job.no_progress,
      eval_steps=job.eval_steps, early_stopping_patience=job.early_stopping_patience,
      precision=job.train_precision, distill_steps=job.distill_steps if teacher else 0,
      teacher=teacher if teacher_bm25_weight < 1 else None,
      teacher_bm25_weight=teacher_bm25_weight if teacher else 0.0))


def first_stage_weights_text(rerank_report: Mapping) -> Optional[str]:
  """A rerank run's first-stage fusion weights as ``--first-stage-weights`` takes
  them (``'dense=0.55,bm25=0.45'``; ``'dense=1'`` after a fallback); None
  without a first-stage decision."""
  weights = {s: float(w) for s, w in (
      _first_stage_decision(rerank_report).get('weights') or {}).items() if float(w) > 0}
  return ','.join(f'{s}={w!r}' for s, w in weights.items()) or None


def _tune_first_stage(job: LoopJobConfig, output: str, embeddings: Mapping[str, str],
                      files: Mapping[str, str]) -> rerank_job.RerankResult:
  """The base first stage (dense + BM25, no model trained here) on the train and
  dev queries, its fusion tuned and guarded on all their judgments: neither
  signal was fit to them, so the train queries may tune it too, and the guard
  gets four times the queries the dev split alone gives it. No metrics."""
  return rerank_job.execute(rerank_job.RerankJobConfig(
      queries=files['queries_tune'], corpus=job.corpus, output=output,
      cross_encoder=rerank_job.NO_CROSS_ENCODER,
      query_id_column=job.query_id_column, query_text_column=job.query_text_column,
      doc_id_column=job.doc_id_column, doc_text_column=job.doc_text_column,
      doc_title_column=job.doc_title_column, title_separator=job.title_separator,
      query_embeddings=embeddings['queries_tune'], corpus_embeddings=embeddings['corpus'],
      bm25=job.bm25, top_k=job.rerank_top_k, top_n=job.top_n, fusion='linear',
      fusion_weights='auto', tune_qrels=files['tune'], inference=job.inference,
      pipeline_args=job.pipeline_args))


def _rerank(job: LoopJobConfig, output: str, cross_encoder: str,
            embeddings: Mapping[str, str], files: Mapping[str, str],
            first_stage_weights: Optional[str] = None) -> rerank_job.RerankResult:
  """Ranks the dev and test queries; fusion tuned on the dev judgments (the models
  were trained on train's, so their scores there are optimistic), metrics on test's.
  ``first_stage_weights``: the first stage as tuned on train + dev instead."""
  return rerank_job.execute(rerank_job.RerankJobConfig(
      queries=files['queries_eval'], corpus=job.corpus, output=output, cross_encoder=cross_encoder,
      query_id_column=job.query_id_column, query_text_column=job.query_text_column,
      doc_id_column=job.doc_id_column, doc_text_column=job.doc_text_column,
      doc_title_column=job.doc_title_column, title_separator=job.title_separator,
      query_embeddings=embeddings['queries_eval'], corpus_embeddings=embeddings['corpus'],
      bm25=job.bm25, top_k=job.rerank_top_k, top_n=job.top_n,
      max_length=job.max_length if cross_encoder != rerank_job.NO_CROSS_ENCODER else None,
      qrels=files['test'], metrics=job.metrics, fusion='linear', fusion_weights='auto',
      first_stage_weights=first_stage_weights, tune_qrels=files['dev'],
      inference=job.inference, pipeline_args=job.pipeline_args))


def _check_tuning(result: rerank_job.RerankResult, splits: Mapping[str, Sequence[str]]) -> None:
  tuned = set(evaluation.tuning_query_ids(read_json(
      os.path.join(result.output_dir, MANIFEST_NAME))))
  leaked = tuned & set(splits['test'])
  if leaked:
    raise AssertionError(f'fusion was tuned on {len(leaked)} test queries')


def _table(runs: Mapping[str, rerank_job.RerankResult]) -> dict[str, dict[str, float]]:
  """The rows of ``TABLE_ROWS`` the runs have: ``{row: {measure: value}}``."""
  sources = {
      'first_stage': ('base', 'retrieval'), 'dense': ('base', 'dense'),
      'bm25': ('base', 'bm25'), 'bi_encoder_dense': ('bi-encoder', 'dense'),
      'bi_encoder_first_stage': ('bi-encoder', 'retrieval'),
      'cross_encoder': ('cross-encoder', 'ce'), 'final': ('cross-encoder', 'final'),
  }
  table = {}
  for row, (run, stage) in sources.items():
    metrics = (runs[run].metrics or {}) if run in runs else {}
    if stage in metrics and not (row == 'bi_encoder_first_stage' and 'bm25' not in metrics):
      table[row] = dict(metrics[stage])
  return table


def fusion_reasons(report: Mapping) -> dict[str, str]:
  """The fusion decisions a loop report holds, one line each: the first stage as
  tuned on train + dev, then each rerank run's final ranking (tuned on dev)."""
  reasons = {}
  tuning = (report.get('first_stage_tuning') or {}).get('first_stage') or {}
  if tuning.get('reason'):
    reasons['first stage (train + dev queries)'] = tuning['reason']
  for name, fusion in (report.get('fusion') or {}).items():
    final = (fusion or {}).get('final') or {}
    if final.get('reason'):
      reasons[f'final, {name} (dev queries)'] = final['reason']
  return reasons


def row_labels(table: Mapping[str, object]) -> dict[str, str]:
  """The printed label of each row (the first stage is dense alone without BM25;
  with both models the cross-encoder reranks the fine-tuned bi-encoder's)."""
  labels = {row: TABLE_ROWS[row] for row in table}
  if 'first_stage' in labels and 'bm25' not in table:
    labels['first_stage'] = 'first stage (dense)'
  if 'bi_encoder_dense' in table:
    first = 'fine-tuned dense + BM25' if 'bm25' in table else 'fine-tuned dense'
    if 'bi_encoder_first_stage' in labels:
      labels['bi_encoder_first_stage'] = first
    for row, label in (('cross_encoder', 'fine-tuned CE alone (on {})'),
                       ('final', 'final ({} + CE)')):
      if row in labels:
        labels[row] = label.format(first)
  return labels


def candidate_depth_note(measures: Sequence[str], top_k: int, bm25: bool) -> Optional[str]:
  """A line under the table for the measures whose cutoff passes the reranked
  depth: they count only each query's candidates, not a deeper retrieval
  (None when every cutoff is within ``top_k``)."""
  deep = [m for m in dict.fromkeys(measures)
          if m.partition('@')[2].isdigit() and int(m.partition('@')[2]) > top_k]
  if not deep:
    return None
  source = f'the dense and BM25 top {top_k}' if bm25 else f'the dense top {top_k}'
  return (f'{", ".join(evaluation.display_name(m) for m in deep)}: over the reranked '
          f'candidates only ({source}); --rerank-top-k for deeper lists')


def format_table(table: Mapping[str, Mapping[str, float]], title: str) -> str:
  """The loop's table: one line per row, one column per measure."""
  measures = list(dict.fromkeys(m for values in table.values() for m in values))
  labels = row_labels(table)
  width = max(len(label) for label in labels.values())
  lines = [f'\n== {title}',
           f'  {"":<{width}}' + ''.join(
               f'{evaluation.display_name(m):>12}' for m in measures)]
  for row, values in table.items():
    lines.append(f'  {labels[row]:<{width}}' + ''.join(
        f'{values[m]:>12.4f}' if m in values else f'{"-":>12}' for m in measures))
  return '\n'.join(lines)


def _check(job: LoopJobConfig) -> None:
  if job.kind not in KINDS:
    raise UserInputError(f'--kind {job.kind!r} is not one of {", ".join(KINDS)}')
  if not 0 < job.test_fraction < 1:
    raise UserInputError('--test-fraction must be between 0 and 1 (both excluded)')
  if not 0 <= job.dev_fraction < 1:
    raise UserInputError('--dev-fraction must be in [0, 1)')
  if job.test_queries:
    check_parquet_input(job.test_queries, '--test-queries', {job.query_id_column: 'id'})
  if job.negatives not in NEGATIVE_SAMPLING:
    raise UserInputError(
        f'--negatives {job.negatives!r} is not one of {", ".join(NEGATIVE_SAMPLING)}')
  if job.pseudo_queries and not job.bm25:
    raise UserInputError('--pseudo-queries needs BM25 candidates: drop --no-bm25')
  if '://' in job.output:
    raise UserInputError(
        f'--output {job.output!r}: the loop trains on this machine and needs a local folder')
  if os.path.isfile(job.output):
    raise UserInputError(f'--output {job.output!r} is a file, not a folder')
  evaluation.parse_measures(job.metrics.split(','))
  common.pipeline_options(job.pipeline_args, PROG)
  # Checks the train step would make, before minutes of encoding and mining.
  training.check_precision(job.train_precision)
  warm_start_teacher(job)
  if (job.eval_steps or job.early_stopping_patience) and job.dev_fraction == 0:
    raise UserInputError(
        '--eval-steps/--early-stopping-patience need a dev split: give --dev-fraction > 0')


def execute(job: LoopJobConfig) -> LoopResult:
  """Runs the loop; its report is also written as OUTPUT/loop_report.json."""
  common.quiet_libraries()
  started = time.perf_counter()
  _check(job)
  root = os.path.abspath(job.output.rstrip('/'))
  steps = 5 + len(job.kinds) + bool(job.bm25)
  step = iter(range(1, steps + 1))

  logger.info('[loop] step %d/%d: query splits', next(step), steps)
  split_info, splits = _write_splits(job, os.path.join(root, 'splits'))
  files = split_info['files']
  sizes = {name: len(ids) for name, ids in splits.items()}
  logger.info('[loop] judged queries: train %d, dev %d, test %d',
              sizes['train'], sizes['dev'], sizes['test'])

  logger.info('[loop] step %d/%d: encode with the first-stage bi-encoder', next(step), steps)
  first_stage_model = job.bi_encoder  # None: the encode job's packaged default
  base = _encode(job, first_stage_model, os.path.join(root, 'embeddings', 'base'),
                 {'queries_eval': files['queries_eval'],
                  'queries_tune': files['queries_tune']})

  logger.info('[loop] step %d/%d: mine train+dev queries', next(step), steps)
  pairs_dir = os.path.join(root, 'pairs')
  mined = _mine(job, files, base, pairs_dir, split_info['mine_dev_fraction'])
  mined_queries = check_mined_splits(pairs_dir, splits)

  models, trained, runs, embedding_dirs = {}, {}, {}, {'base': base}
  rerank_dir = os.path.join(root, 'rerank')
  first_stage_tuning, first_stage_weights = None, None
  if job.bm25:
    logger.info('[loop] step %d/%d: tune the first stage (dense + BM25) on the train and dev '
                'queries', next(step), steps)
    first_stage_tuning = _tune_first_stage(
        job, os.path.join(rerank_dir, 'first-stage-tuning'), base, files)
    first_stage_weights = first_stage_weights_text(first_stage_tuning.report)
    logger.info('[loop] first stage: %s (%s)', first_stage_weights,
                _first_stage_decision(first_stage_tuning.report).get('reason'))
  teacher_bm25_weight = 0.0 if job.teacher_bm25_weight == AUTO else job.teacher_bm25_weight
  if job.teacher_bm25_weight == AUTO and first_stage_tuning and warm_start_teacher(job):
    teacher_bm25_weight = first_stage_bm25_share(first_stage_tuning.report)
    logger.info('[loop] warm-start targets: BM25 share %g (the first stage\'s)',
                teacher_bm25_weight)
  for kind in job.kinds:
    logger.info('[loop] step %d/%d: train the %s', next(step), steps, kind)
    models[kind] = os.path.join(root, 'models', kind)
    trained[kind] = _train(job, kind, pairs_dir, models[kind], teacher_bm25_weight)

  logger.info('[loop] step %d/%d: rerank and evaluate on the test queries', next(step), steps)
  # The cross-encoder reranks the best first stage the run has: the fine-tuned
  # bi-encoder's (+ BM25) when both are trained, as they would be deployed.
  ce_first_stage = base
  if 'bi-encoder' in job.kinds:
    ce_first_stage = _encode(job, models['bi-encoder'],
                             os.path.join(root, 'embeddings', 'bi-encoder'),
                             {'queries_eval': files['queries_eval']})
    embedding_dirs['bi-encoder'] = ce_first_stage
    runs['bi-encoder'] = _rerank(
        job, os.path.join(rerank_dir, 'bi-encoder'), rerank_job.NO_CROSS_ENCODER,
        ce_first_stage, files)
  if 'cross-encoder' in job.kinds:
    # Over the base first stage, its weights come from the train + dev tuning;
    # the fine-tuned bi-encoder's dense scores were fit to the train queries.
    runs['cross-encoder'] = _rerank(
        job, os.path.join(rerank_dir, 'cross-encoder'), models['cross-encoder'],
        ce_first_stage, files,
        first_stage_weights if ce_first_stage is base else None)
  if 'cross-encoder' in job.kinds and 'bi-encoder' not in job.kinds:
    runs['base'] = runs['cross-encoder']
  else:
    runs['base'] = _rerank(
        job, os.path.join(rerank_dir, 'first-stage'), rerank_job.NO_CROSS_ENCODER, base,
        files, first_stage_weights)
  for result in [*runs.values(), *([first_stage_tuning] if first_stage_tuning else [])]:
    _check_tuning(result, splits)

  logger.info('[loop] step %d/%d: report', next(step), steps)
  table = _table(runs)
  evaluated = runs['base'].report['evaluation']['queries_evaluated']
  report = {
      'job': 'loop',
      'output': root,
      'kind': job.kind,
      'splits': {
          **sizes, 'rule': EXPLICIT_TEST_RULE if job.test_queries else SPLIT_RULE,
          'test_fraction': None if job.test_queries else job.test_fraction,
          'dev_fraction': job.dev_fraction,
          'test_queries': job.test_queries,
          'mine_dev_fraction': split_info['mine_dev_fraction'],
          'judged_not_in_queries': split_info['judged_not_in_queries'],
          'test_queries_check': split_info['test_queries_check'],
          'files': files,
      },
      'mined': {'rows': mined.rows, 'queries': mined_queries,
                'pseudo_queries': mined.report.get('pseudo_queries')},
      'training': {kind: {
          'steps': result.steps, 'train_rows': result.train_rows,
          'dev_rows': result.report.get('dev_rows'),
          'best_dev_score': result.report.get('best_dev_score'),
          'dev_metric': result.report.get('dev_metric'),
          'train_loss': result.train_loss, 'train_seconds': result.train_seconds,
          'warm_start': training.warm_start_summary(result.report),
      } for kind, result in trained.items()},
      'fusion': {name: result.report.get('fusion') for name, result in runs.items()
                 if name != 'base' or result is not runs.get('cross-encoder')},
      'first_stage_tuning': (first_stage_tuning.report.get('fusion')
                             if first_stage_tuning else None),
      'test_queries_evaluated': evaluated,
      'table': table,
      'table_labels': row_labels(table),
      'steps': {
          'splits': os.path.join(root, 'splits'),
          'embeddings': embedding_dirs,
          'mine': pairs_dir,
          'train': models,
          'rerank': {name: result.output_dir for name, result in runs.items()},
          'first_stage_tuning': first_stage_tuning.output_dir if first_stage_tuning else None,
      },
      'models': {'first_stage': first_stage_model, 'base_model': job.base_model},
      'wall_seconds': time.perf_counter() - started,
  }
  write_json(report, os.path.join(root, REPORT_NAME))
  print(format_table(table, (
      f'loop: {evaluated:,} test queries (never mined, trained or tuned on); '
      f'train {sizes["train"]:,} / dev {sizes["dev"]:,} / test {sizes["test"]:,}')))
  for label, decision in fusion_reasons(report).items():
    print(f'  {label}: {decision}')
  depth = candidate_depth_note(
      [m for values in table.values() for m in values], job.rerank_top_k, job.bm25)
  if depth:
    print(f'  {depth}')
  print(f'  written: {os.path.join(root, REPORT_NAME)}')
  return LoopResult(output_dir=root, splits=sizes, table=table, report=report)


def run(argv: Sequence[str] | None = None) -> dict:
  """The command line: parses ``argv`` and runs the loop; returns its report."""
  common.configure_logging()
  return execute(parse_config(argv)).report


def main(argv: Sequence[str] | None = None) -> int:
  return common.main_wrapper(run, PROG, argv)


if __name__ == '__main__':
  sys.exit(main())
