"""Fine-tuning with the sentence-transformers trainers (no hand-written loop).

Not a Beam job: training runs on one machine (CPU or GPU) from the Parquet the
mine job wrote. With a dev split, the trainer scores nDCG@10 on the dev queries
with the sentence-transformers evaluators every ``eval_steps`` (else once per
epoch), keeps the best checkpoint and can stop early; ``then_pairs`` adds
curriculum phases (e.g. easy negatives first, then hard) on the same model.
A cross-encoder can first be warmed up on a bi-encoder's similarities of the
same pairs (``distill_steps``) before it learns from the labels.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Literal, Optional, Sequence

from transforms.core.errors import UserInputError
from transforms.core.settings import (
  fraction,
  non_negative_int,
  positive_int,
  setting,
)
from transforms.io.parquet_sink import committed_files, committed_output_exists, read_manifest

logger = logging.getLogger(__name__)

DEV_METRIC = 'nDCG@10'
DEV_AT_K = 10
PRECISIONS = ('fp32', 'fp16', 'bf16')
REPORT_NAME = 'training_report.json'
CURVE_NAME = 'training_curve.png'


_TRAINING = 'training'


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
  """How a model is fine-tuned: the train job's and the loop's options (the
  loop starts from its own defaults, e.g. a warm start)."""
  epochs: float = setting(1.0, '(default: %(default)s)', type=float, group=_TRAINING)
  max_steps: int = setting(
      -1, 'Stop after N steps, per phase (default: off).', type=int, group=_TRAINING)
  batch_size: int = setting(16, '(default: %(default)s)', type=positive_int, group=_TRAINING)
  learning_rate: float = setting(
      5e-5, '(default: %(default)s; a new cross-encoder head needs more than 2e-5)',
      type=float, group=_TRAINING)
  warmup_ratio: float = setting(
      0.1, 'Share of the steps over which the learning rate rises (default: %(default)s).',
      type=fraction, group=_TRAINING)
  max_length: Optional[int] = setting(
      None, "Tokens per input, in training (and in the loop's reranking) (default: the "
      "model's).", type=positive_int, group=_TRAINING)
  seed: int = setting(
      12, 'Training, and the loop\'s mining (default: %(default)s).', type=int,
      group=_TRAINING)
  eval_steps: Optional[int] = setting(
      None, f'Score dev {DEV_METRIC} every N steps and keep the best checkpoint (default: '
      'once per epoch). Needs a dev split (mine --dev-fraction).', type=positive_int,
      metavar='N', group=_TRAINING)
  early_stopping_patience: Optional[int] = setting(
      None, f'Stop after N evaluations without a better dev {DEV_METRIC} (default: off).',
      type=positive_int, metavar='N', group=_TRAINING)
  precision: str = setting(
      'fp32', 'Mixed precision: fp16 or bf16 on a CUDA GPU, or bf16 on a CPU with native '
      'bfloat16 (AVX512-BF16 or AMX) (default: %(default)s; refused where the machine '
      'cannot).', aliases=('--train-precision',), choices=PRECISIONS, group=_TRAINING)
  distill_steps: int = setting(
      0, 'Cross-encoder warm start: first train N steps to reproduce a bi-encoder\'s cosine '
      'similarities of the training pairs (MSELoss on standardised scores), then on the '
      'labels; the warmed model is a dev candidate too (step 0). A head freshly put on a '
      'bi-encoder otherwise sits at the class prior for hundreds of steps. In the loop the '
      'teacher is the base --bi-encoder (also with --kind both), and a --base-model that is '
      'a cross-encoder already skips it (default: %(default)s; 0 = off).',
      type=non_negative_int, metavar='N', group=_TRAINING)
  no_progress: bool = setting(False, 'No progress bars.', group=_TRAINING)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Training settings (defaults suit a small CPU run from a bi-encoder base)."""
  pairs_dir: str
  kind: Literal['cross-encoder', 'bi-encoder']
  base_model: str
  output_dir: str
  pairs_format: Optional[str] = None  # default: labeled-pair / triplet|pair
  epochs: float = 1.0
  batch_size: int = 16
  learning_rate: float = 5e-5
  warmup_ratio: float = 0.1
  max_length: Optional[int] = None
  pos_weight: Optional[float] = None
  seed: int = 12
  max_steps: int = -1
  trust_remote_code: bool = False
  show_progress: bool = True
  then_pairs: tuple[str, ...] = ()  # curriculum: later phases (e.g. hard negatives), in order
  dev: bool = True  # False: no dev evaluation nor checkpoint selection
  eval_steps: Optional[int] = None  # None: once per epoch
  early_stopping_patience: Optional[int] = None  # evaluations without improvement; None: off
  precision: Literal['fp32', 'fp16', 'bf16'] = 'fp32'
  distill_steps: int = 0  # cross-encoder warm start on teacher similarities; 0: off
  teacher_model: Optional[str] = None  # the bi-encoder of the warm start (default: base_model)
  teacher_bm25_weight: float = 0.0  # share of BM25 in the warm-start targets; 1: BM25 alone


def _split_files(pairs_dir: str, fmt: str, split: str, option: str = '--pairs') -> list[str]:
  """The files of the mined ``fmt/split`` output, as its manifest lists them
  ([] when the mine job did not write that output)."""
  manifest = read_manifest(pairs_dir, option)
  output = f'{fmt}/{split}'
  if not committed_output_exists(pairs_dir, output, option, manifest):
    return []
  return committed_files(pairs_dir, output, option, manifest)


def pairs_format(config: TrainConfig, pairs_dir: Optional[str] = None) -> str:
  """The mined format to train on: labeled-pair for a cross-encoder; triplet
  (else pair) for a bi-encoder, unless one is named."""
  if config.pairs_format:
    return config.pairs_format
  if config.kind == 'cross-encoder':
    return 'labeled-pair'
  if _split_files(pairs_dir or config.pairs_dir, 'triplet', 'train'):
    return 'triplet'
  return 'pair'


def load_pairs(config: TrainConfig, pairs_dir: Optional[str] = None, option: str = '--pairs'):
  """``(format, DatasetDict)`` with ``train`` (and ``dev`` when mined) of
  ``pairs_dir`` (default: ``config.pairs_dir``) via ``load_dataset``."""
  from datasets import load_dataset
  pairs_dir = pairs_dir or config.pairs_dir
  fmt = pairs_format(config, pairs_dir)
  files = {split: _split_files(pairs_dir, fmt, split, option) for split in ('train', 'dev')}
  if not files['train']:
    raise UserInputError(
        f'{option} {pairs_dir!r} has no {fmt}/train/part-*.parquet '
        f'(run the mine job with --format {fmt})')
  files = {split: paths for split, paths in files.items() if paths}
  data = load_dataset('parquet', data_files=files)
  if 'dev' in data and data['dev'].num_rows == 0:
    del data['dev']
  if data['train'].num_rows == 0:
    raise UserInputError(f'{fmt}/train in {pairs_dir!r} has no rows')
  return fmt, data


def cpu_supports_bf16() -> bool:
  """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), where
  bf16 autocast trains faster than fp32 (MiniLM cross-encoder steps of 16
  pairs at up to 160 tokens on this project's 2-core AMD EPYC: 0.70 s against
  1.16 s in the sentence-transformers trainer)."""
  import torch
  try:
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())
  except (AttributeError, RuntimeError):  # an older or a non-oneDNN torch build
    return False


def check_precision(precision: str) -> None:
  """Refuses a precision this machine cannot train in: fp16 needs a CUDA GPU;
  bf16 a GPU that supports it or a CPU with native bfloat16 (AVX512-BF16/AMX)."""
  if precision not in PRECISIONS:
    raise UserInputError(f'--precision {precision!r} is not one of {", ".join(PRECISIONS)}')
  if precision == 'fp32':
    return
  import torch
  if not torch.cuda.is_available():
    if precision == 'bf16' and cpu_supports_bf16():
      return
    raise UserInputError(
        f'--precision {precision} needs a CUDA GPU'
        + (' or a CPU with native bfloat16 (AVX512-BF16 or AMX)' if precision == 'bf16' else '')
        + ' and there is none here; use --precision fp32')
  if precision == 'bf16' and not torch.cuda.is_bf16_supported():
    raise UserInputError('--precision bf16: this GPU does not support bfloat16; use fp16')


def check_evaluation_settings(config: TrainConfig) -> None:
  """Refuses evaluation options that cannot apply (without the data: see train)."""
  if config.eval_steps is not None and config.eval_steps < 1:
    raise UserInputError('--eval-steps must be a positive number of steps')
  if config.early_stopping_patience is not None and config.early_stopping_patience < 1:
    raise UserInputError('--early-stopping-patience must be a positive number of evaluations')
  if not config.dev and (config.eval_steps or config.early_stopping_patience):
    raise UserInputError(
        '--eval-steps and --early-stopping-patience evaluate on the dev split: drop --no-dev')
  if config.distill_steps < 0:
    raise UserInputError('--distill-steps must be 0 (off) or a positive number of steps')
  if config.distill_steps and config.kind != 'cross-encoder':
    raise UserInputError('--distill-steps warms up a cross-encoder; a bi-encoder needs none')
  if not 0 <= config.teacher_bm25_weight <= 1:
    raise UserInputError('--teacher-bm25-weight must be in [0, 1]')
  if not 0 <= config.warmup_ratio <= 1:
    raise UserInputError('--warmup-ratio must be in [0, 1]')


def _model_json(path: str, name: str) -> dict:
  """A model folder's JSON config file ({} when absent or not an object)."""
  try:
    with open(os.path.join(path, name)) as handle:
      value = json.load(handle)
  except (OSError, ValueError):
    return {}
  return value if isinstance(value, dict) else {}


def is_cross_encoder(path: str) -> bool:
  """Whether the model folder holds a cross-encoder (sentence-transformers says
  so, or its transformers architecture is a sequence classifier)."""
  if _model_json(path, 'config_sentence_transformers.json').get('model_type') == 'CrossEncoder':
    return True
  architectures = _model_json(path, 'config.json').get('architectures') or []
  return any(str(a).endswith('ForSequenceClassification') for a in architectures)


def check_teacher(path: str, name: str, way_out: str) -> None:
  """Refuses a warm-start teacher that cannot give embeddings: a cross-encoder
  or another kind of sentence-transformers model than a bi-encoder (a plain
  transformer folder is fine: it loads with mean pooling, as the encode job
  loads it). ``name`` is what the user gave, ``way_out`` the option to change."""
  model_type = _model_json(path, 'config_sentence_transformers.json').get('model_type')
  if is_cross_encoder(path) or model_type not in (None, 'SentenceTransformer'):
    raise UserInputError(
        f'the warm-start teacher {name!r} is not a bi-encoder (its embeddings are the targets); '
        f'{way_out}')


# ---------------------------------------------------------------- dev evaluation


def dev_samples(splits: Sequence[Any]) -> list[dict]:
  """Dev rows (of one or more mined dev splits) -> one ranking sample per query
  text: ``{'query', 'positive': [...], 'negative': [...]}``, docs deduplicated
  (a doc positive anywhere is not a negative). ``labeled-pair`` rows by label;
  ``pair``/``triplet``/``n-tuple`` rows: anchor, positive, negative columns."""
  positives: dict[str, dict[str, None]] = {}
  negatives: dict[str, dict[str, None]] = {}

  def add(query: str, doc: Optional[str], positive: bool) -> None:
    if not query or not doc:
      return
    positives.setdefault(query, {})
    negatives.setdefault(query, {})
    (positives if positive else negatives)[query][doc] = None

  for rows in splits:
    columns = list(rows.column_names)
    if 'label' in columns and len(columns) == 3:
      query_column, doc_column = (c for c in columns if c != 'label')
      for query, doc, label in zip(rows[query_column], rows[doc_column], rows['label']):
        add(query, doc, label is not None and label > 0.5)
    elif 'score' in columns or len(columns) < 2:
      logger.warning('dev rows with columns %s cannot be ranked; left out', columns)
    else:
      negative_columns = [c for c in columns[2:] if c.startswith('negative')]
      queries, docs = list(rows[columns[0]]), list(rows[columns[1]])
      negative_docs = [list(rows[column]) for column in negative_columns]
      for i, query in enumerate(queries):
        add(query, docs[i], True)
        for column_docs in negative_docs:
          add(query, column_docs[i], False)
  return [
      {'query': query,
       'positive': list(docs),
       'negative': [doc for doc in negatives[query] if doc not in docs]}
      for query, docs in positives.items()]


def dev_evaluator(kind: str, model, samples: list[dict], batch_size: int):
  """``(evaluator, key)``: the sentence-transformers evaluator of nDCG@10 on the
  dev samples and the key of nDCG@10 in its results; None when no dev query can
  be ranked. Cross-encoder: ``CrossEncoderRerankingEvaluator`` (each query's
  positives + negatives reranked); bi-encoder: ``InformationRetrievalEvaluator``
  (each query against every dev document)."""
  if kind == 'cross-encoder':
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    usable = [s for s in samples if s['positive'] and s['negative']]
    if not usable:
      return None
    evaluator = CrossEncoderRerankingEvaluator(
        samples=usable, at_k=DEV_AT_K, name='dev', batch_size=batch_size, write_csv=False)
    return evaluator, f'dev_ndcg@{DEV_AT_K}'
  from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
  doc_ids: dict[str, str] = {}
  for sample in samples:
    for doc in sample['positive'] + sample['negative']:
      doc_ids.setdefault(doc, f'd{len(doc_ids)}')
  usable = [s for s in samples if s['positive']]
  if not usable or len(doc_ids) < 2:
    return None
  queries = {f'q{i}': s['query'] for i, s in enumerate(usable)}
  relevant = {f'q{i}': {doc_ids[doc] for doc in s['positive']} for i, s in enumerate(usable)}
  evaluator = InformationRetrievalEvaluator(
      queries=queries, corpus={i: doc for doc, i in doc_ids.items()}, relevant_docs=relevant,
      mrr_at_k=[DEV_AT_K], ndcg_at_k=[DEV_AT_K], accuracy_at_k=[1],
      precision_recall_at_k=[DEV_AT_K], map_at_k=[100], batch_size=batch_size, name='dev',
      write_csv=False)
  return evaluator, f'dev_{model.similarity_fn_name}_ndcg@{DEV_AT_K}'


def _dev_query_count(evaluator) -> int:
  samples = getattr(evaluator, 'samples', None)
  if samples is not None:
    return len(samples)
  return len(getattr(evaluator, 'queries', ()) or ())


# ---------------------------------------------------------------- training


def train(config: TrainConfig) -> dict:
  """Trains and saves the model to ``config.output_dir`` (moved into place at
  the end, so the folder is either the finished model or absent). With a dev
  split the saved model is the checkpoint of best dev nDCG@10 over all phases."""
  from transformers import set_seed
  started = time.perf_counter()
  check_precision(config.precision)
  check_evaluation_settings(config)
  folders = [(config.pairs_dir, '--pairs')] + [(d, '--then-pairs') for d in config.then_pairs]
  if (config.dev and (config.eval_steps or config.early_stopping_patience) and not any(
      _split_files(d, pairs_format(config, d), 'dev', option) for d, option in folders)):
    raise UserInputError(
        '--eval-steps and --early-stopping-patience need a dev split: run the mine job '
        'with --dev-fraction')
  phases = [(d, *load_pairs(config, d, option)) for d, option in folders]
  set_seed(config.seed)
  work = tempfile.mkdtemp(prefix='beam-rerank-train-')
  try:
    return _train(config, phases, work, started)
  finally:
    shutil.rmtree(work, ignore_errors=True)


def _model_and_loss(config: TrainConfig):
  import torch
  if config.kind == 'cross-encoder':
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    model = CrossEncoder(
        config.base_model, num_labels=1, max_length=config.max_length,
        trust_remote_code=config.trust_remote_code)
    pos_weight = None if config.pos_weight is None else torch.tensor(config.pos_weight)
    return model, BinaryCrossEntropyLoss(model, pos_weight=pos_weight)
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
  model = SentenceTransformer(config.base_model, trust_remote_code=config.trust_remote_code)
  if config.max_length:
    model.max_seq_length = config.max_length
  return model, MultipleNegativesRankingLoss(model)


def _trainer(config: TrainConfig, model, loss, data, evaluator, metric_key: Optional[str],
             folder: str):
  """One phase's trainer, and its early-stopping callback (or None)."""
  import torch
  from transformers import EarlyStoppingCallback
  dev = data.get('dev') if config.dev else None
  evaluating = evaluator is not None or dev is not None
  selecting = evaluator is not None
  strategy = ('steps' if config.eval_steps else 'epoch') if evaluating else 'no'
  logging_steps = max(1, min(50, len(data['train']) // (4 * config.batch_size) or 1))
  if config.eval_steps:
    logging_steps = min(logging_steps, config.eval_steps)
  args = dict(
      output_dir=os.path.join(folder, 'checkpoints'),
      num_train_epochs=config.epochs,
      max_steps=config.max_steps,
      per_device_train_batch_size=config.batch_size,
      per_device_eval_batch_size=config.batch_size,
      learning_rate=config.learning_rate,
      # transformers 5 reads a float warmup_steps below 1 as a ratio (warmup_ratio
      # is deprecated, and 1.0 either way would mean one step): 1.0 becomes the
      # float just below it, all the steps.
      warmup_steps=min(float(config.warmup_ratio), math.nextafter(1.0, 0.0)),
      seed=config.seed,
      data_seed=config.seed,
      eval_strategy=strategy,
      save_strategy=strategy if selecting else 'no',
      save_only_model=True,
      save_total_limit=1,  # the best one is kept too
      load_best_model_at_end=selecting,
      logging_steps=logging_steps,
      report_to='none',
      disable_tqdm=not config.show_progress,
      use_cpu=not torch.cuda.is_available(),
      fp16=config.precision == 'fp16',
      bf16=config.precision == 'bf16',
  )
  if config.eval_steps and evaluating:
    args.update(eval_steps=config.eval_steps, save_steps=config.eval_steps)
  if selecting:
    args.update(metric_for_best_model=f'eval_{metric_key}', greater_is_better=True)
  stopper = None
  if selecting and config.early_stopping_patience:
    stopper = EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)
  elif config.early_stopping_patience:
    logger.warning('early stopping is off: no dev query to rank')
  # A ranking evaluator chooses the checkpoint: the dev loss would be a second
  # pass over the same rows that nothing reads, half the cost of each evaluation.
  common = dict(
      model=model, train_dataset=data['train'],
      eval_dataset=None if selecting else dev, loss=loss,
      evaluator=evaluator, callbacks=[stopper] if stopper else None)
  if config.kind == 'cross-encoder':
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    return CrossEncoderTrainer(args=CrossEncoderTrainingArguments(**args), **common), stopper
  from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
  from sentence_transformers.sentence_transformer.training_args import BatchSamplers
  trainer = SentenceTransformerTrainer(
      args=SentenceTransformerTrainingArguments(batch_sampler=BatchSamplers.NO_DUPLICATES, **args),
      **common)
  return trainer, stopper


def _number(value) -> Optional[float]:
  """A JSON-safe float (None for NaN/inf or a non-number)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def _eval_metrics(entry: dict) -> dict:
  return {k: v for k, v in ((k, _number(v)) for k, v in entry.items() if k.startswith('eval_'))
          if v is not None}


def _standardised(values):
  """Mean 0, standard deviation 1 (a constant becomes all zeros)."""
  import numpy as np
  values = np.asarray(values, dtype=np.float64)
  spread = float(values.std())
  return (values - values.mean()) / (spread if spread > 0 else 1.0)


def teacher_similarities(
    teacher: str, first: Sequence[str], second: Sequence[str], *,
    max_length: Optional[int] = None, batch_size: int = 32, trust_remote_code: bool = False,
    show_progress: bool = False) -> list[float]:
  """The teacher bi-encoder's cosine similarity of each ``(first[i], second[i])``
  pair, standardised over all pairs (mean 0, standard deviation 1): regression
  targets on the scale of a fresh head's logits. Each distinct text is encoded once."""
  import numpy as np
  from sentence_transformers import SentenceTransformer
  model = SentenceTransformer(teacher, trust_remote_code=trust_remote_code)
  if max_length:
    model.max_seq_length = max_length
  texts = list(dict.fromkeys([*first, *second]))
  embeddings = model.encode(
      texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
      show_progress_bar=show_progress)
  row = {text: i for i, text in enumerate(texts)}
  cosine = np.einsum(
      'ij,ij->i', embeddings[[row[t] for t in first]], embeddings[[row[t] for t in second]])
  return _standardised(cosine).astype(float).tolist()


def lexical_similarities(
    first: Sequence[str], second: Sequence[str], stemmer: Optional[str] = None) -> list[float]:
  """The BM25 score of each ``second[i]`` for the query ``first[i]`` (the bm25
  module's tokeniser and scoring, statistics over the distinct ``second``
  texts), divided by the query's idf mass (the score of a document matching
  every query term without bound), so that long and short queries share one
  scale: the matched share of the query, in [0, 1)."""
  import numpy as np

  from transforms.retrieval import bm25
  queries = list(dict.fromkeys(first))
  docs = list(dict.fromkeys(second))
  query_row = {text: i for i, text in enumerate(queries)}
  doc_row = {text: i for i, text in enumerate(docs)}
  query_set = bm25.build_query_set(
      (str(i), bm25.tokenize(text, stemmer)) for i, text in enumerate(queries))
  # build_query_set sorts ids as strings: map each query to its row there.
  set_row = {int(query_id): i for i, query_id in enumerate(query_set.ids)}
  block = bm25.term_block(((str(i), text) for i, text in enumerate(docs)),
                          query_set.vocabulary, stemmer)
  stats = bm25.add_block_stats(bm25.CorpusStats(), block)
  weights = bm25.term_weights(block, stats, bm25.BM25Settings(stemmer=stemmer))
  counts = query_set.term_counts
  q = np.array([set_row[query_row[t]] for t in first], dtype=np.int64)
  d = np.array([doc_row[t] for t in second], dtype=np.int64)
  scores = np.asarray(weights[d].multiply(counts[q]).sum(axis=1)).ravel()
  mass = counts @ bm25.idf(stats)
  bound = mass[q]
  return np.where(bound > 0, scores / np.where(bound > 0, bound, 1.0), 0.0).tolist()


def warm_start_targets(
    teacher: Optional[str], first: Sequence[str], second: Sequence[str], *,
    bm25_weight: float = 0.0, max_length: Optional[int] = None, batch_size: int = 32,
    trust_remote_code: bool = False, show_progress: bool = False) -> list[float]:
  """The warm start's regression targets: the teacher's standardised cosines
  (``bm25_weight`` 0), the standardised ``lexical_similarities`` (1), or the
  standardised blend ``(1 - w) * cosine + w * bm25`` of the two standardised
  scores -- a first stage of dense + BM25, as the rerank job fuses them."""
  import numpy as np
  if bm25_weight <= 0:
    return teacher_similarities(
        teacher, first, second, max_length=max_length, batch_size=batch_size,
        trust_remote_code=trust_remote_code, show_progress=show_progress)
  lexical = _standardised(lexical_similarities(first, second))
  if bm25_weight >= 1:
    return lexical.astype(float).tolist()
  dense = np.asarray(teacher_similarities(  # standardised already
      teacher, first, second, max_length=max_length, batch_size=batch_size,
      trust_remote_code=trust_remote_code, show_progress=show_progress))
  return _standardised((1 - bm25_weight) * dense + bm25_weight * lexical).astype(float).tolist()


def _warm_start(config: TrainConfig, model, data, work: str, evaluator) -> dict:
  """The cross-encoder warm start: ``config.distill_steps`` steps of MSELoss on the
  teacher's standardised similarities of the first phase's training pairs (their
  labels unused; a seeded sample of the rows those steps can reach, so the
  teacher encodes no more than is trained on). A head freshly put on a
  bi-encoder sits at the class prior for hundreds of label steps; this gives it
  the teacher's notion of relevance first."""
  from datasets import Dataset
  from sentence_transformers.cross_encoder.losses import MSELoss
  weight = config.teacher_bm25_weight
  teacher = None if weight >= 1 else (config.teacher_model or config.base_model)
  rows = data['train']
  reachable = config.distill_steps * config.batch_size
  if rows.num_rows > reachable:
    rows = rows.shuffle(seed=config.seed).select(range(reachable))
  first_column, second_column = rows.column_names[:2]
  first, second = list(rows[first_column]), list(rows[second_column])
  started = time.perf_counter()
  logger.info('warm start: the teacher %s%s scores %d training pairs',
              teacher or 'BM25', f' + BM25 ({weight:g})' if 0 < weight < 1 else '', len(first))
  targets = warm_start_targets(
      teacher, first, second, bm25_weight=weight, max_length=config.max_length,
      batch_size=2 * config.batch_size, trust_remote_code=config.trust_remote_code,
      show_progress=config.show_progress)
  teacher_seconds = time.perf_counter() - started
  logger.info('warm start: %d steps of MSELoss on the teacher similarities',
              config.distill_steps)
  settings = dataclasses.replace(
      config, max_steps=config.distill_steps, dev=False, eval_steps=None,
      early_stopping_patience=None)
  pairs = Dataset.from_dict({'sentence_0': first, 'sentence_1': second, 'label': targets})
  trainer, _ = _trainer(settings, model, MSELoss(model), {'train': pairs}, None, None,
                        os.path.join(work, 'warm-start'))
  output = trainer.train()
  report = {
      'teacher': teacher,
      'teacher_bm25_weight': weight,
      'pairs': len(first),
      'steps': int(trainer.state.global_step),
      'loss': _number(output.training_loss),
      'loss_curve': [
          {'step': int(e['step']), 'loss': _number(e['loss'])}
          for e in trainer.state.log_history if _number(e.get('loss')) is not None],
      'teacher_seconds': teacher_seconds,
      'seconds': time.perf_counter() - started,
  }
  if evaluator is not None:
    report['dev_metrics'] = _eval_metrics(
        {f'eval_{k}': v for k, v in evaluator(model, epoch=0, steps=0).items()})
  return report


def warm_start_summary(report: dict) -> Optional[dict]:
  """A training report's warm start without its loss curve (None: there was none)."""
  warm = report.get('warm_start')
  if not warm:
    return None
  return {k: v for k, v in warm.items() if k not in ('loss_curve', 'dev_metrics')}


def _train(config: TrainConfig, phases: list, work: str, started: float) -> dict:
  model, loss = _model_and_loss(config)
  built = None
  if config.dev:
    samples = dev_samples([data['dev'] for _, _, data in phases if 'dev' in data])
    if samples:
      built = dev_evaluator(config.kind, model, samples, config.batch_size)
      if built is None:
        logger.warning('no dev query has a positive and a document to rank it against: '
                       'no checkpoint selection')
  evaluator, metric_key = built or (None, None)
  dev_key = f'eval_{metric_key}' if metric_key else None
  best_dir = os.path.join(work, 'best')
  best: Optional[dict] = None
  loss_curve: list[dict] = []
  dev_curve: list[dict] = []
  phase_reports: list[dict] = []
  train_seconds = 0.0
  offset = 0
  warm = None
  if config.distill_steps:
    warm = _warm_start(config, model, phases[0][2], work, evaluator)
    train_seconds += warm['seconds']
    if evaluator is not None:  # the warm start is a candidate too: step 0, phase 0
      score = warm['dev_score'] = warm['dev_metrics'].get(dev_key)
      dev_curve.append({'step': 0, 'phase': 0, DEV_METRIC: score, 'eval_loss': None})
      if score is not None:
        model.save(best_dir)
        best = {'score': score, 'step': 0, 'phase': 0, 'metrics': warm['dev_metrics']}
  for index, (pairs_dir, fmt, data) in enumerate(phases, 1):
    if len(phases) > 1:
      logger.info('curriculum phase %d/%d: %s (%s)', index, len(phases), pairs_dir, fmt)
    trainer, stopper = _trainer(
        config, model, loss, data, evaluator, metric_key, os.path.join(work, f'phase-{index}'))
    phase_started = time.perf_counter()
    output = trainer.train()
    train_seconds += time.perf_counter() - phase_started
    state = trainer.state
    last_eval: dict = {}
    evals_by_step: dict[int, dict] = {}
    for entry in state.log_history:
      step = offset + int(entry.get('step', 0))
      if 'loss' in entry and _number(entry['loss']) is not None:
        loss_curve.append({'step': step, 'loss': _number(entry['loss']), 'phase': index})
      if any(k.startswith('eval_') for k in entry):
        metrics = _eval_metrics(entry)
        dev_curve.append({
            'step': step, 'phase': index,
            DEV_METRIC: metrics.get(dev_key) if dev_key else None,
            'eval_loss': metrics.get('eval_loss')})
        evals_by_step[step] = last_eval = metrics
    early_stopped = bool(
        stopper is not None
        and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience
        and state.global_step < state.max_steps)
    phase_best_step = (offset + state.best_global_step
                       if evaluator is not None and state.best_global_step else None)
    phase_best = _number(state.best_metric) if phase_best_step is not None else None
    phase_reports.append({
        'pairs': pairs_dir,
        'format': fmt,
        'train_rows': data['train'].num_rows,
        'dev_rows': data['dev'].num_rows if 'dev' in data else 0,
        'first_step': offset + 1,
        'last_step': offset + state.global_step,
        'steps': int(state.global_step),
        'train_loss': _number(output.training_loss),
        'best_step': phase_best_step,
        'best_dev_score': phase_best,
        'early_stopped': early_stopped,
    })
    # The model now holds this phase's best checkpoint (load_best_model_at_end);
    # it is kept when it beats every earlier phase (or when nothing is selected).
    if evaluator is None or (phase_best is not None and (
        best is None or phase_best > best['score'])):
      shutil.rmtree(best_dir, ignore_errors=True)
      model.save(best_dir)
      best = {
          'score': phase_best, 'step': phase_best_step, 'phase': index,
          'metrics': evals_by_step.get(phase_best_step, last_eval)
          if phase_best_step is not None else last_eval}
    offset += state.global_step
  if best is None:  # every phase's evaluations failed to produce a score
    model.save(best_dir)
    best = {'score': None, 'step': None, 'phase': len(phases), 'metrics': {}}
  steps = sum(p['steps'] for p in phase_reports)
  losses = [(p['train_loss'], p['steps']) for p in phase_reports if p['train_loss'] is not None]
  train_loss = (sum(v * s for v, s in losses) / max(1, sum(s for _, s in losses))
                if losses else float('nan'))
  report = {
      'kind': config.kind,
      'base_model': config.base_model,
      'pairs': config.pairs_dir,
      'format': phases[0][1],
      'train_rows': sum(p['train_rows'] for p in phase_reports),
      'dev_rows': sum(p['dev_rows'] for p in phase_reports) if config.dev else 0,
      'dev_queries': _dev_query_count(evaluator) if evaluator is not None else 0,
      'settings': {k: v for k, v in dataclasses.asdict(config).items()
                   if k not in ('pairs_dir', 'output_dir', 'show_progress')},
      'train_loss': train_loss,
      'steps': steps,
      'dev_metric': DEV_METRIC if evaluator is not None else None,
      'dev_metrics': best['metrics'],
      'best_step': best['step'],
      'best_phase': best['phase'] if evaluator is not None else None,
      'best_dev_score': best['score'],
      'early_stopped': any(p['early_stopped'] for p in phase_reports),
      'phases': phase_reports,
      'warm_start': warm,
      'loss_curve': loss_curve,
      'dev_curve': dev_curve,
      'train_seconds': train_seconds,
  }
  report['wall_seconds'] = time.perf_counter() - started
  with open(os.path.join(best_dir, REPORT_NAME), 'w') as handle:
    json.dump(report, handle, indent=2, sort_keys=True)
  with open(os.path.join(best_dir, CURVE_NAME), 'wb') as handle:
    handle.write(plot_training_curve(report))
  if os.path.exists(config.output_dir):
    shutil.rmtree(config.output_dir)
  os.makedirs(os.path.dirname(os.path.abspath(config.output_dir)), exist_ok=True)
  shutil.move(best_dir, config.output_dir)
  return report


def plot_training_curve(report: dict) -> bytes:
  """A PNG: training loss (left axis) and dev nDCG@10 (right axis) against
  steps; the best checkpoint starred, curriculum phases split by dotted lines."""
  import io

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, left = plt.subplots(figsize=(8, 4.5))
  handles = []
  losses = report.get('loss_curve') or []
  if losses:
    handles += left.plot([p['step'] for p in losses], [p['loss'] for p in losses],
                         color='tab:blue', label='training loss')
  eval_losses = [p for p in report.get('dev_curve') or [] if p.get('eval_loss') is not None]
  if eval_losses:
    handles += left.plot([p['step'] for p in eval_losses], [p['eval_loss'] for p in eval_losses],
                         color='tab:blue', linestyle='--', marker='.', label='dev loss')
  left.set_xlabel('step')
  left.set_ylabel('loss')
  scores = [p for p in report.get('dev_curve') or [] if p.get(DEV_METRIC) is not None]
  if scores:
    right = left.twinx()
    handles += right.plot([p['step'] for p in scores], [p[DEV_METRIC] for p in scores],
                          color='tab:orange', marker='o', label=f'dev {DEV_METRIC}')
    if report.get('best_step') is not None and report.get('best_dev_score') is not None:
      handles += right.plot([report['best_step']], [report['best_dev_score']], linestyle='none',
                            marker='*', markersize=14, color='tab:red',
                            label=f'best (step {report["best_step"]})')
    right.set_ylabel(f'dev {DEV_METRIC}')
  phases = report.get('phases') or []
  for number, phase in enumerate(phases[1:], 2):
    left.axvline(phase['first_step'] - 0.5, color='grey', linestyle=':')
    left.annotate(
        f'phase {number}', (phase['first_step'] - 0.5, 1), xycoords=('data', 'axes fraction'),
        xytext=(3, -12), textcoords='offset points', fontsize=8, color='grey')
  if handles:
    left.legend(handles=handles, fontsize=8, loc='best')
  else:
    left.text(0.5, 0.5, 'nothing logged', ha='center', va='center', transform=left.transAxes)
  title = f'{report.get("kind", "")} training'
  if report.get('early_stopped'):
    title += ' (stopped early)'
  left.set_title(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=110)
  plt.close(fig)
  return buffer.getvalue()
