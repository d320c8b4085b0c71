"""Python API: numpy and PIL in, the same type out; Degrader determinism."""

import numpy as np
from PIL import Image

from flipnet import Degrader, Restorer


def test_restorer_numpy_and_pil(astronaut):
    r = Restorer.load("bicubic")
    out = r.restore(astronaut)
    assert isinstance(out.image, np.ndarray) and out.image.shape == astronaut.shape
    assert len(out.faces) == 1 and not np.array_equal(out.image, astronaut)
    pil = Image.fromarray(astronaut).convert("RGBA")
    out = r.restore(pil)
    assert isinstance(out.image, Image.Image) and out.image.mode == "RGBA"
    assert out.image.size == pil.size


def test_degrader_deterministic(astronaut):
    face = np.ascontiguousarray(astronaut[:128, 150:278])
    a, pa = Degrader("codeformer", seed=3, face_size=128).degrade(face)
    b, pb = Degrader("codeformer", seed=3, face_size=128).degrade(face)
    np.testing.assert_array_equal(a, b)
    assert pa == pb and a.shape == face.shape
    c, _ = Degrader("codeformer", seed=4, face_size=128).degrade(face)
    assert not np.array_equal(a, c)


def test_restore_batch_matches_single_and_keeps_types(astronaut):
    r = Restorer.load("bicubic")
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    batch = r.restore_batch([astronaut, Image.fromarray(flipped)])
    assert isinstance(batch[0].image, np.ndarray) and isinstance(batch[1].image, Image.Image)
    np.testing.assert_array_equal(batch[0].image, r.restore(astronaut).image)
    np.testing.assert_array_equal(np.asarray(batch[1].image), r.restore(flipped).image)
    assert [len(b.faces) for b in batch] == [1, 1]
