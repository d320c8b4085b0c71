"""Peak memory of `flipnet restore` on videos of growing length: frames are streamed, so the peak
must not grow with the number of frames.

Each clip is the astronaut photo panning across a 320 x 240 frame (one real face in every frame)
with a sine audio track, made with imageio-ffmpeg's packaged ffmpeg. Each restore runs in a fresh
process whose peak RSS (``ru_maxrss`` of the child) is reported with its wall time.

    python benchmarks/video_memory.py --frames 100,1000 --method restorer --out out/video_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from skimage import data


def make_clip(path: Path, frames: int, *, fps: int = 25, size=(320, 240)) -> Path:
    """Write an H.264 clip of ``frames`` frames (a face panning) with an AAC sine track."""
    photo = data.astronaut()[::2, ::2]  # 256 x 256, the face near the top middle
    w, h = size
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
           "-f", "lavfi", "-i", f"sine=frequency=440:duration={frames / fps}",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(frames):
        frame = np.zeros((h, w, 3), np.uint8)
        x = int((w - 256) * (0.5 + 0.5 * np.sin(i / 40)))
        frame[: min(h, 256), x:x + 256] = photo[: min(h, 256)]
        proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg could not write {path}")
    return path


def restore_peak(clip: Path, out: Path, method: str) -> dict:
    """Run `flipnet restore` on ``clip`` in a child process; its peak RSS (MB) and seconds."""
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "-m", "flipnet.cli", "restore", str(clip), "-o", str(out),
                        "--method", method, "--device", "cpu"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mb": max(peak, before) / 1024, "seconds": time.perf_counter() - t0}


def main() -> None:
    """Make each clip, restore it, print a table and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", default="100,1000")
    ap.add_argument("--method", default="restorer")
    ap.add_argument("--work", default="out/video_memory")
    ap.add_argument("--out", default="out/video_memory.json")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    counts = sorted(int(v) for v in args.frames.split(","))
    clips = {n: make_clip(work / f"clip-{n}.mp4", n) for n in counts}  # before any measurement
    rows = []
    for n in counts:  # shortest first: a longer clip can only raise the children's peak
        row = {"frames": n, **restore_peak(clips[n], work / f"restored-{n}", args.method)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"method": args.method, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
