"""Faces: detection and 5-point landmarks, templates, alignment, paste-back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from flipnet.errors import ConfigError
from flipnet.faces.align import (
    align_face,
    compose_affine,
    invert_affine,
    similarity_transform,
    warp_to_crop,
)
from flipnet.faces.detect import Face, detect_faces, landmarks5_from_68, main_face
from flipnet.faces.paste import paste_face, paste_faces, upscale_image
from flipnet.faces.template import FFHQ_512, get_template, load_template_record


@pytest.fixture(scope="module")
def face(astronaut) -> Face:
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def aligned(astronaut, face):
    return align_face(astronaut, face.landmarks5, size=128)


def _crop_bbox(affine, crop_size, shape, margin=2):
    """Bounding box (x0, y0, x1, y1) in the image of the crop square mapped back, plus margin."""
    inv = invert_affine(affine)
    corners = np.array([[0, 0], [crop_size, 0], [0, crop_size], [crop_size, crop_size]], float)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.floor(pts.min(0)).astype(int) - margin
    x1, y1 = np.ceil(pts.max(0)).astype(int) + margin
    return max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])


def _outside(mask_shape, box):
    out = np.ones(mask_shape, bool)
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = False
    return out


# ---------------------------------------------------------------- detection


def test_astronaut_has_one_face_with_plausible_landmarks(astronaut, face):
    le, re, nose, ml, mr = face.landmarks5
    assert face.landmarks5.shape == (5, 2) and face.landmarks5.dtype == np.float32
    assert face.landmarks68.shape == (68, 2)
    assert le[0] < re[0] and ml[0] < mr[0]  # image-left before image-right
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])  # eyes above nose above mouth
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert ((face.landmarks5 >= (x0 - 5, y0 - 5)) & (face.landmarks5 <= (x1 + 5, y1 + 5))).all()
    assert 20 < np.linalg.norm(re - le) < 100  # the astronaut's face is about 90 px wide


def test_cnn_detector_agrees_with_hog(astronaut, face):
    part = np.ascontiguousarray(astronaut[:256, 96:352])  # a quarter of the pixels: faster
    faces = detect_faces(part, detector="cnn")
    assert len(faces) == 1 and faces[0].score > 0
    assert np.abs(faces[0].landmarks5 + (96, 0) - face.landmarks5).max() < 4.0


def test_landmarks5_convention():
    pts = np.arange(136, dtype=np.float32).reshape(68, 2)
    five = landmarks5_from_68(pts)
    np.testing.assert_allclose(five[0], pts[36:42].mean(0))
    np.testing.assert_allclose(five[1], pts[42:48].mean(0))
    np.testing.assert_array_equal(five[2:], pts[[30, 48, 54]])


def test_padding_maps_coordinates_back(astronaut, face):
    # a tight crop around the face: detect with a reflect border, coordinates come back unpadded
    x0, y0 = 160, 60
    tight = np.ascontiguousarray(astronaut[y0:y0 + 135, x0:x0 + 125])
    faces = detect_faces(tight, pad=0.3)
    assert faces, "no face in the padded tight crop"
    shift = np.array([x0, y0], np.float32)
    assert np.abs(faces[0].landmarks5 + shift - face.landmarks5).max() < 4.0


def test_large_image_detects_on_downscaled_copy(astronaut, face):
    big = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    faces = detect_faces(big, max_side=512)
    assert len(faces) == 1
    expected = (face.landmarks5 + 0.5) * 3 - 0.5
    assert np.abs(faces[0].landmarks5 - expected).max() < 6.0  # 68-pt model ran at full size


def test_no_face_in_flat_gradient():
    grad = np.repeat(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], 200, 0)
    assert detect_faces(np.repeat(grad, 3, axis=2), pad=0.25) == []


def test_unknown_detector_is_a_config_error(astronaut):
    with pytest.raises(ConfigError, match="mtcnn"):
        detect_faces(astronaut, detector="mtcnn")


def test_main_face_prefers_large_and_central():
    lm = np.zeros((5, 2), np.float32)
    corner = Face((0, 0, 120, 120), 1.0, lm, np.zeros((68, 2), np.float32))
    centre = Face((200, 200, 300, 300), 1.0, lm, np.zeros((68, 2), np.float32))
    assert main_face([corner, centre], (500, 500)) is centre
    assert main_face([], (500, 500)) is None


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize("name", ["flipnet", "ffhq"])
@pytest.mark.parametrize("size", [64, 128, 512, 1024])
def test_template_shapes_and_geometry(name, size):
    t = get_template(name, size)
    assert t.shape == (5, 2) and t.dtype == np.float32
    assert ((t > 0) & (t < size)).all()
    np.testing.assert_allclose(t, get_template(name, 64) * (size / 64), rtol=1e-5)
    le, re, nose, ml, mr = t
    assert le[0] < nose[0] < re[0] and max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])


def test_ffhq_template_is_facexlib():
    np.testing.assert_allclose(get_template("ffhq", 512), FFHQ_512, atol=1e-4)


def test_flipnet_template_is_symmetric_and_recorded():
    t = get_template("flipnet", 1024) / 1024
    np.testing.assert_allclose(t[[1, 0, 2, 4, 3], 0], 1 - t[:, 0], atol=1e-5)
    np.testing.assert_allclose(t[[1, 0, 2, 4, 3], 1], t[:, 1], atol=1e-5)
    rec = load_template_record()["derivation"]
    assert rec["faces_used"] >= 1000 and rec["data"] == "utkface"


@pytest.mark.parametrize("bad", [33, 63, 1025, 128.0, "128"])
def test_template_size_out_of_range(bad):
    with pytest.raises(ConfigError, match=str(bad)):
        get_template("flipnet", bad)


def test_unknown_template_name():
    with pytest.raises(ConfigError, match="arcface"):
        get_template("arcface", 128)


# ---------------------------------------------------------------- alignment


def test_similarity_transform_recovers_known_map():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -40.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    affine = similarity_transform(src, dst)
    np.testing.assert_allclose(affine, np.hstack([rot, shift[:, None]]), atol=1e-9)
    np.testing.assert_allclose(compose_affine(invert_affine(affine), affine),
                               np.eye(3)[:2], atol=1e-9)


def test_align_face_puts_landmarks_on_template(astronaut, face, aligned):
    assert aligned.crop.shape == (128, 128, 3) and aligned.crop.dtype == np.uint8
    mapped = face.landmarks5 @ aligned.affine[:, :2].T + aligned.affine[:, 2]
    assert np.abs(mapped - get_template("flipnet", 128)).max() < 8.0
    np.testing.assert_allclose(compose_affine(aligned.inverse, aligned.affine), np.eye(3)[:2],
                               atol=1e-9)


def test_align_shrinking_is_antialiased(astronaut, face):
    # a 4x larger photo aligned to the same 128 crop gives (nearly) the same crop
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    small = align_face(astronaut, face.landmarks5, size=128).crop.astype(float)
    large = align_face(big, (face.landmarks5 + 0.5) * 4 - 0.5, size=128).crop.astype(float)
    assert np.abs(small - large)[16:-16, 16:-16].mean() < 4.0


def test_warp_to_crop_identity():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_to_crop(img, np.eye(3)[:2], 64), img)


def test_align_size_error(astronaut, face):
    with pytest.raises(ConfigError, match="33"):
        align_face(astronaut, face.landmarks5, size=33)


# ---------------------------------------------------------------- paste-back


def test_align_then_paste_reproduces_the_face(astronaut, face, aligned):
    out = paste_face(astronaut, aligned.crop, aligned.affine)
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    x0, y0, x1, y1 = (int(v) for v in face.box)
    inner = np.abs(out.astype(int) - astronaut.astype(int))[y0 + 10:y1 - 10, x0 + 10:x1 - 10]
    assert inner.mean() < 3.0
    far = _outside(astronaut.shape[:2], _crop_bbox(aligned.affine, 128, astronaut.shape))
    assert far.sum() > 100_000
    np.testing.assert_array_equal(out[far], astronaut[far])


def test_paste_upscale_2(astronaut, face, aligned):
    out = paste_face(astronaut, aligned.crop, aligned.affine, upscale=2.0)
    assert out.shape == (1024, 1024, 3)
    background = upscale_image(astronaut, 2.0)
    far = _outside(out.shape[:2], tuple(2 * v for v in _crop_bbox(aligned.affine, 128,
                                                                   astronaut.shape)))
    np.testing.assert_array_equal(out[far], background[far])
    x0, y0, x1, y1 = (int(2 * v) for v in face.box)
    inner = np.abs(out.astype(int) - background.astype(int))[y0 + 20:y1 - 20, x0 + 20:x1 - 20]
    assert inner.mean() < 4.0


def _gradient_change(out, ref):
    """(H-1, W-1) largest change of the horizontal / vertical pixel differences, out vs ref."""
    d = out.astype(float).mean(2) - ref.astype(float).mean(2)
    gx = np.abs(np.diff(d, axis=1))[:-1, :]
    gy = np.abs(np.diff(d, axis=0))[:, :-1]
    return np.maximum(gx, gy)


def test_no_seam_at_the_mask_edge(astronaut, aligned):
    # the feathered band: where the blend mask is strictly between 0 and 1 (white onto black)
    white = np.full_like(aligned.crop, 255)
    mask = paste_face(np.zeros_like(astronaut), white, aligned.affine)[:, :, 0]
    band = ((mask > 0) & (mask < 255))[:-1, :-1]
    inner = (mask == 255)[:-1, :-1]
    assert band.sum() > 500 and inner.sum() > 500
    # the aligned original pasted back: no more gradient change at the edge than inside,
    # where only resampling differs
    same = paste_face(astronaut, aligned.crop, aligned.affine)
    change = _gradient_change(same, astronaut)
    assert change[band].mean() < 3.0
    assert change[band].mean() <= change[inner].mean()
    # a crop made 40 levels brighter: the feathered paste spreads the step, a hard one does not
    brighter = np.clip(aligned.crop.astype(int) + 40, 0, 255).astype(np.uint8)
    ring = (cv2.dilate(band.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
    soft = _gradient_change(paste_face(astronaut, brighter, aligned.affine), same)
    hard_same = paste_face(astronaut, aligned.crop, aligned.affine, feather=0.0)
    hard = _gradient_change(paste_face(astronaut, brighter, aligned.affine, feather=0.0),
                            hard_same)
    assert soft[ring].max() < 10.0
    assert hard[ring].max() > 30.0


def test_paste_gray_and_several_faces(astronaut, face):
    pair = np.ascontiguousarray(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1))
    gray = cv2.cvtColor(cv2.cvtColor(pair, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    faces = detect_faces(gray, min_score=0.5)
    assert len(faces) == 2
    al = [align_face(gray, f.landmarks5, size=64) for f in faces]
    tinted = [np.clip(a.crop.astype(int) + (60, 0, 0), 0, 255).astype(np.uint8) for a in al]
    out = paste_faces(gray, tinted, [a.affine for a in al], is_gray=True)
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    for f in faces:  # both faces changed (brighter red turns into brighter gray)
        x0, y0, x1, y1 = (int(v) for v in f.box)
        assert out[y0:y1, x0:x1].mean() > gray[y0:y1, x0:x1].mean() + 5


def test_paste_restored_crop_of_another_size(astronaut, aligned):
    big = cv2.resize(aligned.crop, (512, 512), interpolation=cv2.INTER_CUBIC)
    a = paste_face(astronaut, aligned.crop, aligned.affine)
    b = paste_face(astronaut, big, aligned.affine, affine_size=128)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 0.5


def test_paste_bad_feather(astronaut, aligned):
    with pytest.raises(ConfigError, match="feather"):
        paste_face(astronaut, aligned.crop, aligned.affine, feather=0.7)
