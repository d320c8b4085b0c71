"""Whole-photo restoration pipeline with baseline methods: layout, paste-back, modes, bad files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from flipnet.errors import WeightsError
from flipnet.faces.paste import paste_faces
from flipnet.io import load_image, save_image
from flipnet.pipelines.methods import BicubicMethod, InputMethod, make_method
from flipnet.pipelines.photo import find_faces, restore_frames, restore_photo
from flipnet.pipelines.restore import restore_files


class Darken(InputMethod):
    """A method whose effect is easy to see: halves every pixel of the crop."""

    name = "darken"

    def restore(self, crops):
        return (np.asarray(crops) // 2).astype(np.uint8)


def test_restore_photo_changes_only_the_face(astronaut):
    res = restore_photo(astronaut, Darken())
    assert res.image.shape == astronaut.shape and res.image.dtype == np.uint8
    assert len(res.faces) == 1
    x0, y0, x1, y1 = res.faces[0].box
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    assert res.image[cy, cx].mean() < astronaut[cy, cx].mean() * 0.7  # face was replaced
    np.testing.assert_array_equal(res.image[-40:, -40:], astronaut[-40:, -40:])  # far away: same


def test_identity_method_round_trips_the_photo(astronaut):
    res = restore_photo(astronaut, InputMethod())
    diff = np.abs(res.image.astype(int) - astronaut)
    assert diff.mean() < 1.0 and diff.max() < 80


def test_upscale_and_gray_and_alpha(astronaut):
    res = restore_photo(astronaut, InputMethod(), upscale=2)
    assert res.image.shape == (1024, 1024, 3)
    gray = np.repeat(astronaut.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    res = restore_photo(gray, Darken(), is_gray=True)
    assert (res.image[:, :, 0] == res.image[:, :, 1]).all()
    assert (res.image[:, :, 1] == res.image[:, :, 2]).all()
    alpha = np.full(astronaut.shape[:2], 200, np.uint8)
    res = restore_photo(astronaut, InputMethod(), upscale=2, alpha=alpha)
    assert res.alpha.shape == (1024, 1024)


def test_aligned_mode_and_small_faces(astronaut):
    crop = astronaut[:200, 100:300]
    res = restore_photo(crop, BicubicMethod(), aligned=True)
    assert res.image.shape == crop.shape
    res = restore_photo(astronaut, Darken(), min_face=10_000)
    assert res.faces[0].skipped and res.faces[0].restored is None
    np.testing.assert_array_equal(res.image, astronaut)  # too-small faces are left untouched


def test_restore_files_layout_skip_and_resume(tmp_path, astronaut):
    src = tmp_path / "in"
    save_image(src / "astro.png", astronaut)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files = sorted(src.iterdir())
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="broken.jpg"):
        report = restore_files(files, out, Darken(), progress=False)
    assert report["done"] == 1 and list(report["skipped_files"]) == [str(src / "broken.jpg")]
    for sub in ("cropped_faces", "restored_faces", "cmp", "restored_imgs"):
        assert len(list((out / sub).iterdir())) == 1, sub
    assert load_image(out / "restored_imgs" / "astro.png").rgb.shape == astronaut.shape
    saved = json.loads((out / "report.json").read_text())
    assert saved["images"][str(src / "astro.png")]["faces"] == 1
    # a rerun skips the finished photo instead of recomputing it
    before = (out / "restored_imgs" / "astro.png").stat().st_mtime_ns
    with pytest.warns(UserWarning):
        again = restore_files(files, out, Darken(), progress=False)
    entry = again["images"][str(src / "astro.png")]
    assert entry["resumed"] is True and entry["faces"] == 1  # the earlier run's entry is kept
    assert (out / "restored_imgs" / "astro.png").stat().st_mtime_ns == before


def test_unknown_method_and_missing_weights(tmp_path):
    with pytest.raises(WeightsError, match="unknown method"):
        make_method("magic")
    with pytest.raises(WeightsError, match="no such weights folder"):
        make_method("restorer", str(tmp_path / "nope"))


class Brighten(InputMethod):
    """Adds 25 grey levels to the crop: a colour jump a hard paste would show as a seam."""

    name = "brighten"

    def restore(self, crops):
        return np.clip(np.asarray(crops, int) + 25, 0, 255).astype(np.uint8)


def _gradient(image):
    g = image.astype(float).mean(axis=2)
    return np.hypot(np.diff(g, axis=1)[:-1], np.diff(g, axis=0)[:, :-1])  # (H-1, W-1)


def test_no_seam_in_restored_photos(astronaut):
    # regions: the crop's edge (where a hard paste steps), the face inside, the background ring
    face = find_faces(astronaut, InputMethod())[0]
    white = np.full_like(face.crop, 255)
    hard = paste_faces(np.zeros_like(astronaut), [white], [face.affine], feather=0.0)[:, :, 0] > 127
    k = np.ones((3, 3), np.uint8)
    edge = (cv2.dilate(hard.astype(np.uint8), k) > 0) & ~(cv2.erode(hard.astype(np.uint8), k) > 0)
    soft = paste_faces(np.zeros_like(astronaut), [white], [face.affine])[:, :, 0]
    inner = soft == 255
    outer = (cv2.dilate((soft > 0).astype(np.uint8), np.ones((31, 31), np.uint8)) > 0) & (soft == 0)
    edge, inner, outer = edge[:-1, :-1], inner[:-1, :-1], outer[:-1, :-1]

    def p90(grad, region):
        return np.percentile(grad[region], 90)

    for method in (BicubicMethod(), Brighten(), Darken()):
        g = _gradient(restore_photo(astronaut, method).image)
        assert p90(g, edge) <= max(p90(g, inner), p90(g, outer)), method.name
    # the measure does see a seam: a hard paste of the darkened face fails it
    crop = Darken().restore(face.crop[None])[0]
    g = _gradient(paste_faces(astronaut, [crop], [face.affine], feather=0.0))
    assert p90(g, edge) > 2 * max(p90(g, inner), p90(g, outer))


def test_timings_and_batched_frames(astronaut):
    res = restore_photo(astronaut, InputMethod())
    assert set(res.timings) == {"detect", "align", "restore", "paste"}
    assert all(v >= 0 for v in res.timings.values()) and res.timings["detect"] > 0
    calls = []

    class Counting(InputMethod):
        def restore(self, crops):
            calls.append(len(crops))
            return super().restore(crops)

    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    both = restore_frames([astronaut, flipped], Counting())
    assert calls == [2]  # one forward pass for the faces of both frames
    assert [len(r.faces) for r in both] == [1, 1]
    single = restore_photo(flipped, Counting()).image
    np.testing.assert_array_equal(both[1].image, single)


def test_huge_photo_detects_on_a_downscaled_copy(astronaut, monkeypatch):
    from flipnet.faces import detect

    seen = []
    real = detect._run_detector
    monkeypatch.setattr(detect, "_run_detector",
                        lambda small, *a: seen.append(small.shape) or real(small, *a))
    big = cv2.resize(astronaut, (3000, 3000), interpolation=cv2.INTER_CUBIC)
    res = restore_photo(big, InputMethod(), detect_max_side=512)
    assert max(seen[0][:2]) == 512 and len(res.faces) == 1
    x0, y0, x1, y1 = res.faces[0].box
    assert 900 < (x0 + x1) / 2 < 1500 and 300 < (y0 + y1) / 2 < 900  # mapped back to full size


def test_small_photos_get_a_second_detection_pass(astronaut):
    from flipnet.faces.detect import detect_faces

    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)  # face ~44 px
    assert detect_faces(small) == []  # below HOG's 80 px window
    faces = find_faces(small, InputMethod())
    assert len(faces) == 1 and 200 < faces[0].box[0] + faces[0].box[2] < 245  # x centre ~110
