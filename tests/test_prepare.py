"""prepare: raw photo folders -> aligned crops, with counts, reasons, a report, and resuming."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest

from flipnet.errors import ConfigError, OutputPathError
from flipnet.io import load_image, save_image
from flipnet.pipelines.prepare import DEFAULT_MIN_SHARPNESS, REPORT_NAME, prepare_folder, sharpness


@pytest.fixture()
def raw_folder(tmp_path, astronaut):
    """One sharp face, one blurred face, three unreadable files and one faceless image."""
    src = tmp_path / "raw"
    save_image(src / "person" / "astronaut.png", astronaut)
    save_image(src / "blurred.png", cv2.GaussianBlur(astronaut, (0, 0), 3.0))
    save_image(src / "whole.jpg", astronaut)
    data = (src / "whole.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (src / "whole.jpg").unlink()
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.png").write_text("not an image, just text\n")
    ramp = np.linspace(0, 255, 256, dtype=np.uint8)
    save_image(src / "sub" / "gradient.png", np.stack([np.tile(ramp, (200, 1))] * 3, axis=2))
    return src


def _run(src, dst, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prepare_folder(src, dst, progress=False, **kwargs)
    return report, [str(w.message) for w in caught]


def test_prepare_counts_report_and_resume(raw_folder, tmp_path):
    dst = tmp_path / "aligned"
    report, messages = _run(raw_folder, dst)
    assert (report.kept, report.blurry, report.unreadable, report.no_face) == (1, 1, 3, 1)
    assert report.failed == 0 and report.resumed == 0
    # unreadable files are skipped with a warning that names them
    for name in ("truncated.jpg", "empty.jpg", "notes.png"):
        assert any(name in m for m in messages), name

    crop = load_image(dst / "person" / "astronaut.png").rgb  # sub-folder structure kept
    assert crop.shape == (128, 128, 3)
    assert sorted(p.name for p in dst.rglob("*.png")) == ["astronaut.png"]

    saved = json.loads((dst / REPORT_NAME).read_text())
    assert (saved["kept"], saved["blurry"], saved["unreadable"], saved["no_face"]) == (1, 1, 3, 1)
    assert saved["settings"]["size"] == 128 and saved["settings"]["template"] == "flipnet"
    reasons = {d["file"]: d["reason"] for d in saved["dropped"]}
    assert reasons == {"blurred.png": "blurry", "truncated.jpg": "unreadable",
                       "empty.jpg": "unreadable", "notes.png": "unreadable",
                       "sub/gradient.png": "no_face"}
    assert saved["seconds"] > 0
    kept_sharpness = saved["sharpness"]["person/astronaut.png"]  # relative to dst
    assert kept_sharpness >= DEFAULT_MIN_SHARPNESS

    # a second run finds the finished crop and leaves it alone
    mtime = (dst / "person" / "astronaut.png").stat().st_mtime_ns
    again, _ = _run(raw_folder, dst)
    assert (again.kept, again.resumed, again.blurry, again.unreadable, again.no_face) == (
        1, 1, 1, 3, 1)
    assert (dst / "person" / "astronaut.png").stat().st_mtime_ns == mtime


def test_prepare_threshold_zero_keeps_blurry_and_size_option(raw_folder, tmp_path):
    report, _ = _run(raw_folder, tmp_path / "all", min_sharpness=0, size=64)
    assert (report.kept, report.blurry) == (2, 0)
    assert load_image(tmp_path / "all" / "blurred.png").rgb.shape == (64, 64, 3)


def test_prepare_output_inside_input_is_not_reread(raw_folder):
    first, _ = _run(raw_folder, raw_folder / "aligned")
    second, _ = _run(raw_folder, raw_folder / "aligned")
    assert first.kept == second.kept == 1 and second.resumed == 1
    assert not (raw_folder / "aligned" / "aligned").exists()


def test_prepare_rejects_bad_settings(raw_folder, tmp_path):
    with pytest.raises(ConfigError, match="arcface"):
        prepare_folder(raw_folder, tmp_path / "x", template="arcface", progress=False)
    with pytest.raises(ConfigError, match="33"):
        prepare_folder(raw_folder, tmp_path / "x", size=33, progress=False)
    with pytest.raises(ConfigError, match="mtcnn"):
        prepare_folder(raw_folder, tmp_path / "x", detector="mtcnn", progress=False)
    with pytest.raises(OutputPathError):
        prepare_folder(raw_folder, raw_folder, progress=False)


def test_sharpness_falls_with_blur(astronaut):
    crop = cv2.resize(astronaut[60:200, 150:290], (128, 128), interpolation=cv2.INTER_AREA)
    values = [sharpness(cv2.GaussianBlur(crop, (0, 0), s) if s else crop) for s in (0, 1, 2, 4)]
    assert all(a > b for a, b in zip(values, values[1:]))
    big = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_CUBIC)  # measured at 128 px
    assert abs(sharpness(big) - values[0]) < 0.5 * values[0]


def test_prepare_on_shared_data(shared_data, tmp_path):
    utk, _ = _run(shared_data / "utkface", tmp_path / "utk", pad=0.25, limit=12)
    assert utk.kept + utk.blurry >= 10 and utk.unreadable == 0
    lfw, _ = _run(shared_data / "lfw", tmp_path / "lfw", limit=6, min_sharpness=0)
    assert lfw.kept >= 5
    person_dirs = {p.parent.name for p in (tmp_path / "lfw").rglob("*.png")}
    assert person_dirs and person_dirs <= {p.name for p in (shared_data / "lfw").iterdir()}
