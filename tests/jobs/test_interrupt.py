"""Ctrl-C on any job: one line on stderr and exit code 130, however deep in
Beam the interrupt arrived (its runners wrap ``KeyboardInterrupt`` in
``RuntimeError`` and log the traceback of the interrupted step)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import apache_beam as beam
import pytest

from pipelines import common
from tests.fixtures import REPO_ROOT


def _interrupted_pipeline(argv):
  del argv

  def boom(x):
    raise KeyboardInterrupt()

  with beam.Pipeline() as p:
    _ = p | beam.Create([1, 2, 3]) | 'Interrupted' >> beam.Map(boom)


def test_an_interrupt_inside_a_beam_step_is_one_line_and_130(capsys):
  common.configure_logging()
  assert common.main_wrapper(_interrupted_pipeline, 'beam-rerank test', []) == 130
  captured = capsys.readouterr()
  assert captured.err.strip().splitlines() == [
      'beam-rerank test: interrupted; nothing was committed by the interrupted run '
      '(earlier outputs are as they were)']


def test_other_errors_still_raise():
  def broken(argv):
    raise RuntimeError('a bug')
  with pytest.raises(RuntimeError, match='a bug'):
    common.main_wrapper(broken, 'beam-rerank test', [])


@pytest.mark.parametrize('error, expected', [
    (KeyboardInterrupt(), True), (ValueError('x'), False)])
def test_is_interrupt_follows_the_cause_chain(error, expected):
  try:
    try:
      raise error
    except BaseException as inner:
      raise RuntimeError('wrapped') from inner
  except RuntimeError as outer:
    assert common.is_interrupt(outer) is expected


CHILD = r'''
import pathlib, sys, time
import apache_beam as beam
from pipelines import common

marker = pathlib.Path(sys.argv[1])

def slow(x):
  marker.write_text('running')
  time.sleep(60)
  return x

def run(argv):
  with beam.Pipeline() as p:
    _ = p | beam.Create([1]) | 'Slow' >> beam.Map(slow)

common.configure_logging()
sys.exit(common.main_wrapper(run, 'beam-rerank child', []))
'''


def test_a_real_sigint_during_a_pipeline(tmp_path):
  """SIGINT (what Ctrl-C sends) while a DirectRunner step runs."""
  marker = tmp_path / 'marker'
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  child = subprocess.Popen(
      [sys.executable, '-c', CHILD, str(marker)], cwd=tmp_path, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  while not marker.exists() and time.monotonic() < deadline and child.poll() is None:
    time.sleep(0.2)
  assert marker.exists(), child.communicate(timeout=30)
  child.send_signal(signal.SIGINT)
  _, err = child.communicate(timeout=120)
  assert child.returncode == 130, err[-3000:]
  lines = [line for line in err.splitlines()
           if 'Falling back to DirectRunner' not in line]
  assert lines[-1].startswith('beam-rerank child: interrupted')
  assert 'Traceback' not in err, err[-3000:]
