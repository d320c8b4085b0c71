"""flipnet.metrics."""
