"""Whole-photo restoration pipeline with baseline methods: layout, paste-back, modes, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flipnet.io import load_image, save_image
from flipnet.pipelines.methods import BicubicMethod, InputMethod, make_method
from flipnet.pipelines.restore import restore_files, restore_photo
from flipnet.errors import WeightsError


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
    assert again["images"][str(src / "astro.png")] == {"resumed": True}
    assert (out / "restored_imgs" / "astro.png").stat().st_mtime_ns == before


def test_unknown_method_and_missing_weights(tmp_path):
    with pytest.raises(WeightsError, match="unknown method"):
        make_method("magic")
    with pytest.raises(WeightsError, match="no such weights folder"):
        make_method("restorer", str(tmp_path / "nope"))
