"""flipnet.models."""
