"""Face tracking for video (issue 19): One Euro smoothing removes landmark jitter but follows
real motion; optical flow carries faces between detections; the state survives a JSON trip."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from flipnet.faces.track import (
    FaceTracker,
    OneEuroFilter,
    blend_restored,
    landmark_scale,
    smooth_track,
)

FPS = 25.0
FACE = np.array([[-20, -10], [20, -10], [0, 5], [-15, 20], [15, 20]], np.float64) + 100  # (5, 2)


def still_with_noise(frames: int, sigma: float, seed: int = 0) -> np.ndarray:
    """(T, 5, 2): a still face whose detected landmarks jitter by ``sigma`` px."""
    rng = np.random.default_rng(seed)
    return FACE[None] + rng.normal(0, sigma, (frames, 5, 2))


def test_landmark_scale_is_the_rms_spread():
    assert landmark_scale(FACE) == pytest.approx(np.sqrt(((FACE - FACE.mean(0)) ** 2)
                                                         .sum(1).mean()))
    assert landmark_scale(2 * FACE) == pytest.approx(2 * landmark_scale(FACE))


def test_smoothing_removes_jitter_of_a_still_face():
    raw = still_with_noise(150, sigma=1.0)
    out = smooth_track(raw, fps=FPS)
    # after the filter has settled: the error's spread and its frame-to-frame change
    raw_err, out_err = raw[25:] - FACE, out[25:] - FACE
    assert out_err.std() < 0.4 * raw_err.std()
    assert np.abs(np.diff(out[25:], axis=0)).mean() < 0.2 * np.abs(np.diff(raw[25:], axis=0)).mean()


def test_smoothing_follows_a_step_within_a_few_frames():
    step = np.array([24.0, -12.0])
    moved = np.arange(60)[:, None, None] >= 30  # (T, 1, 1): the face moves and stays
    track = still_with_noise(60, sigma=0.3) + moved * step
    out = smooth_track(track, fps=FPS)
    err = np.linalg.norm(out - (FACE + moved * step), axis=2).mean(1)  # (T,)
    assert err[30] > 5  # the step is not passed through at once (it is smoothed) ...
    assert err[34:].max() < 1.5  # ... but followed within 4 frames (0.16 s)


def test_smoothing_follows_linear_motion_with_little_lag():
    t = np.arange(80)[:, None, None]
    truth = FACE[None] + t * np.array([2.0, 1.0])  # 2.2 px / frame: a face walking by
    out = smooth_track(truth + np.random.default_rng(1).normal(0, 0.3, truth.shape), fps=FPS)
    lag = np.linalg.norm(out - truth, axis=2).mean(1)[20:]  # (T-20,)
    assert lag.mean() < 2.2  # under one frame's motion; a fixed 0.5 Hz low-pass lags ~18 px
    fixed = smooth_track(truth, fps=FPS, beta=0.0)
    assert np.linalg.norm(fixed - truth, axis=2).mean(1)[20:].mean() > 10


def test_filter_state_round_trips_exactly():
    raw = still_with_noise(20, sigma=1.0)
    a = OneEuroFilter(fps=FPS)
    for p in raw[:10]:
        a(p, landmark_scale(p))
    b = OneEuroFilter(fps=FPS)
    b.load_state(json.loads(json.dumps(a.state())))
    for p in raw[10:]:
        assert np.array_equal(a(p, landmark_scale(p)), b(p, landmark_scale(p)))


def translating_clip(astronaut, frames: int, step=(1.3, 0.7)):
    """Frames of the astronaut's face region moving by ``step`` px per frame, and the true
    landmarks (5, 2) of each frame (a known face moved with the image)."""
    src = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    lm0 = np.array([[110, 68], [144, 68], [127, 88], [113, 104], [141, 104]], np.float64)
    clip, truth = [], []
    for i in range(frames):
        m = np.array([[1, 0, step[0] * i], [0, 1, step[1] * i]], np.float64)
        clip.append(cv2.warpAffine(src, m, (256, 256), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT_101))
        truth.append(lm0 + m[:, 2])
    return clip, truth


def box_of(lm: np.ndarray) -> tuple[float, ...]:
    """A face box around 5 landmarks (like a detector's)."""
    c, s = lm.mean(0), landmark_scale(lm)
    return (c[0] - 2.2 * s, c[1] - 2.4 * s, c[0] + 2.2 * s, c[1] + 2.0 * s)


@pytest.mark.parametrize("smooth", [False, True])
def test_tracking_between_detections_follows_the_face(astronaut, smooth):
    clip, truth = translating_clip(astronaut, 15)
    index = {id(f): i for i, f in enumerate(clip)}
    calls = []

    def detect(rgb):
        calls.append(index[id(rgb)])
        lm = truth[index[id(rgb)]]
        return [(box_of(lm), lm)]

    tracker = FaceTracker(detect, detect_every=15, smooth=smooth, fps=FPS)
    errors = []
    for frame, lm in zip(clip, truth):
        (face,) = tracker(frame)
        errors.append(np.linalg.norm(face.landmarks5 - lm, axis=1).max())
    assert calls == [0]  # the detector ran once; flow carried the face 14 frames, 19 px
    assert max(errors) < 1.0, errors


def test_a_lost_face_is_detected_again(astronaut):
    clip, truth = translating_clip(astronaut, 6)
    clip[3] = np.zeros_like(clip[3])  # a cut: nothing for the flow to follow
    index = {id(f): i for i, f in enumerate(clip)}
    calls = []

    def detect(rgb):
        calls.append(index[id(rgb)])
        i = index[id(rgb)]
        return [] if i == 3 else [(box_of(truth[i]), truth[i])]

    tracker = FaceTracker(detect, detect_every=100, fps=FPS)
    found = [len(tracker(f)) for f in clip]
    assert calls == [0, 3, 4] and found == [1, 1, 1, 0, 1, 1]


def test_tracker_state_resumes_like_an_uninterrupted_run(astronaut):
    """A video segment ends: the tracker's state goes to JSON and is loaded back, by the same
    run (uninterrupted) or by a new process (resumed); both must go on identically."""
    clip, truth = translating_clip(astronaut, 12)
    rng = np.random.default_rng(0)
    noisy = [lm + rng.normal(0, 0.7, lm.shape) for lm in truth]
    index = {id(f): i for i, f in enumerate(clip)}

    def detect(rgb):
        lm = noisy[index[id(rgb)]]
        return [(box_of(lm), lm)]

    first = FaceTracker(detect, detect_every=3, fps=FPS)
    for f in clip[:6]:
        first(f)
    saved = json.dumps(first.state())
    first.load_state(json.loads(saved))
    resumed = FaceTracker(detect, detect_every=3, fps=FPS)
    resumed.load_state(json.loads(saved))
    for f, lm in zip(clip[6:], truth[6:]):
        a, b = first(f)[0].landmarks5, resumed(f)[0].landmarks5
        assert np.array_equal(a, b)
        assert np.abs(a - lm).max() < 2.0


def test_temporal_blend_averages_restorations_but_does_not_ghost():
    rng = np.random.default_rng(0)
    crop = np.full((128, 128, 3), 120, np.uint8)
    same = np.eye(2, 3)  # the face did not move between the frames
    # a still input: the restorer's output varies from frame to frame; the blend averages it
    outs, prev = [], None
    for _ in range(30):
        restored = np.clip(150 + rng.normal(0, 8, crop.shape), 0, 255).astype(np.uint8)
        out = (restored.astype(np.float32) if prev is None
               else blend_restored(restored, crop, prev, crop, same))
        outs.append(out)
        prev = out
    raw_change = 8 * np.sqrt(2) * np.sqrt(2 / np.pi)  # mean |a - b| of two N(0, 8) draws
    assert np.abs(np.diff(outs[10:], axis=0)).mean() < 0.6 * raw_change
    # the mouth opens: there the input changed, so the current restoration is kept as it is
    moved = crop.copy()
    moved[80:110, 40:90] = 30
    restored = np.full_like(crop, 60)
    out = blend_restored(restored, moved, np.full(crop.shape, 200, np.float32), crop, same)
    assert np.allclose(out[85:105, 45:85], 60)  # no ghost of the closed mouth
    assert np.allclose(out[10:40, 10:40], 60 + 0.6 * (200 - 60))  # elsewhere blended
