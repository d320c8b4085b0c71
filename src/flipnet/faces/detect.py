"""Face detection (dlib HOG or CNN) and 5-point landmarks in the FFHQ / facexlib convention.

The five points, in image coordinates (x right, y down), are: left eye centre, right eye centre,
nose tip, left mouth corner, right mouth corner, where "left" means the image's left (the
subject's right). They are computed from dlib's 68-point predictor: eye centres are the means of
points 36-41 and 42-47, the nose tip is point 30, the mouth corners are points 48 and 54.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from flipnet.errors import ConfigError
from flipnet.faces.dlib_models import model_path

DETECTORS = ("hog", "cnn")
PAD_MODES = ("reflect", "constant", "replicate")
POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1), detector score, landmarks5 (5, 2), landmarks68 (68, 2)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks5: np.ndarray  # (5, 2) float32, image coordinates
    landmarks68: np.ndarray | None  # (68, 2) float32, image coordinates; None: learned locator

    @property
    def area(self) -> float:
        """Box area in pixels."""
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


@functools.cache
def _hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def _cnn_detector():
    import dlib

    return dlib.cnn_face_detection_model_v1(model_path("cnn_detector"))


@functools.cache
def _predictor68():
    import dlib

    return dlib.shape_predictor(model_path("landmarks68"))


def landmarks5_from_68(landmarks68: np.ndarray) -> np.ndarray:
    """(68, 2) dlib points -> (5, 2) float32 FFHQ-order points (eye means, nose 30, mouth 48/54)."""
    p = np.asarray(landmarks68, np.float64)
    five = np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])
    return five.astype(np.float32)


def _pad_image(rgb: np.ndarray, pad_px: int, mode: str) -> np.ndarray:
    """Add a border of ``pad_px`` pixels on every side (reflect / constant / replicate)."""
    import cv2

    border = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT,
              "replicate": cv2.BORDER_REPLICATE}[mode]
    return cv2.copyMakeBorder(rgb, pad_px, pad_px, pad_px, pad_px, border, value=(0, 0, 0))


def _run_detector(small: np.ndarray, detector: str, upsample: int) -> list[tuple]:
    """Raw detections on ``small`` as (x0, y0, x1, y1, score) tuples."""
    if detector == "hog":
        rects, scores, _ = _hog_detector().run(small, upsample, 0.0)
        return [(r.left(), r.top(), r.right() + 1, r.bottom() + 1, float(s))
                for r, s in zip(rects, scores)]
    found = _cnn_detector()(small, upsample)
    return [(d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1,
             float(d.confidence)) for d in found]


def detect_faces(rgb: np.ndarray, *, detector: str = "hog", upsample: int = 0,
                 max_side: int = 1200, pad: float = 0.0, pad_mode: str = "reflect",
                 min_score: float = -float("inf")) -> list[Face]:
    """Detect faces and their 5/68-point landmarks in a uint8 (H, W, 3) image, largest first.

    ``detector``: "hog" (fast) or "cnn" (dlib MMOD, slower, finds rotated/small faces).
    ``max_side``: detection runs on a copy downscaled to at most this long side; boxes are mapped
    back and the 68-point predictor runs at full resolution.
    ``pad``: border added before detection, as a fraction of the long side (use ~0.25 for tight
    crops such as UTKFace, where the face fills the frame); coordinates are mapped back, so
    landmarks may lie slightly outside the image.
    """
    import cv2

    if detector not in DETECTORS:
        raise ConfigError(f"unknown face detector {detector!r}; choose one of {DETECTORS}")
    if pad_mode not in PAD_MODES:
        raise ConfigError(f"unknown pad_mode {pad_mode!r}; choose one of {PAD_MODES}")
    if pad < 0:
        raise ConfigError(f"pad must be >= 0, got {pad}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"detect_faces expects uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")

    # pad at full resolution, so the predictor also sees context around a tight crop
    pad_px = round(pad * max(rgb.shape[:2]))
    full = _pad_image(rgb, pad_px, pad_mode) if pad_px > 0 else np.ascontiguousarray(rgb)

    # detect on a bounded-size copy
    h, w = full.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = full
    if scale < 1.0:
        small = cv2.resize(full, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    raw = _run_detector(small, detector, upsample)

    # 68 points at full resolution, then undo the padding
    import dlib

    predictor = _predictor68()
    faces = []
    for x0, y0, x1, y1, score in raw:
        if score < min_score:
            continue
        bx0, by0, bx1, by1 = (x0 / scale, y0 / scale, x1 / scale, y1 / scale)
        rect = dlib.rectangle(round(bx0), round(by0),
                              round(bx1) - 1, round(by1) - 1)
        shape = predictor(full, rect)
        pts = np.array([(p.x, p.y) for p in shape.parts()], np.float32) - pad_px  # (68, 2)
        box = (bx0 - pad_px, by0 - pad_px, bx1 - pad_px, by1 - pad_px)
        faces.append(Face(box=tuple(float(v) for v in box), score=score,
                          landmarks5=landmarks5_from_68(pts), landmarks68=pts))
    faces.sort(key=lambda f: f.area, reverse=True)
    return faces


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detect_all_faces(rgb: np.ndarray, *, detector: str = "hog", max_side: int = 2048,
                     small_photo: int = 1024, min_extra_score: float = 0.3,
                     fallback: bool = True) -> list[Face]:
    """``detect_faces``, plus (for photos whose long side <= ``small_photo``) a second pass at 2x
    that adds faces smaller than HOG's 80 px window which the first pass missed.

    Faces of the second pass are kept only with score >= ``min_extra_score`` and no overlap
    (IoU > 0.3) with a first-pass face: upsampling also raises false positives (e.g. on the
    astronaut's suit patch at score ~0.1), so the first pass is never changed, only added to.

    ``fallback``: when both passes find nothing, look again on copies shrunk to a half and a
    quarter (a blurred, noisy face looks sharp when small; HOG misses heavily degraded faces at
    full size), then with dlib's CNN detector on a copy of at most 320 px.
    """
    faces = detect_faces(rgb, detector=detector, max_side=max_side)
    if max(rgb.shape[:2]) <= small_photo:
        extra = [f for f in detect_faces(rgb, detector=detector, max_side=max_side, upsample=1)
                 if f.score >= min_extra_score
                 and all(box_iou(f.box, g.box) <= 0.3 for g in faces)]
        faces = sorted(faces + extra, key=lambda f: f.area, reverse=True)
    if faces or not fallback:
        return faces
    long_side = max(rgb.shape[:2])
    for side in (long_side // 2, long_side // 4):
        if side >= 160:  # HOG's 80 px window must still fit a face
            faces = detect_faces(rgb, detector="hog", max_side=side)
            if faces:
                return faces
    return detect_faces(rgb, detector="cnn", max_side=min(long_side, 160))


def main_face(faces: list[Face], image_shape: tuple[int, ...]) -> Face | None:
    """The largest, most central face: maximises area x (1 - centre distance / half diagonal)."""
    if not faces:
        return None
    h, w = image_shape[:2]
    half_diag = 0.5 * float(np.hypot(w, h))

    def priority(f: Face) -> float:
        cx, cy = 0.5 * (f.box[0] + f.box[2]), 0.5 * (f.box[1] + f.box[3])
        d = float(np.hypot(cx - w / 2, cy - h / 2)) / half_diag
        return f.area * max(0.0, 1.0 - d)

    return max(faces, key=priority)
