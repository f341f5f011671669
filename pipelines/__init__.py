"""Runnable beam-rerank jobs: the command line of each job (``pipelines/<job>.py``),
the jobs (``jobs/``) and their named steps (``steps/``). Importing it does nothing."""
