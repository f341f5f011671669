"""What a re-run reuses from a previous output: embeddings and cross-encoder scores."""
