"""Turn a folder of raw face photos into aligned PNG crops: one face per image, blurry ones dropped.

Per image: load (unreadable -> skipped with a warning), detect faces (dlib, see
``flipnet.faces.detect``), keep the largest / most central one, align it to the template, measure
its sharpness and drop it below ``min_sharpness``, else write ``dst/<same sub-folders>/<stem>.png``.

Sharpness (docs/TEMPLATE.md): variance of the 3x3 Laplacian of the grayscale aligned crop,
resized to 128 x 128 (INTER_AREA), over its central 96 x 96 window (the face, not the border).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from flipnet.errors import ConfigError, ImageReadError, OutputPathError
from flipnet.io import list_images, load_image, save_image, write_bytes_atomic

SHARPNESS_SIZE = 128  # analysis size of the sharpness measure
SHARPNESS_MARGIN = 16  # border excluded from it, in pixels at SHARPNESS_SIZE
# about the 5th percentile of UTKFace aligned crops (24.3; docs/TEMPLATE.md)
DEFAULT_MIN_SHARPNESS = 25.0
RETRY_PAD = 0.25  # padding for a second detection attempt when the first finds no face
REPORT_NAME = "prepare.json"


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the gray crop at 128 px, central 96 x 96 (higher = sharper)."""
    import cv2

    gray = cv2.cvtColor(np.asarray(crop), cv2.COLOR_RGB2GRAY)
    if gray.shape != (SHARPNESS_SIZE, SHARPNESS_SIZE):
        gray = cv2.resize(gray, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
    lap = cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F, ksize=1)
    m = SHARPNESS_MARGIN
    return float(lap[m:-m, m:-m].var())


@dataclass
class PrepareSettings:
    """How crops are made (stored in prepare.json)."""

    size: int = 128
    template: str = "flipnet"
    detector: str = "hog"
    upsample: int = 0
    pad: float = 0.0
    pad_mode: str = "reflect"
    retry_pad: float = RETRY_PAD
    min_sharpness: float = DEFAULT_MIN_SHARPNESS


@dataclass
class PrepareReport:
    """Counts, timing and per-file reasons of one ``prepare_folder`` run (written as prepare.json)."""

    src: str
    dst: str
    settings: dict
    kept: int = 0
    resumed: int = 0  # outputs that already existed (counted in ``kept`` too)
    no_face: int = 0
    blurry: int = 0
    unreadable: int = 0
    failed: int = 0  # unexpected errors (should stay 0); the run goes on
    seconds: float = 0.0
    dropped: list[dict] = field(default_factory=list)  # {"file", "reason", "detail"}
    sharpness: dict[str, float] = field(default_factory=dict)  # kept crop (relative) -> value

    def to_json(self) -> str:
        """The report as indented JSON text."""
        return json.dumps(asdict(self), indent=1)

    def summary(self) -> str:
        """One line for the end of a run."""
        return (f"{self.kept} kept ({self.resumed} already there), {self.no_face} no face, "
                f"{self.blurry} blurry, {self.unreadable} unreadable, {self.failed} failed, "
                f"{self.seconds:.1f} s")


def crop_face(rgb: np.ndarray, settings: PrepareSettings):
    """Aligned crop of the main face of ``rgb`` (AlignedFace), or None when no face is found."""
    from flipnet.faces.align import align_face
    from flipnet.faces.detect import detect_faces, main_face

    kwargs = dict(detector=settings.detector, upsample=settings.upsample,
                  pad_mode=settings.pad_mode)
    faces = detect_faces(rgb, pad=settings.pad, **kwargs)
    if not faces and settings.retry_pad > settings.pad:
        faces = detect_faces(rgb, pad=settings.retry_pad, **kwargs)
    face = main_face(faces, rgb.shape)
    if face is None:
        return None
    return align_face(rgb, face.landmarks5, size=settings.size, template=settings.template)


def _process(job: tuple[str, str, PrepareSettings]) -> tuple[str, str, float | None]:
    """One file -> (status, detail, sharpness); status in kept/resumed/no_face/blurry/unreadable/failed."""
    src, out, settings = job
    if os.path.exists(out):
        try:
            return "resumed", "", sharpness(load_image(out).rgb)
        except ImageReadError:
            pass  # a damaged earlier output: make it again
    try:
        rgb = load_image(src).rgb
    except ImageReadError as e:
        return "unreadable", e.problem, None
    try:
        aligned = crop_face(rgb, settings)
        if aligned is None:
            return "no_face", f"no face found ({settings.detector} detector)", None
        value = sharpness(aligned.crop)
        if value < settings.min_sharpness:
            return "blurry", f"sharpness {value:.1f} < {settings.min_sharpness:g}", value
        save_image(out, aligned.crop, source=src)
        return "kept", "", value
    except OutputPathError:
        raise
    except Exception as e:  # noqa: BLE001 - one bad file must not end a long run
        return "failed", f"{type(e).__name__}: {e}", None


def _output_names(files: list[Path], src: Path) -> list[Path]:
    """Relative output paths: same sub-folders, ``.png``; clashing stems keep their full name."""
    rel = [f.relative_to(src) if src.is_dir() else Path(f.name) for f in files]
    outs = [r.with_suffix(".png") for r in rel]
    counts: dict[Path, int] = {}
    for o in outs:
        counts[o] = counts.get(o, 0) + 1
    return [r.with_name(r.name + ".png") if counts[o] > 1 else o for r, o in zip(rel, outs)]


def prepare_folder(src: str | os.PathLike, dst: str | os.PathLike, *, size: int = 128,
                   template: str = "flipnet", detector: str = "hog",
                   min_sharpness: float = DEFAULT_MIN_SHARPNESS, pad: float = 0.0,
                   pad_mode: str = "reflect", retry_pad: float = RETRY_PAD, upsample: int = 0,
                   workers: int = 1, progress: bool = True, limit: int | None = None
                   ) -> PrepareReport:
    """Align every photo under ``src`` (recursively) into ``dst`` as PNG crops; resumable.

    ``pad``: border (fraction of the long side) added before detection; use ~0.25 for tight
    crops such as UTKFace. With no face found, detection is retried once with ``retry_pad``.
    ``min_sharpness``: crops below it are dropped as blurry (0 keeps all). Writes
    ``dst/prepare.json`` (counts, settings, seconds, dropped files with reasons) at the end.
    """
    from flipnet.faces.detect import DETECTORS, PAD_MODES
    from flipnet.faces.template import check_size, normalized_template

    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    settings = PrepareSettings(size=check_size(size), template=template, detector=detector,
                               upsample=int(upsample), pad=float(pad), pad_mode=pad_mode,
                               retry_pad=float(retry_pad), min_sharpness=float(min_sharpness))
    normalized_template(template)  # fail early on an unknown template name
    if detector not in DETECTORS or pad_mode not in PAD_MODES:
        raise ConfigError(f"unknown detector {detector!r} or pad_mode {pad_mode!r}; choose "
                          f"from {DETECTORS} and {PAD_MODES}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if dst.resolve() == src.resolve():
        raise OutputPathError(f"{dst}: output folder equals the input folder")

    # list inputs, never re-reading our own outputs when dst lies inside src
    files = list_images(src)
    if dst.resolve().is_relative_to(src.resolve()):
        files = [f for f in files if not f.resolve().is_relative_to(dst.resolve())]
    files = files[:limit]
    outs = _output_names(files, src)
    jobs = [(str(f), str(dst / o), settings) for f, o in zip(files, outs)]
    dst.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(src=str(src), dst=str(dst), settings=asdict(settings))

    def results():
        if workers == 1:
            yield from map(_process, jobs)
            return
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap(_process, jobs, chunksize=16)

    from tqdm import tqdm

    for (path, _, _), out, (status, detail, value) in zip(
            jobs, outs, tqdm(results(), total=len(jobs), desc="prepare", unit="img",
                             disable=not progress)):
        rel = str(Path(path).relative_to(src)) if src.is_dir() else Path(path).name
        if status in ("kept", "resumed"):
            report.kept += 1
            report.resumed += status == "resumed"
            report.sharpness[str(out)] = round(value, 2)
            continue
        setattr(report, status, getattr(report, status) + 1)
        report.dropped.append({"file": rel, "reason": status, "detail": detail})
        if status in ("unreadable", "failed"):
            warnings.warn(f"skipped {path}: {detail}", stacklevel=2)

    report.seconds = round(time.perf_counter() - start, 2)
    write_bytes_atomic(dst / REPORT_NAME, report.to_json().encode("utf-8"))
    return report
