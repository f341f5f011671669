"""The jobs' named steps below their ``execute`` (checks, splits, reports)."""
