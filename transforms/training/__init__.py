"""Training data and models: hard-negative mining, pseudo-queries, the trainer."""
