"""flipnet: blind face restoration with diffusion priors.

Implements FLIPNET (ICCV 2025, arXiv 2508.08556) and unsupervised fine-tuning with a diffusion
prior (WACV 2025, arXiv 2410.04618), plus the toolkit around them.
"""

__version__ = "0.1.0"
