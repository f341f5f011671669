"""Fine-tuning with the sentence-transformers trainers (no hand-written loop).

Not a Beam job: training runs on one machine (CPU or GPU) from the Parquet the
mine job wrote.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Literal, Optional

from transforms.errors import UserInputError
from transforms.parquet_sink import committed_files, committed_output_exists, read_manifest


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


def _split_files(pairs_dir: str, fmt: str, split: str) -> list[str]:
  """The files of the mined ``fmt/split`` output, as its manifest lists them
  ([] when the mine job did not write that output)."""
  manifest = read_manifest(pairs_dir, '--pairs')
  output = f'{fmt}/{split}'
  if not committed_output_exists(pairs_dir, output, '--pairs', manifest):
    return []
  return committed_files(pairs_dir, output, '--pairs', manifest)


def pairs_format(config: TrainConfig) -> str:
  """The mined format to train on: labeled-pair for a cross-encoder; triplet
  (else pair) for a bi-encoder, unless one is named."""
  if config.pairs_format:
    return config.pairs_format
  if config.kind == 'cross-encoder':
    return 'labeled-pair'
  if _split_files(config.pairs_dir, 'triplet', 'train'):
    return 'triplet'
  return 'pair'


def load_pairs(config: TrainConfig):
  """``DatasetDict`` with ``train`` (and ``dev`` when mined) via ``load_dataset``."""
  from datasets import load_dataset
  fmt = pairs_format(config)
  files = {split: _split_files(config.pairs_dir, fmt, split) for split in ('train', 'dev')}
  if not files['train']:
    raise UserInputError(
        f'--pairs {config.pairs_dir!r} has no {fmt}/train/part-*.parquet '
        f'(run the mine job with --format {fmt})')
  files = {split: paths for split, paths in files.items() if paths}
  data = load_dataset('parquet', data_files=files)
  if 'dev' in data and data['dev'].num_rows == 0:
    del data['dev']
  if data['train'].num_rows == 0:
    raise UserInputError(f'{fmt}/train in {config.pairs_dir!r} has no rows')
  return fmt, data


def train(config: TrainConfig) -> dict:
  """Trains and saves the model to ``config.output_dir`` (moved into place at
  the end, so the folder is either the finished model or absent)."""
  import torch
  from transformers import set_seed
  fmt, data = load_pairs(config)
  set_seed(config.seed)
  work = tempfile.mkdtemp(prefix='beam-rerank-train-')
  common_args = dict(
      output_dir=os.path.join(work, 'checkpoints'),
      num_train_epochs=config.epochs,
      max_steps=config.max_steps,
      per_device_train_batch_size=config.batch_size,
      per_device_eval_batch_size=config.batch_size,
      learning_rate=config.learning_rate,
      warmup_ratio=config.warmup_ratio,
      seed=config.seed,
      data_seed=config.seed,
      save_strategy='no',
      eval_strategy='epoch' if 'dev' in data else 'no',
      logging_steps=max(1, min(50, len(data['train']) // (4 * config.batch_size) or 1)),
      report_to='none',
      disable_tqdm=not config.show_progress,
      use_cpu=not torch.cuda.is_available(),
  )
  try:
    return _train(config, fmt, data, work, common_args)
  finally:
    shutil.rmtree(work, ignore_errors=True)


def _train(config: TrainConfig, fmt: str, data, work: str, common_args: dict) -> dict:
  import torch
  started = time.perf_counter()
  if config.kind == 'cross-encoder':
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    model = CrossEncoder(
        config.base_model, num_labels=1, max_length=config.max_length,
        trust_remote_code=config.trust_remote_code)
    pos_weight = None if config.pos_weight is None else torch.tensor(config.pos_weight)
    loss = BinaryCrossEntropyLoss(model, pos_weight=pos_weight)
    trainer = CrossEncoderTrainer(
        model=model, args=CrossEncoderTrainingArguments(**common_args),
        train_dataset=data['train'], eval_dataset=data.get('dev'), loss=loss)
  else:
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    model = SentenceTransformer(config.base_model, trust_remote_code=config.trust_remote_code)
    if config.max_length:
      model.max_seq_length = config.max_length
    loss = MultipleNegativesRankingLoss(model)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=SentenceTransformerTrainingArguments(
            batch_sampler=BatchSamplers.NO_DUPLICATES, **common_args),
        train_dataset=data['train'], eval_dataset=data.get('dev'), loss=loss)
  output = trainer.train()
  metrics = trainer.evaluate() if 'dev' in data else {}
  wall = time.perf_counter() - started
  staged = os.path.join(work, 'model')
  model.save(staged)
  report = {
      'kind': config.kind,
      'base_model': config.base_model,
      'pairs': config.pairs_dir,
      'format': fmt,
      'train_rows': data['train'].num_rows,
      'dev_rows': data['dev'].num_rows if 'dev' in data else 0,
      'settings': {k: v for k, v in dataclasses.asdict(config).items()
                   if k not in ('pairs_dir', 'output_dir', 'show_progress')},
      'train_loss': float(output.training_loss),
      'steps': int(output.global_step),
      'dev_metrics': {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
      'train_seconds': wall,
  }
  with open(os.path.join(staged, 'training_report.json'), 'w') as handle:
    json.dump(report, handle, indent=2, sort_keys=True)
  if os.path.exists(config.output_dir):
    shutil.rmtree(config.output_dir)
  os.makedirs(os.path.dirname(os.path.abspath(config.output_dir)), exist_ok=True)
  shutil.move(staged, config.output_dir)
  return report
