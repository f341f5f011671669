"""Inference backends: one ``--backend`` name picks the runtime and precision.

Both models (bi-encoder and cross-encoder) load through ``load_model`` here,
on the launcher (inspection, fidelity check) and on the workers (the
``ModelHandler``\\ s), so what is checked is what runs. Non-PyTorch runtimes go
through sentence-transformers' own ``backend=`` support; their exported model
is made once from the (safetensors) PyTorch weights and cached in its own
folder, never inside the model's folder (which may be read-only, e.g. in
site-packages). ONNX variants (graph-optimized, int8 dynamically quantized)
are made from the ONNX export with sentence-transformers' own
``export_optimized_onnx_model`` / ``export_dynamic_quantized_onnx_model``.

Any backend other than ``torch`` (float32) must pass a fidelity check against
float32 PyTorch on a sample of the job's own input before a run starts
(``check_fidelity``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import numpy as np

from transforms.core.errors import UserInputError

Device = Literal['auto', 'cpu', 'cuda']
logger = logging.getLogger(__name__)


def resolve_device(device: Device) -> str:
  """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
  if device == 'auto':
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'
  return device


@dataclasses.dataclass(frozen=True)
class Backend:
  """How a model runs: ``runtime`` (torch | openvino | onnx) and precision."""
  name: str
  runtime: str
  description: str
  autocast: Optional[str] = None        # torch: autocast dtype name
  half: bool = False                    # torch: float16 weights (CUDA only)
  ov_precision: Optional[str] = None    # openvino: INFERENCE_PRECISION_HINT
  onnx_variant: Optional[str] = None    # onnx: 'O3' (graph-optimized) or 'int8'
  modules: tuple[str, ...] = ()         # Python modules the runtime needs
  extra: Optional[str] = None           # the setup.py extra that installs them

  @property
  def is_reference(self) -> bool:
    return self.name == 'torch'


BACKENDS: dict[str, Backend] = {b.name: b for b in [
    Backend('torch', 'torch', 'PyTorch float32: the reference (default)'),
    Backend('torch-bf16', 'torch',
            'PyTorch with bfloat16 autocast (CPUs with AVX512-BF16/AMX, or CUDA)',
            autocast='bfloat16'),
    Backend('torch-fp16', 'torch', 'PyTorch float16 weights: CUDA GPUs only',
            half=True),
    Backend('openvino', 'openvino',
            "OpenVINO with the CPU's default precision (bfloat16 where the CPU "
            'has it); needs the openvino extra', modules=('openvino', 'optimum.intel'),
            extra='openvino'),
    Backend('openvino-fp32', 'openvino', 'OpenVINO float32; needs the openvino extra',
            ov_precision='f32', modules=('openvino', 'optimum.intel'), extra='openvino'),
    Backend('onnx', 'onnx', 'ONNX Runtime float32; needs the onnx extra',
            modules=('onnxruntime', 'optimum.onnxruntime'), extra='onnx'),
    Backend('onnx-o3', 'onnx',
            'ONNX Runtime float32 with graph optimizations (level O3: fused attention and '
            'LayerNorm, approximate GELU); needs the onnx extra', onnx_variant='O3',
            modules=('onnxruntime', 'optimum.onnxruntime'), extra='onnx'),
    Backend('onnx-int8', 'onnx',
            'ONNX Runtime with int8 dynamic quantization for this CPU (avx512_vnni, avx2 '
            'or arm64); fastest, least faithful: the fidelity check decides; needs the onnx '
            'extra', onnx_variant='int8', modules=('onnxruntime', 'optimum.onnxruntime'),
            extra='onnx'),
]}

DEFAULT_BACKEND = 'torch'
DEFAULT_MIN_FIDELITY = 0.99
DEFAULT_FIDELITY_SAMPLE = 32
# Batches between the model handlers' garbage collections.
COLLECT_EVERY_BATCHES = 8
# Written last into an export folder: what it holds and the file to load.
EXPORT_MARKER = 'beam-rerank-export.json'


def backend_help() -> str:
  """The ``--backend`` help text: every name and what it means."""
  names = '; '.join(f'{b.name}: {b.description}' for b in BACKENDS.values())
  return (
      f'Inference runtime and precision (default: {DEFAULT_BACKEND}). {names}. '
      'The openvino and onnx extras each pin transformers lower than the default '
      'install; give each its own environment. Anything but torch is '
      'checked against float32 on a sample first (--min-fidelity).')


def get_backend(name: str, device: str = 'cpu') -> Backend:
  """The named backend, checked to be usable here; else a ``UserInputError``."""
  if name not in BACKENDS:
    raise UserInputError(
        f'--backend {name!r} is not one of: {", ".join(BACKENDS)}')
  backend = BACKENDS[name]
  missing = [m for m in backend.modules if not _module_available(m)]
  if missing:
    raise UserInputError(
        f'--backend {name} needs {", ".join(missing)}, which is not installed: '
        f"pip install 'beam-rerank[{backend.extra}]' (or pip install -e '.[{backend.extra}]')")
  if backend.half and device != 'cuda':
    raise UserInputError(
        f'--backend {name} runs on CUDA GPUs only; pass --device cuda, or use '
        'torch-bf16 on a CPU')
  if backend.runtime in ('openvino', 'onnx') and device == 'cuda':
    raise UserInputError(f'--backend {name} runs on CPUs; use torch-fp16 on a GPU')
  if backend.onnx_variant == 'int8':
    quantization_target()  # a CPU the quantizer has no kernel set for is a user error
  return backend


def quantization_target() -> str:
  """The ONNX Runtime dynamic-quantization config for this CPU."""
  machine = platform.machine().lower()
  if machine in ('aarch64', 'arm64'):
    return 'arm64'
  flags = set()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as handle:
      for line in handle:
        if line.startswith('flags'):
          flags.update(line.split(':', 1)[1].split())
          break
  except OSError:
    pass
  if 'avx512_vnni' in flags:
    return 'avx512_vnni'
  if 'avx2' in flags:
    return 'avx2'
  raise UserInputError(
      'onnx-int8 needs a CPU with AVX2, AVX512-VNNI or ARM64 (none found in /proc/cpuinfo); '
      'use onnx or onnx-o3')


def _module_available(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def default_export_root() -> str:
  return os.environ.get('BEAM_RERANK_EXPORTS') or os.path.join(
      os.path.expanduser('~'), '.cache', 'beam-rerank', 'exports')


def export_dir(model_dir: str, fingerprint: str, backend: Backend,
               root: Optional[str] = None) -> str:
  """Where a model's export for ``backend`` is cached: keyed by the model's
  fingerprint, so a changed model is exported anew."""
  variant = _variant_name(backend)
  runtime = backend.runtime + (f'-{variant}' if variant else '')
  key = hashlib.sha256(f'{fingerprint}|{runtime}'.encode()).hexdigest()[:16]
  name = os.path.basename(os.path.normpath(model_dir)) or 'model'
  return os.path.join(root or default_export_root(), f'{name}-{runtime}-{key}')


def _variant_name(backend: Backend) -> str:
  """'' for a plain export; 'O3', or 'int8-avx2' (an int8 model is made for
  one kind of CPU, so a shared cache keeps one per kind)."""
  if backend.onnx_variant == 'int8':
    return f'int8-{quantization_target()}'
  return backend.onnx_variant or ''


def _runtime_kwargs(backend: Backend, export: str) -> dict:
  if backend.runtime == 'openvino' and backend.ov_precision:
    return {'model_kwargs': {'ov_config': {'INFERENCE_PRECISION_HINT': backend.ov_precision}}}
  if backend.runtime == 'onnx':
    return {'model_kwargs': {'file_name': _export_marker(export)['file_name']}}
  return {}


def _export_marker(export: str) -> dict:
  import json
  with open(os.path.join(export, EXPORT_MARKER), encoding='utf-8') as handle:
    return json.load(handle)


def _write_variant(model: Any, backend: Backend, folder: str) -> str:
  """Writes the ONNX variant of ``model`` (loaded on onnx) into ``folder``;
  returns the file to load, relative to ``folder``."""
  if backend.onnx_variant == 'O3':
    from sentence_transformers import export_optimized_onnx_model
    export_optimized_onnx_model(model, 'O3', folder)
    return os.path.join('onnx', 'model_O3.onnx')
  if backend.onnx_variant == 'int8':
    from sentence_transformers import export_dynamic_quantized_onnx_model
    export_dynamic_quantized_onnx_model(
        model, quantization_target(), folder, file_suffix='int8')
    return os.path.join('onnx', 'model_int8.onnx')
  return os.path.join('onnx', 'model.onnx')


def ensure_export(model_dir: str, fingerprint: str, kind: str, backend: Backend,
                  root: Optional[str] = None) -> str:
  """The folder to load ``backend`` from: the model folder itself for torch,
  else its cached export (made now, atomically, if missing)."""
  if backend.runtime == 'torch':
    return model_dir
  target = export_dir(model_dir, fingerprint, backend, root)
  marker = os.path.join(target, EXPORT_MARKER)
  if os.path.exists(marker):
    return target
  os.makedirs(os.path.dirname(target), exist_ok=True)
  logger.info('[backend] exporting %s to %s (once) -> %s', model_dir, backend.runtime, target)
  model = _load(model_dir, kind, backend.runtime, 'cpu', False, {})
  staging = tempfile.mkdtemp(prefix='.export-', dir=os.path.dirname(target))
  try:
    model.save_pretrained(staging)
    record = {'source': model_dir, 'source_fingerprint': fingerprint,
              'runtime': backend.runtime, 'kind': kind}
    if backend.runtime == 'onnx':
      record['variant'] = _variant_name(backend)
      record['file_name'] = _write_variant(model, backend, staging)
      if not os.path.exists(os.path.join(staging, record['file_name'])):
        raise RuntimeError(f'the {backend.name} export wrote no {record["file_name"]}')
    import json
    with open(os.path.join(staging, EXPORT_MARKER), 'w', encoding='utf-8') as handle:
      json.dump(record, handle)
    try:
      os.rename(staging, target)
    except OSError:
      if not os.path.exists(marker):  # not another process's finished export
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target


def _load(path: str, kind: str, runtime: str, device: str,
          trust_remote_code: bool, extra_kwargs: dict) -> Any:
  from sentence_transformers import CrossEncoder, SentenceTransformer
  cls = SentenceTransformer if kind == 'bi-encoder' else CrossEncoder
  kwargs = dict(extra_kwargs)
  if runtime != 'torch':
    kwargs['backend'] = runtime
  return cls(str(path), device=device, trust_remote_code=trust_remote_code, **kwargs)


def load_model(model_dir: str, kind: str, backend: Backend, device: str,
               trust_remote_code: bool = False, fingerprint: Optional[str] = None,
               export_root: Optional[str] = None, **kwargs: Any) -> Any:
  """A SentenceTransformer (``kind='bi-encoder'``) or CrossEncoder running on
  ``backend``. ``kwargs`` go to the model's constructor (e.g. ``max_length``)."""
  path = model_dir
  if backend.runtime != 'torch':
    if fingerprint is None:
      from transforms.models.model_info import fingerprint_model_dir
      fingerprint = fingerprint_model_dir(model_dir)
    path = ensure_export(model_dir, fingerprint, kind, backend, export_root)
    kwargs.update(_runtime_kwargs(backend, path))
  model = _load(path, kind, backend.runtime, device, trust_remote_code, kwargs)
  if backend.half:
    model.half()
  if hasattr(model, 'eval'):
    model.eval()
  return model


@contextlib.contextmanager
def inference_context(backend: Backend, device: str) -> Iterator[None]:
  """Autocast around inference for the torch autocast backends; else nothing."""
  if backend.autocast:
    import torch
    with torch.inference_mode(), torch.autocast(
        device_type='cuda' if device == 'cuda' else 'cpu',
        dtype=getattr(torch, backend.autocast)):
      yield
  else:
    yield


def release_free_heap() -> bool:
  """Returns the C heap's free pages to the system (glibc ``malloc_trim``;
  ~6 ms). False where there is no glibc (macOS, musl): nothing to do."""
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
  if not sys.platform.startswith('linux'):
    return None
  import ctypes
  try:
    return ctypes.CDLL('libc.so.6').malloc_trim
  except (OSError, AttributeError):
    return None


@dataclasses.dataclass(frozen=True)
class Fidelity:
  """How close a backend's outputs are to float32 PyTorch on a sample."""
  backend: str
  measure: str
  mean: float
  minimum: float
  sample_size: int

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def bi_encoder_fidelity(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
  """Mean and minimum row cosine between two embedding matrices."""
  reference = reference.astype(np.float64)
  candidate = candidate.astype(np.float64)
  norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
  cosines = np.einsum('ij,ij->i', reference, candidate) / np.maximum(norms, 1e-12)
  return float(cosines.mean()), float(cosines.min())


def cross_encoder_fidelity(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
  """Scores are one number per pair: the Pearson correlation of the two score
  vectors (mean) and 1 - the largest absolute difference relative to the
  reference's range (minimum), both 1.0 for identical scores."""
  reference = reference.astype(np.float64).ravel()
  candidate = candidate.astype(np.float64).ravel()
  if len(reference) < 2 or np.ptp(reference) == 0:
    same = float(np.allclose(reference, candidate, atol=1e-3))
    return same, same
  correlation = float(np.corrcoef(reference, candidate)[0, 1])
  worst = 1.0 - float(np.abs(reference - candidate).max() / np.ptp(reference))
  return correlation, worst


def check_fidelity(
    backend: Backend, kind: str, sample: Sequence[Any],
    run_reference: Callable[[Sequence[Any]], np.ndarray],
    run_candidate: Callable[[Sequence[Any]], np.ndarray],
    min_fidelity: float) -> Optional[Fidelity]:
  """Compares ``backend`` with float32 on ``sample`` (texts or text pairs);
  prints the result and raises ``UserInputError`` below ``min_fidelity``.
  None for the reference backend or an empty sample."""
  if backend.is_reference or not sample:
    return None
  reference = np.asarray(run_reference(sample))
  candidate = np.asarray(run_candidate(sample))
  if kind == 'bi-encoder':
    mean, minimum = bi_encoder_fidelity(reference, candidate)
    measure = 'cosine to float32 embeddings'
  else:
    mean, minimum = cross_encoder_fidelity(reference, candidate)
    measure = 'score correlation with float32 (min: 1 - max |diff| / range)'
  fidelity = Fidelity(backend.name, measure, mean, minimum, len(sample))
  logger.info(
      '[backend] %s on %s: %s: mean %.6f, min %.6f over %d sample(s)',
      kind, backend.name, measure, mean, minimum, len(sample))
  if mean < min_fidelity:
    raise UserInputError(
        f'--backend {backend.name} is too far from float32 for this {kind}: mean '
        f'{measure} {mean:.4f} < --min-fidelity {min_fidelity} (on {len(sample)} '
        'samples of the input); use another backend or lower --min-fidelity')
  return fidelity
