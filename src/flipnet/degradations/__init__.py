"""flipnet.degradations."""
