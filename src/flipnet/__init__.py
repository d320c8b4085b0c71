"""flipnet: blind face restoration with diffusion priors.

Implements FLIPNET (ICCV 2025, arXiv 2508.08556) and unsupervised fine-tuning with a diffusion
prior (WACV 2025, arXiv 2410.04618), plus the toolkit around them. ``Restorer`` and ``Degrader``
are imported on first use so that ``import flipnet`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["Degrader", "Restorer", "Result"]


def __getattr__(name):
    if name in __all__:
        from flipnet import api

        return getattr(api, name)
    raise AttributeError(f"module 'flipnet' has no attribute {name!r}")
