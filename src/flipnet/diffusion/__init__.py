"""flipnet.diffusion."""
