"""Parquet in and out: checked inputs, committed outputs and manifests, the sample collection."""
