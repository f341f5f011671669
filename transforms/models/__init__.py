"""Models: backends, inference settings, batching and the Beam model handlers."""
