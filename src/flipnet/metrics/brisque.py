"""BRISQUE, the blind/referenceless spatial quality evaluator (Mittal, Moorthy & Bovik, IEEE TIP
2012). Typically 0 (pristine) .. 100 (badly distorted); lower is better.

Follows the LIVE release (``brisquescore.m`` / ``brisque_feature.m``): MATLAB ``rgb2gray``;
MSCN with a 7x7 Gaussian (sigma 7/6, zero padding); 18 statistics per scale, a GGD fit of the
MSCN (shape, variance) and AGGD fits of the four circularly shifted paired products (shape,
mean, left and right variance); second scale by MATLAB ``imresize(., 0.5)``; features scaled
to [-1, 1] with the release's ranges and scored by its epsilon-SVR (RBF kernel), evaluated
here in numpy from the support vectors (src/flipnet/data/brisque_svr.npz).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from flipnet.errors import WeightsError
from flipnet.metrics.mscn import matlab_imresize, mscn, nss_block_features, rgb_to_gray_matlab
from flipnet.metrics.psnr_ssim import as_image_list

MIN_SIZE = 16  # below this the half-scale MSCN statistics are meaningless


@dataclass(frozen=True)
class BrisqueModel:
    """Epsilon-SVR with RBF kernel: f(x) = sum_i coef_i exp(-gamma |sv_i - x|^2) - rho."""

    support_vectors: np.ndarray  # (S, 36), in the scaled [-1, 1] feature space
    dual_coef: np.ndarray  # (S,)
    rho: float
    gamma: float
    feature_min: np.ndarray  # (36,) ranges of the raw features used for scaling
    feature_max: np.ndarray  # (36,)


@functools.lru_cache(maxsize=1)
def load_brisque_model() -> BrisqueModel:
    """The LIVE BRISQUE SVR shipped in flipnet/data/brisque_svr.npz."""
    ref = resources.files("flipnet") / "data" / "brisque_svr.npz"
    try:
        with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
            return BrisqueModel(
                support_vectors=np.array(z["support_vectors"], np.float64),
                dual_coef=np.array(z["dual_coef"], np.float64), rho=float(z["rho"]),
                gamma=float(z["gamma"]), feature_min=np.array(z["feature_min"], np.float64),
                feature_max=np.array(z["feature_max"], np.float64))
    except (OSError, KeyError, ValueError) as e:
        raise WeightsError(f"{ref}: BRISQUE model missing or unreadable ({e}); rebuild it with "
                           "scripts/extract_quality_models.py") from None


def brisque_gray_features(gray: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of a float gray (H, W) image on the 0..255 scale -> (36,)."""
    gray = np.asarray(gray, dtype=np.float64)
    if min(gray.shape) < MIN_SIZE:
        raise ValueError(f"BRISQUE needs at least {MIN_SIZE}x{MIN_SIZE} pixels, got "
                         f"{gray.shape[1]}x{gray.shape[0]}")
    feats = []
    for _ in range(2):  # two scales
        feats.append(nss_block_features(mscn(gray, padding="zero")[None], style="brisque")[0])
        gray = matlab_imresize(gray, 0.5)
    return np.concatenate(feats)


def brisque_features(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """The 36 BRISQUE features (Mittal 2012, Table I, two scales) of uint8 RGB images -> (N, 36)."""
    return np.stack([brisque_gray_features(rgb_to_gray_matlab(im))
                     for im in as_image_list(images)])


def svr_predict(features: np.ndarray, model: BrisqueModel | None = None) -> np.ndarray:
    """Scale raw features (N, 36) to [-1, 1] (svm-scale), evaluate the RBF epsilon-SVR -> (N,)."""
    model = model or load_brisque_model()
    x = np.atleast_2d(np.asarray(features, dtype=np.float64))
    span = model.feature_max - model.feature_min
    x = -1.0 + 2.0 * (x - model.feature_min) / span  # (N, 36)
    sv = model.support_vectors
    sq = (x * x).sum(1)[:, None] + (sv * sv).sum(1)[None] - 2.0 * x @ sv.T  # (N, S) |x - sv|^2
    return np.exp(-model.gamma * sq) @ model.dual_coef - model.rho


def brisque(images: np.ndarray | Sequence[np.ndarray]) -> float | np.ndarray:
    """BRISQUE score of uint8 RGB image(s), lower = better; a float for one image, else (N,)."""
    single = isinstance(images, np.ndarray) and images.ndim == 3
    scores = svr_predict(brisque_features(images))
    return float(scores[0]) if single else scores
