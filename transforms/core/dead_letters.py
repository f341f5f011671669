"""The dead-letter contract: every rejected row, with the stage and a reason."""
from __future__ import annotations

import json
import math
from typing import Any, Optional

import pyarrow as pa

DEAD_LETTER_TAG = 'dead_letter'

DEAD_LETTER_SCHEMA = pa.schema([
    ('stage', pa.string()),
    ('record_id', pa.string()),
    ('reason', pa.string()),
    ('payload', pa.string()),
])


def _json_default(value: Any) -> Any:
  if hasattr(value, 'tolist'):
    return value.tolist()
  if isinstance(value, bytes):
    return value.hex()
  return str(value)


def dead_letter(
    stage: str, record_id: str | None, reason: str, payload: Any) -> dict:
  """Builds one dead-letter row.

  Args:
    stage: the pipeline stage that rejected the row, e.g. ``'encode/validate'``.
    record_id: the row's id when it has one, else None.
    reason: ``'<code>: <explanation>'``; the code is what summaries count by.
    payload: the rejected row (JSON-encoded) so nothing is lost.
  """
  if not isinstance(payload, str):
    payload = json.dumps(
        payload, ensure_ascii=False, sort_keys=True, default=_json_default)
  return {
      'stage': stage,
      'record_id': None if record_id is None else str(record_id),
      'reason': reason,
      'payload': payload,
  }


# The largest float32: a score beyond it would be stored as +/-inf in the
# float32 score columns of the outputs.
FLOAT32_MAX = 3.4028234663852886e38


def bad_score_reason(score: Any) -> Optional[str]:
  """``'bad_score: ...'`` for a score that is NaN, infinite or beyond float32
  (the outputs store float32); None for a usable score or no score."""
  if score is None:
    return None
  if not math.isfinite(score):
    return f'bad_score: score is {score}'
  if abs(score) > FLOAT32_MAX:
    return f'bad_score: score {score!r} is beyond the float32 range of the outputs'
  return None


def reason_code(reason: str) -> str:
  """The short code in front of a reason: ``'null_text: ...'`` -> ``'null_text'``."""
  return reason.split(':', 1)[0]


def dead_letter_sort_key(row: dict) -> tuple:
  """A total order on dead letters, so their files are deterministic."""
  return (row['stage'], row['record_id'] or '', row['reason'], row['payload'])


def error_text(error: Any) -> str:
  """``'Type: message'`` of a failure. ``with_exception_handling`` gives
  ``(type, repr, traceback lines)`` rather than the exception itself."""
  if isinstance(error, BaseException):
    return f'{type(error).__name__}: {error}'
  exc_type, exc_repr, trace = error
  name = getattr(exc_type, '__name__', str(exc_type))
  for line in reversed(trace or []):
    head, sep, message = line.strip().partition(':')
    if head == name or head.endswith('.' + name):
      return f'{name}:{message}'.rstrip() if sep else name
  return f'{name}: {exc_repr}'
