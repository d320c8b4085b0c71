"""Flicker of restored faces in video (issue 19): frame-to-frame change of the restored face,
with and without landmark smoothing, detecting every frame or every k-th frame.

The clip is the astronaut photo (scikit-image), shrunk to ``--size`` px, blurred, then moved
by a known small random similarity per frame (``--jitter`` px of translation, +-0.5 deg of
rotation, +-0.5 % of scale: a hand-held camera) with fresh Gaussian noise (``--noise``) on
every frame. Each variant restores the clip in memory with the shipped ``restorer``. Every
frame is warped back by the inverse of its known jitter onto the still photo's coordinates,
and the flicker is the mean absolute difference (0-255 levels) between consecutive frames
inside the face box there. The issue's goal: the restored face's flicker must not exceed the
input's. Two reference rows: ``clean``, the jittered clip without noise (the floor set by
resampling alone), and ``steady``, the still restored once and moved by the same jitter: a
restoration that does not flicker at all scores this (above ``clean``: undoing the jitter
resamples a sharper face, with larger interpolation error). ``detail`` is the mean |Laplacian|
of the face (a temporal blend that only blurred would lower it). Speed: frames/s (wall clock)
and CPU seconds per frame, both distorted on a shared machine.

    python benchmarks/video_flicker.py --out out/video_flicker.json --png out/video_flicker.png

Rows: ``per-frame (before)`` is the pipeline before issue 19 (``restore_frames``: detect and
align every frame); the other rows use ``pipelines.video.TrackedFrames`` (what
``restore_video`` runs) with detection every k frames, landmark smoothing on or off, and the
temporal blend of restored faces on or off (the last row is the default).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from flipnet.faces.detect import detect_all_faces
from flipnet.faces.track import DETECT_EVERY, TEMPORAL
from flipnet.pipelines.methods import make_method
from flipnet.pipelines.photo import restore_frames
from flipnet.pipelines.video import TrackedFrames

FPS = 25.0


def make_clip(frames: int, *, size: int, jitter: float, noise: float, seed: int):
    """The still (uint8 (S, S, 3)), the jittered noisy frames and their (2, 3) jitter maps."""
    rng = np.random.default_rng(seed)
    still = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    still = cv2.GaussianBlur(still, (0, 0), size / 256)  # a soft face worth restoring
    c = (size / 2, size / 2)
    clip, clean, maps = [], [], []
    for _ in range(frames):
        m = cv2.getRotationMatrix2D(c, rng.uniform(-0.5, 0.5), 1 + rng.uniform(-0.005, 0.005))
        m[:, 2] += rng.uniform(-jitter, jitter, 2)
        moved = cv2.warpAffine(still, m, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
        noisy = moved.astype(np.float32) + rng.normal(0, noise, moved.shape)
        clip.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
        clean.append(moved)
        maps.append(m)
    return still, clip, clean, maps


def unjittered(frames: list[np.ndarray], maps: list[np.ndarray]) -> list[np.ndarray]:
    """Each frame warped back onto the still's coordinates by the inverse of its jitter."""
    h, w = frames[0].shape[:2]
    return [cv2.warpAffine(f, cv2.invertAffineTransform(m), (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
            for f, m in zip(frames, maps)]


def flicker(frames: list[np.ndarray], maps: list[np.ndarray], box) -> np.ndarray:
    """Per-frame change: mean |frame t - frame t-1| in the face box, jitter undone (T-1,)."""
    x0, y0, x1, y1 = box
    ref = [f[y0:y1, x0:x1] for f in unjittered(frames, maps)]
    return np.array([np.abs(a - b).mean() for a, b in zip(ref[1:], ref[:-1])])


def detail(frames: list[np.ndarray], box) -> float:
    """Mean |Laplacian| of the gray face box (jitter undone): how much detail is left."""
    x0, y0, x1, y1 = box
    return float(np.mean([np.abs(cv2.Laplacian(cv2.cvtColor(
        f[y0:y1, x0:x1].clip(0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean()
        for f in frames]))


def run_variant(name: str, clip: list[np.ndarray], method, *, batch: int, **kw):
    """Restore the clip with one variant: output frames, seconds, CPU seconds, detector runs."""
    t0, c0 = time.perf_counter(), time.process_time()
    out, detections = [], len(clip)
    if name.startswith("per-frame"):
        for i in range(0, len(clip), batch):
            out += [r.image for r in restore_frames(clip[i:i + batch], method)]
    else:
        tracked = TrackedFrames(method, fps=FPS, **kw)
        for i in range(0, len(clip), batch):
            out += [r.image for r in tracked(clip[i:i + batch])]
        detections = tracked.tracker.detections
    return out, time.perf_counter() - t0, time.process_time() - c0, detections


def save_png(path: Path, rows: dict[str, list[np.ndarray]], curves: dict[str, np.ndarray],
             box) -> None:
    """A strip of 6 consecutive face crops per variant (jitter undone), and a plot of the
    per-frame change of each variant."""
    x0, y0, x1, y1 = box
    side = 96
    lines = []
    for name, frames in rows.items():
        crops = [cv2.resize(f[y0:y1, x0:x1].clip(0, 255).astype(np.uint8), (side, side))
                 for f in frames[10:16]]
        label = np.full((side, 210, 3), 255, np.uint8)
        cv2.putText(label, name[:32], (3, side // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (0, 0, 0), 1, cv2.LINE_AA)
        lines.append(np.hstack([label, *crops]))
    strip = np.vstack(lines)
    # per-frame change curves (from 0 at the bottom), the legend in a band below
    ph, pw = 200, strip.shape[1]
    plot = np.full((ph + 14 * len(curves) + 6, pw, 3), 255, np.uint8)
    top = max(float(c.max()) for c in curves.values()) * 1.05
    colours = [(0, 0, 0), (200, 0, 0), (0, 130, 0), (0, 0, 220), (200, 120, 0), (150, 0, 150),
               (0, 150, 150), (120, 120, 120)]
    for k, (name, c) in enumerate(curves.items()):
        pts = np.stack([np.linspace(10, pw - 10, len(c)), ph - 10 - (ph - 20) * c / top], 1)
        col = colours[k % len(colours)]
        cv2.polylines(plot, [pts.astype(np.int32)], False, col, 1, cv2.LINE_AA)
        cv2.putText(plot, f"{name[:32]}: change per frame, mean {c.mean():.2f}",
                    (10, ph + 12 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.38, col, 1,
                    cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack([strip, plot]), cv2.COLOR_RGB2BGR))


def main() -> None:
    """Make the clip, restore it with each variant, print a table, write JSON and a PNG."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60, help="clip length")
    ap.add_argument("--size", type=int, default=256, help="frame side, px (face ~ size/5)")
    ap.add_argument("--jitter", type=float, default=1.5, help="max translation per frame, px")
    ap.add_argument("--noise", type=float, default=6.0, help="Gaussian noise sigma, levels")
    ap.add_argument("--detect-every", type=int, default=DETECT_EVERY,
                    help="k of the tracked rows that do not detect every frame")
    ap.add_argument("--temporal", type=float, default=TEMPORAL,
                    help="temporal blend weight of the last row")
    ap.add_argument("--method", default="restorer")
    ap.add_argument("--batch", type=int, default=4, help="frames per restore call")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/video_flicker.json")
    ap.add_argument("--png", default="out/video_flicker.png")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    still, clip, clean, maps = make_clip(args.frames, size=args.size, jitter=args.jitter,
                                         noise=args.noise, seed=args.seed)
    face = detect_all_faces(still)[0]
    box = [round(v) for v in face.box]  # the face in the still's coordinates
    method = make_method(args.method, device="cpu")

    k = args.detect_every
    variants = {"per-frame (before)": {},
                "k=1 smooth": {"detect_every": 1, "smooth": True, "temporal": 0.0},
                f"k={k}": {"detect_every": k, "smooth": False, "temporal": 0.0},
                f"k={k} smooth": {"detect_every": k, "smooth": True, "temporal": 0.0},
                f"k={k} smooth temporal={args.temporal}": {
                    "detect_every": k, "smooth": True, "temporal": args.temporal}}
    # references: the input, the input without noise, a perfectly steady restoration
    steady = restore_frames([still], method)[0].image
    steady = [cv2.warpAffine(steady, m, steady.shape[1::-1], flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101) for m in maps]
    curves = {"clean": flicker(clean, maps, box), "steady": flicker(steady, maps, box),
              "input": flicker(clip, maps, box)}
    frames_of = {"input": unjittered(clip, maps)}
    rows = [{"variant": name, "flicker": float(c.mean())} for name, c in curves.items()]
    rows[1]["detail"] = detail(unjittered(steady, maps), box)
    rows[2]["detail"] = detail(frames_of["input"], box)
    for name, kw in variants.items():
        out, seconds, cpu, detections = run_variant(name, clip, method, batch=args.batch, **kw)
        curves[name] = flicker(out, maps, box)
        frames_of[name] = unjittered(out, maps)
        rows.append({"variant": name, "flicker": float(curves[name].mean()),
                     "detail": detail(frames_of[name], box),
                     "flicker_p95": float(np.percentile(curves[name], 95)),
                     "fps": len(clip) / seconds, "cpu_s_per_frame": cpu / len(clip),
                     "detections": detections})
    input_flicker = curves["input"].mean()
    print(f"\n{args.frames} frames of {args.size} px, jitter {args.jitter} px, noise "
          f"{args.noise}, method {args.method}; face box {box}; timings under load\n")
    print("| variant | flicker | p95 | vs input | detail | detections | frames/s | CPU s/frame |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = f"{r['detail']:.2f}" if "detail" in r else "-"
        extra = (f"{r['flicker_p95']:.2f} | {r['flicker'] / input_flicker:.2f} | {d} | "
                 f"{r['detections']} | {r['fps']:.1f} | {r['cpu_s_per_frame']:.2f}"
                 ) if "fps" in r else f"- | - | {d} | - | - | -"
        print(f"| {r['variant']} | {r['flicker']:.2f} | {extra} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "box": box, "rows": rows,
                                          "curves": {k: v.round(3).tolist()
                                                     for k, v in curves.items()}}, indent=1))
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        save_png(Path(args.png), frames_of,
                 {k: v for k, v in curves.items() if k not in ("clean", "steady")}, box)


if __name__ == "__main__":
    main()
