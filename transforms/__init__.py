"""Reusable PTransforms, DoFns and ModelHandlers for beam-rerank."""
