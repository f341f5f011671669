"""The namespace of every Beam counter the product reports."""
METRICS_NAMESPACE = 'beam_rerank'
