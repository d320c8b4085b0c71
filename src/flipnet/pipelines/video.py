"""Restore the faces of a video, streaming frames through imageio-ffmpeg's packaged ffmpeg.

Frames are decoded one at a time (never the whole clip in memory), restored a few frames per
batch, and encoded (H.264) into segments of ``segment_frames`` frames under a work folder
``OUT/restored_videos/.<name>.parts/``. Each segment is written to a temporary name and renamed
when complete, so a run killed at any moment (even ``kill -9``) resumes from the last finished
segment. At the end the segments are concatenated and the source's audio streams are copied in
(``-map 0:v -map 1:a? -c:a copy``; re-encoded to AAC only if MP4 cannot hold them), again via a
temporary file and a rename: ``OUT/restored_videos/<name>.mp4`` is either absent or complete.

Faces are followed across frames (``faces.track``, issue 19): detected every ``detect_every``
frames, carried by optical flow in between, their landmarks One Euro smoothed (so the aligned
crops do not jitter), and each restored face blended with the previous frame's, motion
compensated (so the restorer's frame-to-frame variations average out). The tracker's state is
saved with each finished segment, so a resumed run goes on exactly as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from flipnet.errors import ConfigError, FlipnetError, ImageReadError, OutputPathError
from flipnet.faces.align import compose_affine, invert_affine
from flipnet.faces.keep_detail import KeepDetailConfig
from flipnet.faces.track import DETECT_EVERY, TEMPORAL, FaceTracker, TrackedFace, blend_restored
from flipnet.io import write_bytes_atomic
from flipnet.pipelines.photo import (
    STAGES,
    FaceMethod,
    FaceResult,
    PhotoResult,
    detect_photo_faces,
    face_result,
    paste_found,
    restore_crops,
    restore_photo,
)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
SEGMENT_FRAMES = 240
BATCH_FRAMES = 4
KEEP_DETAIL_DEFAULT = KeepDetailConfig()
CRF = 17  # H.264 quality: visually lossless at typical sizes


@dataclass
class VideoInfo:
    """What a video stream looks like: frame size (W, H), frame rate, duration, audio codec."""

    size: tuple[int, int]
    fps: Fraction
    duration: float
    audio_codec: str | None

    @property
    def frames_estimate(self) -> int:
        """Frame count from fps x duration (exact count needs a full decode)."""
        return max(1, round(float(self.fps) * self.duration))


def is_video(path: str | os.PathLike) -> bool:
    """True if ``path`` has a video extension (mp4, mov, mkv, avi, webm, m4v)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files under ``folder`` (or ``folder`` itself if it is one), sorted."""
    folder = Path(folder)
    if folder.is_file():
        return [folder] if is_video(folder) else []
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_video(p)
                  and not p.name.startswith("."))


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def exact_fps(fps: float) -> Fraction:
    """ffmpeg's rounded fps -> a rational (29.97 -> 30000/1001), so long clips keep their timing."""
    if fps <= 0:
        return Fraction(25)
    ntsc = round(fps * 1.001)
    if abs(fps - ntsc / 1.001) < 0.006 and abs(fps - round(fps)) > 0.006:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def _ffmpeg_problem(text: str, path: Path) -> str:
    """The most telling line of ffmpeg's stderr, without the file name."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip() and "===" not in ln]
    for ln in reversed(lines):
        if any(w in ln.lower() for w in ("invalid", "error", "no such", "not found", "moov",
                                         "could not", "does not contain")):
            return ln.replace(str(path), "").lstrip(": ")
    return lines[-1] if lines else "ffmpeg could not read it"


def iter_frames(path: str | os.PathLike) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """Open a video: its ``VideoInfo`` and a generator of uint8 (H, W, 3) RGB frames, streamed."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such video file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(gen)
    except (OSError, IndexError, ValueError, RuntimeError) as e:  # unreadable input
        gen.close()
        raise ImageReadError(path, f"not a readable video ({_ffmpeg_problem(e, path)})") from None
    w, h = meta["size"]
    info = VideoInfo(size=(int(w), int(h)), fps=exact_fps(float(meta.get("fps") or 0)),
                     duration=float(meta.get("duration") or 0), audio_codec=meta.get("audio_codec"))

    def frames() -> Iterator[np.ndarray]:
        try:
            for raw in gen:
                yield np.frombuffer(raw, np.uint8).reshape(h, w, 3).copy()  # (H, W, 3)
        except RuntimeError as e:
            raise ImageReadError(path, f"video data is corrupt ({_ffmpeg_problem(e, path)})") \
                from None
        finally:
            gen.close()

    return info, frames()


def _encoder(path: Path, size: tuple[int, int], fps: Fraction):
    """A started imageio-ffmpeg writer: send uint8 (H, W, 3) frames, close() to finish."""
    import imageio_ffmpeg

    w, h = size
    pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"  # 4:2:0 needs even sizes
    writer = imageio_ffmpeg.write_frames(
        str(path), size, fps=fps, codec="libx264", quality=None, pix_fmt_out=pix_fmt,
        macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-crf", str(CRF), "-preset", "fast", "-bf", "0", "-f", "mpegts"])
    writer.send(None)
    return writer


def _run_ffmpeg(args: list[str], what: str, path: Path) -> None:
    r = subprocess.run([_ffmpeg(), "-y", "-hide_banner", "-loglevel", "error", *args],
                       check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise OutputPathError(f"{path}: {what} failed ({_ffmpeg_problem(r.stderr, path)})")


def _mux(parts: list[Path], source: Path, tmp: Path, work: Path) -> None:
    """Concatenate the video segments and copy the source's audio streams into ``tmp``."""
    listing = work / "concat.txt"
    listing.write_text("".join(f"file '{p.name}'\n" for p in parts))
    base = ["-f", "concat", "-safe", "0", "-i", str(listing), "-i", str(source),
            "-map", "0:v", "-map", "1:a?", "-c:v", "copy"]
    try:
        _run_ffmpeg([*base, "-c:a", "copy", "-f", "mp4", str(tmp)], "muxing", tmp)
    except OutputPathError:  # e.g. an audio codec MP4 cannot hold: re-encode it
        _run_ffmpeg([*base, "-c:a", "aac", "-b:a", "192k", "-f", "mp4", str(tmp)], "muxing", tmp)


def _work_key(path: Path, settings: dict) -> str:
    st = path.stat()
    blob = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, settings],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _open_work(work: Path, key: str) -> None:
    """Reuse the work folder of an interrupted run with the same input and settings, else reset."""
    meta = work / "meta.json"
    try:
        if json.loads(meta.read_text())["key"] == key:
            for stale in work.glob(".*.tmp*"):
                stale.unlink()
            return
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_bytes_atomic(meta, json.dumps({"key": key}).encode())


class _Segments:
    """Encodes frames into numbered segment files; a finished segment is renamed into place
    (with its face count and the tracker's state beside it), so an interrupted run can skip it
    next time and go on from the same tracker state."""

    def __init__(self, work: Path, size: tuple[int, int], fps: Fraction, length: int,
                 tracker: FaceTracker | None = None):
        self.work, self.size, self.fps, self.length = work, size, fps, length
        self.tracker = tracker
        self.parts: list[Path] = []
        self.frames = self.faces = 0
        self.count = self.seg_faces = 0  # frames / faces in the current segment
        self.writer = None

    def _part(self) -> Path:
        return self.work / f"part{len(self.parts):05d}.ts"

    def room(self) -> int:
        """Frames left in the current segment."""
        return self.length - self.count

    def add(self, batch: list[np.ndarray], restore_batch) -> None:
        """Restore and encode a batch (not crossing a segment end), or skip it if done before."""
        if not self._part().exists():
            if self.writer is None:
                self.writer = _encoder(self.work / f".{self._part().name}.tmp", self.size,
                                       self.fps)
            for res in restore_batch(batch):
                self.writer.send(np.ascontiguousarray(res.image))
                self.seg_faces += sum(f.restored is not None for f in res.faces)
        self.count += len(batch)
        self.frames += len(batch)
        if self.count == self.length:
            self.close()

    def close(self) -> None:
        """Finish the current segment: close the encoder, record faces and the tracker's state,
        rename into place. Both a fresh and a skipped segment reload the tracker from that
        record, so a resumed run goes on exactly as an uninterrupted one."""
        if self.count == 0:
            return
        part = self._part()
        faces_file = part.with_suffix(".json")
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            track = None if self.tracker is None else self.tracker.state()
            write_bytes_atomic(faces_file, json.dumps({"faces": self.seg_faces,
                                                       "track": track}).encode())
            os.replace(part.with_name(f".{part.name}.tmp"), part)
        try:
            done = json.loads(faces_file.read_text())
            self.faces += done["faces"]
        except (OSError, ValueError, KeyError, TypeError):
            done = {}
        if self.tracker is not None:
            self.tracker.load_state(done.get("track"))
        self.parts.append(part)
        self.count = self.seg_faces = 0

    def abort(self) -> None:
        """Stop the encoder of an unfinished segment (its temp file is never renamed)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _stream(frames, segments: _Segments, restore_batch, pbar, task, batch_frames: int) -> None:
    """Decode -> a few frames -> restore -> encode into the current segment, to the end."""
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_frames or segments.room() == len(batch):
            segments.add(batch, restore_batch)
            pbar.advance(task, len(batch))
            batch = []
    if batch:
        segments.add(batch, restore_batch)
        pbar.advance(task, len(batch))
    segments.close()


def _most_central(faces: list[TrackedFace], shape: tuple[int, ...]) -> TrackedFace:
    cy, cx = shape[0] / 2, shape[1] / 2
    return min(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2 - cx) ** 2
               + ((f.box[1] + f.box[3]) / 2 - cy) ** 2)


class TrackedFrames:
    """Restores the consecutive frames of one clip, a batch at a time: faces found by a
    ``FaceTracker`` (detect every ``detect_every`` frames, optical flow in between, landmarks
    One Euro smoothed if ``smooth``), aligned, restored in one batch, blended with the
    previous frame's restored face (``temporal``: its weight, 0 = off; ``blend_restored``)
    and pasted back."""

    def __init__(self, method: FaceMethod, *, fps: float = 25.0, upscale: float = 1.0,
                 only_center_face: bool = False, detector: str = "hog", min_face: int = 24,
                 keep_detail: KeepDetailConfig | None = KEEP_DETAIL_DEFAULT,
                 smooth: bool = True, detect_every: int = DETECT_EVERY,
                 temporal: float = TEMPORAL):
        if not 0.0 <= temporal < 1.0:
            raise ConfigError(f"temporal must be in [0, 1), got {temporal}")
        if detect_every < 1:
            raise ConfigError(f"detect_every must be >= 1, got {detect_every}")
        self.method, self.upscale, self.min_face = method, upscale, min_face
        self.keep_detail, self.temporal = keep_detail, temporal
        self.only_center_face = only_center_face
        self.tracker = FaceTracker(
            lambda rgb: [(f.box, f.landmarks5) for f in detect_photo_faces(
                rgb, only_center_face=only_center_face, detector=detector)],
            detect_every=detect_every, smooth=smooth, fps=fps)
        self.memory: dict[int, tuple] = {}  # track id -> (output, input crop, affine)

    def _blend(self, faces: list[FaceResult], tracked: list[TrackedFace]) -> None:
        """Blend each restored face of one frame with its track's previous output."""
        memory = {}
        for r, f in zip(faces, tracked):
            if r.restored is None:
                continue
            out = r.restored.astype(np.float32)
            prev = self.memory.get(f.track_id)
            if prev is not None and f.flow is not None:
                prev_out, prev_crop, prev_affine = prev
                warp = compose_affine(r.affine, compose_affine(f.flow,
                                                               invert_affine(prev_affine)))
                out = blend_restored(r.restored, r.crop, prev_out, prev_crop, warp,
                                     strength=self.temporal)
                r.restored = np.clip(np.rint(out), 0, 255).astype(np.uint8)
            memory[f.track_id] = (out, r.crop, r.affine)
        self.memory = memory

    def __call__(self, batch: list[np.ndarray]) -> list[PhotoResult]:
        """Restore the next frames of the clip (uint8 (H, W, 3) RGB each), in order."""
        timings = [dict.fromkeys(STAGES, 0.0) for _ in batch]
        per_frame, tracks = [], []
        for rgb, t in zip(batch, timings):
            t0 = time.perf_counter()
            tracked = self.tracker(rgb)
            if self.only_center_face and len(tracked) > 1:  # a carried face and a new one
                tracked = [_most_central(tracked, rgb.shape)]
            t1 = time.perf_counter()
            per_frame.append([face_result(rgb, f.box, f.landmarks5, self.method,
                                          min_face=self.min_face) for f in tracked])
            tracks.append(tracked)
            t["detect"], t["align"] = t1 - t0, time.perf_counter() - t1
        restore_crops(per_frame, self.method, timings)
        if self.temporal > 0:
            for faces, tracked in zip(per_frame, tracks):  # in frame order
                self._blend(faces, tracked)
        return paste_found(batch, per_frame, upscale=self.upscale,
                           keep_detail=self.keep_detail, timings=timings)


def restore_video(path: str | os.PathLike, out_dir: str | os.PathLike, method, *,
                  upscale: float = 1.0, only_center_face: bool = False, detector: str = "hog",
                  min_face: int = 24, aligned: bool = False, framing: str = "ffhq",
                  keep_detail: KeepDetailConfig | None = KEEP_DETAIL_DEFAULT,
                  smooth: bool = True, detect_every: int = DETECT_EVERY,
                  temporal: float = TEMPORAL, batch_frames: int = BATCH_FRAMES,
                  segment_frames: int = SEGMENT_FRAMES, progress: bool = True, bar=None) -> dict:
    """Restore every face in every frame of a video -> ``OUT/restored_videos/<name>.mp4``.

    Same frame count, fps and (upscaled) size; audio copied from the source. Resumes from the
    last finished segment after an interruption. ``smooth``: One Euro smoothing of each face's
    landmarks across frames; ``detect_every``: run the face detector on every k-th frame and
    track faces by optical flow in between; ``temporal``: weight of the previous frame's
    restored face, motion compensated, in the current one (0 = off; see ``TrackedFrames``).
    ``bar``: a running rich ``Progress`` to add the frame bar to. Returns the report entry
    (frames, faces, seconds, output).
    """
    path, out_dir = Path(path), Path(out_dir)
    final = out_dir / "restored_videos" / f"{path.stem}.mp4"
    if final.resolve() == path.resolve():
        raise OutputPathError(f"{final}: output path equals the input; refusing to overwrite")
    if final.exists():
        return {"resumed": True, "output": str(final)}
    t_start = time.perf_counter()
    info, frames = iter_frames(path)
    out_size = (max(1, round(info.size[0] * upscale)), max(1, round(info.size[1] * upscale)))
    work = out_dir / "restored_videos" / f".{path.stem}.parts"
    settings = {"method": method.name, "upscale": upscale, "only_center_face": only_center_face,
                "detector": detector, "min_face": min_face, "aligned": aligned,
                "framing": framing, "keep_detail": keep_detail is not None,
                "smooth": smooth, "detect_every": detect_every, "temporal": temporal,
                "segment_frames": segment_frames}
    _open_work(work, _work_key(path, settings))

    tracked = None if aligned else TrackedFrames(
        method, fps=float(info.fps), upscale=upscale, only_center_face=only_center_face,
        detector=detector, min_face=min_face, keep_detail=keep_detail, smooth=smooth,
        detect_every=detect_every, temporal=temporal)

    def restore_batch(batch: list[np.ndarray]) -> list:
        if aligned:
            return [restore_photo(f, method, aligned=True, framing=framing, upscale=upscale,
                                  keep_detail=keep_detail) for f in batch]
        return tracked(batch)

    from rich.progress import Progress

    segments = _Segments(work, out_size, info.fps, segment_frames,
                         None if tracked is None else tracked.tracker)
    with (Progress(disable=not progress, transient=True) if bar is None
          else nullcontext(bar)) as pbar:
        task = pbar.add_task(f"{path.name} frames", total=info.frames_estimate)
        try:
            _stream(frames, segments, restore_batch, pbar, task, batch_frames)
        finally:
            segments.abort()
        pbar.remove_task(task)
    n_frames, n_faces, parts = segments.frames, segments.faces, segments.parts
    if n_frames == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise ImageReadError(path, "video has no decodable frames")

    # concatenate + copy audio into a temp file, then rename: never a half-written output
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        _mux(parts, path, tmp, work)
        os.replace(tmp, final)
    except FlipnetError:
        tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return {"frames": n_frames, "faces": n_faces, "fps": str(info.fps),
            "size": list(out_size), "audio": info.audio_codec,
            "seconds": round(time.perf_counter() - t_start, 3), "output": str(final)}
