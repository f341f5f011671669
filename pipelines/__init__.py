"""Runnable beam-rerank jobs: one thin module per job."""
