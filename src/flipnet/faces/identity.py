"""dlib's 128-D face identity embedding (ResNet-29, "dlib_face_recognition_resnet_model_v1").

Two ways to find the face before embedding:
  * ``aligned=True`` (flipnet's aligned crops, where the face fills the frame): no detection;
    a fixed box in crop coordinates (default: the whole crop) seeds dlib's 5-point shape predictor;
  * ``aligned=False`` (whole photos): dlib's HOG detector, the largest face (or, ``pick='center'``,
    the one nearest the image centre, as LFW's labelled person is).
The 5 points then give dlib's own 150x150 face chip (``get_face_chip``, padding 0.25), which is what
the ResNet was trained on. Faces on the same person lie within euclidean distance 0.6 (dlib's rule).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from flipnet.errors import FlipnetError, ImageReadError, NoFaceError
from flipnet.faces.dlib_models import model_path
from flipnet.io import load_image

EMBEDDING_DIM = 128
DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's documented euclidean threshold for "same person"
WHOLE_CROP = (0.0, 0.0, 1.0, 1.0)  # (left, top, right, bottom) as fractions of width / height
PICKS = ("largest", "center")  # which detection is "the" face of a whole photo

ImageLike = np.ndarray | str | os.PathLike


def _dlib():
    """Import dlib with a flipnet error when it is missing."""
    try:
        import dlib
    except ImportError as e:  # pragma: no cover - dlib-bin is a hard dependency
        raise FlipnetError(f"dlib is not installed (pip install dlib-bin): {e}") from None
    return dlib


@functools.cache
def load_dlib_model(name: str):
    """Load (once per process) a dlib model: 'landmarks5', 'landmarks68', 'identity', 'hog'."""
    dlib = _dlib()
    if name == "hog":
        return dlib.get_frontal_face_detector()
    if name in ("landmarks5", "landmarks68"):
        return dlib.shape_predictor(model_path(name))
    if name == "identity":
        return dlib.face_recognition_model_v1(model_path("identity"))
    raise ValueError(f"unknown dlib model {name!r}")


def as_rgb(image: ImageLike, name: str | None = None) -> tuple[np.ndarray, str]:
    """A path or uint8 (H, W, 3) array -> (contiguous uint8 RGB, name used in error messages)."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image).rgb, str(image)
    name = name or "<array>"
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(name, f"expected uint8 (H, W, 3) RGB, got {arr.dtype} {arr.shape}")
    if min(arr.shape[:2]) < 16:
        raise ImageReadError(name, f"image {arr.shape[1]}x{arr.shape[0]} is too small for a face")
    return np.ascontiguousarray(arr), name


def box_rectangle(shape_hw: tuple[int, int], box: Sequence[float]):
    """dlib.rectangle from a fractional (left, top, right, bottom) box in an (H, W) image."""
    h, w = shape_hw
    left, top, right, bottom = box
    return _dlib().rectangle(int(round(left * w)), int(round(top * h)),
                             int(round(right * w)) - 1, int(round(bottom * h)) - 1)


def detect_face(rgb: np.ndarray, *, name: str = "<array>", upsample: int = 1,
                pick: str = "largest"):
    """One dlib HOG detection as a dlib.rectangle (``pick``: 'largest' or nearest the 'center').

    Raises ``NoFaceError`` naming the image when there is none.
    """
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
    rects = load_dlib_model("hog")(rgb, upsample)
    if len(rects) == 0:
        raise NoFaceError(f"{name}: no face found (dlib HOG detector, upsample={upsample}); "
                          "for aligned face crops use aligned=True")
    if pick == "largest":
        return max(rects, key=lambda r: r.area())
    h, w = rgb.shape[:2]
    return min(rects, key=lambda r: ((r.left() + r.right()) / 2 - w / 2) ** 2
               + ((r.top() + r.bottom()) / 2 - h / 2) ** 2)


def face_rectangle(rgb: np.ndarray, *, aligned: bool, name: str = "<array>",
                   aligned_box: Sequence[float] = WHOLE_CROP, upsample: int = 1,
                   pick: str = "largest"):
    """The face box dlib's shape predictors start from: fixed for aligned crops, else detected."""
    if aligned:
        return box_rectangle(rgb.shape[:2], aligned_box)
    return detect_face(rgb, name=name, upsample=upsample, pick=pick)


class IdentityEmbedder:
    """dlib ResNet face descriptor: ``embed(rgb) -> (128,)``, ``embed_batch(list) -> (N, 128)``."""

    def __init__(self, *, aligned: bool = True, aligned_box: Sequence[float] = WHOLE_CROP,
                 upsample: int = 1, pick: str = "largest", chip_size: int = 150,
                 padding: float = 0.25):
        if pick not in PICKS:
            raise ValueError(f"pick must be one of {PICKS}, got {pick!r}")
        self.aligned = aligned
        self.pick = pick
        self.aligned_box = tuple(float(v) for v in aligned_box)
        self.upsample = upsample
        self.chip_size = chip_size
        self.padding = padding

    def chip(self, image: ImageLike, *, name: str | None = None,
             box: Sequence[int] | None = None) -> np.ndarray:
        """dlib's aligned face chip, uint8 (150, 150, 3); ``box`` = pixel (l, t, r, b) overrides."""
        rgb, name = as_rgb(image, name)
        if box is not None:
            rect = _dlib().rectangle(*(int(v) for v in box))
        else:
            rect = face_rectangle(rgb, aligned=self.aligned, name=name,
                                  aligned_box=self.aligned_box, upsample=self.upsample,
                                  pick=self.pick)
        shape = load_dlib_model("landmarks5")(rgb, rect)
        return _dlib().get_face_chip(rgb, shape, size=self.chip_size, padding=self.padding)

    def embed(self, image: ImageLike, *, name: str | None = None,
              box: Sequence[int] | None = None) -> np.ndarray:
        """128-D descriptor (float32, unit-ish norm) of the one face in ``image``."""
        chip = self.chip(image, name=name, box=box)  # (150, 150, 3)
        return np.asarray(load_dlib_model("identity").compute_face_descriptor(chip), np.float32)

    def embed_batch(self, images: Sequence[ImageLike], *,
                    names: Sequence[str] | None = None) -> np.ndarray:
        """(N, 128) descriptors, one per image (each must hold a face)."""
        if len(images) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        if names is None:
            names = [str(im) if isinstance(im, (str, os.PathLike)) else f"image[{i}]"
                     for i, im in enumerate(images)]
        chips = [self.chip(im, name=n) for im, n in zip(images, names, strict=True)]
        vecs = load_dlib_model("identity").compute_face_descriptor(chips)
        return np.asarray([np.asarray(v) for v in vecs], np.float32)  # (N, 128)
