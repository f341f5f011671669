"""How and where models run: one frozen object shared by both jobs and both handlers.

Built once from the command line's shared option group (``add_arguments``)
or in code, then passed down whole: job config -> transform ->
``ModelHandler`` (as Beam's ``EmbeddingsManager`` carries its handler settings).
Every default lives here, once.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

from transforms.models.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_FIDELITY_SAMPLE,
    DEFAULT_MIN_FIDELITY,
    Device,
    backend_help,
)
from transforms.models.batching import DEFAULT_MAX_TOKENS_PER_BATCH

# Most texts (or pairs) in one batch, whatever the token budget allows.
DEFAULT_MAX_BATCH_SIZE = 256
# Texts sorted together by token length before batching (bounds memory per worker).
DEFAULT_SORT_WINDOW = 8192


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  """Settings of model inference that do not change what a model computes.

  Attributes:
    device: where the model runs on each worker; ``auto`` = CUDA when visible.
    backend: the runtime and precision (``transforms.backends.BACKENDS``).
    export_root: where non-PyTorch exports are cached (None: the default).
    trust_remote_code: allow models that ship their own Python code.
    allow_pickle_weights: allow models whose weights are only pickle files.
    share_model_across_processes: one model per machine (GPUs).
    model_copies: with sharing, copies per machine.
    max_tokens_per_batch: padded tokens (batch size x longest) per batch.
    max_batch_size: most texts or pairs per batch.
    sort_window: texts sorted together by token length.
    min_fidelity: the least agreement with float32 a non-float32 backend needs.
    fidelity_sample: input rows the fidelity check uses (0 skips it).
  """
  device: Device = 'auto'
  backend: str = DEFAULT_BACKEND
  export_root: Optional[str] = None
  trust_remote_code: bool = False
  allow_pickle_weights: bool = False
  share_model_across_processes: bool = False
  model_copies: Optional[int] = None
  max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH
  max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
  sort_window: int = DEFAULT_SORT_WINDOW
  min_fidelity: float = DEFAULT_MIN_FIDELITY
  fidelity_sample: int = DEFAULT_FIDELITY_SAMPLE

  def __post_init__(self):
    if self.backend not in BACKENDS:
      raise ValueError(f'backend {self.backend!r} is not one of {", ".join(BACKENDS)}')
    if self.device not in ('auto', 'cpu', 'cuda'):
      raise ValueError(f'device {self.device!r} is not one of auto, cpu, cuda')
    for name in ('max_tokens_per_batch', 'max_batch_size', 'sort_window'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be at least 1, got {getattr(self, name)}')

  def on_backend(self, backend: str) -> InferenceSettings:
    """The same settings on another backend (the fidelity check's reference)."""
    return dataclasses.replace(self, backend=backend)


def _whole_number(value: str, least: int) -> int:
  try:
    number = int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{value!r} is not a whole number') from None
  if number < least:
    raise argparse.ArgumentTypeError(f'{value!r} must be at least {least}')
  return number


def positive_int(value: str) -> int:
  """argparse type: an integer >= 1."""
  return _whole_number(value, 1)


def non_negative_int(value: str) -> int:
  """argparse type: an integer >= 0."""
  return _whole_number(value, 0)


def add_arguments(parser: argparse.ArgumentParser, title: str = 'inference') -> None:
  """The shared option group: one flag per ``InferenceSettings`` field."""
  defaults = InferenceSettings()
  group = parser.add_argument_group(title)
  group.add_argument(
      '--device', choices=['auto', 'cpu', 'cuda'], default=defaults.device,
      help='Where the model runs on each worker; auto = cuda when visible '
      '(default: %(default)s).')
  group.add_argument(
      '--backend', choices=list(BACKENDS), default=defaults.backend, help=backend_help())
  group.add_argument(
      '--export-cache', dest='export_root', metavar='DIR', default=defaults.export_root,
      help='Where exports of models for non-PyTorch backends are cached (default: '
      '~/.cache/beam-rerank/exports or $BEAM_RERANK_EXPORTS).')
  group.add_argument(
      '--min-fidelity', type=float, default=defaults.min_fidelity,
      help='Refuse a non-float32 backend whose mean cosine to float32 embeddings '
      '(cross-encoder: score correlation) on a sample of the input is below '
      'this (default: %(default)s).')
  group.add_argument(
      '--fidelity-sample', type=int, default=defaults.fidelity_sample,
      help='Input rows the fidelity check uses (default: %(default)s; 0 skips it).')
  group.add_argument(
      '--trust-remote-code', action='store_true',
      help='Allow models that ship their own Python code (off by default).')
  group.add_argument(
      '--allow-pickle-weights', action='store_true',
      help='Allow models whose weights are only pickle files (.bin); off by default: '
      'unpickling can run code.')
  group.add_argument(
      '--max-tokens-per-batch', type=positive_int, default=defaults.max_tokens_per_batch,
      help='Budget of padded tokens (batch size x longest text) per batch; raise it '
      'on GPUs, e.g. 65536 (default: %(default)s).')
  group.add_argument(
      '--max-batch-size', type=positive_int, default=defaults.max_batch_size,
      help='Most texts (or pairs) per batch (default: %(default)s).')
  group.add_argument(
      '--sort-window', type=positive_int, default=defaults.sort_window,
      help='Texts sorted together by token length before batching; bounds memory '
      'per worker (default: %(default)s).')
  group.add_argument(
      '--share-model-across-processes', action='store_true',
      help='One model copy per machine, shared by its worker processes (for GPUs).')
  group.add_argument(
      '--model-copies', type=positive_int, default=defaults.model_copies,
      help='With --share-model-across-processes: copies per machine (default: 1).')
