"""Do no harm and the FFHQ-aligned protocol: a sharp face keeps its detail, far pixels stay."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from flipnet.errors import ConfigError, FlipnetError
from flipnet.faces.keep_detail import KeepDetailConfig, restoration_weight
from flipnet.faces.template import FFHQ_512
from flipnet.metrics.psnr_ssim import psnr
from flipnet.pipelines.restore import ffhq_aligned_face, restore_photo


@dataclass
class _Brighten:
    """A stand-in restorer that changes every pixel by ``delta`` levels (a 'restoration')."""

    delta: int
    name: str = "brighten"
    size: int = 128
    template: str = "flipnet"

    def restore(self, crops: np.ndarray) -> np.ndarray:
        return np.clip(crops.astype(np.int16) + self.delta, 0, 255).astype(np.uint8)


@dataclass
class _Jitter:
    """A near-identity restorer: +-1 level of noise, as a good restorer does on a sharp face."""

    name: str = "jitter"
    size: int = 128
    template: str = "flipnet"

    def restore(self, crops: np.ndarray) -> np.ndarray:
        noise = np.random.default_rng(0).integers(-1, 2, crops.shape)
        return np.clip(crops.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ffhq_crop(astronaut):
    """The astronaut's face warped into FFHQ's 512 framing (landmarks from dlib)."""
    from flipnet.faces.align import similarity_transform, warp_to_crop
    from flipnet.faces.detect import detect_all_faces

    face = detect_all_faces(astronaut)[0]
    big = cv2.resize(astronaut, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    affine = similarity_transform(np.asarray(face.landmarks5) * 3, FFHQ_512)
    return warp_to_crop(big, affine, 512)


def test_weight_is_zero_without_change_and_one_for_a_clear_change(astronaut):
    crop = cv2.resize(astronaut[:256, 128:384], (128, 128))
    assert restoration_weight(crop, crop).max() == 0
    assert restoration_weight(crop, _Brighten(12).restore(crop)).min() == pytest.approx(1.0)
    half = crop.copy()
    half[:, 64:] = _Brighten(12).restore(crop[:, 64:])
    w = restoration_weight(crop, half)
    assert w[:, :50].max() < 0.05 and w[:, 78:].min() > 0.95
    with pytest.raises(ConfigError, match="low < high"):
        KeepDetailConfig(low=0.1, high=0.05)


def test_ffhq_aligned_round_trip_keeps_far_pixels_and_size(ffhq_crop):
    out = restore_photo(ffhq_crop, _Brighten(30), aligned=True, framing="ffhq").image
    assert out.shape == ffhq_crop.shape
    diff = np.abs(out.astype(int) - ffhq_crop.astype(int)).max(axis=2)
    assert (diff[:12] == 0).all() and (diff[-12:] == 0).all()  # hair / shoulders: untouched
    assert diff[220:330, 200:310].mean() > 25  # the face was restored (here: brightened)
    face = ffhq_aligned_face(ffhq_crop, _Brighten(0))
    assert face.crop.shape == (128, 128, 3)
    # the 5 FFHQ landmarks land on flipnet's template
    from flipnet.faces.template import get_template

    mapped = FFHQ_512 @ face.affine[:, :2].T + face.affine[:, 2]
    assert np.abs(mapped - get_template("flipnet", 128)).max() < 3.0


def test_sharp_face_is_not_made_worse(ffhq_crop):
    kept = restore_photo(ffhq_crop, _Jitter(), aligned=True, framing="ffhq").image
    pasted = restore_photo(ffhq_crop, _Jitter(), aligned=True, framing="ffhq",
                           keep_detail=None).image
    assert psnr(kept, ffhq_crop) >= 38.0
    assert psnr(pasted, ffhq_crop) < psnr(kept, ffhq_crop) - 3  # 128 px paste loses detail
    with pytest.raises(FlipnetError, match="framing"):
        restore_photo(ffhq_crop, _Jitter(), aligned=True, framing="celeba")


def test_heavily_blurred_face_is_found_by_the_fallbacks(ffhq_crop):
    from flipnet.faces.detect import detect_all_faces
    from flipnet.pipelines.restore import detect_restored

    blurred = cv2.GaussianBlur(ffhq_crop, (0, 0), 14)
    lq = np.clip(blurred + np.random.default_rng(0).normal(0, 10, blurred.shape), 0, 255)
    lq = lq.astype(np.uint8)
    assert detect_all_faces(lq, fallback=False) == []  # HOG at full size and 2x: nothing
    for faces in (detect_all_faces(lq), detect_restored(lq)):
        assert len(faces) == 1
        assert np.abs(faces[0].landmarks5[:2] - FFHQ_512[:2]).max() < 15  # the eyes
