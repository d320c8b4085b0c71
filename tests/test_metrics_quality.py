"""PSNR/SSIM against scikit-image, NSS fits against scipy's generalised Gaussian, MATLAB imresize
against PIL, NIQE against BasicSR's MATLAB-matching implementation, BRISQUE against the
``brisque`` package's libsvm model, and quality rankings on real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import stats
from skimage import color, data, metrics

from flipnet.io import list_images, load_image
from flipnet.metrics.brisque import brisque, brisque_features, load_brisque_model, svr_predict
from flipnet.metrics.mscn import (
    aggd_fit,
    ggd_fit,
    lowlevel_features,
    lowlevel_patch_features,
    matlab_imresize,
    mscn,
    rgb_to_gray_matlab,
)
from flipnet.metrics.niqe import load_niqe_model, niqe
from flipnet.metrics.psnr_ssim import psnr, rgb_to_y, ssim

SK_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)


def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


def _face_crop(astronaut: np.ndarray) -> np.ndarray:
    return astronaut[:288, 96:384]  # the astronaut's head and shoulders, 288x288


# ---- PSNR / SSIM ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,seed", [((37, 53, 3), 0), ((64, 64, 3), 1), ((120, 90, 3), 2)])
def test_psnr_ssim_match_skimage_on_random_images(shape, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = _noisy(a, 20.0, seed + 10)
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=255),
                                       abs=1e-10)
    assert ssim(a, b) == pytest.approx(
        metrics.structural_similarity(a, b, channel_axis=2, **SK_SSIM), abs=1e-9)


def test_psnr_ssim_match_skimage_on_the_y_channel_with_crop(astronaut):
    b = cv2.GaussianBlur(_noisy(astronaut, 8.0, 0), (0, 0), 1.2)
    ya, yb = color.rgb2ycbcr(astronaut)[..., 0], color.rgb2ycbcr(b)[..., 0]  # BT.601, 16..235
    assert np.abs(rgb_to_y(astronaut) - ya).max() < 1e-9
    c = 4
    ref_psnr = metrics.peak_signal_noise_ratio(ya[c:-c, c:-c], yb[c:-c, c:-c], data_range=255)
    ref_ssim = metrics.structural_similarity(ya[c:-c, c:-c], yb[c:-c, c:-c], **SK_SSIM)
    assert psnr(astronaut, b, y_channel=True, crop_border=c) == pytest.approx(ref_psnr, abs=1e-9)
    assert ssim(astronaut, b, y_channel=True, crop_border=c) == pytest.approx(ref_ssim, abs=1e-9)
    ref_rgb = metrics.structural_similarity(astronaut, b, channel_axis=2, **SK_SSIM)
    assert ssim(astronaut, b) == pytest.approx(ref_rgb, abs=1e-9)


def test_psnr_ssim_batches_and_edge_cases(astronaut):
    a = astronaut[:96, :96]
    batch_a = np.stack([a, a[::-1]])
    batch_b = np.stack([_noisy(a, 5, 0), _noisy(a[::-1], 30, 1)])
    p, s = psnr(batch_a, batch_b), ssim(batch_a, batch_b)
    assert p.shape == s.shape == (2,)
    assert p[0] == pytest.approx(psnr(batch_a[0], batch_b[0])) and p[0] > p[1]
    assert s[1] == pytest.approx(ssim(batch_a[1], batch_b[1])) and s[0] > s[1]
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, astronaut[:90, :96])
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, crop_border=48)


# ---- shared natural-scene statistics ----------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.6, 1.0, 2.0, 3.5])
def test_ggd_fit_recovers_shape_and_scale_of_scipy_gennorm(alpha):
    rng = np.random.default_rng(0)
    x = stats.gennorm.rvs(alpha, scale=1.7, size=(2, 200_000), random_state=rng)
    est_alpha, est_sigma = ggd_fit(x)
    true_sigma = np.sqrt(stats.gennorm.var(alpha, scale=1.7))
    assert np.allclose(est_alpha, alpha, rtol=0.05)
    assert np.allclose(est_sigma, true_sigma, rtol=0.02)


def test_aggd_fit_recovers_shape_and_side_spreads():
    rng = np.random.default_rng(1)
    alpha, s_left, s_right = 0.8, 0.5, 1.5
    mag = np.abs(stats.gennorm.rvs(alpha, size=300_000, random_state=rng))
    left_side = rng.random(mag.shape) < s_left / (s_left + s_right)  # AGGD mass on each side
    x = np.where(left_side, -s_left * mag, s_right * mag)
    est_alpha, left, right = aggd_fit(x[None])
    assert est_alpha[0] == pytest.approx(alpha, rel=0.06)
    assert right[0] / left[0] == pytest.approx(s_right / s_left, rel=0.02)


def test_mscn_of_flat_and_textured_images():
    assert np.abs(mscn(np.full((40, 40), 120.0))).max() < 1e-9
    noise = np.random.default_rng(0).normal(128, 20, (80, 80))
    m = mscn(noise)[8:-8, 8:-8]
    assert abs(m.mean()) < 0.05 and 0.5 < m.std() < 1.5  # roughly unit-variance coefficients


def test_matlab_imresize_matches_pil_bicubic_away_from_edges():
    x = np.random.default_rng(0).random((64, 80)) * 255
    for scale in (0.5, 0.25):
        h, w = int(64 * scale), int(80 * scale)
        ref = np.asarray(Image.fromarray(x.astype(np.float32), "F").resize((w, h), Image.BICUBIC))
        ours = matlab_imresize(x, scale)
        assert ours.shape == (h, w)
        assert np.abs(ours - ref)[4:-4, 4:-4].max() < 1e-3
    assert np.allclose(matlab_imresize(np.full((30, 31), 7.0), 0.5), 7.0)  # DC preserved


def test_rgb_to_gray_matches_the_bt601_luma_rounded():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    ref = np.round(rgb.astype(np.float64) @ [0.2989, 0.5870, 0.1140])
    assert np.abs(rgb_to_gray_matlab(rgb) - ref).max() <= 1  # only .5-ties may differ


def test_lowlevel_features_shapes_determinism_and_flat_warning(astronaut):
    ims = np.stack([astronaut[:128, :128], astronaut[128:256, 128:256]])
    f = lowlevel_features(ims)
    assert f.shape == (2, 36) and np.isfinite(f).all()
    assert np.array_equal(f, lowlevel_features(ims))
    assert lowlevel_patch_features(ims).shape == (2 * 4, 36)  # 2x2 patches of 64 px each
    assert not np.allclose(f[0], f[1])
    with pytest.warns(UserWarning, match="image 0: flat"):
        flat = lowlevel_features(np.full((1, 64, 64, 3), 90, np.uint8))
    assert np.isfinite(flat).all()
    with pytest.raises(ValueError, match="image 1"):
        lowlevel_features([astronaut[:64, :64], astronaut[:64, :64, 0]])


# ---- NIQE -------------------------------------------------------------------------------------

# BasicSR 1.4.2 ``calculate_niqe(img_bgr, 0, convert_to='y')``, whose authors report agreement with
# MATLAB R2021a to 1e-4; computed once in a scratch run with BasicSR's own code and model file.
# BasicSR resizes in float32 (MATLAB and flipnet in float64), which moves astronaut by 0.035.
BASICSR_NIQE_Y = {"astronaut": 3.06495, "coffee": 4.11524, "chelsea": 2.62552, "camera": 3.15522}


@pytest.mark.parametrize("name", sorted(BASICSR_NIQE_Y))
def test_niqe_matches_basicsr_reference_values(name):
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    assert niqe(img, convert="y") == pytest.approx(BASICSR_NIQE_Y[name], abs=0.05)


def test_niqe_model_is_the_official_pristine_one():
    model = load_niqe_model()
    assert model.mu.shape == (36,) and model.cov.shape == (36, 36)
    assert np.allclose(model.cov, model.cov.T) and np.linalg.eigvalsh(model.cov).min() > 0
    assert model.mu[0] == pytest.approx(2.6013, abs=1e-4)  # MATLAB mu_prisparam(1)


def test_niqe_ranks_clean_face_above_blurred_and_noised(astronaut):
    face = _face_crop(astronaut)
    blurred = cv2.GaussianBlur(face, (0, 0), 3.0)
    noised = _noisy(face, 25.0, 0)
    scores = niqe(np.stack([face, blurred, noised]))
    assert scores.shape == (3,) and scores[0] < scores[1] and scores[0] < scores[2]
    assert scores[0] == pytest.approx(niqe(face))
    with pytest.raises(ValueError, match="two 96x96 blocks"):
        niqe(face[:100, :100])


# ---- BRISQUE ----------------------------------------------------------------------------------

def test_brisque_ranks_clean_face_above_blurred_and_noised(astronaut):
    face = _face_crop(astronaut)
    scores = brisque(np.stack([face, cv2.GaussianBlur(face, (0, 0), 3.0), _noisy(face, 25.0, 0)]))
    assert scores[0] < 40 and scores[0] + 15 < scores[1] and scores[0] + 15 < scores[2]
    assert brisque(face) == pytest.approx(scores[0])
    assert brisque_features(face).shape == (1, 36)


def _package_features(obj, rgb: np.ndarray) -> np.ndarray:
    """The brisque package's own 36 features (its ``score`` minus the SVR), as floats."""
    gray = color.rgb2gray(rgb)
    half = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    feats = np.concatenate([obj.calculate_brisque_features(gray, kernel_size=7, sigma=7 / 6),
                            obj.calculate_brisque_features(half, kernel_size=7, sigma=7 / 6)])
    return np.array([float(np.ravel(v)[0]) for v in feats])


def test_brisque_svr_equals_the_brisque_package_libsvm_prediction(astronaut):
    pkg = pytest.importorskip("brisque", reason="optional reference: pip install brisque")
    obj = pkg.BRISQUE(url=False)
    for img in (astronaut, data.coffee(), cv2.GaussianBlur(astronaut, (0, 0), 2.0)):
        feats = _package_features(obj, img)
        assert svr_predict(feats)[0] == pytest.approx(obj.calculate_image_quality_score(feats),
                                                      abs=1e-6)


def test_brisque_features_agree_with_the_package_on_the_same_input(astronaut):
    pkg = pytest.importorskip("brisque", reason="optional reference: pip install brisque")
    from flipnet.metrics.mscn import nss_block_features

    obj = pkg.BRISQUE(url=False)
    for img in (astronaut, data.chelsea()):
        ref = _package_features(obj, img)
        gray = color.rgb2gray(img) * 255
        half = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
        ours = np.concatenate([nss_block_features(mscn(g, padding="zero")[None], style="brisque")[0]
                               for g in (gray, half)])
        # remaining differences: grid vs root-finding for alpha, circular vs cropped products
        assert np.abs(ours - ref).max() < 0.02


def test_brisque_model_file_is_consistent():
    m = load_brisque_model()
    assert m.support_vectors.shape == (770, 36) and m.dual_coef.shape == (770,)
    assert np.abs(m.support_vectors).max() <= 1.0 + 1e-9  # svm-scale'd to [-1, 1]
    assert (m.feature_max > m.feature_min).all() and m.gamma == 0.05


@pytest.mark.slow
def test_niqe_and_brisque_rank_real_faces_above_degraded(shared_data):
    files = list_images(shared_data / "utkface")[:: 997][:12]
    faces = np.stack([load_image(f).rgb for f in files])
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.5) for f in faces])
    for metric in (niqe, brisque):
        clean, worse = metric(faces), metric(blurred)
        assert (worse > clean).mean() >= 0.9, metric.__name__
