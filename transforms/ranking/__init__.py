"""Scoring, fusion (and its guard), the ranked contract and evaluation."""
