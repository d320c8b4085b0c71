"""dlib identity embedder, identity similarity, landmark distance and LFW verification."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from flipnet.errors import FlipnetError, ImageReadError, NoFaceError
from flipnet.faces.identity import IdentityEmbedder, detect_face
from flipnet.metrics.identity import (
    angle_degrees,
    cosine_similarity,
    euclidean_distance,
    identity_similarity,
)
from flipnet.metrics.landmarks import landmark_distance, landmarks68
from flipnet.metrics.lfw import evaluate_lfw, kfold_accuracy, make_pairs, people_images


@pytest.fixture(scope="module")
def face_box(astronaut):
    """HOG box (l, t, r, b) of the astronaut's face."""
    r = detect_face(astronaut)
    return r.left(), r.top(), r.right(), r.bottom()


def aligned_crop(rgb: np.ndarray, box, *, shift: int = 0, size: int = 128) -> np.ndarray:
    """A square crop around the face box (face fills the frame), resized to ``size``."""
    left, top, right, bottom = box
    cx, cy = (left + right) / 2 + shift, (top + bottom) / 2
    half = 0.6 * max(right - left, bottom - top)
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    side = int(round(2 * half))
    crop = rgb[y0:y0 + side, x0:x0 + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def test_embedding_shape_and_blur_robustness(astronaut):
    emb = IdentityEmbedder(aligned=False)
    e = emb.embed(astronaut)
    assert e.shape == (128,) and e.dtype == np.float32
    assert 0.5 < np.linalg.norm(e) < 1.5
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 1.5)
    assert cosine_similarity(e, emb.embed(blurred))[0] > 0.9
    assert euclidean_distance(e, emb.embed(blurred))[0] < 0.6


def test_aligned_crop_matches_detected_whole_photo(astronaut, face_box):
    whole = IdentityEmbedder(aligned=False).embed(astronaut)
    crop = aligned_crop(astronaut, face_box)
    e_crop = IdentityEmbedder(aligned=True).embed(crop)
    assert euclidean_distance(whole, e_crop)[0] < 0.6  # dlib's same-person rule
    assert cosine_similarity(whole, e_crop)[0] > 0.9


def test_embed_batch_equals_single_and_is_deterministic(astronaut, face_box):
    crops = [aligned_crop(astronaut, face_box), aligned_crop(astronaut, face_box, shift=5)]
    emb = IdentityEmbedder(aligned=True)
    batch = emb.embed_batch(crops)
    assert batch.shape == (2, 128)
    np.testing.assert_allclose(batch[0], emb.embed(crops[0]), atol=1e-5)
    np.testing.assert_allclose(batch[1], emb.embed(crops[1]), atol=1e-5)
    assert emb.embed_batch([]).shape == (0, 128)


def test_no_face_error_names_the_image(tmp_path):
    flat = np.full((200, 200, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match="gray-card"):
        IdentityEmbedder(aligned=False).embed(flat, name="gray-card")
    path = tmp_path / "empty_wall.png"
    cv2.imwrite(str(path), flat)
    with pytest.raises(NoFaceError, match="empty_wall.png"):
        IdentityEmbedder(aligned=False).embed(path)


def test_pick_largest_or_center_face(astronaut, face_box):
    canvas = np.full((520, 520, 3), 200, np.uint8)
    big = aligned_crop(astronaut, face_box, size=200)
    small = aligned_crop(astronaut, face_box, size=130)
    canvas[10:210, 10:210] = big  # large face in a corner
    canvas[195:325, 195:325] = small  # smaller face at the centre
    largest = detect_face(canvas, pick="largest")
    center = detect_face(canvas, pick="center")
    assert largest.center().x < 150 and largest.center().y < 150
    assert abs(center.center().x - 260) < 40 and abs(center.center().y - 260) < 40
    with pytest.raises(ValueError, match="pick"):
        IdentityEmbedder(pick="left")


def test_bad_array_is_a_flipnet_error():
    with pytest.raises(ImageReadError, match="uint8"):
        IdentityEmbedder().embed(np.zeros((64, 64, 3), np.float32), name="floaty")


def test_angles_and_distances():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 2.0], [-1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(angle_degrees(a, b), [90.0, 180.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(cosine_similarity(a, b), [0.0, -1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(euclidean_distance(a, b), [np.sqrt(5), 2.0, 0.0])


def test_identity_similarity_identical_and_shifted(astronaut, face_box):
    crop = aligned_crop(astronaut, face_box)
    shifted = aligned_crop(astronaut, face_box, shift=8)
    r = identity_similarity([crop, shifted], [crop, crop], aligned=True)
    assert r["count"] == 2 and len(r["per_image"]) == 2
    assert r["per_image"][0]["deg"] == 0.0 and r["per_image"][0]["cos"] == pytest.approx(1.0)
    assert 0.0 < r["per_image"][1]["deg"] < 40.0  # same person, slightly different framing
    assert r["mean_deg"] == pytest.approx(r["per_image"][1]["deg"] / 2)
    assert r["same_person_rate"] == 1.0
    with pytest.raises(FlipnetError, match="2 restored images but 1"):
        identity_similarity([crop, crop], [crop])


def test_identity_similarity_skips_faceless_pairs(astronaut):
    flat = np.full((200, 200, 3), 90, np.uint8)
    r = identity_similarity([astronaut, flat], [astronaut, flat], aligned=False,
                            skip_no_face=True)
    assert r["count"] == 1 and list(r["skipped"]) == ["pred[1]"]
    assert r["mean_deg"] == 0.0


def test_landmark_distance(astronaut, face_box):
    crop = aligned_crop(astronaut, face_box)
    shifted = aligned_crop(astronaut, face_box, shift=6)
    pts = landmarks68(crop)
    assert pts.shape == (68, 2)
    assert (pts >= -5).all() and (pts <= 133).all()  # inside the 128 px crop
    r = landmark_distance([crop, shifted], [crop, crop], normalize="pixel")
    assert r["per_image"][0]["lmd"] == 0.0
    assert 1.0 < r["per_image"][1]["lmd"] < 20.0
    rn = landmark_distance([shifted], [crop], normalize="interocular")
    assert rn["mean"] == pytest.approx(r["per_image"][1]["lmd"] / _interocular(pts), rel=1e-6)
    whole = landmark_distance([astronaut], [astronaut], aligned=False)
    assert whole["mean"] == 0.0
    with pytest.raises(FlipnetError, match="differs"):
        landmark_distance([crop], [astronaut])


def _interocular(pts: np.ndarray) -> float:
    return float(np.linalg.norm(pts[42:48].mean(0) - pts[36:42].mean(0)))


def test_kfold_accuracy_on_separable_and_noisy_distances():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    d = np.where(same, rng.uniform(0.2, 0.5, 100), rng.uniform(0.7, 1.0, 100))
    r = kfold_accuracy(d, same)
    assert r["mean"] == 1.0 and r["std"] == 0.0 and len(r["thresholds"]) == 10
    assert all(0.5 <= t <= 0.7 for t in r["thresholds"])
    d_noisy = rng.uniform(0, 1, 100)  # no signal: about chance
    assert kfold_accuracy(d_noisy, same)["mean"] < 0.75


def _fake_lfw(root):
    for person, n in [("Ann", 3), ("Bob", 1), ("Cy", 2), ("Di", 4)]:
        (root / person).mkdir(parents=True)
        for i in range(n):
            (root / person / f"{person}_{i:04d}.jpg").write_bytes(b"")
    return root


def test_make_pairs_deterministic_and_labelled(tmp_path):
    root = _fake_lfw(tmp_path / "lfw")
    p1 = make_pairs(root, 6, 8, rng=np.random.default_rng(3))
    p2 = make_pairs(root, 6, 8, rng=np.random.default_rng(3))
    assert p1 == p2
    assert [p.same for p in p1] == [True] * 6 + [False] * 8
    for p in p1:
        assert (p.path_a.parent == p.path_b.parent) == p.same and p.path_a != p.path_b
    assert len({(p.path_a, p.path_b) for p in p1}) == 14
    assert set(people_images(root)) == {"Ann", "Bob", "Cy", "Di"}
    with pytest.raises(FlipnetError, match="only 10 exist"):
        make_pairs(root, 11, 1, rng=np.random.default_rng(0))


def test_two_lfw_people(shared_data):
    people = people_images(shared_data / "lfw")
    a, b = [n for n, imgs in people.items() if len(imgs) >= 2][:2]
    emb = IdentityEmbedder(aligned=False)
    ea = emb.embed_batch(people[a][:2])
    eb = emb.embed(people[b][0])
    same = euclidean_distance(ea[0], ea[1])[0]
    different = min(euclidean_distance(ea[0], eb)[0], euclidean_distance(ea[1], eb)[0])
    assert same < different


@pytest.mark.slow
def test_lfw_verification_accuracy(shared_data):
    r = evaluate_lfw(shared_data / "lfw", n_pos=20, n_neg=20, seed=1, progress=False)
    assert r["accuracy_mean"] >= 0.9
    assert r["mean_distance_same"] < r["mean_distance_different"]
