"""Restore the faces of one photo (or of a few video frames): detect -> align -> restore the
crops -> paste back.

A restoration *method* is any object with ``name``, ``size`` (the crop size it works at),
``template`` (the 5-point template its crops use) and ``restore(crops) -> crops`` on uint8
(N, S, S, 3) arrays. The pipeline knows nothing else about it, so the fast restorer, its
fine-tuned copy, FLIPNET and prior sampling all plug in the same way.

The stages are separate functions so that video (``pipelines.video``) can put its own
landmarks (tracked and smoothed across frames) between detection and alignment, and its own
temporal blend between restoring and pasting: ``detect_photo_faces`` -> ``face_result`` (align
one face) -> ``restore_crops`` (one batched ``method.restore`` call) -> ``paste_found``.
``restore_frames`` and ``restore_photo`` chain them.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from flipnet.errors import FlipnetError
from flipnet.faces.keep_detail import KeepDetailConfig, restoration_weight

DETECT_MAX_SIDE = 2048  # detection runs on a copy at most this large (bounded memory, #8)
RESTORED_PASS_SIDE = 192  # long side of the restored detection pass (measured: BENCHMARKS.md)
LOCATOR_WEIGHTS = "face-locator"  # the learned fallback's weights (models.face_locator)


class FaceMethod(Protocol):
    """What the pipeline needs of a restoration method."""

    name: str
    size: int
    template: str

    def restore(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) aligned crops -> restored crops of the same shape."""


@dataclass
class FaceResult:
    """One face of a photo: where it was, its aligned crop, and the restored crop."""

    box: tuple[int, int, int, int]
    landmarks5: list[list[float]]
    crop: np.ndarray
    restored: np.ndarray | None
    affine: np.ndarray | None = None
    skipped: str = ""


@dataclass
class PhotoResult:
    """A restored photo (uint8 RGB, alpha kept), its faces, and seconds per stage."""

    image: np.ndarray
    faces: list[FaceResult] = field(default_factory=list)
    alpha: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)  # detect / align / restore / paste


STAGES = ("detect", "align", "restore", "paste")
FRAMINGS = ("ffhq", "flipnet")  # what an --aligned crop looks like


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(g[:, :, None], 3, axis=2)


def restore_aligned(crop: np.ndarray, method: FaceMethod) -> np.ndarray:
    """Restore one already-aligned face crop of any size (resized to the method's size and back)."""
    h, w = crop.shape[:2]
    x = crop if (h, w) == (method.size, method.size) else cv2.resize(
        crop, (method.size, method.size), interpolation=cv2.INTER_AREA if h > method.size
        else cv2.INTER_CUBIC)
    out = method.restore(x[None])[0]
    if (h, w) != (method.size, method.size):
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LANCZOS4)
    return out


@functools.cache
def _detection_restorer():
    """The shipped fast restorer, for the restored detection pass (None without weights)."""
    from flipnet.pipelines.methods import make_method

    try:
        return make_method("restorer", device="cpu")
    except FlipnetError:
        return None


def detect_restored(rgb: np.ndarray, *, side: int = RESTORED_PASS_SIDE, passes: int = 2) -> list:
    """Faces found after restoring the whole photo: shrunk to ``side`` px (a face of a
    portrait then spans ~100 px, the restorer's scale), restored ``passes`` times with the
    fast restorer (any content size works: it is fully convolutional), then detected with HOG
    at 2x and 4x; boxes and landmarks are mapped back to the photo. For faces so blurred or
    noisy that dlib finds them neither at full size nor shrunk."""
    import cv2

    from flipnet.faces.detect import Face, detect_faces

    restorer = _detection_restorer()
    h, w = rgb.shape[:2]
    if restorer is None or max(h, w) < side:
        return []
    scale = side / max(h, w)
    x = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                   interpolation=cv2.INTER_AREA)
    for _ in range(passes):
        x = restorer.restore(x[None])[0]
    for up in (1, 2):
        found = detect_faces(x, upsample=up, max_side=4 * side)
        if found:
            return [Face(box=tuple(v / scale for v in f.box), score=f.score,
                         landmarks5=f.landmarks5 / scale, landmarks68=f.landmarks68 / scale)
                    for f in found]
    return []


@functools.cache
def _face_locator(folder: str):
    """The locator model and config of a weights folder (loaded once per process)."""
    from flipnet.models.face_locator import load_face_locator

    return load_face_locator(folder)


def locator_folder(locator: str | os.PathLike | None) -> Path | None:
    """The face-locator weights folder: ``locator`` as a path, else a shipped name found along
    ``weights.weights_search_path()``; None when ``locator`` is None or nothing is there."""
    from flipnet.weights import find_weights

    if locator is None:
        return None
    path = Path(locator)
    return path if (path / "config.json").is_file() else find_weights(str(locator))


def detect_located(rgb: np.ndarray, *, locator: str | os.PathLike | None = LOCATOR_WEIGHTS
                   ) -> list:
    """The main face as the learned locator finds it (``models.face_locator``): one
    ``faces.detect.Face`` (box = the aligned crop's square in the photo, score = presence
    probability, landmarks68 None), or [] when its presence is not above the folder's threshold,
    its eyes are less than 2 px apart, or there are no locator weights."""
    from flipnet.faces.align import invert_affine, similarity_transform
    from flipnet.faces.detect import Face
    from flipnet.faces.template import get_template
    from flipnet.models.face_locator import locate_face

    folder = locator_folder(locator)
    if folder is None:
        return []
    model, cfg = _face_locator(str(folder.resolve()))
    points, prob = locate_face(model, cfg, rgb)
    if prob <= cfg.presence_threshold or np.linalg.norm(points[1] - points[0]) < 2.0:
        return []  # not confident, or eyes on one pixel (no face to align)
    # box: the square of a 128 px flipnet-template crop, mapped back to the photo
    back = invert_affine(similarity_transform(points, get_template("flipnet", 128)))
    corners = np.array([[0, 0], [128, 0], [0, 128], [128, 128]], np.float64) @ back[:, :2].T
    corners += back[:, 2]
    box = (*corners.min(0), *corners.max(0))
    return [Face(box=tuple(float(v) for v in box), score=prob, landmarks5=points,
                 landmarks68=None)]


def detect_photo_faces(rgb: np.ndarray, *, only_center_face: bool = False,
                       detector: str = "hog", detect_max_side: int = DETECT_MAX_SIDE,
                       locator: str | os.PathLike | None = LOCATOR_WEIGHTS,
                       restored_pass: bool = True) -> list:
    """The ``faces.detect.Face``s of a photo: ``detect_all_faces`` (on a copy downscaled to
    ``detect_max_side``), else the learned locator (``detect_located``; skipped when its weights
    folder ``locator`` is absent or None), else the restored detection pass (when
    ``restored_pass``); only the most central one if ``only_center_face``."""
    from flipnet.faces.detect import detect_all_faces

    faces = detect_all_faces(rgb, detector=detector, max_side=detect_max_side)
    if not faces:
        faces = detect_located(rgb, locator=locator)
    if not faces and restored_pass:
        faces = detect_restored(rgb)
    if only_center_face and faces:
        cy, cx = rgb.shape[0] / 2, rgb.shape[1] / 2
        faces = [min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2
                     + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)]
    return faces


def face_result(rgb: np.ndarray, box, landmarks5: np.ndarray, method: FaceMethod, *,
                min_face: int = 24) -> FaceResult:
    """Align one face given its box and 5 landmarks (a ``FaceResult`` with ``skipped`` set,
    and no crop, when its box is smaller than ``min_face``)."""
    from flipnet.faces.align import align_face

    box = tuple(round(v) for v in box)
    lm = np.asarray(landmarks5, np.float32)
    if min(box[2] - box[0], box[3] - box[1]) < min_face:
        return FaceResult(box, lm.tolist(), np.zeros((0, 0, 3), np.uint8), None,
                          skipped=f"face smaller than {min_face} px")
    al = align_face(rgb, lm, size=method.size, template=method.template)
    return FaceResult(box, lm.tolist(), al.crop, None, al.affine)


def find_faces(rgb: np.ndarray, method: FaceMethod, *, only_center_face: bool = False,
               detector: str = "hog", min_face: int = 24,
               detect_max_side: int = DETECT_MAX_SIDE,
               timings: dict[str, float] | None = None) -> list[FaceResult]:
    """Detect (on a copy downscaled to ``detect_max_side``) and align every face of a photo."""
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    faces = detect_photo_faces(rgb, only_center_face=only_center_face, detector=detector,
                               detect_max_side=detect_max_side)
    t1 = time.perf_counter()
    results = [face_result(rgb, f.box, f.landmarks5, method, min_face=min_face) for f in faces]
    timings["detect"] = timings.get("detect", 0.0) + t1 - t0
    timings["align"] = timings.get("align", 0.0) + time.perf_counter() - t1
    return results


def ffhq_aligned_face(rgb: np.ndarray, method: FaceMethod) -> FaceResult:
    """The face of an FFHQ-aligned crop (CelebA-Test, WebPhoto, CodeFormer's cropped_faces):
    its 5 landmarks are facexlib's 512 px template scaled to the crop, warped onto the
    method's own template like a detected face."""
    from flipnet.faces.align import align_face
    from flipnet.faces.template import FFHQ_512

    h, w = rgb.shape[:2]
    lm = FFHQ_512 * np.array([w / 512.0, h / 512.0], np.float32)
    al = align_face(rgb, lm, size=method.size, template=method.template)
    return FaceResult((0, 0, w, h), lm.tolist(), al.crop, None, al.affine)


def restore_frames(frames: list[np.ndarray], method: FaceMethod, *, upscale: float = 1.0,
                   only_center_face: bool = False, detector: str = "hog", min_face: int = 24,
                   is_gray: bool = False, detect_max_side: int = DETECT_MAX_SIDE,
                   keep_detail: KeepDetailConfig | None = KeepDetailConfig(),
                   ffhq_aligned: bool = False) -> list[PhotoResult]:
    """Restore several photos (e.g. video frames) with one ``method.restore`` call for all faces.

    ``keep_detail``: paste each face only where restoration changed it (``faces.keep_detail``;
    None pastes the whole face). ``ffhq_aligned``: every frame is one FFHQ-aligned face (no
    detection)."""
    # detect + align each frame
    timings = [dict.fromkeys(STAGES, 0.0) for _ in frames]
    if ffhq_aligned:
        per_frame = [[ffhq_aligned_face(rgb, method)] for rgb in frames]
    else:
        per_frame = [find_faces(rgb, method, only_center_face=only_center_face,
                                detector=detector, min_face=min_face,
                                detect_max_side=detect_max_side, timings=t)
                     for rgb, t in zip(frames, timings)]
    return restore_found(frames, per_frame, method, upscale=upscale, is_gray=is_gray,
                         keep_detail=keep_detail, timings=timings)


def restore_found(frames: list[np.ndarray], per_frame: list[list[FaceResult]],
                  method: FaceMethod, *, upscale: float = 1.0, is_gray: bool = False,
                  keep_detail: KeepDetailConfig | None = KeepDetailConfig(),
                  timings: list[dict[str, float]] | None = None) -> list[PhotoResult]:
    """Restore the aligned faces of several photos (``per_frame[i]``: the ``FaceResult``s of
    ``frames[i]``) in one ``method.restore`` call and paste each back into its photo."""
    timings = [dict.fromkeys(STAGES, 0.0) for _ in frames] if timings is None else timings
    restore_crops(per_frame, method, timings)
    return paste_found(frames, per_frame, upscale=upscale, is_gray=is_gray,
                       keep_detail=keep_detail, timings=timings)


def restore_crops(per_frame: list[list[FaceResult]], method: FaceMethod,
                  timings: list[dict[str, float]]) -> None:
    """Fill ``FaceResult.restored`` of every face not skipped, in one ``method.restore`` call;
    the time is shared among the photos by face count."""
    todo = [r for faces in per_frame for r in faces if not r.skipped]
    if todo:
        t0 = time.perf_counter()
        restored = method.restore(np.stack([r.crop for r in todo]))  # (N, S, S, 3)
        for r, crop in zip(todo, restored):
            r.restored = crop
        share = (time.perf_counter() - t0) / len(todo)
        for faces, t in zip(per_frame, timings):
            t["restore"] = share * sum(not r.skipped for r in faces)


def paste_found(frames: list[np.ndarray], per_frame: list[list[FaceResult]], *,
                upscale: float = 1.0, is_gray: bool = False,
                keep_detail: KeepDetailConfig | None = KeepDetailConfig(),
                timings: list[dict[str, float]]) -> list[PhotoResult]:
    """Paste the restored faces back into their photos (uint8 throughout; only face-sized
    float regions)."""
    from flipnet.faces.paste import paste_faces

    out = []
    for rgb, faces, t in zip(frames, per_frame, timings):
        t0 = time.perf_counter()
        done = [r for r in faces if r.restored is not None]
        weights = None if keep_detail is None else [
            restoration_weight(r.crop, r.restored, keep_detail) for r in done]
        image = paste_faces(rgb, [r.restored for r in done], [r.affine for r in done],
                            upscale=upscale, is_gray=is_gray, weights=weights)
        t["paste"] = time.perf_counter() - t0
        out.append(PhotoResult(image=image, faces=faces, timings=t))
    return out


def restore_photo(rgb: np.ndarray, method: FaceMethod, *, aligned: bool = False,
                  framing: str = "ffhq", upscale: float = 1.0, only_center_face: bool = False,
                  detector: str = "hog", min_face: int = 24, is_gray: bool = False,
                  alpha: np.ndarray | None = None, detect_max_side: int = DETECT_MAX_SIDE,
                  keep_detail: KeepDetailConfig | None = KeepDetailConfig()) -> PhotoResult:
    """Restore every face of a uint8 RGB photo and paste it back (GFPGAN-style whole-photo BFR).

    ``aligned``: the photo is one aligned face crop, framed as ``framing``: ``ffhq`` (the
    field's 512 px FFHQ-aligned crops; the output keeps that framing and size) or ``flipnet``
    (flipnet's own tight crops, restored whole)."""
    if framing not in FRAMINGS:
        raise FlipnetError(f"unknown aligned framing {framing!r}; choose one of "
                           f"{', '.join(FRAMINGS)}")
    if aligned and framing == "ffhq":
        res = restore_frames([rgb], method, upscale=upscale, is_gray=is_gray,
                             keep_detail=keep_detail, ffhq_aligned=True)[0]
        res.alpha = scale_alpha(alpha, res.image)
        return res
    if aligned:
        t0 = time.perf_counter()
        out = restore_aligned(rgb, method)
        if upscale != 1.0:
            size = (round(rgb.shape[1] * upscale), round(rgb.shape[0] * upscale))
            out = cv2.resize(out, size, interpolation=cv2.INTER_LANCZOS4)
        out = _to_gray(out) if is_gray else out
        face = FaceResult(box=(0, 0, rgb.shape[1], rgb.shape[0]), landmarks5=[], crop=rgb,
                          restored=out)
        return PhotoResult(image=out, faces=[face], alpha=scale_alpha(alpha, out),
                           timings={"restore": time.perf_counter() - t0})
    res = restore_frames([rgb], method, upscale=upscale, only_center_face=only_center_face,
                         detector=detector, min_face=min_face, is_gray=is_gray,
                         detect_max_side=detect_max_side)[0]
    res.alpha = scale_alpha(alpha, res.image)
    return res


def scale_alpha(alpha: np.ndarray | None, like: np.ndarray) -> np.ndarray | None:
    """Resize an (H, W) alpha channel to the size of ``like`` (after ``--upscale``)."""
    if alpha is None or alpha.shape[:2] == like.shape[:2]:
        return alpha
    return cv2.resize(alpha, (like.shape[1], like.shape[0]), interpolation=cv2.INTER_LINEAR)
