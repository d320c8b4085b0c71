"""Steady faces in video: landmark smoothing, tracking between detections, temporal blending.

Restored faces flicker when the 5 landmarks that align each crop jitter from frame to frame
(CodeFormer #163, GFPGAN #465): every frame is cropped a little differently, so the restorer
invents slightly different detail each time. And even perfectly aligned, a restorer answers
each frame's noise and sub-pixel position a little differently. Three remedies, over numpy
landmarks and crops (no video IO here):

* ``OneEuroFilter`` (Casiez, Roussel & Vogel, "1 Euro Filter", CHI 2012): an exponential
  low-pass filter whose cutoff rises with speed, so a still face is held steady and a moving
  one is followed with little lag. One cutoff for all five points, driven by the face's mean
  speed in face sizes per second (``landmark_scale``), so points never lag by different
  amounts (which would distort the face) and the settings hold for any face size.
* ``propagate``: carry a face from one frame to the next with pyramidal Lucas-Kanade optical
  flow on corners inside its box, fitted by one similarity transform (RANSAC), so the detector
  need only run every k-th frame. The same fit carries the filter's memory (motion
  compensation), so smoothing removes the detector's jitter but never lags the face's motion.
* ``blend_restored``: a recursive temporal filter on the restored crops, motion compensated,
  that keeps the current restoration wherever the input itself changed (no ghosts).

``FaceTracker`` combines the first two: it detects on every ``detect_every``-th frame (and
whenever a face is lost), tracks in between, and smooths every face's landmarks;
``pipelines.video.TrackedFrames`` adds the blend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flipnet.errors import ConfigError

DETECT_EVERY = 5  # frames per detection (measured: benchmarks/video_flicker.py)
MIN_CUTOFF = 0.3  # Hz: the cutoff of a still face
BETA = 1.0  # Hz of extra cutoff per (face size / s) of speed
D_CUTOFF = 1.0  # Hz: the cutoff of the speed estimate
RESET_JUMP = 0.5  # a measurement this many face sizes away restarts the filter (a cut, a swap)
TEMPORAL = 0.6  # weight of the previous restored face in the current one (blend_restored)
CHANGE_LEVELS = 12.0  # input change (0-255, blurred) above which a pixel is not blended


def landmark_scale(landmarks5: np.ndarray) -> float:
    """Size of a face from its (5, 2) landmarks: RMS distance of the points from their mean
    (about 0.6 x the eye distance; the unit of the smoothing settings)."""
    p = np.asarray(landmarks5, np.float64)
    return max(1e-6, float(np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean())))


def _alpha(cutoff: float, dt: float) -> float:
    """Smoothing factor of a first-order low-pass filter with this cutoff (Hz) and step (s)."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One Euro filter (Casiez et al., CHI 2012) over (N, 2) points with one shared cutoff.

    ``cutoff = min_cutoff + beta * speed``, where speed is the mean over points of the
    low-passed (``d_cutoff``) velocity, divided by ``scale`` (face sizes per second).
    """

    def __init__(self, *, fps: float = 25.0, min_cutoff: float = MIN_CUTOFF, beta: float = BETA,
                 d_cutoff: float = D_CUTOFF):
        self.dt = 1.0 / float(fps)
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None  # (N, 2) filtered points
        self.dx: np.ndarray | None = None  # (N, 2) filtered velocity, px / s

    def reset(self) -> None:
        """Forget the past: the next measurement is passed through unchanged."""
        self.x = self.dx = None

    def __call__(self, x: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Filter one measurement (N, 2); ``scale``: the face size (px) speed is measured in."""
        x = np.asarray(x, np.float64)
        if self.x is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return x.copy()
        dx = (x - self.x) / self.dt
        self.dx = self.dx + _alpha(self.d_cutoff, self.dt) * (dx - self.dx)
        speed = float(np.linalg.norm(self.dx, axis=-1).mean()) / scale
        cutoff = self.min_cutoff + self.beta * speed
        self.x = self.x + _alpha(cutoff, self.dt) * (x - self.x)
        return self.x.copy()

    def state(self) -> dict | None:
        """The filter's memory as plain lists (JSON-safe, exact round trip), None if empty."""
        return None if self.x is None else {"x": self.x.tolist(), "dx": self.dx.tolist()}

    def load_state(self, state: dict | None) -> None:
        """Restore ``state()``."""
        if state is None:
            self.reset()
        else:
            self.x = np.asarray(state["x"], np.float64)
            self.dx = np.asarray(state["dx"], np.float64)


def smooth_track(points: np.ndarray, *, fps: float = 25.0, **settings) -> np.ndarray:
    """(T, N, 2) landmarks of one face over T frames -> the One Euro filtered track."""
    points = np.asarray(points, np.float64)
    f = OneEuroFilter(fps=fps, **settings)
    return np.stack([f(p, landmark_scale(p)) for p in points])


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def propagate(prev_gray: np.ndarray, gray: np.ndarray, box, *, max_corners: int = 80,
              fb_error: float = 1.0, min_points: int = 8) -> np.ndarray | None:
    """The similarity (2, 3) that moves the face in ``box`` (x0, y0, x1, y1) of ``prev_gray``
    to where it is in ``gray``: Shi-Tomasi corners in the box, pyramidal Lucas-Kanade flow
    forwards and back (points that do not come back within ``fb_error`` px are dropped), then
    a RANSAC similarity fit. None when the face is lost (too few points agree, or the fit
    scales by more than 20 %)."""
    import cv2

    h, w = gray.shape[:2]
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    # a region around the box, so corners near its edge still have context for the flow
    rx0, ry0 = max(0, int(x0 - 0.5 * bw)), max(0, int(y0 - 0.5 * bh))
    rx1, ry1 = min(w, int(x1 + 0.5 * bw) + 1), min(h, int(y1 + 0.5 * bh) + 1)
    if rx1 - rx0 < 16 or ry1 - ry0 < 16:
        return None
    a, b = prev_gray[ry0:ry1, rx0:rx1], gray[ry0:ry1, rx0:rx1]
    mask = np.zeros_like(a)
    mask[max(0, int(y0) - ry0):max(0, int(y1) - ry0),
         max(0, int(x0) - rx0):max(0, int(x1) - rx0)] = 255
    side = max(8.0, min(bw, bh))
    p0 = cv2.goodFeaturesToTrack(a, max_corners, 0.01, max(2.0, side / 20), mask=mask,
                                 blockSize=5)
    if p0 is None or len(p0) < min_points:
        return None
    lk = {"winSize": (21, 21), "maxLevel": 3,
          "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
    p1, ok1, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, None, **lk)
    back, ok2, _ = cv2.calcOpticalFlowPyrLK(b, a, p1, None, **lk)
    good = ((ok1[:, 0] == 1) & (ok2[:, 0] == 1)
            & (np.linalg.norm(back - p0, axis=2)[:, 0] < fb_error))
    if good.sum() < min_points:
        return None
    offset = np.array([rx0, ry0], np.float32)
    fit, inliers = cv2.estimateAffinePartial2D(p0[good] + offset, p1[good] + offset,
                                               method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if fit is None or inliers.sum() < min_points:
        return None
    if not 0.8 < math.sqrt(abs(np.linalg.det(fit[:, :2]))) < 1.25:
        return None
    return fit


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ affine[:, :2].T + affine[:, 2]


def _move_box(affine: np.ndarray, box) -> np.ndarray:
    """``box`` with its centre moved by the similarity ``affine`` and its sides scaled by it
    (not the bounding box of the turned corners, which would grow a little every frame)."""
    x0, y0, x1, y1 = box
    c = _apply(affine, np.array([[(x0 + x1) / 2, (y0 + y1) / 2]]))[0]
    half = 0.5 * math.sqrt(abs(np.linalg.det(affine[:, :2]))) * np.array([x1 - x0, y1 - y0])
    return np.array([*(c - half), *(c + half)])


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


@dataclass
class TrackedFace:
    """One face in one frame: box (x0, y0, x1, y1), the landmarks to align by (smoothed when
    smoothing is on), the raw measurement, whether the detector found it this frame, the
    track's id, and the flow fit (2, 3) that moved it from the previous frame (None if none)."""

    box: tuple[float, float, float, float]
    landmarks5: np.ndarray  # (5, 2) float64, image coordinates
    measured: np.ndarray  # (5, 2) detected, or carried by optical flow
    detected: bool
    track_id: int = 0
    flow: np.ndarray | None = None  # previous frame px -> this frame px


class _Track:
    """One face followed across frames: its box, latest measurement and smoothing filter."""

    def __init__(self, track_id: int, box, landmarks5, filt: OneEuroFilter | None):
        self.id = track_id
        self.box = np.asarray(box, np.float64)  # (4,)
        self.measured = np.asarray(landmarks5, np.float64)  # (5, 2)
        self.filter = filt
        self.missed = 0  # detection rounds in a row that did not find this face

    def compensate(self, fit: np.ndarray) -> None:
        """Carry the filter's memory by an optical-flow fit, so smoothing removes only what
        the flow did not explain (detector jitter), never lagging the face's real motion."""
        if self.filter is not None and self.filter.x is not None:
            self.filter.x = _apply(fit, self.filter.x)
            self.filter.dx = self.filter.dx @ np.asarray(fit, np.float64)[:, :2].T

    def move(self, fit: np.ndarray) -> _Track:
        """Carry the box, landmarks and filter memory by an optical-flow fit."""
        self.box, self.measured = _move_box(fit, self.box), _apply(fit, self.measured)
        self.compensate(fit)
        return self

    def smoothed(self) -> np.ndarray:
        """The landmarks to align by: the measurement, One Euro filtered if smoothing is on."""
        if self.filter is None:
            return self.measured.copy()
        scale = landmark_scale(self.measured)
        if self.filter.x is not None and np.linalg.norm(
                self.measured - self.filter.x, axis=1).mean() > RESET_JUMP * scale:
            self.filter.reset()  # a cut or another face: do not glide across
        return self.filter(self.measured, scale)


Detect = Callable[[np.ndarray], list[tuple[tuple[float, ...], np.ndarray]]]


class FaceTracker:
    """Faces of consecutive frames: detected every ``detect_every`` frames (and whenever one is
    lost), carried by optical flow in between, landmarks One Euro smoothed if ``smooth``.

    ``detect(rgb) -> [(box, landmarks5), ...]`` finds the faces of one frame. A detection is
    matched to a track by box overlap (IoU > 0.3); a track the detector misses is carried by
    flow for up to ``max_missed`` detection rounds, so a face does not blink out when the
    detector misses it in one frame. Call the tracker on each frame in order.
    """

    def __init__(self, detect: Detect, *, detect_every: int = DETECT_EVERY, smooth: bool = True,
                 fps: float = 25.0, max_missed: int = 2, **filter_settings):
        if detect_every < 1:
            raise ConfigError(f"detect_every must be >= 1, got {detect_every}")
        self.detect, self.detect_every, self.smooth = detect, detect_every, smooth
        self.fps, self.max_missed, self.filter_settings = float(fps), max_missed, filter_settings
        self.tracks: list[_Track] = []
        self.prev_gray: np.ndarray | None = None  # (H, W) uint8
        self.since_detect = 0
        self.detections = 0  # frames the detector ran on
        self.next_id = 0

    def _new_track(self, box, landmarks5) -> _Track:
        filt = OneEuroFilter(fps=self.fps, **self.filter_settings) if self.smooth else None
        self.next_id += 1
        return _Track(self.next_id - 1, box, landmarks5, filt)

    def _fit(self, gray: np.ndarray, t: _Track, fits: dict) -> np.ndarray | None:
        """The flow fit of track ``t`` from the previous frame to this one (computed once)."""
        if id(t) not in fits:
            fits[id(t)] = (None if self.prev_gray is None
                           else propagate(self.prev_gray, gray, t.box))
        return fits[id(t)]

    def _match(self, rgb: np.ndarray, gray: np.ndarray, fits: dict) -> list[_Track]:
        """Detect, match detections to tracks, carry the missed tracks by flow."""
        self.detections += 1
        found = [(np.asarray(b, np.float64), np.asarray(lm, np.float64))
                 for b, lm in self.detect(rgb)]
        pairs = sorted(((_iou(t.box, b), i, j) for i, t in enumerate(self.tracks)
                        for j, (b, _) in enumerate(found)), reverse=True)
        used_t, used_d, out = set(), set(), []
        for iou, i, j in pairs:
            if iou <= 0.3 or i in used_t or j in used_d:
                continue
            used_t.add(i)
            used_d.add(j)
            t = self.tracks[i]
            fit = self._fit(gray, t, fits)
            if fit is not None:
                t.compensate(fit)
            t.box, t.measured, t.missed = found[j][0], found[j][1], 0
            out.append(t)
        for i, t in enumerate(self.tracks):
            if i not in used_t:
                t.missed += 1
                fit = self._fit(gray, t, fits) if t.missed <= self.max_missed else None
                if fit is not None:
                    out.append(t.move(fit))
        out += [self._new_track(b, lm) for j, (b, lm) in enumerate(found) if j not in used_d]
        return out

    def __call__(self, rgb: np.ndarray) -> list[TrackedFace]:
        """The faces of the next frame (uint8 (H, W, 3) RGB)."""
        gray = _to_gray(rgb)  # (H, W)
        fits: dict = {}
        detect = (self.prev_gray is None or self.since_detect + 1 >= self.detect_every
                  or not self.tracks
                  or any(self._fit(gray, t, fits) is None for t in self.tracks))  # one lost
        if detect:
            self.tracks = self._match(rgb, gray, fits)
            self.since_detect = 0
        else:
            self.tracks = [t.move(fits[id(t)]) for t in self.tracks]
            self.since_detect += 1
        self.prev_gray = gray
        return [TrackedFace(box=tuple(float(v) for v in t.box), landmarks5=t.smoothed(),
                            measured=t.measured.copy(), detected=detect and t.missed == 0,
                            track_id=t.id, flow=fits.get(id(t))) for t in self.tracks]

    def state(self) -> dict:
        """What the next frame needs to go on smoothly, as JSON-safe values. The previous
        frame is not kept: the frame after ``load_state`` is a detection frame."""
        return {"next_id": self.next_id,
                "tracks": [{"id": t.id, "box": t.box.tolist(), "measured": t.measured.tolist(),
                            "missed": t.missed,
                            "filter": None if t.filter is None else t.filter.state()}
                           for t in self.tracks]}

    def load_state(self, state: dict | None) -> None:
        """Go on from ``state()`` (None: start afresh); the next frame is a detection frame."""
        self.tracks, self.prev_gray, self.since_detect = [], None, 0
        state = state or {}
        for s in state.get("tracks", []):
            t = self._new_track(s["box"], s["measured"])
            t.id, t.missed = int(s["id"]), int(s["missed"])
            if t.filter is not None:
                t.filter.load_state(s["filter"])
            self.tracks.append(t)
        self.next_id = int(state.get("next_id", len(self.tracks)))


def blend_restored(restored: np.ndarray, crop: np.ndarray, prev_out: np.ndarray,
                   prev_crop: np.ndarray, warp: np.ndarray, *, strength: float = TEMPORAL,
                   change: float = CHANGE_LEVELS) -> np.ndarray:
    """Blend a restored face crop with the previous frame's output, motion compensated, so
    the restorer's frame-to-frame variations average out (a recursive temporal filter in the
    aligned face's coordinates).

    ``warp`` (2, 3) maps previous-crop pixels to this crop's pixels. The previous output and
    input crop are warped by it; where the input crop itself changed (blurred absolute
    difference over ``change`` levels: a blink, moving lips, a hand) or the warped previous
    crop does not reach, the current restoration is kept, so nothing ghosts. Elsewhere
    ``out = restored + strength * (prev_out - restored)``. float32 (S, S, 3) out.
    """
    import cv2

    s = crop.shape[0]
    flags = {"flags": cv2.INTER_LINEAR, "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    prev_out = cv2.warpAffine(np.asarray(prev_out, np.float32), warp, (s, s), **flags)
    prev_crop = cv2.warpAffine(np.asarray(prev_crop, np.float32), warp, (s, s), **flags)
    inside = cv2.warpAffine(np.ones((s, s), np.float32), warp, (s, s), **flags)  # (S, S)
    sigma = 1.5 * s / 128  # measure change above the pixel noise
    cur = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), sigma)
    diff = np.abs(cur - cv2.GaussianBlur(prev_crop, (0, 0), sigma)).mean(2)  # (S, S)
    w = strength * np.clip(1.0 - diff / change, 0.0, 1.0) * (inside > 0.999)
    restored = restored.astype(np.float32)
    return restored + w[:, :, None] * (prev_out - restored)
