"""flipnet.faces."""
