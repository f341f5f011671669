"""How and where models run: one frozen object shared by both jobs and both handlers.

Built once from the command line (each field carries its option) or in code,
then passed down whole: job config -> transform -> ``ModelHandler`` (as Beam's
``EmbeddingsManager`` carries its handler settings).
Every default lives here, once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from transforms.core.settings import positive_int, setting
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


def trust_remote_code_setting() -> Any:
  """``--trust-remote-code``: every job that loads a model declares it with this."""
  return setting(False, 'Allow models that ship their own Python code (off by default).')


def allow_pickle_weights_setting() -> Any:
  """``--allow-pickle-weights``: every job that loads a model declares it with this."""
  return setting(False, 'Allow models whose weights are only pickle files (.bin); off by '
                 'default: unpickling can run code.')


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  """Settings of model inference that do not change what a model computes.

  Attributes:
    device: where the model runs on each worker; ``auto`` = CUDA when visible.
    backend: the runtime and precision (``transforms.models.backends.BACKENDS``).
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
  device: Device = setting(
      'auto', 'Where the model runs on each worker; auto = cuda when visible '
      '(default: %(default)s).', choices=('auto', 'cpu', 'cuda'))
  backend: str = setting(DEFAULT_BACKEND, backend_help(), choices=tuple(BACKENDS))
  export_root: Optional[str] = setting(
      None, 'Where exports of models for non-PyTorch backends are cached (default: '
      '~/.cache/beam-rerank/exports or $BEAM_RERANK_EXPORTS).', flag='--export-cache',
      metavar='DIR')
  trust_remote_code: bool = trust_remote_code_setting()
  allow_pickle_weights: bool = allow_pickle_weights_setting()
  share_model_across_processes: bool = setting(
      False, 'One model copy per machine, shared by its worker processes (for GPUs).')
  model_copies: Optional[int] = setting(
      None, 'With --share-model-across-processes: copies per machine (default: 1).',
      type=positive_int)
  max_tokens_per_batch: int = setting(
      DEFAULT_MAX_TOKENS_PER_BATCH, 'Budget of padded tokens (batch size x longest text) '
      'per batch; raise it on GPUs, e.g. 65536 (default: %(default)s).', type=positive_int)
  max_batch_size: int = setting(
      DEFAULT_MAX_BATCH_SIZE, 'Most texts (or pairs) per batch (default: %(default)s).',
      type=positive_int)
  sort_window: int = setting(
      DEFAULT_SORT_WINDOW, 'Texts sorted together by token length before batching; bounds '
      'memory per worker (default: %(default)s).', type=positive_int)
  min_fidelity: float = setting(
      DEFAULT_MIN_FIDELITY, 'Refuse a non-float32 backend whose mean cosine to float32 '
      'embeddings (cross-encoder: score correlation) on a sample of the input is below '
      'this (default: %(default)s).', type=float)
  fidelity_sample: int = setting(
      DEFAULT_FIDELITY_SAMPLE, 'Input rows the fidelity check uses (default: %(default)s; '
      '0 skips it).', type=int)

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
