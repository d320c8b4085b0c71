"""The PyTorch port of dlib's face ResNet against dlib itself, its face chips, and IdentityLoss."""

from __future__ import annotations

import os

import cv2
import dlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from flipnet.errors import WeightsError
from flipnet.faces.align import align_face
from flipnet.faces.detect import detect_faces, main_face
from flipnet.faces.dlib_models import model_path
from flipnet.faces.dlib_resnet import (
    IdentityLoss,
    dlib_chip_affine,
    expected_kinds,
    flipnet_to_dlib_chip,
    load_dlib_resnet,
    read_dlib_net,
)
from flipnet.faces.identity import IdentityEmbedder, load_dlib_model
from flipnet.io import load_image

PORT_TOL = 1e-4  # max abs difference of descriptors, port vs dlib
CHIP_MEDIAN_TOL, CHIP_MAX_TOL = 0.17, 0.3  # euclidean, fixed-template chip vs dlib's own chip


@pytest.fixture(scope="module")
def net():
    """The port, parsed once for this module."""
    torch.set_num_threads(1)
    return load_dlib_resnet()


@pytest.fixture(scope="module")
def loss(net):
    """IdentityLoss sharing the module's network."""
    return IdentityLoss(net)


def dlib_descriptors(chips: list[np.ndarray]) -> np.ndarray:
    """dlib's own (N, 128) descriptors of 150x150 uint8 chips."""
    vecs = load_dlib_model("identity").compute_face_descriptor(chips)
    return np.asarray([np.asarray(v) for v in vecs], np.float64)


def port_descriptors(net, chips: list[np.ndarray]) -> np.ndarray:
    """The port's (N, 128) descriptors of 150x150 uint8 chips."""
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return net(x).double().numpy()


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def aligned_crop(rgb: np.ndarray, *, pad: float, size: int = 128) -> np.ndarray | None:
    """flipnet-aligned crop of the main face (None if none is found)."""
    face = main_face(detect_faces(rgb, pad=pad), rgb.shape)
    return None if face is None else align_face(rgb, face.landmarks5, size=size).crop


@pytest.fixture(scope="module")
def astronaut_face(astronaut):
    """The astronaut's face, found once: flipnet's detection (HOG, 68 points), dlib's 5 points."""
    face = main_face(detect_faces(astronaut), astronaut.shape)
    x0, y0, x1, y1 = (round(v) for v in face.box)
    shape5 = load_dlib_model("landmarks5")(astronaut, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    return face, shape5


@pytest.fixture(scope="module")
def astronaut_crop(astronaut, astronaut_face) -> np.ndarray:
    """The astronaut's face aligned to the flipnet template, 128 px."""
    return align_face(astronaut, astronaut_face[0].landmarks5, size=128).crop


@pytest.fixture(scope="module")
def utk_faces(shared_data) -> list[tuple[np.ndarray, np.ndarray]]:
    """Six UTKFace photos spread over the sorted folder, with their flipnet-aligned crops."""
    names = sorted(e.name for e in os.scandir(shared_data / "utkface") if e.name.endswith(".jpg"))
    out = []
    for name in names[:: len(names) // 12]:
        rgb = load_image(shared_data / "utkface" / name).rgb
        crop = aligned_crop(rgb, pad=0.25)  # UTKFace is tight: pad for detection, as prepare does
        if crop is not None:
            out.append((rgb, crop))
        if len(out) == 6:
            return out
    pytest.fail("fewer than 6 UTKFace faces detected")


def test_reader_matches_anet_type():
    layers = read_dlib_net()
    assert [layer.kind for layer in layers] == expected_kinds()
    assert np.allclose(layers[0].arrays["mean"], [122.782, 117.001, 104.298], atol=1e-3)
    convs = [layer for layer in layers if layer.kind == "con"]
    assert len(convs) == 29 and convs[0].arrays["weight"].shape == (32, 3, 7, 7)
    assert layers[-1].arrays["weight"].shape == (256, 128)  # fc_no_bias: no bias array
    assert "bias" not in layers[-1].arrays


def test_reader_rejects_damaged_files(tmp_path):
    data = open(model_path("identity"), "rb").read()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="past the end|end of file"):
        read_dlib_net(str(cut))
    extra = tmp_path / "extra.dat"
    extra.write_bytes(data + b"\x00")
    with pytest.raises(WeightsError, match="trailing"):
        read_dlib_net(str(extra))


def test_port_matches_dlib(net, astronaut, astronaut_face):
    chip = dlib.get_face_chip(astronaut, astronaut_face[1], size=150, padding=0.25)
    rng = np.random.default_rng(0)
    coffee = skdata.coffee()  # a real, non-face photo
    chips = [chip, np.ascontiguousarray(chip[:, ::-1]), np.ascontiguousarray(chip[10:, 5:][:150]),
             coffee, rng.integers(0, 256, (150, 150, 3), dtype=np.uint8)]
    chips = [np.ascontiguousarray(cv2.resize(c, (150, 150))) for c in chips]
    ref, ours = dlib_descriptors(chips), port_descriptors(net, chips)
    assert np.abs(ours - ref).max() < PORT_TOL
    assert np.linalg.norm(ref[0] - ref[3]) > 0.3  # the chips are not trivially alike


def test_port_matches_dlib_on_utkface(net, utk_faces):
    emb = IdentityEmbedder(aligned=True)  # UTKFace photos are tight face crops
    chips = [emb.chip(rgb) for rgb, _ in utk_faces[:3]]
    assert np.abs(port_descriptors(net, chips) - dlib_descriptors(chips)).max() < PORT_TOL


def test_chip_affine_reproduces_dlib_get_face_chip(astronaut, astronaut_face):
    shape = astronaut_face[1]
    points = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
    ref = dlib.get_face_chip(astronaut, shape, size=150, padding=0.25).astype(np.float64)
    a = dlib_chip_affine(points)  # chip pixel -> photo pixel
    h, w = astronaut.shape[:2]
    u, v = np.meshgrid(np.arange(150.0), np.arange(150.0))
    xy = np.stack([u, v, np.ones_like(u)], -1) @ a.T  # (150, 150, 2)
    grid = torch.from_numpy(np.stack([(2 * xy[..., 0] + 1) / w - 1,
                                      (2 * xy[..., 1] + 1) / h - 1], -1))[None]
    img = torch.from_numpy(astronaut).permute(2, 0, 1)[None].double()
    ours = F.grid_sample(img, grid, align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(np.floor(ours) - ref).max() <= 1.0  # dlib truncates to uint8
    shifted = dlib_chip_affine(points + np.array([2.0, 0.0]))
    assert np.abs(shifted[:, 2] - a[:, 2] - [2.0, 0.0]).max() < 1e-9


def _helper_vs_dlib(crops: list[np.ndarray]) -> np.ndarray:
    """Euclidean distances: dlib on the helper's chip vs dlib via its own landmarks + chip."""
    x = torch.cat([to_tensor(c) for c in crops])
    chips = flipnet_to_dlib_chip(x).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    ours = dlib_descriptors([np.ascontiguousarray(c) for c in chips])
    ref = IdentityEmbedder(aligned=True).embed_batch(crops).astype(np.float64)
    return np.linalg.norm(ours[:, None] - ref[None], axis=2)  # (N, N), diagonal = same face


def test_chip_helper_on_astronaut(astronaut_crop):
    x = to_tensor(astronaut_crop)
    assert flipnet_to_dlib_chip(x).shape == (1, 3, 150, 150)
    assert _helper_vs_dlib([astronaut_crop])[0, 0] < CHIP_MAX_TOL


def test_chip_helper_is_size_independent(net, astronaut, astronaut_face):
    chips = [flipnet_to_dlib_chip(to_tensor(align_face(astronaut, astronaut_face[0].landmarks5,
                                                       size=size).crop)) for size in (128, 512)]
    assert (chips[0] - chips[1]).abs().mean() < 4.0  # gray levels: resampling differences only
    with torch.no_grad():
        emb = net(torch.cat(chips))
    assert torch.linalg.norm(emb[0] - emb[1]) < 0.1


def test_chip_helper_on_utkface(utk_faces):
    crops = [crop for _, crop in utk_faces]
    d = _helper_vs_dlib(crops)
    same = np.diag(d)
    assert np.median(same) < CHIP_MEDIAN_TOL and same.max() < CHIP_MAX_TOL, same
    assert (d.argmin(axis=1) == np.arange(len(crops))).all()  # each chip is nearest its own face


def test_loss_zero_for_identical_and_gradient(loss, net, astronaut_crop):
    x = to_tensor(astronaut_crop)
    assert loss(x, x).item() < 1e-5
    blurred = torch.from_numpy(cv2.GaussianBlur(astronaut_crop, (0, 0), 1.5))
    pred = (blurred.permute(2, 0, 1)[None].float() / 127.5 - 1.0).requires_grad_(True)
    value = loss(pred, x)
    value.backward()
    assert 0 < value.item() < 0.1
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_loss_separates_identities(loss, astronaut_crop, utk_faces):
    x = to_tensor(astronaut_crop)
    blurred = to_tensor(cv2.GaussianBlur(astronaut_crop, (0, 0), 1.5))
    with torch.no_grad():
        same = loss(blurred, x).item()
        others = [loss(to_tensor(crop), x).item() for _, crop in utk_faces]
    assert same < min(others) and min(others) > 0.1, (same, others)
