"""The learned face locator: network, renderer, a tiny training run, and its place in the chain."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from flipnet.degradations.pipeline import degrade_images
from flipnet.degradations.presets import get_preset
from flipnet.errors import ConfigError
from flipnet.faces.template import get_template
from flipnet.io import save_image, to_tensor, to_uint8
from flipnet.models.face_locator import (
    FaceLocator,
    FaceLocatorConfig,
    count_parameters,
    from_unit,
    letterbox,
    load_face_locator,
    locate_face,
    save_face_locator,
    to_unit,
)
from flipnet.training.face_locator import (
    FaceLocatorTrainConfig,
    LocatorSet,
    degrade_photo,
    make_sample,
    render_face,
    train_face_locator,
)

TINY = FaceLocatorConfig(image_size=32, widths=(8, 16, 16), neck=8)
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]],
                  np.uint8)


def _chip(size: int = 128) -> np.ndarray:
    """A gray 'face' chip with a coloured disc on each template landmark (eyes, nose, mouth)."""
    import cv2

    chip = np.full((size, size, 3), 120, np.uint8)
    cv2.ellipse(chip, (size // 2, size // 2), (size * 3 // 8, size * 7 // 16), 0, 0, 360,
                (200, 170, 150), -1)
    for (x, y), c in zip(get_template("flipnet", size), COLORS):
        cv2.circle(chip, (round(x), round(y)), size // 16, tuple(int(v) for v in c), -1)
    return chip


def test_network_shapes_decoding_round_trip_and_size(tmp_path):
    model = FaceLocator(TINY).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    heat, offsets = model(x)
    assert heat.shape == (2, 16, 16) and offsets.shape == (2, 5, 2, 16, 16)
    points, logit = model.locate(x)
    assert points.shape == (2, 5, 2) and logit.shape == (2,)
    assert torch.allclose(logit, heat.flatten(1).max(1).values)
    save_face_locator(tmp_path / "loc", model, TINY)
    loaded, cfg = load_face_locator(tmp_path / "loc")
    assert cfg == TINY
    p2, l2 = loaded.locate(x)
    assert torch.allclose(p2, points, atol=2e-3) and torch.allclose(l2, logit, atol=2e-2)
    assert count_parameters(FaceLocator(FaceLocatorConfig())) < 400_000
    with pytest.raises(ConfigError, match="multiple"):
        FaceLocator(dataclasses.replace(TINY, image_size=36))


def test_decode_reads_the_best_cell_and_the_targets_invert_it():
    from flipnet.models.face_locator import decode
    from flipnet.training.face_locator import centre_targets, locator_loss

    truth = torch.tensor([[[0.3, 0.35], [0.5, 0.36], [0.41, 0.5], [0.33, 0.6], [0.49, 0.61]]])
    heat, offsets, eye = centre_targets(truth, torch.ones(1), 8)
    points, logit = decode(heat, offsets)
    assert torch.allclose(points, truth, atol=1e-6) and logit.item() == 1.0
    assert heat.argmax() == 3 * 8 + 3 and abs(eye.item() - 1.6) < 0.05  # centre cell (3, 3)
    # the loss is lower at the targets than away from them, and a negative has no centre
    good = locator_loss(torch.where(heat >= 1, 8.0, -8.0), offsets, truth, torch.ones(1))
    bad = locator_loss(torch.full_like(heat, -8.0), offsets + 1, truth, torch.ones(1))
    assert good["loss"] < 0.01 < bad["points"] and bad["presence"] > 1
    assert centre_targets(truth, torch.zeros(1), 8)[0].max() == 0


def test_outputs_change_with_the_input():
    model = FaceLocator(TINY).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # the shipped init has offsets at zero
    a, b = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    (pa, la), (pb, lb) = model.locate(a), model.locate(b)
    assert (pa - pb).abs().max() > 1e-4 and (la - lb).abs().max() > 1e-4


def test_letterbox_maps_points_and_units_round_trip():
    rgb = np.full((60, 100, 3), 128, np.uint8)
    rgb[28:32, 67:71] = 255  # a bright square centred on pixel (68.5, 29.5)
    boxed, affine = letterbox(rgb, 50)
    assert boxed.shape == (50, 50, 3) and (boxed[:10] == 128).all()  # padded top and bottom
    x, y = affine @ [68.5, 29.5, 1]
    weight = boxed[..., 0].astype(float) - 128  # (50, 50): the square only
    yy, xx = np.mgrid[:50, :50]
    assert abs((weight * xx).sum() / weight.sum() - x) < 0.05
    assert abs((weight * yy).sum() / weight.sum() - y) < 0.05
    pts = np.array([[3.0, 4.0], [40.0, 17.5]])
    assert np.allclose(from_unit(to_unit(pts, 50), 50), pts)


@pytest.mark.parametrize("reflect", [1.0, 0.0])
def test_renderer_puts_the_landmarks_on_the_face(reflect):
    cfg = FaceLocatorTrainConfig(reflect_prob=reflect, eye_distance=(60.0, 120.0), canvas=256)
    points = get_template("flipnet", 128).astype(np.float64)
    for i in range(3):
        photo, moved = render_face(np.random.default_rng(i), _chip(), points, 256, 200, cfg)
        assert photo.shape == (256, 200, 3)
        for (x, y), c in zip(moved, COLORS):
            assert 0 <= x < 200 and 0 <= y < 256
            assert np.abs(photo[round(y), round(x)].astype(int) - c).max() < 40
    # a whole sample, undegraded: the points follow into the letterbox
    cfg = dataclasses.replace(cfg, clean_prob=1.0, aspect_prob=0.0,
                              locator=dataclasses.replace(TINY, image_size=64))
    boxed, units, kind = make_sample(np.random.default_rng(5), _chip(), points, cfg)
    assert kind == 0 and boxed.shape == (64, 64, 3)
    for (x, y), c in zip(from_unit(units, 64), COLORS):
        assert np.abs(boxed[round(y), round(x)].astype(int) - c).max() < 60


def test_degrade_photo_is_the_pipeline_with_a_faster_blur():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name in ("gfpgan", "codeformer"):
        ref = to_uint8(degrade_images(to_tensor(rgb), get_preset(name), seed=7)[0])[0]
        assert np.abs(degrade_photo(rgb, get_preset(name), 7).astype(int) - ref).max() <= 1


def test_flip_mirrors_the_points_and_swaps_sides():
    data = {"images": np.zeros((1, 8, 8, 3), np.uint8), "kind": np.zeros(1, np.int64),
            "points": np.array([[[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.6, 0.8]]],
                               np.float32), "presence": np.ones(1, np.float32)}
    _, pts, _ = LocatorSet(data)[(0, True, 0)]
    assert np.allclose(pts.numpy(), [[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.4, 0.8],
                                     [0.65, 0.8]])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 40-step run on 24 synthetic chips (about 22 in the train split) rendered at 128 px."""
    root = tmp_path_factory.mktemp("locator")
    for i in range(24):
        save_image(root / "chips" / f"face{i:03d}.png", _chip(64))
    cfg = FaceLocatorTrainConfig(
        data_dir=str(root / "chips"), chip_size=64, out_dir=str(root / "run"), locator=TINY,
        canvas=128, eye_distance=(16.0, 40.0), presets=("gfpgan",), train_faces=14,
        train_negatives=14, val_faces=4, val_negatives=8, batch_size=8, lr=5e-3,
        warmup_steps=1, steps=40, log_every=1, sample_every=40, save_every=40, threads=1,
        render_workers=1)
    return cfg, train_face_locator(cfg, command="pytest")


def test_a_tiny_run_learns_and_exports(tiny_run):
    cfg, folder = tiny_run
    log = [json.loads(line) for line in open(f"{cfg.out_dir}/log.jsonl")]
    assert len(log) == 40
    assert np.mean([x["loss"] for x in log[-10:]]) < np.mean([x["loss"] for x in log[:5]])
    model, locator_cfg = load_face_locator(folder)
    evaluation = json.loads((folder / "eval.json").read_text())
    assert locator_cfg.presence_threshold == evaluation["threshold"]
    assert evaluation["all"]["faces"] == 4 and "median_eye_error" in evaluation["gfpgan"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert "`pytest`" in card and "synthetic" in card and "non-commercial" in card
    # the data is cached: a second look-up renders nothing
    from flipnet.training.face_locator import cached_sets

    assert len(cached_sets(cfg, progress=False)["train"]["images"]) == 28
    points, prob = locate_face(model, locator_cfg, np.zeros((90, 120, 3), np.uint8))
    assert points.shape == (5, 2) and 0 <= prob <= 1


def test_the_chain_without_and_with_a_locator(tmp_path, monkeypatch):
    from flipnet.pipelines import photo

    marker = ["restored pass"]
    monkeypatch.setattr(photo, "detect_restored", lambda rgb: marker)
    blank = np.full((200, 240, 3), 90, np.uint8)
    # no locator folder: dlib finds nothing, then the restored pass, as before the locator
    assert photo.detect_photo_faces(blank, locator=tmp_path / "absent") is marker
    assert photo.detect_photo_faces(blank, locator=None) is marker
    assert photo.detect_photo_faces(blank, locator=None, restored_pass=False) == []
    # a hand-set locator whose presence is always ~0: no face from it
    model = FaceLocator(TINY)
    with torch.no_grad():
        model.head.weight[0].zero_()
        model.head.bias[0] = -10.0
    save_face_locator(tmp_path / "off", model, TINY)
    assert photo.detect_photo_faces(blank, locator=tmp_path / "off", restored_pass=False) == []
    # one that always accepts, but puts every point in one place: nothing to align
    always = dataclasses.replace(TINY, presence_threshold=0.0)
    save_face_locator(tmp_path / "dot", model, always)
    assert photo.detect_photo_faces(blank, locator=tmp_path / "dot", restored_pass=False) == []
    # one that always accepts a face (the template around the best cell): replaces the restored
    # pass
    with torch.no_grad():
        shape = get_template("flipnet", 128) / 128
        model.head.bias[1:] = torch.from_numpy((shape - shape.mean(0)) * 8).flatten()
    save_face_locator(tmp_path / "on", model, always)
    faces = photo.detect_photo_faces(blank, locator=tmp_path / "on")
    assert len(faces) == 1 and faces[0].landmarks68 is None
    f = faces[0]
    assert f.landmarks5.shape == (5, 2) and 0 < f.score < 1e-3
    assert f.box[0] < f.landmarks5[:, 0].min() and f.box[2] > f.landmarks5[:, 0].max()
    assert f.box[1] < f.landmarks5[:, 1].min() and f.box[3] > f.landmarks5[:, 1].max()


def test_the_shipped_locator_sees_no_face_in_flat_pictures():
    """Other tests push flat pictures through the chain and expect no face."""
    from flipnet.pipelines.photo import LOCATOR_WEIGHTS, detect_located, locator_folder

    if locator_folder(LOCATOR_WEIGHTS) is None:
        pytest.skip("no weights/face-locator (python -m flipnet.training.face_locator "
                    "configs/face-locator-cpu.json, then copy its export)")
    gradient = np.repeat(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], 3, 2)
    for rgb in (np.full((60, 90, 3), 200, np.uint8), np.repeat(gradient, 150, 0),
                np.zeros((512, 512, 3), np.uint8)):
        assert detect_located(rgb) == []
