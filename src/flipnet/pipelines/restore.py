"""Whole-photo face restoration: detect -> align -> restore the crops -> paste back.

A restoration *method* is any object with ``name``, ``size`` (the crop size it works at),
``template`` (the 5-point template its crops use) and ``restore(crops) -> crops`` on uint8
(N, S, S, 3) arrays. The pipeline knows nothing else about it, so the fast restorer, its
fine-tuned copy, FLIPNET and prior sampling all plug in the same way.

Output layout follows GFPGAN: ``cropped_faces/``, ``restored_faces/``, ``cmp/`` (before | after)
and ``restored_imgs/`` under the output folder, plus ``report.json`` for the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from flipnet.errors import FlipnetError
from flipnet.io import BatchLog, check_distinct, load_image, save_image, write_bytes_atomic
from flipnet.viz import side_by_side


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
    """A restored photo (uint8 RGB, alpha kept) and its faces."""

    image: np.ndarray
    faces: list[FaceResult] = field(default_factory=list)
    alpha: np.ndarray | None = None


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


def restore_photo(rgb: np.ndarray, method: FaceMethod, *, aligned: bool = False,
                  upscale: float = 1.0, only_center_face: bool = False, detector: str = "hog",
                  min_face: int = 24, is_gray: bool = False,
                  alpha: np.ndarray | None = None) -> PhotoResult:
    """Restore every face of a uint8 RGB photo and paste it back (GFPGAN-style whole-photo BFR)."""
    from flipnet.faces.align import align_face
    from flipnet.faces.detect import detect_faces
    from flipnet.faces.paste import paste_faces

    if aligned:
        out = restore_aligned(rgb, method)
        if upscale != 1.0:
            size = (round(rgb.shape[1] * upscale), round(rgb.shape[0] * upscale))
            out = cv2.resize(out, size, interpolation=cv2.INTER_LANCZOS4)
        out = _to_gray(out) if is_gray else out
        face = FaceResult(box=(0, 0, rgb.shape[1], rgb.shape[0]), landmarks5=[], crop=rgb,
                          restored=out)
        return PhotoResult(image=out, faces=[face], alpha=_scale_alpha(alpha, out))

    faces = detect_faces(rgb, detector=detector)
    if only_center_face and faces:
        cy, cx = rgb.shape[0] / 2, rgb.shape[1] / 2
        faces = [min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2
                     + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)]
    results: list[FaceResult] = []
    todo = []
    for f in faces:
        box = tuple(int(v) for v in f.box)
        lm = np.asarray(f.landmarks5, np.float32)
        if min(box[2] - box[0], box[3] - box[1]) < min_face:
            results.append(FaceResult(box, lm.tolist(), np.zeros((0, 0, 3), np.uint8), None,
                                      skipped=f"face smaller than {min_face} px"))
            continue
        al = align_face(rgb, lm, size=method.size, template=method.template)
        results.append(FaceResult(box, lm.tolist(), al.crop, None, al.affine))
        todo.append(results[-1])
    if todo:
        restored = method.restore(np.stack([r.crop for r in todo]))
        for r, crop in zip(todo, restored):
            r.restored = crop
    image = paste_faces(rgb, [r.restored for r in todo], [r.affine for r in todo],
                        upscale=upscale, is_gray=is_gray)
    return PhotoResult(image=image, faces=results, alpha=_scale_alpha(alpha, image))


def _scale_alpha(alpha: np.ndarray | None, like: np.ndarray) -> np.ndarray | None:
    if alpha is None or alpha.shape[:2] == like.shape[:2]:
        return alpha
    return cv2.resize(alpha, (like.shape[1], like.shape[0]), interpolation=cv2.INTER_LINEAR)


def restore_files(inputs: list[Path], out_dir: Path, method: FaceMethod, *, ext: str = "auto",
                  progress: bool = True, settings: dict | None = None, **photo_kwargs) -> dict:
    """Restore a list of photos into the GFPGAN output layout; bad files are skipped, finished
    outputs kept, and a rerun skips photos whose restored image already exists."""
    from rich.progress import Progress

    out_dir = Path(out_dir)
    for sub in ("cropped_faces", "restored_faces", "cmp", "restored_imgs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    log = BatchLog()
    per_image: dict[str, dict] = {}
    t_start = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("restoring", total=len(inputs))
        for path in inputs:
            bar.advance(task)
            stem = path.stem
            suffix = path.suffix.lower() if ext == "auto" else "." + ext.lstrip(".")
            final = out_dir / "restored_imgs" / f"{stem}{suffix}"
            try:
                check_distinct(final, path)
            except FlipnetError as e:
                log.skip(path, str(e))
                continue
            if final.exists():
                log.done += 1
                per_image[str(path)] = {"resumed": True}
                continue
            t0 = time.perf_counter()
            try:
                img = load_image(path)
                if img.alpha is not None and ext == "auto":
                    final = final.with_suffix(".png")
                res = restore_photo(img.rgb, method, is_gray=img.is_gray, alpha=img.alpha,
                                    **photo_kwargs)
            except FlipnetError as e:
                log.skip(path, e.problem if hasattr(e, "problem") else str(e))
                continue
            for i, face in enumerate(res.faces):
                if face.restored is None:
                    continue
                save_image(out_dir / "cropped_faces" / f"{stem}_{i:02d}.png", face.crop)
                save_image(out_dir / "restored_faces" / f"{stem}_{i:02d}.png", face.restored)
                save_image(out_dir / "cmp" / f"{stem}_{i:02d}.png",
                           side_by_side(face.crop, face.restored))
            save_image(final, res.image, res.alpha)  # last: its presence marks the photo done
            log.done += 1
            per_image[str(path)] = {
                "faces": sum(f.restored is not None for f in res.faces),
                "skipped_faces": [{"box": f.box, "why": f.skipped} for f in res.faces
                                  if f.skipped],
                "boxes": [f.box for f in res.faces if f.restored is not None],
                "seconds": round(time.perf_counter() - t0, 3), "output": str(final)}
    report = {"method": method.name, "settings": settings or {}, "images": per_image,
              "done": log.done, "skipped_files": log.skipped,
              "seconds": round(time.perf_counter() - t_start, 2)}
    write_bytes_atomic(out_dir / "report.json", json.dumps(report, indent=1, default=str).encode())
    return report
