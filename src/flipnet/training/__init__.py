"""flipnet.training."""
