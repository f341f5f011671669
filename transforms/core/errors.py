"""Errors that are the user's to fix, reported as one line, never a traceback."""
from __future__ import annotations


class UserInputError(ValueError):
  """Bad options or bad input files: the CLI prints the message and exits 2."""
